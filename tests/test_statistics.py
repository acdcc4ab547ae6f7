"""Data statistics: numbers checked by hand on a tiny table, and the written report."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from components.transform.statistics import (
    compute_statistics,
    content_terms,
    write_statistics,
)
from schemas.examples import quarantine_rows


def _row(row_id, split, task, text, target):
    return {
        "id": row_id, "record_id": row_id.split("/")[0], "record_type": "query", "task": task, "text": text,
        "target": target, "source": "simulated", "source_row": 1, "split": split,
    }  # fmt: skip


@pytest.fixture
def splits_df() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _row(
                "a", "train", "intent", "Where is my card?", "card_arrival"
            ),  # 5 tokens, 17 chars
            _row(
                "b", "train", "intent", "My card is still not here", "card_arrival"
            ),  # 6 tokens
            _row("c", "train", "intent", "I lost my card", "lost_card"),  # 4 tokens
            _row(
                "d", "validation", "intent", "Card lost at the station", "lost_card"
            ),  # 5 tokens
            _row(
                "e", "test", "intent", "card arrival time", "card_arrival"
            ),  # 3 tokens
            _row(
                "t/p",
                "train",
                "ticket_product",
                "Transfer stuck since Monday",
                "transfers",
            ),  # 4 tokens
            _row(
                "t/r",
                "train",
                "ticket_reply",
                "Transfer stuck since Monday",
                "Sorry, we are checking it now.",
            ),
        ]
    )


@pytest.fixture
def quarantine_df() -> pd.DataFrame:
    bad = pd.DataFrame(
        [
            _row("x", None, "intent", "", "lost_card"),
            _row("y", None, "intent", None, "lost_card"),
        ]
    )
    return quarantine_rows(bad, ["empty_after_cleaning", "missing_text"])


def test_counts_per_split_and_label(splits_df, quarantine_df):
    stats = compute_statistics(
        splits_df, quarantine_df, Counter({"card_number": 2, "email": 1})
    )
    assert stats["rows"] == 7
    assert stats["rows_per_split"] == {"train": 5, "validation": 1, "test": 1}
    intent = stats["tasks"]["intent"]
    assert intent["num_labels"] == 2
    assert intent["rows_per_split"] == {"train": 3, "validation": 1, "test": 1}
    assert intent["rows_per_split_and_label"] == {
        "card_arrival": {"train": 2, "validation": 0, "test": 1},
        "lost_card": {"train": 1, "validation": 1, "test": 0},
    }
    assert (
        stats["tasks"]["ticket_reply"]["target_length_tokens"]["max"] == 8.0
    )  # "Sorry , we are checking it now ."
    assert stats["pii"] == {"total": 3, "by_kind": {"card_number": 2, "email": 1}}
    assert stats["quarantine"] == {
        "rows": 2,
        "reasons": {"empty_after_cleaning": 1, "missing_text": 1},
    }


def test_lengths_vocabulary_and_top_terms(splits_df, quarantine_df):
    stats = compute_statistics(splits_df, quarantine_df, {})
    # Six distinct texts (the ticket text once): token lengths 5, 6, 4, 5, 3, 4.
    assert stats["text_length"]["tokens"] == {
        "p5": 3.2,
        "p50": 4.5,
        "p95": 5.8,
        "max": 6.0,
    }
    assert stats["text_length"]["chars"]["max"] == len("Transfer stuck since Monday")
    assert sum(stats["length_histogram"]["tokens"]["counts"]) == 6
    expected_vocabulary = {
        "where", "is", "my", "card", "still", "not", "here", "i", "lost", "at", "the", "station",
        "arrival", "time", "transfer", "stuck", "since", "monday",
    }  # fmt: skip
    assert stats["vocabulary_size"] == len(expected_vocabulary)
    top = stats["tasks"]["intent"]["top_terms_per_label"]
    assert top["card_arrival"][0] == ["card", 3]
    assert top["lost_card"] == [
        ["card", 2],
        ["lost", 2],
        ["station", 1],
    ]  # "I", "my", "at", "the" are stop words
    assert content_terms("I'm at the ATM, it's 24/7") == ["atm"]


def test_empty_inputs_do_not_crash():
    empty = pd.DataFrame(columns=["id", "record_id", "task", "text", "target", "split"])
    stats = compute_statistics(empty, pd.DataFrame(columns=["reason"]), {})
    assert stats["rows"] == 0 and stats["text_length"]["chars"]["p50"] is None
    assert stats["quarantine"]["rows"] == 0


def test_write_statistics(tmp_path, splits_df, quarantine_df):
    stats = compute_statistics(splits_df, quarantine_df, {"iban": 4})
    paths = write_statistics(stats, tmp_path / "stats")
    assert [p.name for p in paths] == [
        "statistics.json",
        "statistics.md",
        "label_distribution.png",
        "length_histogram.png",
    ]
    assert json.loads(paths[0].read_text()) == stats
    markdown = paths[1].read_text()
    assert "| card_arrival | 2 | 0 | 1 | card, arrival, still, time |" in markdown
    assert "| missing_text | 1 |" in markdown and "| iban | 4 |" in markdown
    for png in paths[2:]:
        assert (
            png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2_000
        )
