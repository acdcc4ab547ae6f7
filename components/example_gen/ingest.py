"""Read a user's labelled file (CSV, JSONL/JSON or Parquet) into the examples table.

`read_user_examples` maps the user's text and label columns onto the examples table
(`schemas.examples.REQUIRED_COLUMNS`). It never crashes on a row with invalid UTF-8: the file
is decoded with `errors="surrogateescape"`, each row holding an escaped byte is reported by
number, and the byte is replaced with U+FFFD in the table, where `validate_examples` finds it
again and quarantines the row as `undecodable_bytes`.
Problems with the file as a whole raise `ExampleSourceError` with one sentence that says what
to fix.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from schemas.examples import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    TASKS,
    has_undecodable_bytes,
    replace_surrogates,
)

SUPPORTED_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


class ExampleSourceError(Exception):
    """A user example file that cannot be read as a whole (missing, wrong format, wrong columns)."""


@dataclass
class RawRecords:
    """What a format reader found: columns in file order (repeats included), records, and damage per row."""

    columns: list[str]
    records: list[dict]
    ragged_rows: list[int] = field(default_factory=list)  # rows with more non-empty cells than the header
    duplicate_columns: dict[str, str] = field(default_factory=dict)  # column -> where it repeats


@dataclass(frozen=True)
class NestedValue:
    """A list or object where a cell should be text (JSON arrays/objects, Parquet list/struct columns)."""

    kind: str


# A file of another kind under a text extension: its first bytes, and what to tell the user.
_MAGIC_NUMBERS = [(b"PAR1", "a Parquet file; give it a .parquet extension"),
                  (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one); export the sheet as CSV"),
                  (b"\x1f\x8b", "gzip-compressed; decompress it first"),
                  (b"%PDF", "a PDF document, not a table")]


def read_user_examples(
    path: str | Path,
    text_column: str,
    label_column: str,
    task: str,
    id_column: str | None = None,
    record_type: str = "user",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, list[int]]:
    """Read one user file into the examples table; return `(df, undecodable_rows)`.

    Ids are `<file stem>-<row>` unless `id_column` is given (a blank id falls back to the
    same form). `source_row` is the 1-based data-row number (the header is not a data row).
    `undecodable_rows` lists the `source_row` of every row holding bytes invalid in `encoding`
    (text files; a UTF-8/16/32 byte-order mark overrides it, as it names the file's encoding).
    Optional slice columns (`channel`, `amount`, ...) present in the file are carried along.
    `df.attrs["ragged_rows"]` lists the `source_row` of every CSV row with more non-empty cells than
    the header (an unquoted comma shifted its cells: ExampleGen quarantines it as `ragged_row`).
    A repeated used column, or a list/object where a used column needs text, is an
    `ExampleSourceError`.
    """
    path = Path(path)
    if task not in TASKS:
        raise ExampleSourceError(
            f"Task {task!r} is not one of the known tasks {', '.join(TASKS)}."
        )
    if not path.exists():
        raise ExampleSourceError(f"Example file {path} does not exist.")
    if path.is_dir():
        raise ExampleSourceError(f"Example file {path} is a directory; give the path of one CSV, JSONL or "
                                 "Parquet file.")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ExampleSourceError(f"Encoding {encoding!r} is not one Python knows (e.g. utf-8, cp1252, latin-1).") \
            from None
    file_format = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if file_format is None:
        raise ExampleSourceError(
            f"Example file {path} has unsupported extension {path.suffix!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}."
        )

    readers = {
        "csv": _read_csv_records,
        "jsonl": _read_json_records,
        "parquet": _read_parquet_records,
    }
    try:
        raw = readers[file_format](path, encoding)
    except ExampleSourceError:
        raise
    except (
        OSError,
        ValueError,
        UnicodeError,
    ) as error:  # pyarrow errors subclass these too
        raise ExampleSourceError(
            f"Example file {path} could not be read as {file_format}: {error}."
        ) from error

    columns = list(dict.fromkeys(raw.columns))
    for role, column in (
        ("text_column", text_column),
        ("label_column", label_column),
        ("id_column", id_column),
    ):
        if column is not None and column not in columns:
            raise ExampleSourceError(
                f"Column {column!r} ({role}) is not in {path}; columns found: {', '.join(map(repr, columns))}."
            )
    used = [c for c in (text_column, label_column, id_column, *OPTIONAL_COLUMNS) if c in columns]
    for column in used:
        if column in raw.duplicate_columns:
            raise ExampleSourceError(f"Column {column!r} appears more than once in {path} "
                                     f"({raw.duplicate_columns[column]}); rename or drop the extra one.")
    df, undecodable_rows = _examples_table(
        path, columns, raw.records, text_column, label_column, task, id_column, record_type
    )
    df.attrs["ragged_rows"] = raw.ragged_rows
    return df, undecodable_rows


def _examples_table(
    path: Path,
    columns: list[str],
    records: list[dict],
    text_column: str,
    label_column: str,
    task: str,
    id_column: str | None,
    record_type: str,
) -> tuple[pd.DataFrame, list[int]]:
    """Map raw records (dicts of str or None) onto the examples table."""
    slice_columns = [c for c in OPTIONAL_COLUMNS if c in columns]
    rows: list[dict] = []
    undecodable_rows: list[int] = []
    # Bad bytes in a column the table does not use cannot hurt; only used columns count.
    used_columns = [
        c for c in (text_column, label_column, id_column, *slice_columns) if c
    ]
    for row_number, raw_record in enumerate(records, start=1):
        for column in used_columns:
            if isinstance(raw_record.get(column), NestedValue):
                raise ExampleSourceError(
                    f"Column {column!r} of {path} holds {raw_record[column].kind} values (first in data row "
                    f"{row_number}), not text; flatten it to one text value per row.")
        if any(has_undecodable_bytes(raw_record.get(c)) for c in used_columns):
            undecodable_rows.append(row_number)
        # pandas 3 keeps text in Arrow arrays, which refuse surrogates: U+FFFD marks the spot.
        record = {
            k: replace_surrogates(v) if v is not None else None
            for k, v in raw_record.items()
        }
        row_id = record.get(id_column) if id_column else None
        if row_id is None or not row_id.strip():
            row_id = f"{path.stem}-{row_number}"
        row = {
            "id": row_id,
            "record_id": row_id,  # one user row is one record with one task
            "record_type": record_type,
            "task": task,
            "text": record.get(text_column),
            "target": record.get(label_column),
            "source": str(path),
            "source_row": row_number,
        }
        row.update({c: record.get(c) for c in slice_columns})
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*REQUIRED_COLUMNS, *slice_columns])
    df["source_row"] = df["source_row"].astype("int64")
    if (
        "amount" in df.columns
    ):  # amounts are numbers; a bad one becomes NaN rather than failing the file
        df["amount"] = pd.to_numeric(df["amount"], errors="coerce")
    return df, undecodable_rows


# UTF-32 LE first: its mark starts with UTF-16 LE's.
_BYTE_ORDER_MARKS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def _decode(data: bytes, encoding: str = "utf-8", path: Path | None = None) -> str:
    # A byte-order mark names the encoding (and is dropped); surrogateescape keeps bad bytes visible per row.
    for mark, marked_encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            errors = "surrogateescape" if marked_encoding == "utf-8-sig" else "replace"  # (UTF-16/32 cannot escape)
            return data.decode(marked_encoding, errors=errors)
    if path is not None and not codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        _refuse_binary(data, path)
    return data.decode(encoding, errors="surrogateescape")


def _refuse_binary(data: bytes, path: Path) -> None:
    """One sentence for a file that is not text in a one-byte encoding: another format, UTF-16 without a
    byte-order mark, or binary data (NUL bytes never occur in CSV or JSON text)."""
    for magic, what in _MAGIC_NUMBERS:
        if data.startswith(magic):
            raise ExampleSourceError(f"Example file {path} is {what}.")
    sample = data[:65536]
    if b"\0" not in sample:
        return
    half = max(1, len(sample) // 2)
    nul_at_odd, nul_at_even = sample[1::2].count(0) / half, sample[0::2].count(0) / half
    for share, other, utf16 in ((nul_at_odd, nul_at_even, "utf-16-le"), (nul_at_even, nul_at_odd, "utf-16-be")):
        if share > 0.3 and other < 0.05:  # ASCII text in UTF-16: every other byte is zero
            raise ExampleSourceError(f"Example file {path} looks like UTF-16 text without a byte-order mark; "
                                     f"pass --set example_gen.encoding={utf16}.")
    raise ExampleSourceError(f"Example file {path} holds binary data (NUL bytes at byte {data.index(0)}), "
                             "not CSV or JSON text.")


def other_encoding_that_fits(path: Path, tried: str) -> str | None:
    """For a text file with bytes invalid in `tried`: 'cp1252' when the whole file decodes as that, else None."""
    if tried.lower().replace("_", "-") not in ("utf-8", "utf8") or path.suffix.lower() == ".parquet":
        return None
    try:
        path.read_bytes().decode("cp1252")
    except (UnicodeDecodeError, OSError):
        return None
    return "cp1252"


def _cell(value: object) -> str | NestedValue | None:
    """A raw value as str, with empty and null values as None (so they read as missing).

    A list or object becomes a `NestedValue`: its repr is no text to train on.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict)) or (not isinstance(value, (str, bytes))
                                                  and not pd.api.types.is_scalar(value)):
        return NestedValue("object" if isinstance(value, dict) else "list")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="surrogateescape")
    if not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value):
        return None  # None-likes from Parquet: NaN, pd.NA, NaT
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a label column of 1.0, 2.0 should read as "1", "2"
    text = value if isinstance(value, str) else str(value)
    return text if text != "" else None


@contextlib.contextmanager
def _large_csv_fields():
    # The csv module refuses fields over 128 KiB; long texts must reach validation, not crash here.
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv_records(path: Path, encoding: str = "utf-8") -> RawRecords:
    """Header and records of a CSV file with any line endings; blank lines are skipped.

    Quotes are read strictly: a quoted cell left open would swallow the following rows (up to the next
    quote, or the end of the file) into one cell, so text after a closing quote, or a file ending inside
    quotes, is refused, naming the line where the row starts. A row with more non-empty cells than the
    header is reported in `ragged_rows`.
    """
    text = _decode(path.read_bytes(), encoding, path)
    rows: list[list[str]] = []
    row_start = 1
    with _large_csv_fields():
        # newline="" keeps \r\n, \r and \n as they are, so the csv module sees them, inside quoted fields too.
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append(row)
                row_start = reader.line_num + 1
        except csv.Error as error:
            raise ExampleSourceError(
                f"Example file {path} is not valid CSV in the row that starts on line {row_start} ({error}): a "
                'quoted cell is left open, or has text after its closing quote (a quote inside one is written "").'
            ) from None
    if not rows:
        raise ExampleSourceError(
            f"Example file {path} is empty; it needs a header row and data rows."
        )
    header = [name.strip() for name in rows[0]]
    records, ragged = [], []
    for row_number, row in enumerate(rows[1:], start=1):
        if any(cell.strip() for cell in row[len(header):]):
            ragged.append(row_number)
        records.append(
            {
                name: _cell(row[i]) if i < len(row) else None
                for i, name in enumerate(header)
            }
        )
    repeated = [name for name, n in Counter(header).items() if n > 1]
    return RawRecords(header, records, ragged, {name: "in the header" for name in repeated})


def _read_json_records(path: Path, encoding: str = "utf-8") -> RawRecords:
    """Records of a JSON Lines file, or of a `.json` file holding one array of objects."""
    text = _decode(path.read_bytes(), encoding, path)
    duplicates: dict[str, str] = {}
    where = [0]

    def object_of(pairs: list[tuple[str, object]]) -> dict:
        # json keeps the last of two equal keys silently; remember the first record that repeats one.
        for key, n in Counter(key for key, _ in pairs).items():
            if n > 1:
                duplicates.setdefault(key, f"twice on line {where[0]}" if where[0] else "twice in one object")
        return dict(pairs)

    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            objects = json.loads(text, object_pairs_hook=object_of)
        except json.JSONDecodeError as error:
            raise ExampleSourceError(
                f"Example file {path} is not valid JSON: {error}."
            ) from error
        numbered = list(enumerate(objects, start=1))
    else:
        numbered = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where[0] = line_number
            try:
                numbered.append((line_number, json.loads(line, object_pairs_hook=object_of)))
            except json.JSONDecodeError as error:
                raise ExampleSourceError(
                    f"Example file {path} line {line_number} is not valid JSON: {error}."
                ) from error
    columns: dict[str, None] = {}  # ordered set: the keys in order of first appearance
    records = []
    for where_, obj in numbered:
        if not isinstance(obj, dict):
            raise ExampleSourceError(
                f"Example file {path} record {where_} is not a JSON object."
            )
        columns.update(dict.fromkeys(obj))
        records.append({key: _cell(value) for key, value in obj.items()})
    return RawRecords(list(columns), records, duplicate_columns=duplicates)


def _read_parquet_records(path: Path, encoding: str = "utf-8") -> RawRecords:
    """Records of a Parquet file (binary columns are decoded like CSV bytes)."""
    frame = pd.read_parquet(path)
    columns = [str(c) for c in frame.columns]
    records = [
        {name: _cell(value) for name, value in zip(columns, values)}
        for values in frame.itertuples(index=False, name=None)
    ]
    repeated = [name for name, n in Counter(columns).items() if n > 1]
    return RawRecords(columns, records, duplicate_columns={name: "as two columns" for name in repeated})
