"""Generated PII cases in realistic statement lines and ticket texts, and look-alikes that must survive.

Shared by the property-based tests (`tests/test_pii_properties.py`, which hand Hypothesis's
`random.Random` to these functions) and `make bench-pii` (a seeded corpus of thousands of
cases). Every identifier computes its own check digits (Luhn, ISO 13616 mod 97, ISO 11649), so
a PII case is real PII by its own standard and a look-alike is one by construction:

- ``pii_case(rng)`` -> ``PiiCase(text, kind, secret)``: one card / IBAN / e-mail / phone / SSN /
  sort code / account number, in any of the formats a bank's texts hold (separators, Unicode
  digits, digits glued before and after), inside a statement line or a ticket sentence.
- ``lookalike_case(rng)`` -> ``PiiCase(text, "LOOKALIKE", "")``: order numbers failing Luhn,
  dates, amounts, times, tickets, references, creditor references, zeros, invalid IBANs.
"""

from __future__ import annotations

import random
import re
import unicodedata
from typing import NamedTuple

from stdnum import iban as stdnum_iban
from stdnum import iso11649, numdb
from stdnum.iso7064 import mod_97_10


class PiiCase(NamedTuple):
    text: str
    kind: str  # a key of PII_PLACEHOLDERS, or "LOOKALIKE"
    secret: str  # the PII as written into the text ("" for a look-alike)


# Digits of other scripts that customers type (NFKC leaves all but the full-width ones alone).
DIGIT_SCRIPTS = {"ascii": "0123456789", "arabic_indic": "٠١٢٣٤٥٦٧٨٩", "devanagari": "०१२३४५६७८९",
                 "fullwidth": "０１２３４５６７８９", "bengali": "০১২৩৪৫৬৭৮৯"}  # fmt: skip
CARD_SEPARATORS = [" ", "-", ".", "/", "\u2013"]  # en dash
# {country: BBAN format}, e.g. "GB": "4!a6!n8!n", for every country of the ISO 13616 registry.
IBAN_FORMATS = {low: props["bban"] for _, low, _, props, _ in numdb.get("iban").prefixes}

MERCHANTS = ["TESCO STORES", "AMAZON MKTPLACE", "UBER *TRIP", "SAINSBURYS", "NETFLIX.COM", "SHELL 4021"]
CURRENCIES = ["GBP", "EUR", "USD"]


def digits(rng: random.Random, n: int, first_nonzero: bool = False) -> str:
    head = str(rng.randint(1, 9)) if first_nonzero else str(rng.randint(0, 9))
    return (head + "".join(str(rng.randint(0, 9)) for _ in range(n - 1)))[:n]


def luhn_check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def in_script(text: str, script: str) -> str:
    return text.translate(str.maketrans("0123456789", DIGIT_SCRIPTS[script]))


def card(rng: random.Random) -> str:
    """A Luhn-valid card number written as customers write them."""
    length = rng.choice([13, 14, 15, 16, 16, 16, 16, 17, 18, 19])
    payload = rng.choice(["4", "51", "55", "34", "37", "6011", "35", "2221"])
    payload += digits(rng, length - 1 - len(payload))
    number = payload + luhn_check_digit(payload)
    layout = rng.choice(["plain", "groups", "groups", "groups"])
    sep = rng.choice(CARD_SEPARATORS)
    if layout == "groups" and length == 15:
        number = sep.join([number[:4], number[4:10], number[10:]])
    elif layout == "groups" and length == 14 and rng.random() < 0.5:
        number = sep.join([number[:4], number[4:10], number[10:]])
    elif layout == "groups":
        number = sep.join(number[i:i + 4] for i in range(0, length, 4))
    script = rng.choice(["ascii"] * 6 + ["arabic_indic", "devanagari", "fullwidth", "bengali"])
    return in_script(number, script)


def _bban(rng: random.Random, spec: str) -> str:
    out = []
    for count, kind in re.findall(r"(\d+)!([nac])", spec):
        for _ in range(int(count)):
            if kind == "n":
                out.append(str(rng.randint(0, 9)))
            elif kind == "a":
                out.append(chr(rng.randint(65, 90)))
            else:
                out.append(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return "".join(out)


def iban(rng: random.Random) -> str:
    """A valid IBAN of any registry country, compact, spaced, dashed, lower-case or glued to 'IBAN'."""
    country = rng.choice(sorted(IBAN_FORMATS))
    bban = _bban(rng, IBAN_FORMATS[country])
    number = country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban
    layout = rng.choice(["compact", "spaced", "spaced", "lower", "dashed"])
    if layout == "spaced":
        return " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    if layout == "dashed":
        return "-".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number.lower() if layout == "lower" else number


def email(rng: random.Random) -> str:
    local = rng.choice(["john.smith", "a_b+tag", "Olivia.Khan42", "josé.garcía", "müller", "用户", "x", "o'neil"])
    domain = rng.choice(["example.com", "mail.co.uk", "banco.es", "例子.公司", "xn--bnco-0ra.es", "почта.рф"])
    return f"{local}@{domain}"


def phone(rng: random.Random) -> str:
    n = lambda k: digits(rng, k)  # noqa: E731
    area = str(rng.randint(2, 9)) + n(2)
    exchange = str(rng.randint(2, 9)) + n(2)
    return rng.choice([
        f"+44 20 7946 {n(4)}", f"+44 (0)20 7946 {n(4)}", f"0044 20 7946 {n(4)}", f"020 7946 {n(4)}",
        f"(020) 7946 {n(4)}", f"07700 900{n(3)}", f"0161 496 {n(4)}", f"+44 7700 900{n(3)}",
        f"{area} {exchange} {n(4)}", f"({area}) {exchange}-{n(4)}", f"{area}-{exchange}-{n(4)}",
        f"1-800-{exchange}-{n(4)}", f"+1 {area} {exchange} {n(4)}", f"+1 ({area}) {exchange}-{n(4)}",
        f"01 {n(2)} {n(2)} {n(2)} {n(2)}", f"06 {n(2)} {n(2)} {n(2)} {n(2)}", f"+33 1 {n(2)} {n(2)} {n(2)} {n(2)}",
        f"+49 30 {n(6)}", f"+34 91 {n(3)} {n(2)} {n(2)}", f"+353 1 {n(3)} {n(4)}",
    ])


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return rng.choice("- ").join([f"{area:03d}", f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"])


def sort_code(rng: random.Random) -> tuple[str, str]:
    """(text, secret): a sort code named by a keyword, or one that cannot read as a date."""
    a, b, c = rng.randint(0, 99), rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        code = f"{a:02d}{rng.choice('- ')}{b:02d}"
        code = code + code[2] + f"{c:02d}"
        return f"{rng.choice(['sort code', 'Sort Code:', 'SC'])} {code}", code
    a = rng.randint(32, 99)  # no day is 32 or more: not a date
    code = f"{a:02d}-{b:02d}-{c:02d}"
    return code, code


def account(rng: random.Random) -> tuple[str, str]:
    number = digits(rng, rng.choice([8, 8, 10, 12]))
    keyword = rng.choice(["account no", "acct:", "Account number:", "A/C", "account=", "acc #"])
    if rng.random() < 0.2:
        code = f"{rng.randint(0, 99):02d}-{rng.randint(0, 99):02d}-{rng.randint(0, 99):02d}"
        number = number[:8]
        return f"{code} {number}", number
    return f"{keyword} {number}", number


CONTEXTS = [
    "{date} {pii} {merchant} {currency} {amount}",
    "POS {date} CARD {pii} {merchant}",
    "Hi, my card {pii} was charged twice on {date}",
    "order {short} {pii}",
    "{pii} {short}",
    "Please send the refund to {pii}, thanks",
    "Subject: complaint\n\nCall me on {pii} or write back. Ref {ref}.",
    "FPS TO J SMITH {pii} REF {ref}",
    "from {pii} to {pii2}",
    "{pii}",
]
GENERATORS = {"CARD": card, "IBAN": iban, "EMAIL": email, "PHONE": phone, "SSN": ssn}
KEYWORDED = {"SORT_CODE": sort_code, "ACCOUNT": account}
KINDS = [*GENERATORS, *KEYWORDED]


def _fill(rng: random.Random, template: str, **values: str) -> str:
    defaults = {"date": rng.choice(["2024-11-03", "03/11/2024", "3 Nov 2024", "03-11-24"]),
                "merchant": rng.choice(MERCHANTS), "currency": rng.choice(CURRENCIES),
                "amount": f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}", "short": str(rng.randint(1, 999)),
                "ref": "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6))}
    return template.format(**{**defaults, **values})


def pii_case(rng: random.Random, kind: str | None = None) -> PiiCase:
    """One PII value of `kind` (random if None) inside a realistic line; the second slot gets another."""
    kind = kind or rng.choice(KINDS)
    if kind in GENERATORS:
        secret = GENERATORS[kind](rng)
        text_of, second = secret, GENERATORS[kind](rng)
    else:
        text_of, secret = KEYWORDED[kind](rng)
        second = KEYWORDED[kind](rng)[0]
    template = rng.choice(CONTEXTS)
    if kind == "PHONE" and template.startswith("{pii} {short}"):
        template = "{pii}, {short} items"  # digits glued after a phone make a longer valid number
    return PiiCase(_fill(rng, template, pii=text_of, pii2=second), kind, secret)


def lookalike_case(rng: random.Random) -> PiiCase:
    """A line full of numbers that are not PII: every one must survive masking unchanged."""
    payload = digits(rng, rng.choice([12, 13, 14, 15, 16, 17, 18]), first_nonzero=True)
    wrong = str((int(luhn_check_digit(payload)) + rng.randint(1, 9)) % 10)
    rf_body = digits(rng, rng.randint(6, 15), first_nonzero=True)
    valid_iban = iban(rng).replace(" ", "").replace("-", "").upper()
    broken_iban = valid_iban[:2] + f"{(int(valid_iban[2:4]) + rng.randint(1, 96)) % 97 + 2:02d}"[-2:] + valid_iban[4:]
    value = rng.choice([
        f"order number {payload + wrong} shipped",
        f"paid on {rng.randint(1, 28):02d}-{rng.randint(1, 12):02d}-{rng.randint(20, 29)} thanks",
        f"{rng.randint(2020, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d} GBP {rng.randint(1, 9999)}.{rng.randint(0, 99):02d}",
        f"ticket {digits(rng, 10, first_nonzero=True)} is open",
        f"ref {digits(rng, rng.randint(6, 12), first_nonzero=True)} done",
        f"Payment ref {iso11649.format('RF' + mod_97_10.calc_check_digits(rf_body + 'RF') + rf_body)}",
        f"I paid ${rng.randint(1, 9)},{rng.randint(100, 999)}.{rng.randint(10, 99)} on "
        f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2020, 2026)}",
        f"POS {rng.randint(1000, 9999)} {rng.choice(MERCHANTS)} {rng.randint(1000, 9999)} LONDON GB "
        f"-{rng.randint(1, 99)}.{rng.randint(10, 99)} GBP",
        f"{'0' * rng.randint(13, 19)} placeholder",
        f"version {rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 99)} build {digits(rng, 8, True)}",
        f"IBAN {broken_iban} rejected" if not stdnum_iban.is_valid(broken_iban, check_country=False)
        else "IBAN rejected",
        f"ticket 000-{rng.randint(10, 99)}-{rng.randint(1000, 9999)} and 666-{rng.randint(10, 99)}-1234",
        f"card expires {rng.randint(1, 12):02d}/{rng.randint(25, 35)}, CVV withheld",
        f"TXN-{rng.randint(2020, 2026)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}-{digits(rng, 6)}",
    ])
    return PiiCase(value, "LOOKALIKE", "")


def letters_and_digits(text: str) -> str:
    """The text's letters and digits only, lower-case, every decimal digit (any script) as ASCII."""
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch.lower() for ch in text if ch.isalnum())


def survives(secret: str, masked: str) -> bool:
    """Whether the PII's letters and digits still stand, in order, in the masked text: the leak check
    of the tests and of `make bench-pii` (separators and digit scripts cannot hide a leak)."""
    return letters_and_digits(secret) in letters_and_digits(masked)


def corpus(n_pii: int, n_lookalikes: int, seed: int = 0) -> list[PiiCase]:
    """A seeded corpus: PII cases cycling through every kind, then look-alikes."""
    rng = random.Random(seed)
    return ([pii_case(rng, KINDS[i % len(KINDS)]) for i in range(n_pii)]
            + [lookalike_case(rng) for _ in range(n_lookalikes)])
