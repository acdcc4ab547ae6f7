"""Which round's weights the Trainer keeps: never chosen by a NaN score."""

from __future__ import annotations

import math

import pytest

from components.base import PipelineError
from components.trainer.callbacks import best_round_entry, round_score


def entry(val_loss: float, macro_f1: float) -> dict:
    return {"step": 1, "val_loss": val_loss, "val_macro_f1": macro_f1}


def test_no_label_rows_scores_rounds_by_validation_loss():
    # Without label rows macro-F1 is NaN; comparing NaN never picks a round, so the initial weights came back.
    rounds = [entry(2.0, math.nan), entry(1.5, math.nan), entry(1.8, math.nan)]
    scores = [round_score(e, "val_macro_f1") for e in rounds]
    assert scores == [-2.0, -1.5, -1.8] and max(range(3), key=scores.__getitem__) == 1


def test_macro_f1_decides_when_it_exists_and_a_diverged_round_never_wins():
    assert round_score(entry(1.0, 0.7), "val_macro_f1") == 0.7
    assert round_score(entry(1.0, 0.7), "val_loss") == -1.0
    assert round_score(entry(math.nan, math.nan), "val_macro_f1") == -math.inf
    assert round_score(entry(math.inf, math.nan), "val_loss") == -math.inf


def test_a_run_with_no_finite_round_fails_instead_of_reporting_the_last_round():
    state = {"history": [entry(math.nan, math.nan)] * 2, "best_round": -1}
    with pytest.raises(PipelineError, match="training diverged"):
        best_round_entry(state)
    assert best_round_entry({"history": [entry(1.0, 0.5)], "best_round": 0}) == entry(1.0, 0.5)
    assert best_round_entry({"history": [], "best_round": -1}) == {}
