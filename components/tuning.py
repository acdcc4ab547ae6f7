"""Measured settings that depend on the machine, shared between runs under one runs root.

The Benchmark measures label-scoring throughput of the Keras model at several batch sizes and
records the best one here; the Evaluator's `batch_size: 0` (auto) uses it on later runs on the
same machine for a model of the same shape. Keyed by host name, CPU count and the model's
architecture, so a runs root copied to another machine, or a smoke run's tiny model, never
supplies the figure for something else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
from pathlib import Path

TUNING_FILE = "tuning.json"


def tuning_key(architecture: dict) -> str:
    """This machine and a model shape (`model_config.json`'s architecture)."""
    shape = hashlib.sha256(json.dumps(architecture, sort_keys=True).encode()).hexdigest()[:12]
    return f"{platform.node()}/{os.cpu_count()}cpu/model-{shape}"


def record_best_batch_size(runs_root: Path, architecture: dict, batch_size: int, source: str) -> None:
    """Store the measured best label-scoring batch size of a Keras model of this shape on this machine.

    Read-modify-write under an exclusive lock, written to a temporary file and renamed: two runs
    recording at once never lose each other's entry, and a reader never sees half a file.
    """
    path = Path(runs_root) / TUNING_FILE
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[tuning_key(architecture)] = {"label_batch_size": int(batch_size), "measured_by": source}
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)


def measured_batch_size(runs_root: Path, architecture: dict) -> tuple[int, str] | None:
    """(batch size, which run measured it) here for this model shape, or None when nothing was measured."""
    try:
        entry = json.loads((Path(runs_root) / TUNING_FILE).read_text())[tuning_key(architecture)]
        return int(entry["label_batch_size"]), str(entry["measured_by"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
