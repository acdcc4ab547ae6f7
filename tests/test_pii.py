"""Tests of mask_pii (components/common/pii.py); test data computes its own checksums."""

import numpy as np
import pytest

from components.common.pii import PII_PLACEHOLDERS, mask_pii
from components.common.text_cleaning import clean_text

RNG_SEED = 20241103


def luhn_check_digit(payload: str) -> str:
    digits = [int(c) for c in payload][::-1]
    total = sum(sum(divmod(d * 2, 10)) if i % 2 == 0 else d for i, d in enumerate(digits))
    return str((10 - total % 10) % 10)


def make_cards(n: int) -> list[str]:
    """n Luhn-valid card numbers of 13-19 digits in plain, spaced and dashed layouts."""
    rng = np.random.default_rng(RNG_SEED)
    cards = []
    for i in range(n):
        length = [13, 14, 15, 16, 16, 16, 17, 18, 19][i % 9]
        payload = str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, length - 2)))
        number = payload + luhn_check_digit(payload)
        layout = i % 3
        if layout == 0:
            cards.append(number)
        elif length == 15:
            cards.append(f"{number[:4]} {number[4:10]} {number[10:]}")
        else:
            sep = " " if layout == 1 else "-"
            cards.append(sep.join(number[j : j + 4] for j in range(0, length, 4)))
    return cards


def make_iban(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def spaced(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


IBANS = [
    "GB82WEST12345698765432",  # the ISO 13616 example
    "DE89370400440532013000",
    make_iban("GB", "NWBK60161331926819"),
    make_iban("FR", "20041010050500013M02606"),
    make_iban("NL", "ABNA0417164300"),
    make_iban("ES", "21000418450200051332"),
    make_iban("IT", "X0542811101000000123456"),
    make_iban("IE", "AIBK93115212345678"),
    make_iban("BE", "539007547034"),
    make_iban("PL", "109010140000071219812874"),
]

EMAILS = ["john.smith@example.com", "a_b+tag@mail.co.uk", "Olivia.Khan42@outlook.com", "x@y.io"]
PHONES = ["+44 20 7946 0958", "+44 (0)20 7946 0958", "+44 7700 900123", "+1 212 555 0147",
          "(555) 123-4567", "+1 (415) 555-0132", "312-555-0123", "07700 900123", "020 7946 0958",
          "0161 496 0000", "+49 30 901820", "+33 1 42 68 53 00"]  # fmt: skip


def assert_masked(text: str, secret: str, kind: str) -> None:
    masked, counts = mask_pii(text)
    assert PII_PLACEHOLDERS[kind] in masked, (text, masked)
    assert secret not in masked and counts[kind] >= 1, (text, masked, counts)


@pytest.mark.parametrize("card", make_cards(63))
def test_luhn_valid_cards_are_masked(card):
    assert_masked(f"my card {card} was charged twice", card, "CARD")


def test_card_next_to_other_numbers():
    card = make_cards(1)[0]
    masked, counts = mask_pii(f"{card} 2024")
    assert masked == "[CARD] 2024" and counts == {"CARD": 1}


@pytest.mark.parametrize("iban", IBANS)
@pytest.mark.parametrize("layout", [str, spaced, str.lower])
def test_valid_ibans_are_masked(iban, layout):
    assert_masked(f"Please send it to {layout(iban)} please.", layout(iban), "IBAN")


@pytest.mark.parametrize("email", EMAILS)
def test_emails_are_masked(email):
    assert_masked(f"write to {email}, thanks", email, "EMAIL")


@pytest.mark.parametrize("phone", PHONES)
def test_phones_are_masked(phone):
    assert_masked(f"call me on {phone} after 5pm", phone, "PHONE")


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("SSN 123-45-6789 ok", "SSN [SSN] ok", "SSN"),
        ("sort code 12-34-56.", "sort code [SORT_CODE].", "SORT_CODE"),
        ("my acct no 12345678", "my acct no [ACCOUNT]", "ACCOUNT"),
        ("Account number: 0123456789", "Account number: [ACCOUNT]", "ACCOUNT"),
        ("FPS TO J SMITH A/C 87654321 SC 20-45-77", "FPS TO J SMITH A/C [ACCOUNT] SC [SORT_CODE]", "ACCOUNT"),
    ],
)
def test_other_identifiers(text, expected, kind):
    masked, counts = mask_pii(text)
    assert masked == expected and counts[kind] == 1


def test_non_luhn_16_digit_numbers_survive():
    rng = np.random.default_rng(RNG_SEED + 1)
    for _ in range(60):
        payload = str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, 14)))
        wrong = str((int(luhn_check_digit(payload)) + int(rng.integers(1, 10))) % 10)
        text = f"order number {payload + wrong} shipped"
        assert mask_pii(text) == (text, {}), text


@pytest.mark.parametrize("iban", IBANS)
def test_invalid_iban_checksums_survive(iban):
    broken = iban[:2] + f"{(int(iban[2:4]) + 1) % 100:02d}" + iban[4:]
    for text in (f"IBAN {broken}", f"IBAN {spaced(broken)}"):
        masked, counts = mask_pii(text)
        assert "IBAN" not in counts and "[IBAN]" not in masked, text


@pytest.mark.parametrize(
    "text",
    [
        "I paid $1,234.50 on 03/11/2024",
        "1.234,50 EUR on 2024-11-03",
        "USD 1234.50 2024-11-03 ref 8K2P4Q",
        "POS 4411 TESCO STORES 2231 LONDON GB -23.45 GBP 3 Nov 2024",
        "Case ID RF-ABC123, 42 items, version 1.2.3",
        "transfer of 2500 pounds in 2 days",
        "ticket 000-12-3456 and 666-12-3456",  # never-issued SSN areas
        "batch 012 345 678 and 01234 5678 9012",  # 0-led but not 10-11 digits: not UK phones
    ],
)
def test_amounts_dates_and_references_survive(text):
    assert mask_pii(text) == (text, {})


def test_counts_several_types_at_once():
    text = "mail a.b@c.com, card 4539 1488 0343 6467, call 07700 900123, IBAN GB82 WEST 1234 5698 7654 32"
    masked, counts = mask_pii(text)
    assert masked == "mail [EMAIL], card [CARD], call [PHONE], IBAN [IBAN]"
    assert counts == {"EMAIL": 1, "CARD": 1, "PHONE": 1, "IBAN": 1}
    assert set(counts) <= set(PII_PLACEHOLDERS)


# --- every case of the bad-input sweep (issue 19): leaked before, masked now ---------------------

REPORTED_LEAKS = [
    ("2024-11-03 4242 4242 4242 4242 TESCO GBP 12.00", "2024-11-03 [CARD] TESCO GBP 12.00"),
    ("card 4111-1111-1111-1111 123", "card [CARD] 123"),
    ("order 12 4111 1111 1111 1111", "order 12 [CARD]"),
    ("card-4111111111111111", "card-[CARD]"),
    ("cards 4111 1111 1111 1111 and 5500 0000 0000 0004", "cards [CARD] and [CARD]"),
    ("4111 1111 1111 1111 5500 0000 0000 0004", "[CARD] [CARD]"),
    ("from GB82 WEST 1234 5698 7654 32 to DE89 3704 0044 0532 0130 00", "from [IBAN] to [IBAN]"),
    ("card 4111.1111.1111.1111", "card [CARD]"),
    ("card 4111/1111/1111/1111", "card [CARD]"),
    ("card 4111\u20131111\u20131111\u20131111", "card [CARD]"),  # en dash
    ("card \u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661",
     "card [CARD]"),  # Arabic-Indic digits
    ("card \u096a\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967\u0967",
     "card [CARD]"),  # Devanagari digits
    ("IBANGB82WEST12345698765432", "IBAN[IBAN]"),
    ("IBAN:DE89370400440532013000", "IBAN:[IBAN]"),
    ("IBAN AZ21NABZ00000000137010001944", "IBAN [IBAN]"),  # a country the old length table lacked
    ("to BR1800360305000010009795493C1 now", "to [IBAN] now"),
    ("josé.garcía@banco.es wrote", "[EMAIL] wrote"),
    ("用户@例子.公司", "[EMAIL]"),
    ("call 555 123 4567", "call [PHONE]"),
    ("ring 1-800-555-0199 today", "ring [PHONE] today"),
    ("(020) 7946 0958", "[PHONE]"),
    ("0044 20 7946 0958", "[PHONE]"),
    ("appelez le 01 23 45 67 89", "appelez le [PHONE]"),  # French national format
    ("SSN 123 45 6789", "SSN [SSN]"),
    ("sort code 12 34 56", "sort code [SORT_CODE]"),
    ("account=12345678", "account=[ACCOUNT]"),
    ("12-34-56 12345678", "[SORT_CODE] [ACCOUNT]"),  # an account next to a sort code, no keyword
]


@pytest.mark.parametrize(("text", "expected"), REPORTED_LEAKS)
def test_reported_leaks_are_masked_and_masking_is_idempotent(text, expected):
    masked, counts = mask_pii(clean_text(text))
    assert masked == expected and sum(counts.values()) == expected.count("[")
    assert mask_pii(masked) == (masked, {})


@pytest.mark.parametrize("text", [
    "paid on 03-11-24 thanks",  # a dd-mm-yy date, not a sort code
    "ticket 4829104755 is open", "ref 1234567890 done",  # 10-digit references, not phones
    "00000000000000000 placeholder",  # 17 zeros: Luhn-valid, but no card starts with 0
    "Payment ref RF18539007547034", "Payment ref RF18 5390 0754 7034",  # ISO 11649 creditor references
])
def test_reported_overmasks_survive(text):
    assert mask_pii(text) == (text, {})
