"""Label metrics shared by the Evaluator, the Trainer's validation, the Optimizer and the Benchmark:
exact label-constrained predictions for a table of rows, scikit-learn accuracy and F1, and the
headline as the mean over label tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.examples import LABEL_TASKS


def label_metrics(gold: list[str], predicted: list[str]) -> dict:
    """Accuracy and macro/weighted F1 from scikit-learn (labels = union of gold and predicted)."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = sorted(set(gold) | set(predicted))
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, labels=labels, average="weighted", zero_division=0)),
        "examples": len(gold),
    }


def sample_label_rows(test: pd.DataFrame, max_examples: int, seed: int) -> pd.DataFrame:
    rows = test[test["task"].isin(LABEL_TASKS)]
    if max_examples and len(rows):
        rows = pd.concat([group.sample(min(len(group), max_examples), random_state=seed)
                          for _, group in rows.groupby("task")])
    return rows.reset_index(drop=True)


def score_model(causal_lm, tokenizer, rows: pd.DataFrame, labels: dict, batch_size: int,
                role: str = "", scorer=None, prompt_column: str = "prompt_ids") -> list:
    """A `Prediction` (label, probability, full ranking) for every row, scored over its task's label set.

    `role` names the progress bars (none without it); pass a `TreeScorer` to reuse its trace.
    """
    from models.scoring.constrained import LabelTrie, TreeScorer, classify

    predictions = [None] * len(rows)
    scorer = scorer or TreeScorer(causal_lm)
    for task, group in rows.groupby("task"):
        trie = LabelTrie(labels[task], tokenizer)
        results = classify(causal_lm, list(group[prompt_column].map(list)), trie, batch_size, scorer,
                           progress=f"  {role} {task}" if role else None)
        for index, result in zip(group.index, results):
            predictions[index] = result
    return predictions


def overall_metrics(rows: pd.DataFrame, predictions: list, top_k: int = 1) -> dict:
    """Per-task metrics (top-k accuracy for k = 2..top_k too), and the headline as the mean over tasks."""
    per_task = {}
    for task, group in rows.groupby("task"):
        gold = list(group["target"])
        per_task[task] = label_metrics(gold, [predictions[i].label for i in group.index])
        for k in range(2, top_k + 1):
            per_task[task][f"top{k}_accuracy"] = float(np.mean(
                [g in predictions[i].top(k) for g, i in zip(gold, group.index)]))
    keys = ["accuracy", "macro_f1"] + [f"top{k}_accuracy" for k in range(2, top_k + 1)]
    headline = {key: float(np.mean([m[key] for m in per_task.values()])) for key in keys}
    return {**headline, "per_task": per_task}
