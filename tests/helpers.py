"""Helpers shared by tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# The smoke profile, cut further so the suite's one smoke run stays short.
SMOKE_FAST = ["--set", "example_gen.num_records=200", "--set", "trainer.steps=12", "--set", "trainer.validate_every=6",
              "--set", "evaluator.max_examples=12", "--set", "benchmark.max_examples=4", "--set", "benchmark.repeats=1",
              "--set", "benchmark.batch_sizes=1,8", "--set", "benchmark.decode_tokens=4"]
# The models `serving_model_base` lays out: name -> the smoke run's bundle it serves.
SERVED_BUNDLES = {"fintune-classifier": "saved_model_float32", "fintune-int8": "tflite_dynamic_int8",
                  "fintune-student": "student_int8"}


def run_cli(monkeypatch, *args: str) -> int:
    """Run `pipeline.py ARGS` in this process; its exit code (0 when it returns normally)."""
    import pipeline

    monkeypatch.setattr(sys, "argv", ["pipeline.py", *args])
    try:
        pipeline.main()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0


def serving_model_base(run: Path, base: Path) -> Path:
    """`base/<name>/1/` for each of `SERVED_BUNDLES`: the SavedModel through the Exporter's own push (its
    layout), the TFLite bundles copied as they are (how a user serves one)."""
    from components.exporter.component import Exporter, ExporterParams

    class Quiet:
        log = staticmethod(lambda message: None)

    bundles = run / "exporter" / "bundles"
    Exporter._push(Quiet, ExporterParams(model_name="fintune-classifier", serving_dir=str(base), force_push=True),
                   bundles / "saved_model_float32", {"blessed": False, "reasons": []})
    for name, bundle in SERVED_BUNDLES.items():
        if name != "fintune-classifier" and (bundles / bundle).is_dir():  # the gate may keep the student out
            shutil.copytree(bundles / bundle, base / name / "1")
    return base


def tiny_model_with_spread(vocabulary_size: int, seed: int, spread: float, rng_seed: int | None = None,
                           matrices_only: bool = False):
    """The tiny Llama with larger random weights than its initialiser's (normal, std `spread`), so its
    logits have a real spread and its answers vary with the text. `matrices_only` leaves the norms be."""
    import numpy as np

    from models.llm.language_model import TINY_ARCHITECTURE, build_causal_lm

    model = build_causal_lm(TINY_ARCHITECTURE, vocabulary_size, seed=seed)
    rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
    variables = [v for v in model.weights if len(v.shape) > 1] if matrices_only else model.trainable_variables
    for variable in variables:
        variable.assign(rng.normal(0, spread, variable.shape).astype("float32"))
    return model


def export_for_labels(model, tokenizer, labels: dict[str, list[str]], path: Path, prompt_length: int,
                      cache_shape: tuple[int, int], serving=None) -> tuple[dict, tuple[int, int, int]]:
    """Export `model` as the Optimizer does (sequence length 96) with a label tree that fits every task of
    `labels`; (the label tries by task, the tree shape)."""
    from models.export.convert import export_saved_model
    from models.scoring.constrained import LabelTrie

    tries = {task: LabelTrie(names, tokenizer) for task, names in labels.items()}
    tree_shape = (prompt_length, max(t.num_nodes for t in tries.values()),
                  max(len(t.edge_tokens) for t in tries.values()))
    export_saved_model(model, path, 96, tree_shape, cache_shape, serving=serving)
    return tries, tree_shape
