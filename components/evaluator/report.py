"""What the Evaluator writes besides the headline: per-label metrics, confusion matrices, calibration,
slices, and `report.md` with the base and fine-tuned model side by side.

Metrics come from scikit-learn; expected calibration error is the standard equal-width-bin
estimate (Guo et al. 2017), written here because scikit-learn has only the reliability curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.artifacts import EvaluationFiles

LENGTH_BUCKETS = (0, 40, 80, 160, 10**9)  # characters of the input text
AMOUNT_BUCKETS = (0, 10, 100, 1000, float("inf"))  # transaction amount, in its own currency
EXAMPLES_PER_LABEL = 1
MAX_EXAMPLES_IN_REPORT = 30


def per_label_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support for every label of the task (absent labels included)."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, zero_division=0)
    return pd.DataFrame({"label": labels, "precision": precision, "recall": recall, "f1": f1,
                         "support": support.astype(int)})


def confusion(gold: list[str], predicted: list[str], labels: list[str]) -> pd.DataFrame:
    """Rows: gold label, columns: predicted label."""
    from sklearn.metrics import confusion_matrix

    return pd.DataFrame(confusion_matrix(gold, predicted, labels=labels), index=labels, columns=labels)


def expected_calibration_error(confidence: list[float], correct: list[bool], bins: int = 10) -> float:
    """Σ_b (n_b / n) · |accuracy_b − mean confidence_b| over equal-width confidence bins."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if confidence.size == 0:
        raise ValueError("no predictions to calibrate")
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def _bucket(values: pd.Series, edges) -> pd.Series:
    labels = [f"{lo:g}-{hi:g}" if np.isfinite(hi) and hi < 10**9 else f">{lo:g}" for lo, hi in zip(edges, edges[1:])]
    return pd.cut(values, bins=list(edges), labels=labels, right=False).astype(str)


def slice_metrics(rows: pd.DataFrame, predicted_column: str) -> list[dict]:
    """Accuracy per task × slice: text length, amount (transactions), channel (tickets)."""
    rows = rows.assign(correct=rows["target"] == rows[predicted_column],
                       length_bucket=_bucket(rows["text"].str.len(), LENGTH_BUCKETS))
    slices = []
    specs = [("text_length", "length_bucket", None), ("amount", "amount_bucket", "transaction_category"),
             ("channel", "channel", None)]
    if "amount" in rows:
        rows["amount_bucket"] = _bucket(pd.to_numeric(rows["amount"], errors="coerce"), AMOUNT_BUCKETS)
    for name, column, only_task in specs:
        if column not in rows:
            continue
        subset = rows if only_task is None else rows[rows["task"] == only_task]
        subset = subset[subset[column].astype(str).str.len() > 0]
        subset = subset[~subset[column].isin(["nan", "None"])]
        for (task, value), group in subset.groupby(["task", column]):
            slices.append({"slice": name, "task": task, "value": str(value), "examples": len(group),
                           "accuracy": float(group["correct"].mean())})
    return slices


def pick_examples(rows: pd.DataFrame) -> pd.DataFrame:
    """Examples for the before/after table: one per gold label, failures first, then successes."""
    rows = rows.assign(after_wrong=rows["after"] != rows["target"])
    picked = (rows.sort_values(["after_wrong", "id"], ascending=[False, True])
              .groupby(["task", "target"], sort=True).head(EXAMPLES_PER_LABEL))
    return picked.sort_values(["task", "after_wrong"], ascending=[True, False]).head(MAX_EXAMPLES_IN_REPORT)


def plot_confusion(matrix: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.28 * len(matrix) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix.to_numpy(), cmap="Blues")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(matrix)), matrix.index, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v).replace("|", "/").replace("\n", " ") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def unconstrained_section(unconstrained: dict) -> str:
    """The invalid-output rate of unconstrained greedy decoding, so the constraint's effect is visible."""
    if not unconstrained:
        return "Unconstrained decoding was not run (`evaluator.unconstrained_examples=0`)."
    lines = ["| model | examples | invalid outputs |", "|---|---|---|"]
    for role, name in (("base", "base"), ("tuned", "fine-tuned")):
        if role in unconstrained:
            u = unconstrained[role]
            lines.append(f"| {name} | {u['examples']} | {u['invalid_output_rate']:.1%} |")
    shown = [dict(model=role, **x) for role, u in unconstrained.items() for x in u["invalid_examples"][:5]]
    if shown:
        lines += ["", _markdown_table(pd.DataFrame(shown)[["model", "task", "gold", "output"]])]
    return "\n".join(lines)


def write_report(out: Path, rows: pd.DataFrame, labels: dict, results: dict, verdict: dict,
                 unconstrained: dict | None = None, settings: dict | None = None) -> dict:
    """Per-label CSVs, confusion matrices (CSV + PNG), calibration, slices and report.md; returns extras."""
    settings = settings or {}
    files = EvaluationFiles(out)
    top_k = settings.get("top_k", 1)
    extras: dict = {"per_task": {}}
    sections = []
    for task, group in rows.groupby("task"):
        task_labels = labels[task]
        gold = list(group["target"])
        per_task = {}
        for role, column in (("base", "before"), ("tuned", "after")):
            predicted = list(group[column])
            per_label_metrics(gold, predicted, task_labels).to_csv(files.per_label_table(task, role), index=False)
            correct = [g == p for g, p in zip(gold, predicted)]
            per_task[f"{role}_ece"] = expected_calibration_error(list(group[f"{column}_probability"]), correct)
        matrix = confusion(gold, list(group["after"]), task_labels)
        matrix.to_csv(files.confusion_table(task))
        plot_confusion(matrix, f"{task} (fine-tuned)", files.confusion_plot(task))
        extras["per_task"][task] = per_task
        tuned, base = results["tuned"]["per_task"][task], results["base"]["per_task"][task]
        sections.append(f"| {task} | {len(group)} | {base['accuracy']:.3f} | {tuned['accuracy']:.3f} | "
                        f"{tuned.get(f'top{top_k}_accuracy', tuned['accuracy']):.3f} | "
                        f"{base['macro_f1']:.3f} | {tuned['macro_f1']:.3f} | {per_task['base_ece']:.3f} | "
                        f"{per_task['tuned_ece']:.3f} |")
    slices = slice_metrics(rows, "after")
    files.slices_file.write_text(json.dumps(slices, indent=2))
    examples = pick_examples(rows)[["task", "text", "target", "before", "after"]].rename(
        columns={"text": "input", "target": "gold"})
    examples["input"] = examples["input"].str.slice(0, 90)
    headline = (f"| metric | base | fine-tuned |\n|---|---|---|\n"
                f"| accuracy | {results['base']['accuracy']:.3f} | {results['tuned']['accuracy']:.3f} |\n"
                f"| macro-F1 | {results['base']['macro_f1']:.3f} | {results['tuned']['macro_f1']:.3f} |\n"
                f"| perplexity (answer tokens) | {results['base']['perplexity']:.2f} | "
                f"{results['tuned']['perplexity']:.2f} |")
    shots = settings.get("base_shots", 0)
    report = "\n\n".join([
        "# Evaluation report",
        f"Test split, {len(rows)} label-task examples scored under the label constraint: every label's "
        "probability is computed exactly and the prediction is the most probable label. Accuracy and "
        f"macro-F1 are means over tasks. Base model prompt: {f'{shots}-shot' if shots else 'zero-shot'}. "
        f"Test rows whose gold label was unseen in training (counted as errors): "
        f"{settings.get('unknown_gold_labels', 0)}.",
        headline,
        f"## Per task\n\n| task | examples | base accuracy | fine-tuned accuracy | fine-tuned top-"
        f"{top_k} accuracy | base macro-F1 | fine-tuned macro-F1 | base ECE | fine-tuned ECE |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(sections),
        "ECE (10 bins) is of the predicted label's probability, normalised over the task's label set.",
        "## Without the label constraint\n\n" + unconstrained_section(unconstrained or {}),
        "## Blessing\n\n" + f"Blessed: **{verdict['blessed']}**\n\n" + "\n".join(f"- {r}" for r in verdict["reasons"]),
        "## Before and after (one example per gold label, failures of the fine-tuned model first)",
        _markdown_table(examples),
        "## Files\n\nPer-label precision/recall/F1: `per_label_<task>_<base|tuned>.csv`; confusion matrices: "
        "`confusion_<task>.csv/.png`; slices: `slices.json`; every prediction: `predictions.jsonl`.",
    ])
    files.report_file.write_text(report + "\n")
    return extras
