"""The Optimizer's student stage end to end on tiny fixtures: Transform output of the simulated set
(tiny 300-token BPE), the tiny random Llama as teacher, a 1-block student; then bad settings."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from components.student.settings import StudentSettings
from components.student.stage import distill_student
from tests.conftest import TINY_BASE_MODEL_PARAMS

SPARSITY = 0.5
TINY = dict(num_layers=1, hidden_dim=32, num_heads=2, mlp_dim=64, steps=12, batch_size=8, learning_rate=3e-3,
            alphas=[0.5, 0.9], temperatures=[1.0, 2.0], target_sparsity=SPARSITY, pruning_steps=20,
            pruning_frequency=5, qat_steps=4, calibration_examples=16, eval_examples=2, selection_examples=1,
            validation_batches=2, latency_runs=2, num_threads=1)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, tiny_base_model_dir):
    """Transform's datasets folder (ExampleGen + Transform on 200 simulated records), the tiny teacher."""
    from components.base import Artifact
    from components.base_model import BaseModel, BaseModelParams
    from components.example_gen.component import ExampleGen, ExampleGenParams
    from components.runner import ArtifactCache, LocalRunner, Node
    from components.transform.component import Transform, TransformParams
    from models.llm.language_model import load_model

    runs_root = tmp_path_factory.mktemp("student-stage")
    base_model = Artifact.load(tiny_base_model_dir)
    ArtifactCache(runs_root).store(base_model.fingerprint, {"model": base_model})
    nodes = [Node(ExampleGen(), {}), Node(BaseModel(), {}),
             Node(Transform(), {"examples": ("example_gen", "examples"), "base_model": ("base_model", "model")})]
    params = {"example_gen": ExampleGenParams(num_records=200, seed=0),
              "base_model": BaseModelParams(**TINY_BASE_MODEL_PARAMS), "transform": TransformParams()}
    result = LocalRunner(nodes, runs_root, log=lambda message: None).run(runs_root / "run", params)
    assert result.status == "succeeded", result.error
    directory = result.artifacts["transform"]["datasets"].uri
    causal_lm, tokenizer, _ = load_model(tiny_base_model_dir)
    return {"dir": directory, "labels": json.loads((directory / "labels.json").read_text()),
            "causal_lm": causal_lm, "tokenizer": tokenizer}


@pytest.fixture(scope="module")
def stage(datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("student-out")
    lines = []
    variant = distill_student(datasets["causal_lm"], datasets["tokenizer"], datasets["dir"], datasets["labels"], out,
                              StudentSettings(**TINY), log=lines.append)
    return {"variant": variant, "out": out, "report": json.loads((out / "student.json").read_text()), "log": lines}


def test_variant_entry_points_at_a_builtin_only_int8_file_that_loads(stage):
    from ai_edge_litert.interpreter import Interpreter

    from models.export.convert import non_builtin_operators

    variant, path = stage["variant"], stage["out"] / "student.tflite"
    assert {k: variant[k] for k in ("name", "format", "precision", "file", "kind")} == {
        "name": "student_int8", "format": "tflite", "precision": "full_int8", "file": "student.tflite",
        "kind": "student"}
    assert variant["size_bytes"] == path.stat().st_size > 0
    assert non_builtin_operators(path) == []
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = interpreter.get_signature_runner().get_input_details()
    assert {name: list(d["shape_signature"]) for name, d in details.items()} == {
        "token_ids": [1, -1], "positions": [1, -1], "attention_mask": [1, -1, -1]}  # each request its own length
    assert {d["dtype"] for d in details.values()} == {np.int32}
    target = interpreter.get_output_details()[0]
    assert target["dtype"] == np.int8 and list(target["shape_signature"])[1:] == [-1, len(variant["output_tokens"])]
    assert variant["input"]["max_length"] >= variant["input"]["max_prompt_tokens"] + variant["input"]["nodes"]
    assert json.loads(json.dumps(variant)) == variant  # the Optimizer writes it into variants.json


def test_quality_is_measured_on_real_predictions_of_the_same_rows(stage, datasets):
    """Re-score the int8 file independently on the evaluator's sample of the test split: same figures."""
    from components.common.metrics import overall_metrics, sample_label_rows
    from models.scoring.constrained import LabelTrie
    from models.student.compression import tflite_student_fn
    from models.student.model import StudentScorer

    quality, variant, report = stage["variant"]["quality"], stage["variant"], stage["report"]
    rows = sample_label_rows(pd.read_parquet(datasets["dir"] / "test.parquet"), TINY["eval_examples"], 0)
    assert quality["examples"] == len(rows) == 2 * len(datasets["labels"])
    scorer = StudentScorer(tflite_student_fn(stage["out"] / "student.tflite"), variant["output_tokens"],
                           variant["input"]["max_length"])
    predictions = [None] * len(rows)
    for task, group in rows.groupby("task"):
        trie = LabelTrie(datasets["labels"][task], datasets["tokenizer"])
        found = scorer.classify([list(p) for p in group["prompt_ids"]], trie)
        for index, prediction in zip(group.index, found):
            predictions[index] = prediction
    expected = overall_metrics(rows, predictions)
    assert quality["accuracy"] == pytest.approx(expected["accuracy"])
    assert quality["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert 0 <= quality["accuracy"] <= 1 and 0 <= quality["label_agreement"] <= 1
    assert math.isfinite(quality["answer_perplexity"]) and quality["answer_perplexity"] > 1
    assert report["teacher"]["quality"]["label_agreement"] == 1.0  # agreement is measured against the teacher
    for name in ("float", "pruned", "int8"):
        entry = report["stages"][name]
        assert entry["quality"]["examples"] == len(rows)
        assert entry["request_ms"] > 0


def test_alpha_and_temperature_are_chosen_on_validation_from_the_grid(stage):
    report = stage["report"]
    grid = report["grid"]
    assert [(g["alpha"], g["temperature"]) for g in grid] == [(a, t) for a in TINY["alphas"]
                                                              for t in TINY["temperatures"]]
    best = min(grid, key=lambda g: (-g["validation_macro_f1"], g["validation_answer_loss"]))
    assert (report["chosen"]["alpha"], report["chosen"]["temperature"]) == (best["alpha"], best["temperature"])
    for entry in grid:
        assert math.isfinite(entry["validation_answer_loss"]) and 0 <= entry["validation_macro_f1"] <= 1
        assert entry["train_loss_last"] < entry["train_loss_first"]  # the students learnt something
    assert report["teacher"]["answer_tokens"] > 0 and 0 < report["teacher"]["answer_mass"] <= 1 + 1e-6
    assert report["teacher"]["skipped_rows"] > 0  # the ticket replies are not the student's task


def test_pruning_reaches_the_target_and_survives_into_the_int8_file(stage):
    report = stage["report"]
    zeros, stages = report["zero_fractions"], report["stages"]
    assert zeros["float"]["overall"] < 0.01
    for layer, fraction in zeros["pruned"]["layers"].items():
        assert fraction == pytest.approx(SPARSITY, abs=0.01), layer
    assert zeros["qat"]["overall"] == pytest.approx(SPARSITY, abs=0.01)
    assert zeros["int8"]["overall"] >= SPARSITY - 0.01
    assert stages["pruned"]["zero_fraction"] == zeros["pruned"]["overall"]
    assert stages["pruned"]["gzipped_bytes"] < 0.8 * stages["float"]["gzipped_bytes"]  # zeros compress
    assert zeros["int8"]["weights"] == zeros["pruned"]["weights"]  # every Dense/Embedding weight is int8 in the file
    assert report["calibration_examples"] == TINY["calibration_examples"]
    assert report["student"]["parameters"] == stages["float"]["size_bytes"] // 4


class PoisonedTeacher:
    """A teacher with the real vocabulary that fails the test if anything calls it."""

    def __init__(self, causal_lm):
        self.backbone = causal_lm.backbone

    def __call__(self, *args, **kwargs):
        raise AssertionError("the teacher ran before the settings were checked")


@pytest.fixture
def no_training(monkeypatch):
    """Every training entry point fails the test if it runs."""
    import models.student.compression
    import models.student.distillation
    import models.student.model

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the settings were checked")

    for module, name in ((models.student.distillation, "answer_soft_targets"), (models.student.distillation, "distill"),
                         (models.student.model, "build_student"), (models.student.compression, "prune"),
                         (models.student.compression, "quantization_aware")):
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.parametrize("changes, message", [
    ({"pruning_steps": 4, "pruning_frequency": 5}, "target sparsity 50% is unreachable"),
    ({"max_length": 64}, "do not fit the student's max_length 64"),
    ({"hidden_dim": 60, "num_heads": 8}, "must split into 8 heads"),
])
def test_bad_student_settings_are_refused_before_any_training(datasets, tmp_path, no_training, changes, message):
    settings = StudentSettings(**{**TINY, **changes})
    with pytest.raises(ValueError, match=message):
        distill_student(PoisonedTeacher(datasets["causal_lm"]), datasets["tokenizer"], datasets["dir"],
                        datasets["labels"], tmp_path / "out", settings, log=lambda message: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, message", [
    ({"target_sparsity": 1.0}, r"target_sparsity must be in \[0, 1\)"),
    ({"alphas": [0.5, 1.5]}, "alphas must be"),
    ({"temperatures": []}, "temperatures must be"),
    ({"qat_steps": 0}, "at least 1"),
    ({"select_on": "accuracy"}, "select_on must be one of"),
    ({"selection_examples": 0}, "needs selection_examples"),
])
def test_settings_validate_on_construction(changes, message):
    with pytest.raises(ValueError, match=message):
        StudentSettings(**{**TINY, **changes})


def test_an_operator_that_is_not_an_int8_builtin_fails_the_conversion_loudly(monkeypatch, tmp_path):
    import types

    import models.export.convert
    import models.student.compression
    from components.student.stage import StudentExportError, convert_int8

    plan = types.SimpleNamespace(calibration=[])
    monkeypatch.setattr(models.student.compression, "to_full_integer_tflite", lambda *args: b"flatbuffer")
    monkeypatch.setattr(models.export.convert, "non_builtin_operators", lambda path: ["custom:FlexErfinv"])
    with pytest.raises(StudentExportError, match=r"needs non-builtin operators \['custom:FlexErfinv'\]"):
        convert_int8(None, plan, tmp_path / "student.tflite")

    def refuse(*args):
        raise RuntimeError("could not convert\nOps that need custom implementation: Erfinv")

    monkeypatch.setattr(models.student.compression, "to_full_integer_tflite", refuse)
    with pytest.raises(StudentExportError, match="builtin int8 ops only.*custom implementation: Erfinv"):
        convert_int8(None, plan, tmp_path / "other.tflite")
