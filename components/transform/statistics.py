"""Data statistics of the split examples: counts, lengths, vocabulary, top terms, PII, quarantine.

`compute_statistics` returns a JSON-ready dict; `write_statistics` writes it as
`statistics.json`, a readable `statistics.md` and two PNG plots. The plots are drawn from the
dict alone (it carries histogram counts), so statistics can be re-rendered from the JSON.

Tokens are NLTK `wordpunct_tokenize` tokens (a regex tokenizer: no corpus download needed).
Text lengths are measured over distinct texts per split, so a ticket that appears once per
task is counted once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from nltk.tokenize import wordpunct_tokenize

from components.transform.splitting import SPLITS
from schemas.artifacts import DatasetsFiles
from schemas.examples import FREE_TEXT_TASKS, LABEL_TASKS

TOP_TERMS_PER_LABEL = 10
HISTOGRAM_BINS = 30
# NLTK's stop-word corpus cannot be downloaded here; this short English list covers the
# function words that would otherwise top every label's term list.
_STOP_WORDS_TEXT = """
    a about above after again all am an and any are as at be because been before being below
    between both but by can could did do does doing don down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves im ive id dont cant
    didnt doesnt isnt wasnt wont please hi hello thanks thank
    hasn haven didn doesn isn wasn aren couldn shouldn wouldn"""  # wordpunct splits "hasn't" in two
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def tokenize(text: str) -> list[str]:
    """The tokens that lengths and vocabulary are counted in."""
    return wordpunct_tokenize(str(text))


def content_terms(text: str) -> list[str]:
    """Lowercased alphabetic tokens of two or more letters that are not stop words."""
    return _content_terms_of_tokens(tokenize(text))


def _content_terms_of_tokens(tokens: list[str]) -> list[str]:
    return [
        t
        for t in (tok.lower() for tok in tokens)
        if len(t) > 1 and t.isalpha() and t not in STOP_WORDS
    ]


def compute_statistics(
    splits_df: pd.DataFrame, quarantine_df: pd.DataFrame, pii_counts: Mapping[str, int]
) -> dict:
    """Statistics of a split examples table, its quarantine and the PII masking counts."""
    splits = [s for s in SPLITS if s in set(splits_df["split"])] + sorted(
        set(splits_df["split"]) - set(SPLITS)
    )
    # Each distinct text is tokenised once (a ticket's text is on three rows, one per task).
    tokens_of = {text: tokenize(text) for text in pd.unique(splits_df["text"])}
    terms_of = _LazyTerms(tokens_of)
    tasks: dict[str, dict] = {}
    for task in [
        t for t in LABEL_TASKS + FREE_TEXT_TASKS if t in set(splits_df["task"])
    ]:
        task_rows = splits_df[splits_df["task"] == task]
        task_stats: dict = {"rows_per_split": _counts(task_rows["split"], splits)}
        if task in LABEL_TASKS:
            per_label = (
                task_rows.groupby(["target", "split"]).size().unstack(fill_value=0)
            )
            task_stats["num_labels"] = len(per_label)
            task_stats["rows_per_split_and_label"] = {
                str(label): {s: int(per_label.loc[label].get(s, 0)) for s in splits}
                for label in sorted(per_label.index)
            }
            task_stats["top_terms_per_label"] = _top_terms_per_label(task_rows, terms_of)
        else:
            task_stats["target_length_tokens"] = _percentiles(
                [len(tokenize(t)) for t in task_rows["target"]]
            )
        tasks[task] = task_stats

    distinct_texts = splits_df.drop_duplicates(["split", "text"])
    char_lengths = distinct_texts["text"].str.len().to_numpy()
    token_lists = [tokens_of[t] for t in distinct_texts["text"]]
    token_lengths = np.array([len(tokens) for tokens in token_lists])
    vocabulary = {
        t.lower()
        for tokens in token_lists
        for t in tokens
        if any(c.isalnum() for c in t)
    }

    reasons = (
        quarantine_df["reason"].value_counts()
        if "reason" in quarantine_df.columns
        else pd.Series(dtype=int)
    )
    pii = {str(kind): int(n) for kind, n in sorted(dict(pii_counts).items())}
    return {
        "rows": len(splits_df),
        "rows_per_split": _counts(splits_df["split"], splits),
        "tasks": tasks,
        "text_length": {
            "chars": _percentiles(char_lengths),
            "tokens": _percentiles(token_lengths),
            "per_split_tokens": {
                s: _percentiles(
                    token_lengths[(distinct_texts["split"] == s).to_numpy()]
                )
                for s in splits
            },
        },
        "length_histogram": {
            "chars": _histogram(char_lengths),
            "tokens": _histogram(token_lengths),
        },
        "vocabulary_size": len(vocabulary),
        "pii": {"total": sum(pii.values()), "by_kind": pii},
        "quarantine": {
            "rows": len(quarantine_df),
            "reasons": {str(reason): int(n) for reason, n in sorted(reasons.items())},
        },
    }


def write_statistics(stats: dict, out_dir: str | Path) -> list[Path]:
    """Write statistics.json, statistics.md, label_distribution.png, length_histogram.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = DatasetsFiles(out_dir).statistics_files
    paths[0].write_text(
        json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths[1].write_text(statistics_markdown(stats), encoding="utf-8")
    _plot_label_distribution(stats, paths[2])
    _plot_length_histogram(stats, paths[3])
    return paths


def statistics_markdown(stats: dict) -> str:
    """A readable report of the statistics dict, as Markdown tables."""
    splits = list(stats["rows_per_split"])
    lines = [
        "# Data statistics",
        "",
        f"{stats['rows']} rows; vocabulary {stats['vocabulary_size']} distinct tokens.",
        "",
    ]
    lines += _table(
        ["split", "rows"], [[s, n] for s, n in stats["rows_per_split"].items()]
    )
    lines += ["## Text length (distinct texts)", ""]
    lines += _table(
        ["unit", "p5", "p50", "p95", "max"],
        [
            [
                unit,
                *(stats["text_length"][unit][p] for p in ("p5", "p50", "p95", "max")),
            ]
            for unit in ("chars", "tokens")
        ],
    )
    for task, task_stats in stats["tasks"].items():
        lines += [f"## Task `{task}`", ""]
        lines += _table(
            ["split", "rows"], [[s, n] for s, n in task_stats["rows_per_split"].items()]
        )
        if "rows_per_split_and_label" in task_stats:
            lines += _table(
                ["label", *splits, "top terms"],
                [
                    [
                        label,
                        *(counts.get(s, 0) for s in splits),
                        ", ".join(
                            t
                            for t, _ in task_stats["top_terms_per_label"].get(label, [])
                        ),
                    ]
                    for label, counts in task_stats["rows_per_split_and_label"].items()
                ],
            )
        else:
            reply = task_stats["target_length_tokens"]
            lines += [
                f"Target length in tokens: p50 {reply['p50']}, p95 {reply['p95']}, max {reply['max']}.",
                "",
            ]
    lines += ["## PII masked", ""]
    lines += _table(
        ["kind", "count"],
        [[k, n] for k, n in stats["pii"]["by_kind"].items()]
        + [["total", stats["pii"]["total"]]],
    )
    lines += ["## Quarantine", ""]
    lines += _table(
        ["reason", "rows"],
        [[r, n] for r, n in stats["quarantine"]["reasons"].items()]
        + [["total", stats["quarantine"]["rows"]]],
    )
    return "\n".join(lines)


def _counts(values: pd.Series, keys: list[str]) -> dict[str, int]:
    counts = values.value_counts()
    return {k: int(counts.get(k, 0)) for k in keys}


def _percentiles(values) -> dict[str, float | None]:
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return {"p5": None, "p50": None, "p95": None, "max": None}
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {
        "p5": round(float(p5), 1),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "max": float(values.max()),
    }


def _histogram(values) -> dict[str, list]:
    counts, edges = (
        np.histogram(np.asarray(values, dtype=float), bins=HISTOGRAM_BINS)
        if len(values)
        else ([], [])
    )
    return {"counts": [int(c) for c in counts], "bin_edges": [float(e) for e in edges]}


class _LazyTerms(dict):
    """text -> content terms, computed on first use from the text's tokens."""

    def __init__(self, tokens_of: dict[str, list[str]]):
        super().__init__()
        self.tokens_of = tokens_of

    def __missing__(self, text: str) -> list[str]:
        tokens = self.tokens_of.get(text)
        terms = content_terms(text) if tokens is None else _content_terms_of_tokens(tokens)
        self[text] = terms
        return terms


def _top_terms_per_label(task_rows: pd.DataFrame, terms_of: Mapping[str, list[str]] | None = None
                         ) -> dict[str, list[list]]:
    if terms_of is None:
        terms_of = _LazyTerms({})
    top: dict[str, list[list]] = {}
    for label, texts in task_rows.groupby("target")["text"]:
        counter = Counter(term for text in texts for term in terms_of[text])
        # Ties broken alphabetically so reports are stable between runs.
        ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[
            :TOP_TERMS_PER_LABEL
        ]
        top[str(label)] = [[term, int(n)] for term, n in ranked]
    return top


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers or CI
    import matplotlib.pyplot as plt

    return plt


def _plot_label_distribution(stats: dict, path: Path) -> None:
    """One horizontal stacked bar chart per label task: rows per label, by split."""
    plt = _pyplot()
    label_tasks = {
        t: s for t, s in stats["tasks"].items() if "rows_per_split_and_label" in s
    }
    heights = [
        max(2.0, 0.18 * len(s["rows_per_split_and_label"]))
        for s in label_tasks.values()
    ] or [2.0]
    fig, axes = plt.subplots(
        len(heights),
        1,
        figsize=(9, sum(heights) + 1),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (task, task_stats) in zip(axes[:, 0], label_tasks.items()):
        per_label = task_stats["rows_per_split_and_label"]
        labels = list(per_label)
        left = np.zeros(len(labels))
        for split in stats["rows_per_split"]:
            widths = np.array(
                [per_label[label].get(split, 0) for label in labels], dtype=float
            )
            ax.barh(labels, widths, left=left, label=split)
            left += widths
        ax.set_title(f"{task}: rows per label")
        ax.tick_params(axis="y", labelsize=6)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    if not label_tasks:
        axes[0, 0].text(0.5, 0.5, "no label tasks", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_length_histogram(stats: dict, path: Path) -> None:
    """Histograms of text length in characters and in tokens."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, unit in zip(axes, ("chars", "tokens")):
        histogram = stats["length_histogram"][unit]
        edges = np.array(histogram["bin_edges"])
        if len(edges):
            ax.bar(edges[:-1], histogram["counts"], width=np.diff(edges), align="edge")
        ax.set_title(f"text length ({unit})")
        ax.set_xlabel(unit)
        ax.set_ylabel("distinct texts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
