"""The examples table: one row per (record, task), and the row-by-row check that guards it.

The table is a pandas DataFrame. Its columns, the tasks and the quarantine reasons are kept
here as data so that ingest, transform, statistics and the tests all read the same contract.

`validate_examples` checks every row and splits the table into valid rows and quarantined
rows; each quarantined row carries exactly one `reason`. When several reasons apply to a row
the first one in `VALIDATION_REASONS` wins (see its comment for why the order is what it is).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

# Label tasks are decoded under a label constraint; free-text tasks generate their target.
LABEL_TASKS: tuple[str, ...] = (
    "intent",
    "transaction_category",
    "ticket_product",
    "ticket_priority",
)
FREE_TEXT_TASKS: tuple[str, ...] = ("ticket_reply",)
TASKS: tuple[str, ...] = LABEL_TASKS + FREE_TEXT_TASKS

# Required columns and the Python type every value in them must have after validation.
REQUIRED_COLUMNS: dict[str, type] = {
    "id": str,  # unique per row
    "record_id": str,  # rows of one source record (e.g. one ticket's several tasks) share it
    "record_type": str,  # "user", "query", "transaction", "ticket", ...
    "task": str,  # one of TASKS
    "text": str,  # the model input, already cleaned and PII-masked by the caller
    "target": str,  # the label, or the reply text for free-text tasks
    "source": str,  # file path or "simulated"
    "source_row": int,  # 1-based data-row number in the source file
}
# Optional slice columns: carried along when present, used by the evaluator's slices.
OPTIONAL_COLUMNS: dict[str, type] = {
    "channel": str,
    "amount": float,
    "currency": str,
    "mcc": str,
    "date": str,
}

# Long texts are kept by default (the Transform cuts prompts to `max_prompt_tokens` and counts it);
# only a text beyond this hard limit is quarantined, against abuse and memory blow-ups, or beyond
# a lower `example_gen.max_text_chars` that a user sets.
HARD_MAX_TEXT_CHARS = 1_000_000
DEFAULT_MAX_TEXT_CHARS = HARD_MAX_TEXT_CHARS
LONG_TEXT_CHARS = 2_000  # texts longer than this are counted in ExampleGen's metrics (kept, cut later)
# A label is a short class name: a longer one is a text in the wrong column, and would be cut by the
# Transform's answer budget while the scorer compares whole labels. (Free-text targets have no limit.)
MAX_LABEL_CHARS = 200
# How spreadsheets and pandas write a missing value: as a label these mean "no label".
NULL_SPELLINGS = frozenset({"nan", "NaN", "NAN", "-nan", "null", "NULL", "Null", "<NA>", "#N/A"})
QUARANTINE_TEXT_CHARS = (
    200  # enough to recognise a row, short enough to keep reports readable
)

# Precedence order: a row gets the first reason that applies.
# - undecodable_bytes first: once bytes are corrupt nothing else in the row can be trusted.
# - ragged_row next: a CSV row with more cells than the header had its cells shifted (an unquoted
#   comma), so its text and label are not what the columns say.
# - unknown_task next: the label checks depend on knowing the task.
# - text checks (missing, empty, too long) before target checks: the text is the model input.
# - duplicate_id last, and only among rows that pass every other check, so that a broken
#   first copy never shadows a good later copy; the first good copy is kept.
VALIDATION_REASONS: tuple[str, ...] = (
    "undecodable_bytes",
    "ragged_row",
    "unknown_task",
    "missing_text",
    "empty_after_cleaning",
    "text_too_long",
    "missing_label",
    "label_too_long",
    "unknown_label",
    "duplicate_id",
)
# Added by the splitter (a train/validation row whose text is in the user's test set).
SPLIT_REASONS: tuple[str, ...] = ("duplicate_of_test",)
QUARANTINE_REASONS: tuple[str, ...] = VALIDATION_REASONS + SPLIT_REASONS
QUARANTINE_COLUMNS: tuple[str, ...] = (
    "source",
    "source_row",
    "id",
    "task",
    "text",
    "reason",
)

# Where a source byte was not valid UTF-8, `errors="surrogateescape"` leaves a lone surrogate
# and a lossy decoder leaves U+FFFD. Ingest turns the former into the latter, because pandas 3
# stores text in Arrow arrays, which refuse surrogates; so both mean "bytes were lost here".
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNDECODABLE = re.compile("[\ud800-\udfff\ufffd]")
REPLACEMENT_CHARACTER = "\ufffd"


def label_sets(df: pd.DataFrame) -> dict[str, list[str]]:
    """{label task: its sorted labels} of the label tasks present in an examples table."""
    return {task: sorted(df.loc[df["task"] == task, "target"].unique().tolist())
            for task in LABEL_TASKS if (df["task"] == task).any()}


def has_undecodable_bytes(value: object) -> bool:
    """True when a string shows bytes that were not valid UTF-8 (surrogate escapes or U+FFFD)."""
    return isinstance(value, str) and _UNDECODABLE.search(value) is not None


def replace_surrogates(value: str) -> str:
    """The string with each surrogate escape replaced by U+FFFD, so any UTF-8 writer accepts it."""
    return _SURROGATE.sub(REPLACEMENT_CHARACTER, value)


def printable_text(value: object, max_chars: int = QUARANTINE_TEXT_CHARS) -> str:
    """The value as text safe to write as UTF-8, cut to `max_chars` characters.

    Surrogate-escaped bytes are shown as `\\xNN`, so a quarantine report can point at them.
    (Ingest already replaced them with U+FFFD; this covers tables built elsewhere.)
    """
    if _is_missing(value):
        return ""
    text = str(value)
    if has_undecodable_bytes(text):
        text = text.encode("utf-8", "surrogateescape").decode(
            "utf-8", "backslashreplace"
        )
    return text[:max_chars]


def quarantine_rows(df: pd.DataFrame, reasons: str | Sequence[str]) -> pd.DataFrame:
    """Rows of an examples table in the quarantine format (`QUARANTINE_COLUMNS`)."""
    if isinstance(reasons, str):
        reasons = [reasons] * len(df)
    if len(reasons) != len(df):
        raise ValueError(f"got {len(reasons)} reasons for {len(df)} rows")
    unknown = set(reasons) - set(QUARANTINE_REASONS)
    if unknown:
        raise ValueError(
            f"unknown quarantine reasons {sorted(unknown)}; known: {QUARANTINE_REASONS}"
        )
    return pd.DataFrame(
        {
            "source": [printable_text(v, 10_000) for v in _column(df, "source")],
            "source_row": [_as_row_number(v) for v in _column(df, "source_row")],
            "id": [printable_text(v, 10_000) for v in _column(df, "id")],
            "task": [printable_text(v, 10_000) for v in _column(df, "task")],
            "text": [printable_text(v) for v in _column(df, "text")],
            "reason": list(reasons),
        },
        columns=list(QUARANTINE_COLUMNS),
    ).astype({"source_row": "int64"})


def validate_examples(
    df: pd.DataFrame,
    label_vocabulary: Mapping[str, Sequence[str]] | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    undecodable_ids: Collection[str] = (),
    ragged_ids: Collection[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every row of an examples table; return `(valid_df, quarantine_df)`.

    `label_vocabulary` maps a label task to its allowed labels; a label task missing from it
    (or `None`) is not checked for unknown labels. `undecodable_ids` lists ids that the reader
    flagged as undecodable in case the caller's cleaning removed the surrogate escapes;
    `ragged_ids` the ids of rows the reader found with more cells than the header.
    A missing required column or a missing id is the caller's bug and raises ValueError.
    """
    missing_columns = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing_columns:
        raise ValueError(
            f"examples table lacks required columns {missing_columns}; it has {list(df.columns)}"
        )
    if df["id"].map(_is_missing).any():
        raise ValueError(
            "examples table has rows without an id; ingest must assign every row an id"
        )
    if max_text_chars <= 0:
        raise ValueError(f"max_text_chars must be positive, got {max_text_chars}")

    vocabulary = {
        task: set(map(str, labels)) for task, labels in (label_vocabulary or {}).items()
    }
    flagged_ids = set(map(str, undecodable_ids))
    ragged = set(map(str, ragged_ids))
    reasons: list[str | None] = [
        _first_reason(row, vocabulary, flagged_ids, ragged, max_text_chars)
        for row in df[["id", "task", "text", "target"]].itertuples(index=False)
    ]

    # duplicate_id: decided last, over rows that passed everything else, first copy kept.
    seen_ids: set[str] = set()
    for position, (row_id, reason) in enumerate(zip(df["id"].astype(str), reasons)):
        if reason is not None:
            continue
        if row_id in seen_ids:
            reasons[position] = "duplicate_id"
        seen_ids.add(row_id)

    # A bool array, never object dtype: an empty object array would select columns, not rows.
    is_valid = np.array([r is None for r in reasons], dtype=bool)
    valid_df = _typed(df[is_valid])
    bad_rows = df[~is_valid]
    quarantine_df = quarantine_rows(bad_rows, [r for r in reasons if r is not None])
    if len(valid_df) + len(quarantine_df) != len(df):
        raise AssertionError(
            f"validation lost rows: {len(valid_df)} valid + {len(quarantine_df)} quarantined != {len(df)}"
        )
    return valid_df, quarantine_df


def _first_reason(
    row, vocabulary: dict[str, set[str]], flagged_ids: set[str], ragged_ids: set[str], max_text_chars: int
) -> str | None:
    """The highest-precedence reason that applies to one row, or None when the row is valid."""
    row_id, task, text, target = row
    if (
        str(row_id) in flagged_ids
        or has_undecodable_bytes(text)
        or has_undecodable_bytes(target)
    ):
        return "undecodable_bytes"
    if str(row_id) in ragged_ids:
        return "ragged_row"
    if task not in TASKS:
        return "unknown_task"
    if _is_missing(text):
        return "missing_text"
    if not str(text).strip():
        return "empty_after_cleaning"
    if len(str(text)) > max_text_chars:
        return "text_too_long"
    if _is_missing(target) or not str(target).strip() or str(target).strip() in NULL_SPELLINGS:
        return "missing_label"
    if task in LABEL_TASKS and len(str(target)) > MAX_LABEL_CHARS:
        return "label_too_long"
    if (
        task in LABEL_TASKS
        and task in vocabulary
        and str(target) not in vocabulary[task]
    ):
        return "unknown_label"
    return None


def _typed(valid: pd.DataFrame) -> pd.DataFrame:
    """Valid rows with the required columns coerced to their declared types."""
    valid = valid.reset_index(drop=True).copy()
    for column, kind in REQUIRED_COLUMNS.items():
        valid[column] = valid[column].astype("int64" if kind is int else object)
        if kind is str:
            valid[column] = valid[column].map(str)
    return valid


def _column(df: pd.DataFrame, name: str) -> list:
    return df[name].tolist() if name in df.columns else [None] * len(df)


def _as_row_number(value: object) -> int:
    return -1 if _is_missing(value) else int(value)


def _is_missing(value: object) -> bool:
    """None, NaN and pandas NA count as missing; an empty string does not (see empty_after_cleaning)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and other non-scalars
        return False
