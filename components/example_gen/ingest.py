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
        columns, records = readers[file_format](path, encoding)
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

    for role, column in (
        ("text_column", text_column),
        ("label_column", label_column),
        ("id_column", id_column),
    ):
        if column is not None and column not in columns:
            raise ExampleSourceError(
                f"Column {column!r} ({role}) is not in {path}; columns found: {', '.join(map(repr, columns))}."
            )
    return _examples_table(
        path, columns, records, text_column, label_column, task, id_column, record_type
    )


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


def _decode(data: bytes, encoding: str = "utf-8") -> str:
    # A byte-order mark names the encoding (and is dropped); surrogateescape keeps bad bytes visible per row.
    for mark, marked_encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            errors = "surrogateescape" if marked_encoding == "utf-8-sig" else "replace"  # (UTF-16/32 cannot escape)
            return data.decode(marked_encoding, errors=errors)
    return data.decode(encoding, errors="surrogateescape")


def other_encoding_that_fits(path: Path, tried: str) -> str | None:
    """For a text file with bytes invalid in `tried`: 'cp1252' when the whole file decodes as that, else None."""
    if tried.lower().replace("_", "-") not in ("utf-8", "utf8") or path.suffix.lower() == ".parquet":
        return None
    try:
        path.read_bytes().decode("cp1252")
    except (UnicodeDecodeError, OSError):
        return None
    return "cp1252"


def _cell(value: object) -> str | None:
    """A raw value as str, with empty and null values as None (so they read as missing)."""
    if value is None:
        return None
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


def _read_csv_records(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[dict]]:
    """Header and records of a CSV file with any line endings; blank lines are skipped."""
    text = _decode(path.read_bytes(), encoding)
    with _large_csv_fields():
        # newline="" lets the csv module see \r\n, \r and \n, including inside quoted fields.
        rows = [
            row
            for row in csv.reader(io.StringIO(text, newline=""))
            if any(cell.strip() for cell in row)
        ]
    if not rows:
        raise ExampleSourceError(
            f"Example file {path} is empty; it needs a header row and data rows."
        )
    header = [name.strip() for name in rows[0]]
    records = []
    for row in rows[1:]:
        records.append(
            {
                name: _cell(row[i]) if i < len(row) else None
                for i, name in enumerate(header)
            }
        )
    return header, records


def _read_json_records(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[dict]]:
    """Records of a JSON Lines file, or of a `.json` file holding one array of objects."""
    text = _decode(path.read_bytes(), encoding)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            objects = json.loads(text)
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
            try:
                numbered.append((line_number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ExampleSourceError(
                    f"Example file {path} line {line_number} is not valid JSON: {error}."
                ) from error
    columns: dict[str, None] = {}  # ordered set: the keys in order of first appearance
    records = []
    for where, obj in numbered:
        if not isinstance(obj, dict):
            raise ExampleSourceError(
                f"Example file {path} record {where} is not a JSON object."
            )
        columns.update(dict.fromkeys(obj))
        records.append({key: _cell(value) for key, value in obj.items()})
    return list(columns), records


def _read_parquet_records(path: Path, encoding: str = "utf-8") -> tuple[list[str], list[dict]]:
    """Records of a Parquet file (binary columns are decoded like CSV bytes)."""
    frame = pd.read_parquet(path)
    columns = [str(c) for c in frame.columns]
    records = [
        {name: _cell(value) for name, value in zip(columns, values)}
        for values in frame.itertuples(index=False, name=None)
    ]
    return columns, records
