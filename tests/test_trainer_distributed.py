"""The Trainer under MultiWorkerMirroredStrategy: two CPU workers over loopback (TF_CONFIG) train the same
LoRA weights and validation losses as one process (distribution=none, Keras fit) with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline
from components.base import Artifact
from components.runner import ArtifactCache, LocalRunner, fingerprint_of
from components.trainer.cluster import free_loopback_ports
from components.trainer.component import Trainer, TrainerParams
from models.llm.language_model import load_model
from schemas.artifacts import ModelFiles
from tests.conftest import TINY_BASE_MODEL_PARAMS

REPO = Path(__file__).resolve().parents[1]
FLAGS = [f"base_model.{k}={v}" for k, v in TINY_BASE_MODEL_PARAMS.items()] + [
    "example_gen.num_records=80", "transform.tasks=intent", "trainer.steps=6", "trainer.validate_every=3",
    "trainer.batch_size=4", "trainer.validation_label_examples=4", "trainer.max_validation_batches=3",
    "trainer.early_stopping_patience=0", "trainer.learning_rate=1e-2", "trainer.lora_rank=2"]


def set_args(flags):
    return [arg for flag in flags for arg in ("--set", flag)]


def logits(model_dir: Path) -> np.ndarray:
    model, tokenizer, _ = load_model(model_dir)
    ids = np.array([tokenizer.encode("<|im_start|>user\nmy card has not arrived<|im_end|>\n")], dtype="int32")
    return np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))


def test_two_loopback_workers_train_what_one_process_trains(tmp_path, tiny_base_model_dir):
    runs_root = tmp_path / "runs"
    base = Artifact.load(tiny_base_model_dir)
    ArtifactCache(runs_root).store(base.fingerprint, {"model": base})
    params, _ = pipeline.build_params(pipeline.params_classes(), "smoke", None, FLAGS)
    nodes = [n for n in pipeline.build_pipeline() if n.name in ("example_gen", "base_model", "transform", "trainer")]
    single = LocalRunner(nodes, runs_root, log=lambda *_: None).run(runs_root / "single", params)
    assert single.status == "succeeded", single.error

    ports = free_loopback_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    settings = ["--profile", "smoke", "--run-dir", str(runs_root / "two"),
                *set_args([*FLAGS, "trainer.distribution=multi_worker"])]
    commands = [[sys.executable, str(REPO / "pipeline.py"), "--runs-root", str(runs_root), "run", "--only", "trainer",
                 *settings],
                [sys.executable, str(REPO / "pipeline.py"), "--runs-root", str(runs_root), "worker", *settings]]
    processes = []
    for index, command in enumerate(commands):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "PYTHONUNBUFFERED": "1"}
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "multi_worker: 2 replicas, 2 examples each per step" in outputs[0]
    assert "worker: done" in outputs[1]

    one = single.artifacts["trainer"]["model"].uri
    two = runs_root / "two" / "trainer" / "model"
    history = [ModelFiles(d).training_history() for d in (one, two)]
    assert [h["step"] for h in history[0]] == [h["step"] for h in history[1]] == [3, 6]
    for a, b in zip(*history):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 * max(1.0, abs(a["train_loss"]))
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-4 * max(1.0, abs(a["val_loss"]))
    assert history[0][0]["val_loss"] - history[0][-1]["val_loss"] > 1e-3  # it trained: the weights moved
    np.testing.assert_allclose(logits(two), logits(one), atol=1e-4, rtol=1e-4)

    # mirrored on this CPU-only machine is one replica: the same custom loop, in-process, still equals fit.
    mirrored_params, _ = pipeline.build_params(pipeline.params_classes(), "smoke", None,
                                               [*FLAGS, "trainer.distribution=mirrored"])
    mirrored = LocalRunner(nodes, runs_root, log=lambda *_: None).run(runs_root / "mirrored", mirrored_params)
    assert mirrored.status == "succeeded", mirrored.error
    np.testing.assert_allclose(logits(mirrored.artifacts["trainer"]["model"].uri), logits(one), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tf_config, command, message", [
    (None, "run", "trainer.distribution=multi_worker needs TF_CONFIG"),
    ("{not json", "run", "TF_CONFIG is not a cluster and task description"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}), "run",
     "TF_CONFIG's task worker:3 is not in its cluster"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}),
     "run", "not the chief; start it with `pipeline.py worker`"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}),
     "worker", "TF_CONFIG makes this process the chief"),
])
def test_cluster_usage_errors_exit_2(monkeypatch, capsys, tmp_path, tf_config, command, message):
    from tests.helpers import run_cli

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    extra = ["--run-dir", str(tmp_path / "run")]
    code = run_cli(monkeypatch, "--runs-root", str(tmp_path), command, "--profile", "smoke", *extra,
                   "--set", "trainer.distribution=multi_worker")
    assert code == 2
    assert message in capsys.readouterr().err


def test_default_distribution_leaves_the_fingerprint_as_it_was():
    """distribution=none is not hashed: the params part equals the parameters as they were before the field."""
    trainer, default = Trainer(), TrainerParams()
    hashed = trainer.fingerprint_parameters(default)
    assert "distribution" not in hashed
    from dataclasses import asdict

    assert hashed == {k: v for k, v in asdict(default).items() if k != "distribution"}
    other = TrainerParams(distribution="multi_worker")
    assert trainer.fingerprint_parameters(other)["distribution"] == "multi_worker"
    inputs = {"datasets": "a", "base_model": "b"}
    assert fingerprint_of(trainer, default, inputs) != fingerprint_of(trainer, other, inputs)
