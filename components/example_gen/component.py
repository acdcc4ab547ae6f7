"""ExampleGen: the simulated fintech data set or a user's file -> a validated, PII-masked examples table.

Masking happens here, at the door, because every file under the run folder (the examples table
and the quarantine file included) must hold masked text only.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError, UsageError, file_digest
from components.common.pii import mask_pii
from components.common.text_cleaning import clean_text
from components.config import param
from components.example_gen.ingest import ExampleSourceError, other_encoding_that_fits, read_user_examples
from schemas.artifacts import ExamplesFiles
from schemas.examples import (
    DEFAULT_MAX_TEXT_CHARS,
    HARD_MAX_TEXT_CHARS,
    LABEL_TASKS,
    LONG_TEXT_CHARS,
    label_sets,
    validate_examples,
)

UNDECODABLE_FLAG = "_undecodable"  # a reader's per-row flags, carried through masking, then dropped
RAGGED_FLAG = "_ragged"
SIMULATED_LABELS = Path(__file__).resolve().parents[2] / "data" / "labels.json"


@dataclass
class ExampleGenParams:
    """Where examples come from and how they are checked."""

    source: str | None = param(None, "user file (CSV/JSONL/Parquet); empty = the simulated data set")
    test_source: str | None = param(None, "user test file, same column mapping; becomes the test split")
    text_column: str = param("text", "column holding the input text (user files)")
    label_column: str = param("label", "column holding the label (user files)")
    id_column: str | None = param(None, "column holding a unique row id (user files); default: file-row")
    task: str = param("intent", "task of a user file: " + ", ".join(LABEL_TASKS))
    label_vocabulary: str | None = param(None, "JSON file listing the allowed labels (user files)")
    num_records: int = param(6000, "records in the simulated data set")
    seed: int = param(0, "seed of the simulated data set")
    max_text_chars: int = param(DEFAULT_MAX_TEXT_CHARS, "longer texts are quarantined (default: only beyond the "
                                                        "hard limit; long texts are kept and the Transform cuts "
                                                        "prompts to max_prompt_tokens)")
    encoding: str = param("utf-8", "text encoding of a CSV/JSONL user file (e.g. cp1252); a byte-order mark wins")

    def __post_init__(self):
        if self.num_records < 10:
            raise ValueError(f"num_records must be at least 10, got {self.num_records}")
        if not 1 <= self.max_text_chars <= HARD_MAX_TEXT_CHARS:
            raise ValueError(f"max_text_chars must be between 1 and {HARD_MAX_TEXT_CHARS:,}")
        if self.source is None and self.test_source is not None:
            raise ValueError("test_source needs source (the simulated data set has its own test split)")


def pseudonymise_ids(df: pd.DataFrame, counts: Counter) -> pd.DataFrame:
    """`id` and `record_id` values holding PII become `<masked>#<n>`, one n per distinct raw value.

    A placeholder alone would make two customers' ids equal (and quarantine one as a duplicate);
    numbering distinct values in order of first appearance keeps ids unique and rows of one
    record together, and, unlike a hash, cannot be reversed by hashing a list of e-mail addresses.
    PII is counted once per row of the column it is first found in (a user row's record_id is its id).
    """
    pseudonym_of: dict[str, str] = {}
    for column in ("id", "record_id"):
        occurrences = Counter(v for v in df[column].tolist() if isinstance(v, str))
        for value, rows in occurrences.items():
            if value in pseudonym_of:
                continue
            masked, found = mask_pii(clean_text(value))
            if found:
                pseudonym_of[value] = f"{masked}#{len(pseudonym_of) + 1}"
                counts.update({kind: n * rows for kind, n in found.items()})
        if pseudonym_of:
            df[column] = [pseudonym_of.get(v, v) if isinstance(v, str) else v for v in df[column].tolist()]
    return df


def clean_and_mask(df: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """Clean and PII-mask every text-bearing column the examples table holds; counts per PII type.

    `text`, free-text `target` and the string slice columns (`channel`, `mcc`, ...) are cleaned
    and masked; ids are pseudonymised where they hold PII (`pseudonymise_ids`). `source` (the
    file's path) and the code-set `task`/`record_type` are not customer text.
    """
    counts: Counter = Counter()
    df = pseudonymise_ids(df.copy(), counts)
    not_text = ("id", "record_id", "source", "source_row", "task", "record_type", UNDECODABLE_FLAG, RAGGED_FLAG)
    text_columns = [c for c in df.columns if c not in not_text
                    and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c]))]
    for column in text_columns:
        # A ticket's text is on three rows and labels repeat: clean and mask each distinct value
        # once, and count what was masked once per row that holds it.
        masked_of: dict[str, str] = {}
        for value, rows in df[column].value_counts(dropna=True, sort=False).items():
            if not isinstance(value, str):
                continue
            masked, found = mask_pii(clean_text(value))
            masked_of[value] = masked
            for kind, n in found.items():
                counts[kind] += n * rows
        df[column] = [masked_of.get(value, value) if isinstance(value, str) else value
                      for value in df[column].tolist()]
    return df, counts


def load_label_vocabulary(path: str | None, task: str) -> dict | None:
    """{task: labels} from a JSON list (labels of `task`) or a JSON object (labels per task)."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise PipelineError(f"label vocabulary {path} is not a readable JSON file ({error})") from None
    if isinstance(data, list):
        return {task: [str(label) for label in data]}
    if isinstance(data, dict):
        return data
    raise PipelineError(f"label vocabulary {path} must be a JSON list of labels or an object of lists")


class ExampleGen(Component):
    name = "example_gen"
    version = "2"  # 2: masking by detection view (cards in any digit run, every IBAN country, phones)
    description = "Ingest the simulated data set or a user file; clean, mask PII, validate, quarantine."
    inputs = {}
    outputs = {"examples": "Examples"}
    Params = ExampleGenParams

    def fingerprint_extra(self, params: ExampleGenParams) -> dict:
        # A user's file edited in place must not hit the cache.
        return {name: file_digest(path) for name, path in (("source", params.source), ("test", params.test_source),
                ("labels", params.label_vocabulary)) if path}

    def execute(self, ctx: ExecutionContext):
        p: ExampleGenParams = ctx.params
        out = ctx.output_dir("examples")
        if p.source is None:
            from data.simulated import generate_examples

            raw = generate_examples(p.num_records, p.seed)
            vocabulary = json.loads(SIMULATED_LABELS.read_text())
        else:
            raw = self._read(p, p.source)
            vocabulary = load_label_vocabulary(p.label_vocabulary, p.task)
            if p.test_source is not None:
                test_raw = self._read(p, p.test_source)
                raw = pd.concat([raw.assign(split=""), test_raw.assign(split="test")], ignore_index=True)
        masked, pii_counts = clean_and_mask(raw)
        # The reader's flags, as the (possibly pseudonymised) ids that validation sees.
        undecodable, ragged = (masked.loc[masked.pop(flag).astype(bool), "id"].astype(str).tolist()
                               if flag in masked.columns else [] for flag in (UNDECODABLE_FLAG, RAGGED_FLAG))
        valid, quarantine = validate_examples(masked, vocabulary, p.max_text_chars, undecodable, ragged)
        examples = ExamplesFiles(out)
        valid.to_parquet(examples.table_file, index=False)
        quarantine.to_json(examples.quarantine_file, orient="records", lines=True, force_ascii=False)
        examples.labels_file.write_text(json.dumps(label_sets(valid), indent=2))
        hints = {path: fits for path in (p.source, p.test_source) if path and undecodable
                 and (fits := other_encoding_that_fits(Path(path), p.encoding))}
        for path, fits in hints.items():
            ctx.log(f"  {path}: rows with bytes that are not {p.encoding} were quarantined; the whole file reads as "
                    f"{fits}: --set example_gen.encoding={fits}")
        metrics = {
            "encoding_hints": hints,
            "rows_in": len(raw), "rows_out": len(valid), "rows_quarantined": len(quarantine),
            "quarantine_reasons": quarantine["reason"].value_counts().to_dict(),
            "pii_masked": dict(pii_counts),
            f"texts_over_{LONG_TEXT_CHARS}_chars_kept": sum(len(text) > LONG_TEXT_CHARS for text in valid["text"]),
            "tasks": valid["task"].value_counts().to_dict(),
        }
        if metrics["rows_out"] + metrics["rows_quarantined"] != metrics["rows_in"]:
            raise AssertionError("ExampleGen lost rows")
        if not len(valid):
            raise PipelineError(f"no valid examples: all {len(raw)} rows were quarantined "
                                f"({metrics['quarantine_reasons']}); see {examples.quarantine_file}")
        for task, labels in label_sets(valid).items():
            if p.source is not None and len(labels) < 2:  # nothing to tell apart: the "classifier" would be a constant
                raise UsageError(f"{p.source}: every valid {task} row has the label {labels[0]!r}; a label task "
                                 f"needs at least two labels (check example_gen.label_column={p.label_column!r})")
        ctx.log(f"  {len(raw)} rows in, {len(valid)} valid, {len(quarantine)} quarantined, "
                f"PII masked: {dict(pii_counts) or 'none'}")
        return {"examples": metrics}

    @staticmethod
    def _read(p: ExampleGenParams, path: str):
        try:
            df, bad_rows = read_user_examples(path, p.text_column, p.label_column, p.task, p.id_column,
                                              encoding=p.encoding)
        except ExampleSourceError as error:  # the user's file or column mapping: a usage error (exit 2)
            raise UsageError(str(error)) from None
        if not len(df):
            raise UsageError(f"{path} holds no data rows (a header alone, or nothing): nothing to train on")
        return df.assign(**{UNDECODABLE_FLAG: df["source_row"].isin(set(bad_rows)),
                            RAGGED_FLAG: df["source_row"].isin(set(df.attrs.get("ragged_rows", ())))})
