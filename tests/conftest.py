"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

TINY_BASE_MODEL_PARAMS = {"source": "tiny-random", "vocabulary_size": 300, "tokenizer_corpus_records": 200}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """(root, serving dir, exit code) of the suite's one smoke pipeline run, `root/runs/first`.

    Session-wide so the pipeline tests and the serving tests share it. Tests must not change it; copy what
    they edit.
    """
    from tests.helpers import SMOKE_FAST, run_cli

    root = tmp_path_factory.mktemp("smoke")
    serving = root / "serving"
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_cli(monkeypatch, "--runs-root", str(root / "runs"), "run", "--profile", "smoke",
                       "--run-dir", str(root / "runs" / "first"), "--set", f"exporter.serving_dir={serving}",
                       *SMOKE_FAST)
    return root, serving, code


@pytest.fixture(scope="session")
def serving_model_base(smoke_run, tmp_path_factory) -> Path:
    """A TF Serving base path built from the smoke run's bundles (see `tests.helpers.serving_model_base`)."""
    from tests.helpers import serving_model_base

    root, _, code = smoke_run
    if code != 0:
        pytest.fail("the smoke run failed; see test_smoke_pipeline.py")
    return serving_model_base(root / "runs" / "first", tmp_path_factory.mktemp("serving") / "models")


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    """A BaseModel artifact folder (tiny random Llama, 300-token BPE), built once per session.

    `components.base.Artifact.load(tiny_base_model_dir)` gives the artifact (with its
    fingerprint); `ArtifactCache(runs_root).store(artifact.fingerprint, {"model": artifact})`
    makes a runner under another runs root treat base_model as a cache hit. The parameters are
    `TINY_BASE_MODEL_PARAMS`, i.e. `--set base_model.vocabulary_size=300
    --set base_model.tokenizer_corpus_records=200` on the command line.
    """
    from components.base_model import BaseModel, BaseModelParams
    from components.runner import LocalRunner, Node

    runs_root = tmp_path_factory.mktemp("tiny-base-model")
    result = LocalRunner([Node(BaseModel(), {})], runs_root, log=lambda message: None).run(
        runs_root / "run", {"base_model": BaseModelParams(**TINY_BASE_MODEL_PARAMS)})
    if result.status != "succeeded":
        raise RuntimeError(f"building the tiny base model failed: {result.error!r}")
    return result.artifacts["base_model"]["model"].uri
