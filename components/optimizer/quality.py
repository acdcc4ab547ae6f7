"""Quality of each exported variant on the Evaluator's test rows, measured through the variant itself.

The rows are the ones the Evaluator scored the Keras model on (its `predictions.jsonl`), so a
variant's accuracy, macro-F1 and agreement are on the same examples as the reported Keras figures.
Answer perplexity here is over the label answers (label tokens + `<|im_end|>`), which the exact
label scores give for free: log P(gold answer | prompt) is the gold label's unnormalised score.
(The Evaluator's perplexity also covers the free-text replies, which `score_labels` cannot score.)
"""

from __future__ import annotations

import math

import pandas as pd

from components.evaluator.component import overall_metrics


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


def variant_quality(rows: pd.DataFrame, tries: dict, classify) -> dict:
    """accuracy / macro-F1 / label agreement with Keras / answer perplexity of `classify(prompts, trie)`."""
    predictions = [None] * len(rows)
    for task, group in rows.groupby("task"):
        for index, prediction in zip(group.index, classify(list(group["prompt_ids"]), tries[task])):
            predictions[index] = prediction
    metrics = overall_metrics(rows, predictions)
    tokens = answer_token_counts(tries)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "label_agreement": float((pd.Series([x.label for x in predictions]) == rows["after"]).mean()),
            "answer_perplexity": answer_perplexity(
                [x.log_probabilities.get(t) for x, t in zip(predictions, rows["target"])],
                list(rows["target"]), tokens),
            "examples": len(rows)}


def keras_quality(rows: pd.DataFrame, tries: dict) -> dict:
    """The same figures for the Keras model, from the Evaluator's own predictions on these rows."""
    from models.constrained import Prediction

    predictions = [Prediction(label, 0.0) for label in rows["after"]]
    metrics = overall_metrics(rows, predictions)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "label_agreement": 1.0,
            "answer_perplexity": answer_perplexity(list(rows["after_gold_log_prob"]), list(rows["target"]),
                                                   answer_token_counts(tries)),
            "examples": len(rows)}


def answer_token_counts(tries: dict) -> dict:
    """{label: tokens in its answer} over every task (a label's tokens are the same in any task)."""
    return {label: len(sequence) for trie in tries.values() for label, sequence in zip(trie.labels, trie.sequences)}
