"""Reading user files (CSV, JSONL/JSON, Parquet) into the examples table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from components.example_gen.ingest import ExampleSourceError, read_user_examples
from schemas.examples import REQUIRED_COLUMNS

BANKING77_TRAIN = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "banking77"
    / "train.csv"
)

# Texts that break naive readers: commas, quotes, an embedded newline, non-ASCII, a label "?".
SOURCE = pd.DataFrame(
    {
        "ref": ["q-1", "q-2", "q-3", "q-4"],
        "utterance": [
            'Card "declined", twice',
            "Line one\nline two",
            "Zahlung über 50 €",
            "plain",
        ],
        "intent": [
            "declined_card_payment",
            "card_arrival",
            "reverted_card_payment?",
            "card_arrival",
        ],
        "channel": ["app", "web", "app", "phone"],
        "amount": [12.5, None, 50.0, 3.0],
    }
)


def _write(frame: pd.DataFrame, path: Path, line_ending: str = "\n") -> Path:
    if path.suffix == ".csv":
        # pandas leaves a bare "\n" unquoted when the terminator is "\r"; quote all so the file is sane.
        quoting = csv.QUOTE_ALL if line_ending == "\r" else csv.QUOTE_MINIMAL
        frame.to_csv(path, index=False, lineterminator=line_ending, quoting=quoting)
    elif path.suffix == ".jsonl":
        path.write_text(
            "".join(
                json.dumps(r, ensure_ascii=False) + line_ending
                for r in frame.to_dict("records")
            )
        )
    elif path.suffix == ".json":
        path.write_text(json.dumps(frame.to_dict("records"), ensure_ascii=False))
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize(
    "name, line_ending",
    [
        ("in.csv", "\n"),
        ("in.csv", "\r\n"),
        ("in.csv", "\r"),
        ("in.jsonl", "\n"),
        ("in.jsonl", "\r\n"),
        ("in.json", "\n"),
        ("in.parquet", "\n"),
    ],
)
def test_round_trip(tmp_path, name, line_ending):
    path = _write(SOURCE, tmp_path / name, line_ending)
    df, undecodable_rows = read_user_examples(
        path, "utterance", "intent", "intent", id_column="ref"
    )

    assert undecodable_rows == []
    assert list(df.columns) == [*REQUIRED_COLUMNS, "channel", "amount"]
    assert df["id"].tolist() == SOURCE["ref"].tolist()
    assert df["record_id"].tolist() == SOURCE["ref"].tolist()
    assert df["text"].tolist() == SOURCE["utterance"].tolist()
    assert df["target"].tolist() == SOURCE["intent"].tolist()
    assert df["channel"].tolist() == SOURCE["channel"].tolist()
    pd.testing.assert_series_equal(df["amount"], SOURCE["amount"], check_names=False)
    assert df["source_row"].tolist() == [1, 2, 3, 4]
    assert set(df["task"]) == {"intent"} and set(df["record_type"]) == {"user"}
    assert set(df["source"]) == {str(path)}


def test_ids_default_to_file_stem_and_row(tmp_path):
    frame = SOURCE.assign(ref=["a", "", "c", None])
    df, _ = read_user_examples(
        _write(frame, tmp_path / "queries.csv"), "utterance", "intent", "intent"
    )
    assert df["id"].tolist() == ["queries-1", "queries-2", "queries-3", "queries-4"]
    # A blank value in a mapped id column falls back to the same form.
    df, _ = read_user_examples(
        tmp_path / "queries.csv", "utterance", "intent", "intent", id_column="ref"
    )
    assert df["id"].tolist() == ["a", "queries-2", "c", "queries-4"]


def test_empty_cells_read_as_missing_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_bytes(
        b"text,label\r\n,card_arrival\r\n\r\n  ,card_arrival\r\nhello,\r\n"
    )
    df, _ = read_user_examples(path, "text", "label", "intent")
    assert pd.isna(df["text"].iloc[0])
    assert df["text"].iloc[1] == "  "
    assert pd.isna(df["target"].iloc[2])
    assert df["source_row"].tolist() == [1, 2, 3]


def test_invalid_utf8_rows_are_reported_not_fatal(tmp_path):
    csv_path = tmp_path / "bytes.csv"
    csv_path.write_bytes(
        b"\xef\xbb\xbftext,label\nfine,a\nbad \xff\xfe byte,a\nfine too,b\nlabel bad,\xe9\n"
    )
    df, undecodable_rows = read_user_examples(csv_path, "text", "label", "intent")
    assert undecodable_rows == [2, 4]
    assert len(df) == 4
    assert (
        df["text"].iloc[1] == "bad \ufffd\ufffd byte"
    )  # the BOM did not leak into the header

    # Bad bytes in a column the table does not use are harmless.
    notes_path = tmp_path / "notes.csv"
    notes_path.write_bytes(b"text,label,notes\nfine,a,caf\xe9\n")
    assert read_user_examples(notes_path, "text", "label", "intent")[1] == []

    jsonl_path = tmp_path / "bytes.jsonl"
    jsonl_path.write_bytes(
        b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "a"}\n'
    )
    _, undecodable_rows = read_user_examples(jsonl_path, "text", "label", "intent")
    assert undecodable_rows == [2]


def test_long_csv_field_is_read(tmp_path):
    path = _write(
        pd.DataFrame({"text": ["w" * 300_000], "label": ["a"]}), tmp_path / "long.csv"
    )
    df, _ = read_user_examples(path, "text", "label", "intent")
    assert len(df["text"].iloc[0]) == 300_000


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda d: d / "absent.csv", r"does not exist"),
        (lambda d: _touch(d / "data.xlsx", b"x"), r"unsupported extension '\.xlsx'"),
        (
            lambda d: _touch(d / "broken.parquet", b"not parquet at all"),
            r"could not be read as parquet",
        ),
        (lambda d: _touch(d / "empty.csv", b""), r"is empty"),
        (
            lambda d: _touch(d / "bad.jsonl", b'{"text": "a"}\n{oops\n'),
            r"line 2 is not valid JSON",
        ),
        (
            lambda d: _touch(d / "list.jsonl", b'["text"]\n'),
            r"record 1 is not a JSON object",
        ),
    ],
)
def test_file_problems_raise_one_clear_error(tmp_path, setup, match):
    with pytest.raises(ExampleSourceError, match=match):
        read_user_examples(setup(tmp_path), "text", "label", "intent")


def test_missing_column_and_unknown_task(tmp_path):
    path = _write(SOURCE, tmp_path / "in.parquet")
    with pytest.raises(
        ExampleSourceError,
        match=r"'label' \(label_column\).*columns found: 'ref', 'utterance', 'intent'",
    ):
        read_user_examples(path, "utterance", "label", "intent")
    with pytest.raises(ExampleSourceError, match=r"'nope' \(id_column\)"):
        read_user_examples(path, "utterance", "intent", "intent", id_column="nope")
    with pytest.raises(ExampleSourceError, match=r"Task 'sentiment'"):
        read_user_examples(path, "utterance", "intent", "sentiment")


def _touch(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.skipif(
    not BANKING77_TRAIN.exists(),
    reason=f"BANKING77 not found at {BANKING77_TRAIN} (needs ../shared)",
)
def test_banking77_ingests_completely():
    df, undecodable_rows = read_user_examples(
        BANKING77_TRAIN, "text", "category", "intent"
    )
    assert len(df) == 10_003
    assert df["target"].nunique() == 77
    assert undecodable_rows == []
    assert "reverted_card_payment?" in set(df["target"])
    assert (
        not df["text"].str.contains("\r").any()
    )  # CRLF endings are not part of the text
    assert df["id"].is_unique and df["id"].iloc[0] == "train-1"
