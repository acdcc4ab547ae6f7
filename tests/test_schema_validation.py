"""Row-by-row validation of the examples table on a deliberately broken user file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from components.example_gen.ingest import ExampleSourceError, read_user_examples
from schemas.examples import (
    QUARANTINE_COLUMNS,
    QUARANTINE_TEXT_CHARS,
    REQUIRED_COLUMNS,
    VALIDATION_REASONS,
    printable_text,
    validate_examples,
)

VOCABULARY = {"intent": ["card_arrival", "lost_card"]}
ONE_MEGABYTE_TEXT = "x" * 1_000_000


@pytest.fixture
def broken_csv(tmp_path):
    """A CSV with one problem per row (and two good rows), written as raw bytes."""
    lines = [
        b"id,text,label",
        b"ok1,Where is my new card?,card_arrival",
        b"bad_utf8,Caf\xe9 card was lost,lost_card",  # Latin-1 byte: invalid UTF-8
        b"empty,,card_arrival",  # no text at all
        b'blank,"   ",card_arrival',  # text present but nothing left in it
        b"huge," + ONE_MEGABYTE_TEXT.encode() + b",lost_card",
        b"unknown,I lost my card,stolen_phone",  # label outside the vocabulary
        b"nolabel,I lost my card yesterday,",
        b"ok1,A second row reusing the first id,lost_card",
        b"ok2,My card has not arrived,card_arrival",
    ]
    path = tmp_path / "broken.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


def test_broken_file_gives_exact_quarantine_counts(broken_csv):
    df, undecodable_rows = read_user_examples(
        broken_csv, "text", "label", "intent", id_column="id"
    )
    assert len(df) == 9
    assert undecodable_rows == [2]

    valid, quarantine = validate_examples(df, VOCABULARY, max_text_chars=2_000)

    assert quarantine["reason"].value_counts().to_dict() == {
        "undecodable_bytes": 1,
        "missing_text": 1,
        "empty_after_cleaning": 1,
        "text_too_long": 1,
        "unknown_label": 1,
        "missing_label": 1,
        "duplicate_id": 1,
    }
    assert sorted(valid["id"]) == ["ok1", "ok2"]
    assert len(valid) + len(quarantine) == len(df)
    # The quarantined duplicate is the second copy (data row 8); the first copy stays valid.
    assert quarantine.loc[
        quarantine["reason"] == "duplicate_id", "source_row"
    ].tolist() == [8]
    assert valid.loc[valid["id"] == "ok1", "text"].item() == "Where is my new card?"


def test_quarantine_rows_are_short_printable_and_traceable(broken_csv):
    df, _ = read_user_examples(broken_csv, "text", "label", "intent", id_column="id")
    _, quarantine = validate_examples(df, VOCABULARY, max_text_chars=2_000)

    assert list(quarantine.columns) == list(QUARANTINE_COLUMNS)
    assert quarantine["text"].str.len().max() <= QUARANTINE_TEXT_CHARS
    assert set(quarantine["source"]) == {str(broken_csv)}
    by_reason = quarantine.set_index("reason")
    assert by_reason.loc["text_too_long", "source_row"] == 5
    # The bad byte is shown, not dropped, and the report can be written as UTF-8 JSON.
    assert by_reason.loc["undecodable_bytes", "text"] == "Caf\ufffd card was lost"
    json.dumps(quarantine.to_dict("records")).encode("utf-8")


def test_missing_mapped_column_names_it_and_lists_the_columns(broken_csv):
    with pytest.raises(
        ExampleSourceError, match=r"'category'.*columns found: 'id', 'text', 'label'"
    ):
        read_user_examples(broken_csv, "text", "category", "intent")


def _table(rows: list[dict]) -> pd.DataFrame:
    defaults = {"record_type": "user", "task": "intent", "source": "test.csv"}
    full = [
        {**defaults, "record_id": r["id"], "source_row": i, **r}
        for i, r in enumerate(rows, start=1)
    ]
    return pd.DataFrame(full)


def test_precedence_first_reason_wins():
    df = _table(
        [
            {"id": "a", "text": "fine text", "target": "lost_card"},
            # duplicate id AND empty text: the text problem wins
            {"id": "a", "text": "  ", "target": "lost_card"},
            # unknown task AND missing text: the task wins
            {"id": "b", "task": "horoscope", "text": None, "target": "lost_card"},
            # undecodable bytes AND unknown label: the bytes win
            {"id": "c", "text": "bad \ufffd byte", "target": "nope"},
            # too long AND missing label: the text wins
            {"id": "d", "text": "y" * 50, "target": None},
        ]
    )
    valid, quarantine = validate_examples(df, VOCABULARY, max_text_chars=20)
    assert quarantine.set_index("id")["reason"].to_dict() == {
        "a": "empty_after_cleaning",
        "b": "unknown_task",
        "c": "undecodable_bytes",
        "d": "text_too_long",
    }
    assert valid["id"].tolist() == ["a"]


def test_broken_first_copy_does_not_shadow_good_duplicate():
    df = _table(
        [
            {"id": "a", "text": None, "target": "lost_card"},
            {"id": "a", "text": "good copy", "target": "lost_card"},
            {"id": "a", "text": "third copy", "target": "lost_card"},
        ]
    )
    valid, quarantine = validate_examples(df, VOCABULARY, max_text_chars=100)
    assert valid["text"].tolist() == ["good copy"]
    assert quarantine["reason"].tolist() == ["missing_text", "duplicate_id"]


def test_vocabulary_and_free_text_rules():
    df = _table(
        [
            {
                "id": "a",
                "text": "hi",
                "target": "anything goes",
            },  # no vocabulary given: not checked
            {
                "id": "b",
                "task": "ticket_reply",
                "text": "help",
                "target": "We are on it.",
            },
            {"id": "c", "task": "ticket_reply", "text": "help", "target": " "},
            {"id": "d", "task": "ticket_priority", "text": "urgent", "target": "P9"},
        ]
    )
    valid, quarantine = validate_examples(df, None, max_text_chars=100)
    assert valid["id"].tolist() == ["a", "b", "d"]
    assert quarantine["reason"].tolist() == ["missing_label"]

    _, quarantine = validate_examples(
        df, {"ticket_priority": ["P1", "P2"]}, max_text_chars=100
    )
    assert quarantine.set_index("id")["reason"].to_dict() == {
        "c": "missing_label",
        "d": "unknown_label",
    }


def test_printable_text_shows_escaped_bytes_and_truncates():
    assert printable_text("Caf\udce9") == "Caf\\xe9"
    assert printable_text("z" * 500) == "z" * QUARANTINE_TEXT_CHARS
    assert printable_text(None) == ""


def test_flagged_ids_are_undecodable_even_after_cleaning():
    df = _table([{"id": "a", "text": "cleaned text", "target": "lost_card"}])
    _, quarantine = validate_examples(df, VOCABULARY, 100, undecodable_ids=["a"])
    assert quarantine["reason"].tolist() == ["undecodable_bytes"]


def test_valid_rows_have_declared_types_and_empty_quarantine_has_columns():
    df = _table([{"id": "a", "text": "hello", "target": "lost_card"}])
    valid, quarantine = validate_examples(df, VOCABULARY, 100)
    assert valid["source_row"].dtype == "int64"
    assert all(
        isinstance(valid[c].iloc[0], str)
        for c, kind in REQUIRED_COLUMNS.items()
        if kind is str
    )
    assert quarantine.empty and list(quarantine.columns) == list(QUARANTINE_COLUMNS)


def test_missing_required_column_raises():
    df = _table([{"id": "a", "text": "hello", "target": "lost_card"}]).drop(
        columns=["source_row"]
    )
    with pytest.raises(ValueError, match="source_row"):
        validate_examples(df, VOCABULARY, 100)


def test_reason_set_is_the_documented_one():
    assert VALIDATION_REASONS == (
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
