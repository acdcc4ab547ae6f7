"""The whole pipeline on the smoke profile, end to end, through the CLI — then again, all cached."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from components.base import load_run_record
from tests.helpers import run_cli

COMPONENTS = ["example_gen", "base_model", "transform", "trainer", "evaluator", "optimizer", "exporter",
              "benchmark"]
FAST = ["--set", "example_gen.num_records=200", "--set", "trainer.steps=12", "--set", "trainer.validate_every=6",
        "--set", "evaluator.max_examples=12", "--set", "benchmark.max_examples=4", "--set", "benchmark.repeats=1"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    serving = root / "serving"
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_cli(monkeypatch, "--runs-root", str(root / "runs"), "run", "--profile", "smoke",
                       "--run-dir", str(root / "runs" / "first"), "--set", f"exporter.serving_dir={serving}", *FAST)
    return root, serving, code


def test_every_component_runs_for_real(smoke_run):
    root, _, code = smoke_run
    assert code == 0, (root / "runs" / "first" / "error.log").read_text() if code else ""
    record = load_run_record(root / "runs" / "first")
    assert record["status"] == "succeeded"
    assert [name for name, c in record["components"].items() if c["status"] == "done"] == COMPONENTS


def test_evaluator_reports_real_headline_metrics(smoke_run):
    root, _, _ = smoke_run
    evaluation = root / "runs" / "first" / "evaluator" / "evaluation"
    metrics = json.loads((evaluation / "artifact.json").read_text())["metrics"]
    for key in ("accuracy", "macro_f1", "perplexity", "base_accuracy", "base_macro_f1", "base_perplexity"):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["accuracy"] <= 1 and metrics["perplexity"] > 1
    predictions = [json.loads(line) for line in (evaluation / "predictions.jsonl").read_text().splitlines()]
    labels = json.loads((evaluation / "labels.json").read_text())
    assert all(p["after"] in labels[p["task"]] and p["before"] in labels[p["task"]] for p in predictions)
    report = (evaluation / "report.md").read_text()
    assert "| metric | base | fine-tuned |" in report and "| task | input | gold | before | after |" in report


def test_trainer_writes_tensorboard_events_and_history(smoke_run):
    root, _, _ = smoke_run
    events = list((root / "runs" / "first" / "tensorboard" / "trainer").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    history = json.loads((root / "runs" / "first" / "trainer" / "model" / "training_history.json").read_text())
    assert [h["step"] for h in history] == [6, 12]


def test_bundles_have_verified_manifests_and_the_benchmark_covers_every_variant(smoke_run):
    root, serving, _ = smoke_run
    bundles = root / "runs" / "first" / "exporter" / "bundles"
    names = sorted(p.name for p in bundles.iterdir() if p.is_dir())
    assert names == ["saved_model_float32", "tflite_dynamic_int8", "tflite_float32"]
    for bundle in bundles.iterdir():
        if not bundle.is_dir():
            continue
        manifest = json.loads((bundle / "manifest.json").read_text())["files"]
        assert {"tokenizer.json", "labels.json", "model_card.md"} <= set(manifest)
        for name, entry in manifest.items():
            assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == entry["sha256"]
    report = json.loads((root / "runs" / "first" / "benchmark" / "report" / "benchmark.json").read_text())
    assert {r["name"] for r in report} == {"keras_float32", "tflite_float32", "tflite_dynamic_int8"}
    for row in report:
        assert row["size_bytes"] > 0 and row["latency_p50_ms"] > 0 and 0 <= row["accuracy"] <= 1
    sizes = {r["name"]: r["size_bytes"] for r in report}
    assert sizes["tflite_dynamic_int8"] < sizes["tflite_float32"]
    blessed = json.loads((root / "runs" / "first" / "evaluator" / "evaluation" / "blessing.json").read_text())
    pushed = list((serving / "fintune-classifier").glob("*/saved_model.pb")) if serving.exists() else []
    assert bool(pushed) == blessed["blessed"]


def test_second_identical_run_is_all_cache_hits(smoke_run, monkeypatch, capsys):
    root, serving, _ = smoke_run
    code = run_cli(monkeypatch, "--runs-root", str(root / "runs"), "run", "--profile", "smoke",
                   "--run-dir", str(root / "runs" / "second"), "--set", f"exporter.serving_dir={serving}", *FAST)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == 0, output
    record = load_run_record(root / "runs" / "second")
    assert {name: c["status"] for name, c in record["components"].items()} == {n: "cached" for n in COMPONENTS}
    assert "executed 0, cached 8" in output
    assert "tensorboard --logdir" in output


def test_summary_paths_exist(smoke_run):
    root, _, _ = smoke_run
    record = load_run_record(root / "runs" / "first")
    for component in record["components"].values():
        for uri in component["artifacts"].values():
            assert Path(uri, "artifact.json").exists()


def test_generate_answers_with_the_fine_tuned_model_of_a_run(smoke_run, monkeypatch, capsys):
    root, _, _ = smoke_run
    code = run_cli(monkeypatch, "--runs-root", str(root / "runs"), "generate", "--run", "first",
                   "--max-new-tokens", "5", "my card has not arrived")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # The CLI answers with the run's fine-tuned model (greedy, so reproducible); the real model's
    # answers are checked in test_smollm2_real.py.
    from models.chat import respond
    from models.language_model import load_model

    causal_lm, tokenizer, _ = load_model(root / "runs" / "first" / "trainer" / "model")
    expected = respond(causal_lm, tokenizer, "my card has not arrived", max_new_tokens=5)
    assert captured.out == expected + "\n"
    code = run_cli(monkeypatch, "--runs-root", str(root / "runs"), "generate", "--run", "nope", "hi")
    assert code == 2 and "no run 'nope'" in capsys.readouterr().err
