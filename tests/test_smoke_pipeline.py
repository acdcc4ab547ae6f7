"""The whole pipeline on the smoke profile, end to end, through the CLI — then again, all cached."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from ai_edge_litert.interpreter import Interpreter

from components.base import ARTIFACT_FILE
from components.runner import load_run_record
from models.export.convert import ALL_ENDPOINTS, non_builtin_operators
from schemas.artifacts import (
    BenchmarkFiles,
    BundleFiles,
    BundlesFiles,
    DatasetsFiles,
    EvaluationFiles,
    ModelFiles,
    VariantsFiles,
)
from tests.helpers import SMOKE_FAST as FAST
from tests.helpers import run_cli

COMPONENTS = ["example_gen", "base_model", "transform", "base_evaluator", "trainer", "evaluator", "optimizer",
              "student", "exporter", "benchmark"]


def test_every_component_runs_for_real(smoke_run):
    root, _, code = smoke_run
    assert code == 0, (root / "runs" / "first" / "error.log").read_text() if code else ""
    record = load_run_record(root / "runs" / "first")
    assert record["status"] == "succeeded"
    assert [name for name, c in record["components"].items() if c["status"] == "done"] == COMPONENTS


def test_evaluator_reports_real_headline_metrics(smoke_run):
    root, _, _ = smoke_run
    evaluation = EvaluationFiles(root / "runs" / "first" / "evaluator" / "evaluation")
    metrics = json.loads(evaluation.file(ARTIFACT_FILE).read_text())["metrics"]
    for key in ("accuracy", "macro_f1", "perplexity", "base_accuracy", "base_macro_f1", "base_perplexity"):
        assert math.isfinite(metrics[key]), key
    assert metrics["perplexity"] > 1
    predictions = evaluation.predictions()
    # The headline accuracies are the task-averaged share of right answers in the predictions file.
    for key, column in (("accuracy", "after"), ("base_accuracy", "before")):
        by_task: dict[str, list[bool]] = {}
        for p in predictions:
            by_task.setdefault(p["task"], []).append(p[column] == p["target"])
        assert metrics[key] == pytest.approx(sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)), key
    labels = evaluation.labels()
    assert all(p["after"] in labels[p["task"]] and p["before"] in labels[p["task"]] for p in predictions)
    report = evaluation.report_file.read_text()
    assert "| metric | base | fine-tuned |" in report and "| task | input | gold | before | after |" in report


def test_trainer_writes_tensorboard_events_and_history(smoke_run):
    root, _, _ = smoke_run
    events = list((root / "runs" / "first" / "tensorboard" / "trainer").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    history = ModelFiles(root / "runs" / "first" / "trainer" / "model").training_history()
    assert [h["step"] for h in history] == [6, 12]


def test_bundles_have_verified_manifests_and_the_benchmark_covers_every_variant(smoke_run):
    root, serving, _ = smoke_run
    bundles = root / "runs" / "first" / "exporter" / "bundles"
    names = sorted(p.name for p in bundles.iterdir() if p.is_dir())
    document = VariantsFiles(root / "runs" / "first" / "optimizer" / "variants").manifest()
    assert [v["name"] for v in document["variants"]] == ["tflite_float32", "tflite_dynamic_int8", "saved_model_int8"]
    assert set(document["seconds"]) == {"plan", "saved_model", "convert_float32", "measure_float32",
                                        "convert_dynamic_int8", "measure_dynamic_int8", "keras_int8", "total"}
    students = VariantsFiles(root / "runs" / "first" / "student" / "student").manifest()
    assert [v["name"] for v in students["variants"]] == ["student_int8"]
    # The SavedModel always ships; the compression gate decides for the others.
    assert names == sorted(["saved_model_float32"] + [v["name"] for v in document["variants"] + students["variants"]
                                                      if v["gate"]["eligible"]])
    for bundle in bundles.iterdir():
        if not bundle.is_dir():
            continue
        manifest = BundleFiles(bundle).manifest()["files"]
        assert {"tokenizer.json", "labels.json", "model_card.md"} <= set(manifest)
        for name, entry in manifest.items():
            assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == entry["sha256"]
    benchmark = BenchmarkFiles(root / "runs" / "first" / "benchmark" / "report")
    report = benchmark.results()
    assert {r["name"] for r in report} == {"keras_float32", "saved_model_float32", "tflite_float32",
                                           "tflite_dynamic_int8", "saved_model_int8", "student_int8"}
    for row in report:
        assert row["size_bytes"] > 0 and row["latency_p50_ms"] > 0 and 0 <= row["accuracy"] <= 1
        assert row["examples_per_s_batch8"] > 0 and row["peak_rss_mb"] > 100
        assert (row["decode_tokens_per_s"] is None) == (row["name"] == "student_int8")  # the student only classifies
        assert row["decode_tokens_per_s"] is None or row["decode_tokens_per_s"] > 0
    # Every float variant scores the same labels as the Keras model -- measured through the variant: on the
    # Benchmark's timed sample, and (TFLite) on the Evaluator's test rows in the Optimizer.
    by_name = {r["name"]: r for r in report}
    sample = {name: r["sample_accuracy"] for name, r in by_name.items()}
    assert sample["saved_model_float32"] == sample["tflite_float32"] == sample["keras_float32"]
    evaluation = EvaluationFiles(root / "runs" / "first" / "evaluator" / "evaluation")
    evaluated = evaluation.metrics()
    keras, tflite = by_name["keras_float32"], by_name["tflite_float32"]
    assert keras["quality_examples"] == tflite["quality_examples"] == sum(
        m["examples"] for m in evaluated["tuned"]["per_task"].values())
    assert keras["accuracy"] == pytest.approx(evaluated["headline"]["accuracy"])
    assert tflite["accuracy"] == keras["accuracy"] and tflite["label_agreement"] == 1.0
    assert tflite["answer_perplexity"] == pytest.approx(keras["answer_perplexity"], rel=1e-4)
    assert 0 <= by_name["tflite_dynamic_int8"]["label_agreement"] <= 1
    # Every exported teacher file has decode_batch (8 rows): its greedy tokens are checked against decode's,
    # and the Benchmark times generations one by one and batched; the student and Keras have no such figure.
    assert document["cache"]["decode_rows"] == 8 and len(document["cache"]["prompt_buckets"]) == 2
    int8_file = root / "runs" / "first" / "optimizer" / "variants" / "dynamic_int8.tflite"
    signatures = set(Interpreter(model_path=str(int8_file)).get_signature_list())
    assert signatures == set(ALL_ENDPOINTS) | {"decode_batch"} | {
        f"{base}_{n}" for base in ("prefill", "score_labels") for n in document["cache"]["prompt_buckets"]}
    assert "`decode_batch`" in BundleFiles(bundles / "saved_model_float32").model_card_file.read_text()
    generation = {v["name"]: v["batched_generation"] for v in document["variants"]}
    assert generation["tflite_float32"]["identical"] == 1.0 and generation["tflite_float32"]["rows"] == 8
    assert 0 <= generation["tflite_dynamic_int8"]["identical"] <= 1
    for name, row in by_name.items():
        batched = name not in ("keras_float32", "student_int8")
        assert (row.get("generations_per_s_batched") is not None) == batched, name
        assert not batched or row["generations_per_s_batched"] > 0 < row["generations_per_s_batch1"]
    # Keras's own int8 quantisation, exported as a SavedModel: measured through the SavedModel, int8 weights inside.
    keras_int8 = next(v for v in document["variants"] if v["name"] == "saved_model_int8")
    assert keras_int8["quality"]["examples"] == tflite["quality_examples"]
    assert 0 < keras_int8["check_vs_keras"]["max_abs_diff"] < 1 and keras_int8["check_vs_keras"]["top1_agreement"] > 0.8
    # The distilled student: full-int8, measured on the same rows, judged against the student budget.
    (student,) = students["variants"]
    assert student["gate"]["kind"] == "student" and student["gate"]["allowed_points"] == 5.0
    assert student["quality"]["examples"] == tflite["quality_examples"]
    assert students["keras_quality"] == document["keras_quality"]  # judged against the same baseline, same rows
    assert by_name["student_int8"]["format"] == "student_tflite" and by_name["student_int8"]["size_bytes"] > 0
    report_md = benchmark.markdown_file.read_text()
    assert "| student_int8 | " + ("yes" if student["gate"]["eligible"] else "no") in report_md
    for path in bundles.glob("tflite_*/*.tflite"):
        assert non_builtin_operators(path) == [], path
    sizes = {r["name"]: r["size_bytes"] for r in report}
    assert sizes["tflite_dynamic_int8"] < sizes["tflite_float32"]
    blessed = evaluation.blessing()
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
    assert f"executed 0, cached {len(COMPONENTS)}" in output
    assert "tensorboard --logdir" in output


def test_summary_paths_exist(smoke_run):
    root, _, _ = smoke_run
    record = load_run_record(root / "runs" / "first")
    for component in record["components"].values():
        for uri in component["artifacts"].values():
            assert Path(uri, ARTIFACT_FILE).exists()


def test_generate_answers_with_the_fine_tuned_model_of_a_run(smoke_run, monkeypatch, capsys):
    root, _, _ = smoke_run
    code = run_cli(monkeypatch, "--runs-root", str(root / "runs"), "generate", "--run", "first",
                   "--max-new-tokens", "5", "my card has not arrived")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # The CLI answers with the run's fine-tuned model (greedy, so reproducible); the real model's
    # answers are checked in test_smollm2_real.py.
    from models.llm.chat import respond
    from models.llm.language_model import load_model

    causal_lm, tokenizer, _ = load_model(root / "runs" / "first" / "trainer" / "model")
    expected = respond(causal_lm, tokenizer, "my card has not arrived", max_new_tokens=5)
    assert captured.out == expected + "\n"
    code = run_cli(monkeypatch, "--runs-root", str(root / "runs"), "generate", "--run", "nope", "hi")
    assert code == 2 and "no run 'nope'" in capsys.readouterr().err


def evaluate_with_test_split(run: Path, tmp_path: Path, edit, **params) -> tuple[dict, Path]:
    """Run the Evaluator on the smoke run's models with an edited copy of its test split."""
    import shutil

    import pandas as pd

    from components.base import Artifact, ExecutionContext
    from components.evaluator.baseline import BaseEvaluator
    from components.evaluator.component import Evaluator, EvaluatorParams

    datasets = tmp_path / "datasets"
    shutil.copytree(run / "transform" / "datasets", datasets)
    test_split = DatasetsFiles(datasets).split_table("test")
    edit(pd.read_parquet(test_split)).to_parquet(test_split, index=False)
    p = EvaluatorParams(max_examples=0, perplexity_batches=1, unconstrained_examples=2, **params)
    base_out, out = tmp_path / "base_evaluation", tmp_path / "evaluation"
    base_out.mkdir()
    out.mkdir()
    base_inputs = {"datasets": Artifact.load(datasets), "base_model": Artifact.load(run / "base_model" / "model")}
    BaseEvaluator().execute(ExecutionContext(BaseEvaluator(), p, base_inputs, tmp_path,
                                             {"base_evaluation": base_out}, log=lambda *_: None))
    base_evaluation = Artifact(type="BaseEvaluation", uri=base_out, producer="base_evaluator", fingerprint="edited")
    inputs = {"datasets": Artifact.load(datasets), "model": Artifact.load(run / "trainer" / "model"),
              "base_evaluation": base_evaluation}
    ctx = ExecutionContext(Evaluator(), p, inputs, tmp_path, {"evaluation": out}, log=lambda *_: None)
    return Evaluator().execute(ctx)["evaluation"], out


def test_evaluator_counts_unseen_gold_labels_as_errors_and_reports_them(smoke_run, tmp_path):
    root, _, _ = smoke_run

    def unseen(test):
        rows = test.index[test["task"] == "ticket_priority"][:3]
        test.loc[rows, "target"] = "not_a_trained_label"
        return test

    metrics, out = evaluate_with_test_split(root / "runs" / "first", tmp_path, unseen, base_shots=2, top_k=2)
    assert metrics["unknown_gold_labels"] == 3
    evaluation = EvaluationFiles(out)
    predictions = evaluation.predictions()
    assert sum(p["target"] == "not_a_trained_label" for p in predictions) == 3  # scored, not dropped
    assert all(p["after"] != "not_a_trained_label" for p in predictions)
    report = evaluation.report_file.read_text()
    assert "unseen in training (counted as errors): 3" in report and "Base model prompt: 2-shot" in report
    saved = evaluation.metrics()
    assert "top2_accuracy" in saved["tuned"]["per_task"]["ticket_priority"]
    # The invalid-output rate is the task-averaged share of the listed invalid answers (2 examples a task).
    tuned = saved["unconstrained"]["tuned"]
    assert tuned["examples"] == 2 * len(tuned["per_task"])
    assert tuned["per_task"] == {task: sum(x["task"] == task for x in tuned["invalid_examples"]) / 2
                                 for task in tuned["per_task"]}
    assert tuned["invalid_output_rate"] == pytest.approx(sum(tuned["per_task"].values()) / len(tuned["per_task"]))


def test_evaluator_refuses_a_test_split_without_label_examples(smoke_run, tmp_path):
    from components.base import PipelineError

    root, _, _ = smoke_run
    with pytest.raises(PipelineError, match="no label-task examples"):
        evaluate_with_test_split(root / "runs" / "first", tmp_path, lambda t: t[t["task"] == "ticket_reply"])


def test_evaluator_alone_without_a_trained_model_is_a_clear_usage_error(tmp_path, monkeypatch, capsys):
    code = run_cli(monkeypatch, "--runs-root", str(tmp_path / "runs"), "run", "--profile", "smoke",
                   "--only", "evaluator")
    assert code == 2
    err = capsys.readouterr().err
    assert "--only evaluator needs the output of" in err and "Traceback" not in err


def test_the_compression_gate_keeps_a_variant_over_budget_out_of_the_bundles(smoke_run, tmp_path):
    """The Exporter bundles only variants the compression gate found eligible, and says why the others are out."""
    import shutil

    from components.base import Artifact, ExecutionContext
    from components.exporter.component import Exporter, ExporterParams

    root, _, _ = smoke_run
    first = root / "runs" / "first"
    variants_dir, student_dir = tmp_path / "variants", tmp_path / "student"
    shutil.copytree(first / "optimizer" / "variants", variants_dir)
    shutil.copytree(first / "student" / "student", student_dir)
    variants, student_files = VariantsFiles(variants_dir), VariantsFiles(student_dir)
    document, students = variants.manifest(), student_files.manifest()
    assert all(v["gate"]["allowed_points"] == {"ptq": 2.0, "student": 5.0}[v["gate"]["kind"]]
               for v in document["variants"] + students["variants"])
    int8 = next(v for v in document["variants"] if v["name"] == "tflite_dynamic_int8")
    int8["gate"].update(eligible=False, reason="macro-F1 dropped 9.0 points, over the ptq budget of 2")
    (student,) = students["variants"]
    student["gate"].update(eligible=True, reason="forced eligible to check its bundle")
    variants.manifest_file.write_text(json.dumps(document))
    student_files.manifest_file.write_text(json.dumps(students))
    inputs = {"variants": Artifact.load(variants_dir), "student": Artifact.load(student_dir),
              "model": Artifact.load(first / "trainer" / "model"),
              "evaluation": Artifact.load(first / "evaluator" / "evaluation")}
    out = tmp_path / "bundles"
    out.mkdir()
    exporter = Exporter()
    ctx = ExecutionContext(exporter, ExporterParams(push=False), inputs, tmp_path, {"bundles": out},
                           log=lambda *_: None)
    result = exporter.execute(ctx)
    kept = [v["name"] for v in document["variants"] + students["variants"] if v["gate"]["eligible"]]
    assert "tflite_dynamic_int8" not in kept
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(["saved_model_float32"] + kept)
    assert result["bundles"]["excluded"] == ["tflite_dynamic_int8"]
    assert "9.0 points" in json.loads(BundlesFiles(out).excluded_file.read_text())["tflite_dynamic_int8"]
    # The student's bundle: its int8 file, its report and its own input shapes and answer vocabulary.
    bundle = out / "student_int8"
    assert {"student.tflite", "student.json", "shapes.json", "model_card.md"} <= {p.name for p in bundle.iterdir()}
    shapes = BundleFiles(bundle).shapes()["student"]
    assert shapes["output_tokens"] == student["output_tokens"] and shapes["nodes"] == student["input"]["nodes"]
    assert "StudentScorer" in BundleFiles(bundle).model_card_file.read_text()


def test_a_disabled_student_is_recorded_and_nothing_of_it_is_bundled(smoke_run, tmp_path):
    """student.enabled=false: the component says so in its artifact; the Exporter bundles the rest."""
    from components.base import Artifact, ExecutionContext
    from components.exporter.component import Exporter, ExporterParams
    from components.student.component import Student
    from components.student.settings import StudentSettings

    root, _, _ = smoke_run
    first = root / "runs" / "first"
    student_dir, out = tmp_path / "student", tmp_path / "bundles"
    student_dir.mkdir()
    out.mkdir()
    inputs = {name: Artifact.load(first / path) for name, path in (
        ("model", "trainer/model"), ("datasets", "transform/datasets"), ("evaluation", "evaluator/evaluation"))}
    lines = []
    result = Student().execute(ExecutionContext(Student(), StudentSettings(enabled=False), inputs, tmp_path,
                                                {"student": student_dir}, log=lines.append))
    assert result == {"student": {"enabled": False}} and any("skipped" in line for line in lines)
    assert VariantsFiles(student_dir).manifest() == {"enabled": False, "variants": []}
    (student_dir / "artifact.json").write_text((first / "student" / "student" / "artifact.json").read_text())
    inputs = {"variants": Artifact.load(first / "optimizer" / "variants"), "student": Artifact.load(student_dir),
              "model": inputs["model"], "evaluation": inputs["evaluation"]}
    Exporter().execute(ExecutionContext(Exporter(), ExporterParams(push=False), inputs, tmp_path, {"bundles": out},
                                        log=lambda *_: None))
    bundled = {p.name for p in out.iterdir() if p.is_dir()}
    assert "student_int8" not in bundled and "saved_model_float32" in bundled
