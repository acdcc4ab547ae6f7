"""The Optimizer's gate judges each variant against the Keras model on the rows that variant was measured on."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from components.common.variant_quality import predictions_by_task
from components.optimizer.component import gate_variants, parity_rows


def test_a_variant_measured_on_a_subset_is_judged_against_keras_on_that_subset():
    # Keras is right on rows 0-1 and wrong on row 2: macro-F1 1.0 on the subset, lower on all rows.
    rows = pd.DataFrame({"id": ["r0", "r1", "r2", "r3"], "task": ["intent"] * 4, "target": ["a", "b", "a", "b"],
                         "after": ["a", "b", "b", "b"], "after_gold_log_prob": [-0.1, -0.2, -2.0, -0.3]})
    plan = SimpleNamespace(rows=rows, tries={"intent": SimpleNamespace(labels=["a", "b"], sequences=[(1, 9), (2, 9)])})
    quality = {"macro_f1": 0.9, "accuracy": 0.9}
    variants = [{"name": "tflite_float32", "quality": dict(quality), "row_ids": ["r0", "r1"]},
                {"name": "tflite_dynamic_int8", "quality": dict(quality), "row_ids": ["r0", "r1", "r2", "r3"]}]
    gate_variants(variants, plan, 2.0, log=lambda *_: None)
    subset, everything = (v["gate"] for v in variants)
    assert subset["drop_points"] == 10.0 and not subset["eligible"]  # 0.9 against 1.0 on its own two rows
    assert everything["drop_points"] < 0 and everything["eligible"]  # 0.9 against Keras's 0.73 on all four
    assert all("row_ids" not in v for v in variants)  # bookkeeping, not written to variants.json


def test_the_float32_subset_is_indexed_by_position_as_the_quality_code_reads_it():
    rows = pd.DataFrame({"id": [f"r{i}" for i in range(6)], "task": ["a", "b"] * 3,
                         "prompt_ids": [[i] for i in range(6)]})
    plan = SimpleNamespace(rows=rows)
    subset = parity_rows(plan, 2)
    assert list(subset["id"]) == ["r0", "r1", "r2", "r3"] and list(subset.index) == [0, 1, 2, 3]
    assert parity_rows(plan, 0) is rows
    found = predictions_by_task(subset, {"a": "A", "b": "B"}, lambda prompts, trie: [(trie, p[0]) for p in prompts])
    assert found == [("A", 0), ("B", 1), ("A", 2), ("B", 3)]
    with pytest.raises(ValueError, match="indexed 0..n-1"):  # what the default run hit before parity_rows
        predictions_by_task(rows.groupby("task", group_keys=False).head(2).iloc[1:], {"a": "A", "b": "B"},
                            lambda prompts, trie: [trie] * len(prompts))


def test_a_quantised_variant_with_non_finite_logits_is_an_error_even_without_a_float32_file(monkeypatch):
    import numpy as np

    import models.export.exported as exported
    from components.base import PipelineError
    from components.optimizer.component import OptimizerParams, measure_variant

    assert OptimizerParams(variants=["dynamic_int8"]).variants == ["dynamic_int8"]  # float32 TFLite is opt-in

    class WeightsDropped:  # what a conversion that silently lost its weights returns
        def __init__(self, path):
            pass

        def logits(self, token_ids, padding_mask):
            return np.full(token_ids.shape + (5,), np.nan, dtype=np.float32)

    monkeypatch.setattr(exported, "ExportedModel", WeightsDropped)
    plan = SimpleNamespace(checked=pd.DataFrame({"prompt_ids": [[1, 2, 3]]}), sequence_length=8,
                           tokenizer=SimpleNamespace(pad_id=0))
    reference = lambda token_ids, padding_mask: np.zeros(token_ids.shape + (5,), dtype=np.float32)  # noqa: E731
    with pytest.raises(PipelineError, match="non-finite logits"):
        measure_variant(plan, reference, "tflite_dynamic_int8", "dynamic_int8", "x.tflite", "tflite", print)


def test_the_batched_generation_check_needs_two_prompts_and_counts_identical_generations():
    from components.optimizer.component import batched_generation_check

    class Fake:  # row 1 of a batch generates other tokens than the same prompt alone
        decode_rows = 8

        def generate_batch(self, prompts, n):
            return [[p[0]] * n if i != 1 else [0] * n for i, p in enumerate(prompts)]

        def generate_ids(self, prompt, n):
            return [prompt[0]] * n

    assert batched_generation_check(Fake(), [], 4) is None  # optimizer.verify_prompts=0: nothing to check
    assert batched_generation_check(Fake(), [[5]], 4) is None  # one prompt is never batched
    check = batched_generation_check(Fake(), [[5], [6], [7], [8]], 4)
    assert check["prompts"] == 4 and check["identical"] == 0.75


def test_the_model_card_lists_only_the_optional_signatures_the_file_has():
    from components.exporter.component import optional_signatures

    cache = {"positions": 256, "decode_rows": 8, "prompt_buckets": [64, 128]}
    every = optional_signatures(cache)
    assert "`prefill_64`" in every and "`prefill_128`" in every and "`decode_batch`" in every
    assert optional_signatures(cache, ["decode", "prefill", "score_labels", "serve"]) == ""  # a full_int8 file
    assert "`decode_batch`" not in optional_signatures(cache, ["prefill_64", "score_labels_64"])
