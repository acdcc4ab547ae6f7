"""Kill the Trainer with SIGKILL mid-training; run again: it resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from models.llm.language_model import load_model
from schemas.artifacts import ModelFiles

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--profile", "smoke", "--set", "example_gen.num_records=150", "--set", "base_model.vocabulary_size=400",
            "--set", "base_model.tokenizer_corpus_records=300", "--set", "trainer.steps=40",
            "--set", "trainer.validate_every=10", "--set", "trainer.early_stopping_patience=0",
            "--set", "trainer.validation_label_examples=8", "--set", "trainer.batch_size=4"]


def command(runs_root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "pipeline.py"), "--runs-root", str(runs_root), "run", "--run-dir",
            str(run_dir), *SETTINGS, *extra]


def checkpoint_round(run_dir: Path) -> int:
    for path in (run_dir / "trainer").glob(".work-*/train/checkpoint.npz"):
        try:
            return json.loads(str(np.load(path)["meta"]))["round"]
        except (OSError, ValueError, KeyError, EOFError):
            return -1  # being replaced right now
    return -1


def final_logits(run_dir: Path) -> np.ndarray:
    model, tokenizer, _ = load_model(run_dir / "trainer" / "model")
    ids = np.array([tokenizer.encode("<|im_start|>user\nmy card has not arrived<|im_end|>\n")], dtype="int32")
    return np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    runs_root, killed = tmp_path / "runs", tmp_path / "runs" / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command(runs_root, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    while checkpoint_round(killed) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the trainer finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "trainer" / "model").exists(), "a killed trainer must leave no finished-looking artifact"

    resumed = subprocess.run(command(runs_root, killed, "--only", "trainer"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from the checkpoint after step" in resumed.stdout
    assert "[example_gen] cached" in resumed.stdout and "[transform] cached" in resumed.stdout

    fresh = tmp_path / "runs" / "fresh"
    straight = subprocess.run(command(runs_root, fresh, "--only", "trainer", "--force"), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "resuming" not in straight.stdout

    history = [ModelFiles(d / "trainer" / "model").training_history() for d in (killed, fresh)]
    assert [h["step"] for h in history[0]] == [h["step"] for h in history[1]] == [10, 20, 30, 40]
    for a, b in zip(*history):
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-3 * max(1.0, abs(b["val_loss"]))
    np.testing.assert_allclose(final_logits(killed), final_logits(fresh), atol=1e-3, rtol=1e-3)
