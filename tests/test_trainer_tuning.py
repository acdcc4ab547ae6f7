"""Random-search tuning: seeded, distinct trials, and the best validation macro-F1 wins."""

from __future__ import annotations

import json

import pytest

import pipeline
from components.base import Artifact
from components.runner import ArtifactCache, LocalRunner
from components.trainer.component import TrainerParams, search_trials
from schemas.artifacts import ModelFiles
from tests.conftest import TINY_BASE_MODEL_PARAMS


def test_search_is_seeded_and_starts_from_the_configured_setting():
    p = TrainerParams(steps=10, tune_trials=4, seed=3)
    trials = search_trials(p)
    assert len(trials) == 4 and trials[0] is p
    assert trials == search_trials(TrainerParams(steps=10, tune_trials=4, seed=3))
    settings = {(t.learning_rate, t.lora_rank, t.steps) for t in trials[1:]}
    assert len(settings) == 3
    assert all(t.lora_alpha == 2 * t.lora_rank for t in trials[1:])
    assert search_trials(TrainerParams(tune_trials=1)) == [TrainerParams(tune_trials=1)]


def test_two_trials_train_and_the_best_is_kept(tmp_path, tiny_base_model_dir):
    runs_root = tmp_path / "runs"
    base = Artifact.load(tiny_base_model_dir)
    ArtifactCache(runs_root).store(base.fingerprint, {"model": base})
    flags = [f"base_model.{k}={v}" for k, v in TINY_BASE_MODEL_PARAMS.items()] + [
        "example_gen.num_records=80", "transform.tasks=intent", "trainer.steps=4", "trainer.validate_every=2",
        "trainer.batch_size=4", "trainer.tune_trials=2", "trainer.validation_label_examples=8"]
    params, _ = pipeline.build_params(pipeline.params_classes(), "smoke", None, flags)
    nodes = [n for n in pipeline.build_pipeline() if n.name in ("example_gen", "base_model", "transform", "trainer")]
    result = LocalRunner(nodes, runs_root, log=lambda *_: None).run(runs_root / "r", params)
    assert result.status == "succeeded", result.error
    assert "base_model" in result.cached
    model = result.artifacts["trainer"]["model"]
    trials = json.loads(ModelFiles(model).trials_file.read_text())
    assert [t["trial"] for t in trials] == ["trial-0", "trial-1"]
    best = max(trials, key=lambda t: t["best"]["val_macro_f1"])
    assert model.metrics["val_macro_f1"] == best["best"]["val_macro_f1"]
    assert model.metrics["trials"] == 2
    assert len(list((runs_root / "r" / "tensorboard" / "trainer").iterdir())) == 2  # one hparams run per trial


def test_epochs_size_the_steps_from_the_train_split():
    from components.trainer.component import TrainerParams, sized_from_data

    p = TrainerParams(epochs=2, batch_size=16, validate_every=125)
    assert sized_from_data(p, 7996).steps == 1000 and sized_from_data(p, 7996).total_steps == 1000
    assert sized_from_data(TrainerParams(epochs=0.5, batch_size=16), 7996).steps == 250
    assert sized_from_data(TrainerParams(steps=150), 7996).steps == 150  # epochs 0: steps as given
    assert sized_from_data(TrainerParams(epochs=0.001, batch_size=16), 10).steps == 1
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        TrainerParams(epochs=-1)
