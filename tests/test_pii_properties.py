"""Property-based tests of the PII masker and the text cleaner (Hypothesis).

The cases come from `data.pii_corpus`, driven by Hypothesis's own `random.Random` so that a
failure is replayed and shrunk to the seed that breaks it. Leak check: the PII's letters and
digits (any script, as ASCII) must not occur in the masked text's letters and digits
(`data.pii_corpus.survives`, the same check `make bench-pii` counts).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.common.pii import PII_PLACEHOLDERS, mask_pii
from components.common.text_cleaning import clean_text
from components.example_gen.component import clean_and_mask
from data.pii_corpus import KINDS, lookalike_case, pii_case, survives

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def masked_like_example_gen(text: str) -> tuple[str, dict]:
    return mask_pii(clean_text(text))


@SETTINGS
@given(rng=st.randoms(use_true_random=False), kind=st.sampled_from(KINDS))
def test_no_generated_pii_survives(rng, kind):
    case = pii_case(rng, kind)
    masked, counts = masked_like_example_gen(case.text)
    assert not survives(clean_text(case.secret), masked), (case, masked)
    assert PII_PLACEHOLDERS[kind] in masked and counts[kind] >= 1, (case, masked, counts)


@SETTINGS
@given(rng=st.randoms(use_true_random=False))
def test_lookalikes_survive_unchanged(rng):
    case = lookalike_case(rng)
    cleaned = clean_text(case.text)
    assert mask_pii(cleaned) == (cleaned, {}), case


@SETTINGS
@given(rng=st.randoms(use_true_random=False), kind=st.sampled_from(KINDS))
def test_masking_is_idempotent_on_pii_lines(rng, kind):
    masked, _ = masked_like_example_gen(pii_case(rng, kind).text)
    assert mask_pii(masked) == (masked, {})


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_any_text_cleans_and_masks_without_crashing_and_idempotently(text):
    masked, counts = mask_pii(clean_text(text))
    assert isinstance(masked, str) and set(counts) <= set(PII_PLACEHOLDERS)
    assert mask_pii(masked) == (masked, {})
    assert clean_text(clean_text(text)) == clean_text(text)


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet="0123456789 -./+()@acnotu", max_size=60))
def test_digit_soup_is_idempotent(text):
    masked, _ = mask_pii(text)
    assert mask_pii(masked) == (masked, {})


def test_ids_holding_pii_are_pseudonymised_uniquely_and_counted():
    import pandas as pd

    frame = pd.DataFrame({
        "id": ["ann@example.com", "bob@example.com", "ann@example.com", "row-4"],
        "record_id": ["ann@example.com", "bob@example.com", "ann@example.com", "row-4"],
        "text": ["hi", "card 4111 1111 1111 1111", "hi", "call 020 7946 0958"],
        "target": ["a", "b", "a", "c"], "channel": ["app", "mail bob@example.com", "app", "app"],
        "source": ["f.csv"] * 4, "source_row": [1, 2, 3, 4], "task": ["intent"] * 4, "record_type": ["query"] * 4,
    })
    masked, counts = clean_and_mask(frame)
    assert masked["id"].tolist() == ["[EMAIL]#1", "[EMAIL]#2", "[EMAIL]#1", "row-4"]
    assert masked["record_id"].tolist() == masked["id"].tolist()
    assert masked["text"].tolist() == ["hi", "card [CARD]", "hi", "call [PHONE]"]
    assert masked["channel"].tolist() == ["app", "mail [EMAIL]", "app", "app"]
    assert counts == {"EMAIL": 4, "CARD": 1, "PHONE": 1}  # 3 id rows + 1 channel; record_ids are the ids
    assert "@" not in "".join(masked.astype(str).to_numpy().ravel())
