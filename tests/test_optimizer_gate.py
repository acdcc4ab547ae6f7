"""The Optimizer's gate judges each variant against the Keras model on the rows that variant was measured on."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from components.optimizer.component import gate_variants


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
