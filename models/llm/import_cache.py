"""What the GGUF and Hugging Face imports share: their error, the cache folder, atomic saves, weight checks.

A converted model is saved once under `<cache>/models/<digest>/` (cache: an explicit folder, else
`$FINTUNE_CACHE`, else `~/.cache/fintune`) and reused by every later run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from schemas.artifacts import ModelFiles


class ModelImportError(Exception):
    """A base model that cannot be imported; the message is one sentence saying why."""


def cache_root(cache_dir=None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("FINTUNE_CACHE") or Path.home() / ".cache" / "fintune")


def save_atomically(final: Path, write) -> Path:
    """Write into a temp folder beside `final`, rename it into place when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(temp)
        try:
            os.rename(temp, final)
        except OSError:
            if not ModelFiles(final).config_file.is_file():  # not a concurrent writer's finished copy
                raise
            shutil.rmtree(temp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def assign_weight(variable, value: np.ndarray, name: str) -> None:
    """Copy an imported tensor into a model variable, refusing a shape that does not fit."""
    if tuple(variable.shape) != tuple(value.shape):
        raise ModelImportError(f"tensor {name} has shape {value.shape} but the model expects {tuple(variable.shape)}")
    variable.assign(value.astype(variable.dtype))
