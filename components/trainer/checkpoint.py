"""Training checkpoints: trainable and optimizer variables plus loop state, in one atomic .npz."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class CheckpointMismatch(Exception):
    """A checkpoint whose tensors do not fit the model being trained."""


def save_checkpoint(path: Path, causal_lm, round_index: int, state: dict) -> None:
    """Trainable + optimizer variables and the loop state, written whole or not at all."""
    arrays = {f"trainable_{i}": np.asarray(v) for i, v in enumerate(causal_lm.trainable_variables)}
    arrays.update({f"optimizer_{i}": np.asarray(v) for i, v in enumerate(causal_lm.optimizer.variables)})
    arrays.update({f"best_{i}": w for i, w in enumerate(state["best_weights"])})
    meta = {k: v for k, v in state.items() if k != "best_weights"}
    arrays["meta"] = np.array(json.dumps({**meta, "round": round_index}))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path: Path, causal_lm) -> tuple[int, dict] | None:
    if not path.exists():
        return None
    data = np.load(path)
    saved = [data[f"trainable_{i}"].shape for i in range(sum(k.startswith("trainable_") for k in data.files))]
    expected = [tuple(v.shape) for v in causal_lm.trainable_variables]
    if saved != expected:
        raise CheckpointMismatch(f"checkpoint {path} belongs to another model or LoRA setting "
                                 f"({len(saved)} trainable tensors, expected {len(expected)}); delete it to start over")
    for i, variable in enumerate(causal_lm.trainable_variables):
        variable.assign(data[f"trainable_{i}"])
    causal_lm.optimizer.build(causal_lm.trainable_variables)
    for i, variable in enumerate(causal_lm.optimizer.variables):
        variable.assign(data[f"optimizer_{i}"])
    meta = json.loads(str(data["meta"]))
    meta["best_weights"] = [data[f"best_{i}"] for i in range(len(causal_lm.trainable_variables))]
    return meta.pop("round"), meta
