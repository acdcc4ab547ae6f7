"""Tests of the simulated fintech data generator (data/simulated.py)."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common.pii import luhn_valid, mask_pii
from data.simulated import COLUMNS, generate_examples, labels_by_task

LABELS_JSON = Path(__file__).resolve().parents[1] / "data" / "labels.json"
LABEL_TASKS = ["intent", "transaction_category", "ticket_product", "ticket_priority"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_examples(600, seed=0)


@pytest.fixture(scope="module")
def big_frame() -> pd.DataFrame:
    return generate_examples(6000, seed=1)


def test_columns_ids_and_rows(frame):
    assert list(frame.columns) == COLUMNS
    assert frame["id"].is_unique
    assert set(frame["source"]) == {"simulated"}
    assert frame["source_row"].dtype == np.int64
    assert sorted(frame["source_row"].unique()) == list(range(1, 601))
    assert (frame["id"] == frame["record_id"] + "-" + frame["task"]).all()
    # 1 row per query/transaction, 3 per ticket; 50/30/20 record mix.
    per_type = frame.drop_duplicates("record_id")["record_type"].value_counts().to_dict()
    assert per_type == {"customer_query": 300, "transaction": 180, "support_ticket": 120}
    assert len(frame) == 300 + 180 + 3 * 120
    for column in ["text", "target", "channel", "currency", "mcc", "date"]:
        assert all(isinstance(v, str) for v in frame[column]), column
    assert frame["text"].str.len().min() > 5


def test_same_seed_same_frame_other_seed_differs():
    a, b = generate_examples(300, seed=7), generate_examples(300, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = generate_examples(300, seed=8)
    assert (a["text"] != c["text"]).mean() > 0.9


def test_labels_json_matches_generator():
    labels = json.loads(LABELS_JSON.read_text())
    assert labels == labels_by_task()
    assert labels["ticket_priority"] == ["low", "medium", "high", "urgent"]
    for task in ["intent", "transaction_category", "ticket_product"]:
        assert labels[task] == sorted(labels[task])
    assert len(labels["intent"]) >= 20 and len(labels["transaction_category"]) >= 12
    for names in labels.values():
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in names)


def test_every_label_appears_enough_for_a_stratified_split(frame):
    labels = json.loads(LABELS_JSON.read_text())
    for task in LABEL_TASKS:
        counts = frame.loc[frame["task"] == task, "target"].value_counts()
        assert set(counts.index) == set(labels[task]), task
        assert counts.min() >= 6, (task, counts.idxmin(), counts.min())
        assert counts.max() >= 2 * counts.min(), f"{task} should be imbalanced"


def test_ticket_rows_share_text_and_reply_is_text(frame):
    tickets = frame[frame["record_type"] == "support_ticket"]
    grouped = tickets.groupby("record_id")
    assert (grouped["text"].nunique() == 1).all()
    expected = ["ticket_priority", "ticket_product", "ticket_reply"]
    assert all(sorted(tasks) == expected for tasks in grouped["task"].apply(list))
    assert tickets["text"].str.match(r"Subject: [^\n]+\n\n").all()
    replies = tickets.loc[tickets["task"] == "ticket_reply", "target"]
    assert replies.str.startswith("Dear ").all() and replies.nunique() > 50
    assert set(tickets["channel"]) == {"email", "chat", "phone", "app", "branch"}


def test_slice_columns(frame):
    txn = frame[frame["record_type"] == "transaction"]
    other = frame[frame["record_type"] != "transaction"]
    assert (txn["amount"] > 0).all() and other["amount"].isna().all()
    assert txn["currency"].str.fullmatch(r"[A-Z]{3}").all() and (other["currency"] == "").all()
    assert txn["mcc"].str.fullmatch(r"\d{4}").all() and (other["mcc"] == "").all()
    assert pd.to_datetime(txn["date"], format="%Y-%m-%d").notna().all()
    assert (other["date"] == "").all()
    assert (frame.loc[frame["record_type"] != "support_ticket", "channel"] == "").all()


def test_texts_are_varied_and_noisy(big_frame):
    queries = big_frame.loc[big_frame["task"] == "intent", "text"]
    assert queries.nunique() > 2000
    assert queries.str.contains(r"\b(?:acct|pmt|xfer|txn|bal|amt)\b").sum() > 20
    assert (queries == queries.str.lower()).mean() > 0.08
    # slot fillers land where they belong (a card kind, not a card number, in "my {card} card")
    assert queries.str.contains(r"\b(?:Visa|Mastercard|debit|metal|virtual) card", case=False).sum() > 50
    txn = big_frame.loc[big_frame["task"] == "transaction_category", "text"]
    assert txn.nunique() > 0.95 * len(txn)
    for fmt in [r"\d{2}/\d{2}/\d{4}", r"\d{4}-\d{2}-\d{2}", r"\d{1,2} [A-Z][a-z]{2} \d{4}",
                r"[$£€]\d", r"\d,\d{2} EUR", r"\b(?:USD|GBP|EUR) -?\d"]:  # fmt: skip
        assert txn.str.contains(fmt).sum() > 20, fmt


def test_priority_correlates_with_product(big_frame):
    tickets = big_frame[big_frame["record_type"] == "support_ticket"]
    wide = tickets.pivot(index="record_id", columns="task", values="target")
    urgent_share = (wide["ticket_priority"] == "urgent").groupby(wide["ticket_product"]).mean()
    assert urgent_share["fraud"] > 2 * (wide["ticket_priority"] == "urgent").mean()
    assert urgent_share["savings"] < urgent_share["fraud"]


def test_some_records_carry_pii_and_lookalikes(big_frame):
    records = big_frame.drop_duplicates("record_id")
    masked = [mask_pii(t) for t in records["text"]]
    pii_share = np.mean([sum(c.values()) > 0 for _, c in masked])
    assert 0.04 < pii_share < 0.10, pii_share  # ~7% by design
    kinds = set().union(*(c.keys() for _, c in masked))
    assert {"CARD", "IBAN", "EMAIL", "PHONE", "SSN", "ACCOUNT"} <= kinds
    # After masking no Luhn-valid card number and no e-mail address is left ...
    for text, _ in masked:
        assert "@" not in text
        for run in re.findall(r"\d(?:[ -]?\d){12,18}", text):
            assert not luhn_valid(re.sub(r"\D", "", run)), text
    # ... but the 16-digit non-Luhn order numbers are still there.
    survivors = sum(bool(re.search(r"(?<!\d)\d{16}(?!\d)", text)) for text, _ in masked)
    assert survivors > 20


def test_many_records_keep_unique_record_ids():
    # (speed is measured by `make bench-data`, not asserted here: these machines are shared)
    frame = generate_examples(20_000, seed=3)
    assert frame["record_id"].nunique() == 20_000


def test_zero_records_gives_empty_frame_with_columns():
    frame = generate_examples(0, seed=0)
    assert frame.empty and list(frame.columns) == COLUMNS
