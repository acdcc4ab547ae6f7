"""`benchmarks/bench_peers.py` without llama.cpp or the 135M model: its report helpers on fixed inputs, the
shared timing protocol on a fake engine, file discovery, prompts, and its refusals (one sentence, exit 2)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "bench_peers.py"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))  # bench_peers imports its neighbours (bench_train, generation_timing)
    spec.loader.exec_module(module)
    return module


bench_peers = load("bench_peers")
generation_timing = load("generation_timing")


def row(name: str, decode: float, **extra) -> dict:
    return {"name": name, "weights": "w", "size_bytes": 100e6, "ttft_ms": 50.0, "prefill_tokens_per_s": 2000.0,
            "decode_tokens_per_s": decode, "peak_rss_mb": 1234.0, **extra}


def test_agreement_counts_the_identical_prefix_and_positions():
    reference = [list(range(16)), list(range(16))]
    same = list(range(16))
    diverged = [0, 1, 2, 99] + list(range(4, 16))  # differs at 3 only, then agrees again by position
    result = bench_peers.agreement([same, diverged], reference)
    assert result["prefix_lengths"] == [16, 3]
    assert result["identical_prompts"] == 1
    assert result["prefix_fraction"] == pytest.approx((16 + 3) / 32)
    assert result["position_fraction"] == pytest.approx(31 / 32)


def test_agreement_uses_only_the_first_tokens_and_refuses_short_generations():
    reference = [list(range(20))]
    assert bench_peers.agreement([list(range(16)) + [7, 7, 7, 7]], reference)["identical_prompts"] == 1
    with pytest.raises(ValueError, match="needs 16 tokens"):
        bench_peers.agreement([list(range(10))], reference)


def test_tokenizer_check_reports_where_ids_differ():
    check = bench_peers.tokenizer_check([[1, 2, 3], [4, 5, 6], [7, 8]], [[1, 2, 3], [4, 9, 6], [7, 8, 9]])
    assert check["identical"] == 1 and check["prompts"] == 3
    assert [m["first_difference"] for m in check["mismatches"]] == [1, 2]
    assert check["mismatches"][1]["llama_cpp_tokens"] == 3


def test_table_has_the_int8_over_llama_cpp_ratio():
    agreed = {"prefix_fraction": 0.75, "identical_prompts": 5, "prompts": 8}
    rows = [row("llama_cpp", 160.0, agreement=agreed), row("tflite_dynamic_int8", 80.0, agreement=agreed),
            row("keras_float32", 16.0)]
    assert bench_peers.decode_ratio(rows) == pytest.approx(0.5)
    table = bench_peers.markdown_table(rows, "keras_float32")
    assert "| **tflite_dynamic_int8** |" in table and "| 80.0 | 0.50x |" in table
    assert table.splitlines()[2].endswith("| 0.75 (5/8 prompts identical) | — |")  # no load figure: a dash
    assert "0.75 (5/8 prompts identical)" in table and "| reference |" in table
    assert "int8 decode tokens/s ÷ llama.cpp decode tokens/s = **0.50**" in table
    assert bench_peers.decode_ratio(rows[1:]) is None  # no llama.cpp row, no ratio


def test_plot_writes_a_png(tmp_path):
    bench_peers.plot([row("llama_cpp", 160.0), row("tflite_dynamic_int8", 80.0)], tmp_path / "peers.png")
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"


def test_timing_protocol_on_a_fake_engine():
    calls = []

    def generate(prompt, n):
        calls.append(n)
        return [(prompt[-1] + i) % 50 for i in range(n)]

    result = generation_timing.time_generation(generate, [[1, 2, 3], [4, 5]], new_tokens=16, repeats=2)
    assert calls == [2, 1, 17, 1, 17, 1, 17, 1, 17]  # warm-up, then TTFT and n + 1 per repeat
    assert [p["tokens"][:3] for p in result["per_prompt"]] == [[3, 4, 5], [5, 6, 7]]
    assert [p["prompt_tokens"] for p in result["per_prompt"]] == [3, 2]
    assert result["other_cpu_cores"] is None or result["other_cpu_cores"] >= 0  # other processes' share, if known


def test_timing_protocol_refuses_an_engine_that_stops_early_or_varies():
    with pytest.raises(generation_timing.GenerationMismatch, match="got 4"):
        generation_timing.time_generation(lambda prompt, n: [0] * min(n, 4), [[1]], new_tokens=16, repeats=1)
    draws = iter(range(1000))
    with pytest.raises(generation_timing.GenerationMismatch, match="differ between repeats"):
        generation_timing.time_generation(lambda prompt, n: [next(draws) for _ in range(n)], [[1]], 16, repeats=2)


def test_fintune_files_prefers_what_the_exporter_ships(tmp_path):
    shipped = tmp_path / "exporter" / "bundles" / "tflite_dynamic_int8"
    for folder in (shipped, tmp_path / "optimizer" / "variants"):
        folder.mkdir(parents=True)
        (folder / "dynamic_int8.tflite").write_bytes(b"")
    (tmp_path / "optimizer" / "variants" / "student.tflite").write_bytes(b"")  # classifies only: not an engine
    (shipped / "tokenizer.json").write_text("{}")
    engines, tokenizer_dir = bench_peers.fintune_files(tmp_path)
    assert engines == {"tflite_dynamic_int8": ("tflite", shipped / "dynamic_int8.tflite")}
    assert tokenizer_dir == shipped
    with pytest.raises(bench_peers.UsageError, match="holds no fintune TFLite file"):
        bench_peers.fintune_files(tmp_path / "exporter" / "nothing-here")


def test_prompts_are_chat_templated_simulated_rows():
    from models.llm.tokenizer import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(["Where is my card? Thanks, my account is 12345678."] * 20, 400)
    prompts = bench_peers.build_prompts(tokenizer, 4096)
    assert len(prompts) == 8
    assert [p["task"] for p in prompts].count("ticket_reply") == 2
    for prompt in prompts:
        assert prompt["text"].startswith("<|im_start|>system\n") and prompt["text"].endswith("<|im_start|>assistant\n")
        assert prompt["ids"] == tokenizer.encode(prompt["text"]) and not prompt["truncated"]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_missing_llama_venv_is_one_sentence_and_exit_2(tmp_path):
    done = run_script("--llama-python", str(tmp_path / "no-venv" / "bin" / "python"), "--out", str(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "llama.cpp virtualenv is missing" in lines[0] and "make bench-peers-venv" in lines[0]


def test_a_python_without_llama_cpp_is_refused_with_exit_2(tmp_path):
    done = run_script("--llama-python", sys.executable, "--out", str(tmp_path))  # fintune's venv: no llama_cpp
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "cannot import llama_cpp" in done.stderr


@pytest.mark.parametrize("flags, message", [(["--new-tokens", "8"], "--new-tokens must be at least 16"),
                                            (["--engines", "llama_cpp,onnx"], "unknown engines ['onnx']"),
                                            (["--model", "/nonexistent/run"], "is not a folder")])
def test_bad_flags_are_one_sentence_and_exit_2(flags, message, capsys):
    assert bench_peers.main(flags) == 2
    assert message in capsys.readouterr().err
