"""Leak-free, stratified, deterministic train/validation/test splits."""

from __future__ import annotations

import pandas as pd
import pytest

from components.transform import splitting
from components.transform.splitting import normalised_text_key, split_examples

# groups per intent label: the rare ones probe the "every label in every split" rule.
GROUPS_PER_LABEL = {
    "card_arrival": 60,
    "lost_card": 40,
    "top_up": 12,
    "refund": 4,
    "pin": 3,
    "rare": 2,
    "single": 1,
}


def _row(row_id, record_id, task, text, target, record_type="query"):
    return {
        "id": row_id, "record_id": record_id, "record_type": record_type, "task": task,
        "text": text, "target": target, "source": "simulated", "source_row": 0,
    }  # fmt: skip


@pytest.fixture
def examples() -> pd.DataFrame:
    rows = []
    for label, n_groups in GROUPS_PER_LABEL.items():
        for g in range(n_groups):
            rows.append(
                _row(
                    f"q-{label}-{g}",
                    f"q-{label}-{g}",
                    "intent",
                    f"question {g} about {label}",
                    label,
                )
            )
    # Near-duplicates of existing texts under other records: same key, so same group.
    rows.append(
        _row(
            "dup-1", "dup-1", "intent", "QUESTION 0 about card_arrival!", "card_arrival"
        )
    )
    rows.append(
        _row("dup-2", "dup-2", "intent", "  question 1 about   lost_card ", "lost_card")
    )
    # Multi-task tickets: three rows per record share record_id and text.
    for t in range(30):
        text, record = f"ticket {t}: my transfer is stuck", f"t-{t}"
        rows.append(
            _row(
                f"{record}-product",
                record,
                "ticket_product",
                text,
                ["transfers", "cards"][t % 2],
                "ticket",
            )
        )
        rows.append(
            _row(
                f"{record}-priority",
                record,
                "ticket_priority",
                text,
                ["high", "low", "medium"][t % 3],
                "ticket",
            )
        )
        rows.append(
            _row(
                f"{record}-reply",
                record,
                "ticket_reply",
                text,
                f"We will look at transfer {t}.",
                "ticket",
            )
        )
    # A record whose second row has a different text: links two text keys into one group.
    rows.append(_row("link-a", "link", "intent", "question 2 about top_up", "top_up"))
    rows.append(
        _row(
            "link-b",
            "link",
            "transaction_category",
            "TESCO STORES 1234",
            "groceries",
            "transaction",
        )
    )
    return pd.DataFrame(rows)


def _assert_leak_free(split_df: pd.DataFrame) -> None:
    keys = split_df["text"].map(normalised_text_key)
    assert (split_df.groupby(keys)["split"].nunique() == 1).all(), (
        "a text key is in two splits"
    )
    assert (split_df.groupby("record_id")["split"].nunique() == 1).all(), (
        "a record is in two splits"
    )


def test_deterministic_by_seed(examples):
    first, _ = split_examples(examples, seed=7)
    again, _ = split_examples(examples, seed=7)
    other, _ = split_examples(examples, seed=8)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()


def test_no_text_key_or_record_in_two_splits(examples):
    split_df, leaked = split_examples(examples)
    assert len(split_df) == len(examples) and leaked.empty
    _assert_leak_free(split_df)
    by_id = split_df.set_index("id")["split"]
    assert by_id["dup-1"] == by_id["q-card_arrival-0"]
    assert (
        by_id["link-b"] == by_id["q-top_up-2"]
    )  # joined through the shared record "link"
    assert "text_key" in split_df.columns and "reason" in leaked.columns


def test_every_label_with_three_groups_is_in_every_split(examples):
    split_df, _ = split_examples(examples, seed=3)
    intents = split_df[split_df["task"] == "intent"]
    splits_per_label = intents.groupby("target")["split"].agg(set)
    for label, n_groups in GROUPS_PER_LABEL.items():
        if n_groups >= 3:
            assert splits_per_label[label] == {"train", "validation", "test"}, label
        else:
            assert splits_per_label[label] == {"train"}, (
                label
            )  # too few to evaluate: keep for training
    # Multi-task tickets are stratified on their first label task (ticket_product).
    products = (
        split_df[split_df["task"] == "ticket_product"]
        .groupby("target")["split"]
        .agg(set)
    )
    assert all(s == {"train", "validation", "test"} for s in products)


def test_ratios_are_followed():
    rows = [
        _row(
            f"r{label}-{i}",
            f"r{label}-{i}",
            "intent",
            f"text {label} {i}",
            f"label_{label}",
        )
        for label in range(8)
        for i in range(50)
    ]
    split_df, _ = split_examples(pd.DataFrame(rows), ratios=(0.7, 0.2, 0.1))
    fractions = split_df["split"].value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(0.7, abs=0.01)
    assert fractions["validation"] == pytest.approx(0.2, abs=0.01)
    assert fractions["test"] == pytest.approx(0.1, abs=0.01)


def test_user_test_set_is_honoured_and_leaks_removed(examples):
    marked = examples.assign(split=None)
    user_test_ids = [f"q-card_arrival-{g}" for g in range(10)] + ["q-refund-0"]
    marked.loc[marked["id"].isin(user_test_ids), "split"] = "test"
    marked.loc[marked["id"] == "q-lost_card-5", "split"] = (
        "train"  # a stale value: reassigned freely
    )

    split_df, leaked = split_examples(marked, seed=1)

    assert sorted(split_df.loc[split_df["split"] == "test", "id"]) == sorted(
        user_test_ids
    )
    assert leaked["id"].tolist() == [
        "dup-1"
    ]  # same text as the user's test row q-card_arrival-0
    assert set(leaked["reason"]) == {"duplicate_of_test"}
    assert len(split_df) + len(leaked) == len(marked)
    _assert_leak_free(split_df)
    # The rest is split train:validation at 0.8:0.1, every label with 2+ groups in both.
    pool = split_df[split_df["split"] != "test"]
    assert pool["split"].value_counts(normalize=True)["validation"] == pytest.approx(
        1 / 9, abs=0.03
    )
    intents = pool[pool["task"] == "intent"].groupby("target")["split"].agg(set)
    assert intents["rare"] == {"train", "validation"}
    assert intents["single"] == {"train"}


def test_broken_grouping_is_caught_in_code(examples, monkeypatch):
    # If grouping ever ignored duplicates, the in-code leak check must stop the split.
    monkeypatch.setattr(
        splitting,
        "_group_rows",
        lambda record_ids, keys: __import__("numpy").arange(len(keys)),
    )
    duplicated = pd.concat([examples] * 3, ignore_index=True)
    duplicated["record_id"] = [f"r{i}" for i in range(len(duplicated))]
    with pytest.raises(AssertionError, match="appear in several splits"):
        split_examples(duplicated)


@pytest.mark.parametrize(
    "ratios", [(0.5, 0.5), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)]
)
def test_bad_ratios_are_refused(examples, ratios):
    with pytest.raises(ValueError, match="ratio"):
        split_examples(examples, ratios=ratios)


def test_normalised_text_key():
    assert normalised_text_key("  Café — CARD, declined!! ") == normalised_text_key(
        "cafe card declined"
    )
    assert normalised_text_key("card declined") != normalised_text_key("card accepted")
