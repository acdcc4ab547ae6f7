"""Quality of each exported variant on the Evaluator's test rows, measured through the variant itself.

The rows are the ones the Evaluator scored the Keras model on (its `predictions.jsonl`), so a
variant's accuracy, macro-F1 and agreement are on the same examples as the reported Keras figures.
Answer perplexity here is over the label answers (label tokens + `<|im_end|>`), which the exact
label scores give for free: log P(gold answer | prompt) is the gold label's unnormalised score.
(The Evaluator's perplexity also covers the free-text replies, which `score_labels` cannot score.)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from components.common.metrics import overall_metrics


def evaluation_rows(predictions_path, test: pd.DataFrame, per_task: int) -> pd.DataFrame:
    """The Evaluator's scored rows (at most `per_task` per task, 0 = all) with their prompt ids."""
    scored = pd.read_json(predictions_path, lines=True, dtype={"id": str})
    if per_task:
        scored = scored.groupby("task", group_keys=False).head(per_task)
    prompts = test.set_index("id")["prompt_ids"]
    missing = set(scored["id"]) - set(prompts.index)
    if missing:
        raise ValueError(f"{len(missing)} evaluated rows are not in the test split (e.g. {sorted(missing)[0]}); "
                         "the evaluation and the data sets come from different runs")
    scored["prompt_ids"] = [list(prompts[i]) for i in scored["id"]]
    return scored.reset_index(drop=True)


def answer_perplexity(log_probs: list[float | None], targets: list[str], answer_tokens: dict) -> float | None:
    """exp(mean NLL per answer token) over rows whose gold answer is a label (others have no score)."""
    pairs = [(lp, answer_tokens[t]) for lp, t in zip(log_probs, targets)
             if lp is not None and not (isinstance(lp, float) and math.isnan(lp)) and t in answer_tokens]
    tokens = sum(n for _, n in pairs)
    return math.exp(-sum(lp for lp, _ in pairs) / tokens) if tokens else None


def quality_of(rows: pd.DataFrame, predictions: list, tries: dict, reference: list[str] | None) -> dict:
    """accuracy, macro-F1 (overall and per task), top-1 agreement with `reference` labels (None: not
    measured) and answer perplexity of the gold label answers, of `predictions` on `rows`."""
    metrics = overall_metrics(rows, predictions)
    agreement = None if reference is None else float(np.mean([p.label == r for p, r in zip(predictions, reference)]))
    gold_log_probs = [p.log_probabilities.get(t) for p, t in zip(predictions, rows["target"])]
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "label_agreement": agreement,
            "answer_perplexity": answer_perplexity(gold_log_probs, list(rows["target"]), answer_token_counts(tries)),
            "examples": len(rows), "per_task": {task: m["macro_f1"] for task, m in metrics["per_task"].items()}}


def predictions_by_task(rows: pd.DataFrame, tries: dict, classify) -> list:
    """A Prediction per row (rows' index order, 0..n-1), `classify(prompts, trie)` run once per task."""
    if not rows.index.equals(pd.RangeIndex(len(rows))):  # predictions are placed (and read back) by position
        raise ValueError("the rows must be indexed 0..n-1 (reset_index(drop=True) after selecting them)")
    predictions = [None] * len(rows)
    for task, group in rows.groupby("task"):
        for index, prediction in zip(group.index, classify(list(group["prompt_ids"]), tries[task])):
            predictions[index] = prediction
    return predictions


def variant_quality(rows: pd.DataFrame, tries: dict, classify) -> dict:
    """`quality_of` the predictions of `classify(prompts, trie)`, agreement against the Keras labels (`after`)."""
    return quality_of(rows, predictions_by_task(rows, tries, classify), tries, list(rows["after"]))


def keras_quality(rows: pd.DataFrame, tries: dict) -> dict:
    """The same figures for the Keras model, from the Evaluator's own predictions on these rows."""
    from models.scoring.constrained import Prediction

    predictions = [Prediction(label, 0.0, log_probabilities={target: log_prob})
                   for label, target, log_prob in zip(rows["after"], rows["target"], rows["after_gold_log_prob"])]
    return quality_of(rows, predictions, tries, list(rows["after"]))


def answer_token_counts(tries: dict) -> dict:
    """{label: tokens in its answer} over every task (a label's tokens are the same in any task)."""
    return {label: len(sequence) for trie in tries.values() for label, sequence in zip(trie.labels, trie.sequences)}
