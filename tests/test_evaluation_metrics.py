"""Evaluation metrics against hand-computed values, and the blessing that gates the Exporter."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from components.common.metrics import label_metrics
from components.evaluator.component import EvaluatorParams, blessing
from components.evaluator.report import (
    confusion,
    expected_calibration_error,
    per_label_metrics,
    pick_examples,
    slice_metrics,
    write_report,
)
from schemas.artifacts import EvaluationFiles


def test_macro_f1_counts_a_predicted_but_absent_class_as_zero():
    gold = ["a", "a", "b", "b"]
    predicted = ["a", "c", "b", "b"]
    # a: P=1, R=1/2, F1=2/3; b: P=1, R=1, F1=1; c (never gold): P=0, R=0, F1=0.
    metrics = label_metrics(gold, predicted)
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # weighted by gold support: (2 * 2/3 + 2 * 1 + 0 * 0) / 4
    assert metrics["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2) / 4)


def test_per_label_metrics_keep_labels_that_never_occur():
    table = per_label_metrics(["a", "a", "b"], ["a", "b", "b"], ["a", "b", "never"]).set_index("label")
    assert table.loc["a", "precision"] == 1.0 and table.loc["a", "recall"] == 0.5
    assert table.loc["b", "precision"] == 0.5 and table.loc["b", "recall"] == 1.0
    assert table.loc["never", "support"] == 0 and table.loc["never", "f1"] == 0.0


def test_confusion_matrix_rows_are_gold_columns_are_predicted():
    matrix = confusion(["a", "a", "b"], ["b", "a", "b"], ["a", "b"])
    assert matrix.loc["a", "b"] == 1 and matrix.loc["a", "a"] == 1 and matrix.loc["b", "b"] == 1
    assert int(matrix.to_numpy().sum()) == 3


def test_expected_calibration_error_on_a_known_case():
    # Bin (0.8, 0.9]: confidences 0.9, 0.9, accuracy 1/2 -> |0.5 - 0.9| = 0.4, weight 2/4.
    # Bin (0.5, 0.6]: confidences 0.6, 0.6, accuracy 1/2 -> |0.5 - 0.6| = 0.1, weight 2/4.
    ece = expected_calibration_error([0.9, 0.9, 0.6, 0.6], [True, False, True, False])
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert expected_calibration_error([0.0], [False]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        expected_calibration_error([], [])


def scored_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"r{i}" for i in range(6)],
        "task": ["intent"] * 4 + ["transaction_category"] * 2,
        "text": ["short", "a much longer text about a card that never arrived at home", "pin", "refund please",
                 "TESCO 12.00", "UBER 55.10"],
        "target": ["card_arrival", "card_arrival", "change_pin", "refund", "groceries", "transport"],
        "before": ["refund", "change_pin", "change_pin", "card_arrival", "transport", "transport"],
        "after": ["card_arrival", "refund", "change_pin", "refund", "groceries", "transport"],
        "before_probability": [0.4, 0.5, 0.3, 0.6, 0.5, 0.5],
        "after_probability": [0.9, 0.7, 0.95, 0.8, 0.99, 0.9],
        "channel": [""] * 6,
        "amount": [None] * 4 + [12.0, 55.1],
    })


def test_slices_report_accuracy_per_length_and_amount_bucket():
    slices = slice_metrics(scored_rows(), "after")
    amount = {s["value"]: s for s in slices if s["slice"] == "amount"}
    assert amount["10-100"]["examples"] == 2 and amount["10-100"]["accuracy"] == 1.0
    lengths = [s for s in slices if s["slice"] == "text_length" and s["task"] == "intent"]
    assert sum(s["examples"] for s in lengths) == 4
    assert not [s for s in slices if s["slice"] == "channel"], "empty channels are not a slice"


def test_example_table_puts_failures_first_and_covers_every_gold_label():
    picked = pick_examples(scored_rows())
    assert set(zip(picked["task"], picked["target"])) == set(zip(scored_rows()["task"], scored_rows()["target"]))
    intent = picked[picked["task"] == "intent"]
    assert intent.iloc[0]["after"] != intent.iloc[0]["target"]


def test_report_md_has_the_before_after_table(tmp_path):
    rows = scored_rows()
    labels = {"intent": ["card_arrival", "change_pin", "refund"], "transaction_category": ["groceries", "transport"]}
    results = {}
    for role, column in (("base", "before"), ("tuned", "after")):
        per_task = {t: label_metrics(list(g["target"]), list(g[column])) for t, g in rows.groupby("task")}
        results[role] = {"accuracy": 0.5, "macro_f1": 0.5, "perplexity": 3.0, "per_task": per_task}
    extras = write_report(tmp_path, rows, labels, results, {"blessed": True, "reasons": ["pass: x"]})
    files = EvaluationFiles(tmp_path)
    report = files.report_file.read_text()
    assert "| task | input | gold | before | after |" in report
    failure = ("| intent | a much longer text about a card that never arrived at home | card_arrival | "
               "change_pin | refund |")
    assert failure in report
    assert files.confusion_plot("intent").read_bytes()[:4] == b"\x89PNG"
    assert set(extras["per_task"]) == {"intent", "transaction_category"}
    assert json.loads(files.slices_file.read_text())


def test_blessing_needs_every_threshold():
    params = EvaluatorParams(min_macro_f1=0.5, min_macro_f1_gain=0.1, max_perplexity_ratio=1.0)
    good = {"macro_f1": 0.8, "base_macro_f1": 0.3, "perplexity": 2.0, "base_perplexity": 5.0}
    assert blessing(params, good)["blessed"] is True
    for change in ({"macro_f1": 0.45}, {"base_macro_f1": 0.75}, {"perplexity": 6.0}):
        verdict = blessing(params, {**good, **change})
        assert verdict["blessed"] is False
        assert any(reason.startswith("FAIL") for reason in verdict["reasons"])


def test_top_k_accuracy_against_hand_computed_rankings():
    from components.common.metrics import overall_metrics
    from models.scoring.constrained import Prediction

    def prediction(*ranked):
        return Prediction(ranked[0], 0.5, [(label, 1 / len(ranked)) for label in ranked])

    rows = pd.DataFrame({"task": ["t"] * 4, "target": ["a", "b", "c", "a"]})
    predictions = [prediction("a", "b", "c"), prediction("a", "b", "c"), prediction("a", "b", "c"),
                   prediction("c", "b", "a")]
    metrics = overall_metrics(rows, predictions, top_k=3)
    # top-1: rows 0 only -> 1/4; top-2: rows 0, 1 -> 2/4; top-3: all -> 4/4.
    assert metrics["accuracy"] == pytest.approx(0.25)
    assert metrics["top2_accuracy"] == pytest.approx(0.5) and metrics["top3_accuracy"] == pytest.approx(1.0)


def test_few_shot_prompts_hold_the_same_solved_examples_with_distinct_labels():
    from components.evaluator.component import few_shot_prompts
    from models.llm.prompts import IM_START
    from models.llm.tokenizer import train_byte_level_bpe

    train = pd.DataFrame({"task": ["intent"] * 6, "model_text": [f"query {i}" for i in range(6)],
                          "target": ["a", "a", "a", "b", "b", "c"]})
    rows = pd.DataFrame({"task": ["intent", "intent"], "model_text": ["first test text", "second test text"]})
    tokenizer = train_byte_level_bpe(list(train["model_text"]) + list(rows["model_text"]) * 5, 300)
    prompts = [tokenizer.decode(ids, skip_special_tokens=False)
               for ids in few_shot_prompts(rows, train, tokenizer, 3, 400, seed=0)]
    shots = [p.split("first test text")[0] for p in prompts[:1]] + [prompts[1].split("second test text")[0]]
    assert shots[0] == shots[1]  # the same shots for every row of a task
    assert prompts[0].count(IM_START + "assistant") == 4  # three solved turns, then the open one
    answers = [turn.split("\n", 1)[1].split("<|im_end|>")[0] for turn in prompts[0].split(IM_START + "assistant")[1:4]]
    assert sorted(answers) == ["a", "b", "c"]  # one shot per label before any label repeats


def test_invalid_output_rate_counts_answers_that_are_not_labels(monkeypatch):
    import models.llm.chat
    from components.evaluator.component import invalid_output_rate
    from models.llm.tokenizer import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(["refund card lost maybe a refund? 4111 1111 1111 1111"] * 20, 300)
    # The model answers "card_lost" as words ("card lost"): that is the valid answer.
    outputs = iter(["refund", "maybe a refund?", "card lost", "card 4111 1111 1111 1111"])
    monkeypatch.setattr(models.llm.chat, "generate_ids", lambda *a, **k: tokenizer.encode(next(outputs)))
    rows = pd.DataFrame({"task": ["intent"] * 4, "target": ["refund"] * 4, "prompt_ids": [[1]] * 4})
    result = invalid_output_rate(None, tokenizer, rows, {"intent": ["refund", "card_lost"]}, 4, seed=0)
    assert result["invalid_output_rate"] == pytest.approx(0.5) and result["examples"] == 4
    assert all("4111" not in x["output"] for x in result["invalid_examples"])  # PII masked in kept outputs
