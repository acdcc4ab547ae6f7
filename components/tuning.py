"""Measured settings that depend on the machine, shared between runs under one runs root.

The Benchmark measures label-scoring throughput of the Keras model at several batch sizes and
records the best one here; the Evaluator's `batch_size: 0` (auto) uses it on later runs on the
same machine. Keyed by host name and CPU count, so a runs root copied to another machine falls
back to the default instead of using a figure measured elsewhere.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

TUNING_FILE = "tuning.json"


def machine_key() -> str:
    return f"{platform.node()}/{os.cpu_count()}cpu"


def record_best_batch_size(runs_root: Path, batch_size: int, source: str) -> None:
    """Store the measured best label-scoring batch size of the Keras model for this machine."""
    path = Path(runs_root) / TUNING_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[machine_key()] = {"label_batch_size": int(batch_size), "measured_by": source}
    path.write_text(json.dumps(data, indent=2))


def best_batch_size(runs_root: Path) -> tuple[int, str] | None:
    """(batch size, which run measured it) for this machine, or None when nothing was measured here."""
    try:
        entry = json.loads((Path(runs_root) / TUNING_FILE).read_text())[machine_key()]
        return int(entry["label_batch_size"]), str(entry["measured_by"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
