"""PII masking: replace personal data in free text with typed placeholders.

``mask_pii(text)`` returns the masked text and a ``Counter`` of what was masked, keyed by the
type names of ``PII_PLACEHOLDERS``. Detectors run in a fixed order, each on the output of the
one before, because their patterns overlap:

1. ``EMAIL``      first, so digits inside an address never look like a phone or account.
2. ``IBAN``       two letters, two check digits, up to 30 more letters/digits, with or without
                  spaces; masked only when the country's length matches and the ISO 13616 mod-97
                  check passes. Before cards, because an IBAN's digit tail can be Luhn-valid.
3. ``CARD``       13-19 digits, plain or grouped by single spaces or dashes (groups of four,
                  Amex 4-6-5, Diners 4-6-4), masked only when Luhn-valid: a 16-digit order
                  number that fails Luhn stays. Before phones and account numbers.
4. ``ACCOUNT``    8-12 digits right after account/acct/acc/a/c (optionally "no"/"number"/"#");
                  only the digits are masked, the keyword stays. Before phones, so an account
                  number starting with 0 is not read as a UK phone number.
5. ``SSN``        US 123-45-6789 (never-issued areas 000, 666, 9xx excluded).
6. ``SORT_CODE``  UK 12-34-56.
7. ``PHONE``      international ``+44 20 7946 0958`` / ``+44 (0)20 ...`` (8-15 digits), US
                  ``(555) 123-4567`` / ``555-123-4567``, UK national ``07700 900123`` /
                  ``020 7946 0958`` (10-11 digits starting with 0).

Plain amounts, ISO/slash dates, short references and invalid-checksum look-alikes survive.
Texts without digits only pay for the e-mail check (and that only when they contain ``@``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

PII_PLACEHOLDERS = {
    "EMAIL": "[EMAIL]",
    "IBAN": "[IBAN]",
    "CARD": "[CARD]",
    "ACCOUNT": "[ACCOUNT]",
    "SSN": "[SSN]",
    "SORT_CODE": "[SORT_CODE]",
    "PHONE": "[PHONE]",
}

# ISO 13616 IBAN lengths (SWIFT registry) for the countries a fintech text is likely to hold.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """True for a well-formed IBAN (spaces ignored): known country, its length, mod 97 == 1."""
    iban = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


# --- detectors: each returns the replacement for a match, or None to keep it ----------------


def _mask_iban(m: re.Match) -> str | None:
    # The pattern may run on into the next word ("... 7654 32 please"): try shorter prefixes.
    tokens = m.group(0).split(" ")
    for end in range(len(tokens), 0, -1):
        prefix = " ".join(tokens[:end])
        if iban_valid(prefix):
            return PII_PLACEHOLDERS["IBAN"] + m.group(0)[len(prefix) :]
    return None


_SEPARATOR_RE = re.compile(r"[ -]")


def _card_groups_ok(groups: list[str]) -> bool:
    lengths = [len(g) for g in groups]
    if len(lengths) == 1:
        return True
    if lengths in ([4, 6, 5], [4, 6, 4]):  # Amex, Diners
        return True
    return all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _mask_card(m: re.Match) -> str | None:
    text = m.group(0)
    if " " in text and "-" in text:
        return None  # mixed separators: a list of numbers, not one card
    groups = _SEPARATOR_RE.split(text)
    # Grouped digits may run on into a following number: drop trailing groups until it fits.
    for end in range(len(groups), 0, -1):
        digits = "".join(groups[:end])
        if len(digits) < 13:
            break
        if len(digits) <= 19 and _card_groups_ok(groups[:end]) and luhn_valid(digits):
            return PII_PLACEHOLDERS["CARD"] + text[len(" ".join(groups[:end])) :]
    return None


def _mask_account(m: re.Match) -> str:
    return m.group(0)[: m.start(1) - m.start(0)] + PII_PLACEHOLDERS["ACCOUNT"]


def _mask_phone(m: re.Match) -> str | None:
    n_digits = sum(ch.isdigit() for ch in m.group(0))
    if m.group(0).startswith("+"):
        return PII_PLACEHOLDERS["PHONE"] if 8 <= n_digits <= 15 else None
    if m.group(0).startswith("0") and m.group(0)[1].isdigit():
        return PII_PLACEHOLDERS["PHONE"] if 10 <= n_digits <= 11 else None
    return PII_PLACEHOLDERS["PHONE"]


def _always(name: str) -> Callable[[re.Match], str]:
    placeholder = PII_PLACEHOLDERS[name]
    return lambda m: placeholder


_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IBAN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![A-Za-z0-9])", re.I)
_CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,22}(?!\d)")
_ACCOUNT_RE = re.compile(
    r"(?<![\w/])(?:account|acct|acc|a/c)(?:\s*(?:no\.?|number|num|#))?\s*[:#.]?\s*(\d{8,12})(?![\d-])", re.I
)
_SSN_RE = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_SORT_CODE_RE = re.compile(r"(?<![\d-])\d{2}-\d{2}-\d{2}(?![\d-])")
_PHONE_RE = re.compile(
    r"\+\d{1,3}(?:[ .-]?\(0\))?(?:[ .-]?\d{1,5}){1,5}(?!\d)"  # +44 20 7946 0958
    r"|(?<!\w)(?:\+?1[ .-]?)?\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}(?!\d)"  # (555) 123-4567
    r"|(?<![\w.-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w-])"  # 555-123-4567
    r"|(?<![\w+-])0\d{2,4} ?\d{3,4} ?\d{3,4}(?![\d-])"  # 07700 900123, 020 7946 0958
)
_DIGIT_RE = re.compile(r"\d")

# (type, pattern, replacement-or-None), in matching order; all need a digit
_DETECTORS = [
    ("IBAN", _IBAN_RE, _mask_iban),
    ("CARD", _CARD_RE, _mask_card),
    ("ACCOUNT", _ACCOUNT_RE, _mask_account),
    ("SSN", _SSN_RE, _always("SSN")),
    ("SORT_CODE", _SORT_CODE_RE, _always("SORT_CODE")),
    ("PHONE", _PHONE_RE, _mask_phone),
]


def mask_pii(text: str) -> tuple[str, Counter]:
    """Mask card numbers, IBANs, e-mails, phones, SSNs, sort codes and account numbers."""
    counts: Counter = Counter()

    def run(name: str, pattern: re.Pattern, replace: Callable[[re.Match], str | None], text: str) -> str:
        def one(m: re.Match) -> str:
            out = replace(m)
            if out is None:
                return m.group(0)
            counts[name] += 1
            return out

        return pattern.sub(one, text)

    if "@" in text:
        text = run("EMAIL", _EMAIL_RE, _always("EMAIL"), text)
    if _DIGIT_RE.search(text):
        for name, pattern, replace in _DETECTORS:
            text = run(name, pattern, replace, text)
    return text, counts
