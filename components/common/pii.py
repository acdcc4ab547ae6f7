"""PII masking: replace personal data in free text with typed placeholders.

``mask_pii(text)`` returns the masked text and a ``Counter`` of what was masked, keyed by the
type names of ``PII_PLACEHOLDERS``. Detection runs on a *view* of the text in which every Unicode
decimal digit (Arabic-Indic, Devanagari, full-width, ...) reads as its ASCII digit and every dash
(en/em dash, minus, non-breaking hyphen) as ``-``; the view has the text's length, so a span found
in it is replaced in the text itself. Detectors run in a fixed order, each on the output of the
one before, because their patterns overlap:

1. ``EMAIL``      Unicode local parts and internationalised domains (``josé@banco.es``, ``用户@例子.公司``).
2. ``IBAN``       any country of the ISO 13616 registry (``python-stdnum``: its length and mod
                  97), spaced, dashed, lower-case or glued to a word (``IBANGB82...``); a
                  candidate that runs on into the next IBAN or word is cut to the valid prefix.
3. ``CARD``       every run of digit groups (one separator of `` -./`` between groups) is searched
                  for a Luhn-valid 13-19 digit window that starts and ends on a group boundary and
                  is laid out as cards are (one group, 4-4-4-4 with a short last group, Amex
                  4-6-5, Diners 4-6-4) with one separator kind: digits before or after (a date, a
                  CVV, an order number) do not hide a card, and two cards in one run are both found.
                  No issuer number starts with 0, so a window starting with 0 (17 zeros) stays.
                  ISO 11649 creditor references (``RF18 5390 0754 7034``) and one-word IBANs with
                  wrong check digits (a mistyped IBAN is not a card) are kept.
4. ``ACCOUNT``    8-12 digits after account/acct/acc/a/c (optionally "no"/"number"/"#", then
                  ``:#.=``); only the digits are masked, the keyword stays. Before phones, so an
                  account number starting with 0 is not read as a UK phone number.
5. ``SSN``        US ``123-45-6789`` / ``123 45 6789`` (never-issued areas 000, 666, 9xx excluded).
6. ``SORT_CODE``  UK ``12-34-56``, or ``12 34 56`` after "sort code"/"SC"; a dd-mm-yy that reads as
                  a date is a sort code only after such a keyword or next to an 8-digit account
                  number, which is then masked as ``ACCOUNT`` too (``12-34-56 12345678``).
7. ``PHONE``      validated with ``phonenumbers`` (offline metadata): ``+``/``00`` international
                  numbers (any country); national numbers with a trunk ``0`` of 10-11 digits
                  (UK possible, or valid in one of ``NATIONAL_REGIONS``: ``01 23 45 67 89``); North
                  American ``555 123 4567`` / ``(555) 123-4567`` / ``1-800-555-0199``. A bare digit
                  string without separators is a phone only when valid, or after a word such as
                  "call"/"phone"/"tel", so 10-digit references and tickets survive.

Masking is idempotent by construction: ``mask_pii`` repeats the detectors on its own output until
nothing more is found (each pass removes digits or an ``@``, so this ends), so masking masked text
changes nothing. Plain amounts, dates, times, short references and invalid-checksum look-alikes
survive. Texts without digits only pay for the e-mail check (and that only when they hold ``@``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import iso11649, numdb
from stdnum.iso7064 import mod_97_10

PII_PLACEHOLDERS = {
    "EMAIL": "[EMAIL]",
    "IBAN": "[IBAN]",
    "CARD": "[CARD]",
    "ACCOUNT": "[ACCOUNT]",
    "SSN": "[SSN]",
    "SORT_CODE": "[SORT_CODE]",
    "PHONE": "[PHONE]",
}
# Regions whose national (trunk-0) numbers are masked when valid there. Italy is left out on
# purpose: its numbering plan accepts almost any 0-led digit string, so references would go.
NATIONAL_REGIONS = ("GB", "FR", "DE", "NL", "IE", "BE", "AT", "CH")

# {country: IBAN length} of the ISO 13616 registry (python-stdnum's copy), e.g. "GB": 22.
IBAN_LENGTHS = {low: 4 + sum(int(n) for n in re.findall(r"(\d+)!", props["bban"]))
                for _, low, _, props, _ in numdb.get("iban").prefixes}
Span = tuple[int, int, str, str]  # (start, end, kind, replacement) in the view == in the text

# --- the detection view ----------------------------------------------------------------------

# All non-ASCII decimal digits below U+20000 (the last block of digits is U+1FBF0) and the dash
# look-alikes, each mapped to one ASCII character: the view keeps every position.
_VIEW_TABLE = {cp: 48 + unicodedata.decimal(chr(cp)) for cp in range(0x80, 0x20000) if chr(cp).isdecimal()}
_VIEW_TABLE.update({cp: ord("-") for cp in (0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2212, 0xFE63, 0xFF0D)})


def detection_view(text: str) -> str:
    """The text with every Unicode decimal digit as ASCII and every dash as '-', same length."""
    return text if text.isascii() else text.translate(_VIEW_TABLE)


def luhn_valid(digits: str) -> bool:
    """True when the digit string (any Unicode decimal digits) passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(detection_view(digits))):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """True for an IBAN (spaces/dashes ignored): a registry country, its length, and mod 97 == 1.

    The BBAN's letter/digit pattern is not required: a transcribed IBAN with a letter for a digit
    still passes mod 97 by chance only once in 97, and masking it errs on the safe side.
    """
    number = stdnum_iban.compact(candidate)
    return (IBAN_LENGTHS.get(number[:2]) == len(number) and number.isalnum() and number.isascii()
            and mod_97_10.is_valid(number[4:] + number[:4]))


# --- detectors: each maps the view to spans to replace -------------------------------------

_EMAIL_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.(?!\d+\b)\w{2,}")
_IBAN_START_RE = re.compile(r"[A-Z]{2}\d{2}[ -]?[A-Z0-9]", re.I)
_IBAN_CHAR_RE = re.compile(r"[ -]?([A-Z0-9])", re.I)
_RUN_RE = re.compile(r"\d+(?:[ ./-]\d+)*")
_IBAN_WORD_RE = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})\d{2}[A-Z0-9]{8,30}(?![A-Za-z0-9])")
_CREDITOR_REFERENCE_RE = re.compile(r"(?<![A-Z0-9])RF\d{2}(?:[ ]?[A-Z0-9]){1,21}(?![A-Z0-9])", re.I)
_ACCOUNT_RE = re.compile(
    r"(?<![\w/])(?:account|acct|acc|a/c)(?:\s*(?:no\.?|number|num|#))?\s*[:#.=]?\s*(\d{8,12})(?![\d-])", re.I
)
_SSN_RE = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_SORT_CODE_RE = re.compile(
    r"(?P<kw>(?<![\w/])(?:sort[ -]?code|s/c|sc)[ .:]*)?(?<![\d-])(?P<a>\d{2})(?P<sep>[- ])"
    r"(?P<b>\d{2})(?P=sep)(?P<c>\d{2})(?![\d-])(?P<acc>[ ,/]{1,3}(?P<acc_digits>\d{8})(?![\d-]))?",
    re.I,
)
_ACCOUNT_BEFORE_RE = re.compile(r"(?<![\d-])(\d{8})[ ,/]{1,3}$")
_PHONE_RUN_RE = re.compile(r"(?:\+|(?<!\d)00)?(?:\(\d{1,5}\)|\d)(?:[ .-]?(?:\(\d{1,5}\)|\d))*")
_PHONE_GROUP_RE = re.compile(r"\+?\(?\d+\)?")
_PHONE_KEYWORD_RE = re.compile(r"(?:phone|tel|telephone|mobile|mob|cell|call|ring|sms|whatsapp|fax)\W{0,12}$", re.I)
_NANP_LAYOUT_RE = re.compile(r"(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}")


def _email_spans(view: str) -> list[Span]:
    if "@" not in view:
        return []
    return [(m.start(), m.end(), "EMAIL", PII_PLACEHOLDERS["EMAIL"]) for m in _EMAIL_RE.finditer(view)]


def _iban_spans(view: str) -> list[Span]:
    spans, pos = [], 0
    while (m := _IBAN_START_RE.search(view, pos)) is not None:
        # Walk letters/digits (one space or dash between them) and keep the longest valid prefix:
        # the walk may run on into the next word or the next IBAN, which is searched again after.
        chars, ends, at = [], [], m.start()
        while len(chars) < 34 and (c := _IBAN_CHAR_RE.match(view, at)) is not None and (chars or c.start(1) == at):
            chars.append(c.group(1))
            at = c.end()
            ends.append(at)
        end = next((ends[n - 1] for n in range(len(chars), 14, -1) if iban_valid("".join(chars[:n]))), None)
        if end is None:
            pos = m.start() + 1
        else:
            spans.append((m.start(), end, "IBAN", PII_PLACEHOLDERS["IBAN"]))
            pos = end
    return spans


def _card_layout_ok(groups: list[str]) -> bool:
    lengths = [len(g) for g in groups]
    if len(lengths) == 1 or lengths in ([4, 6, 5], [4, 6, 4]):  # one block, Amex, Diners
        return True
    return all(n == 4 for n in lengths[:-1]) and 1 <= lengths[-1] <= 4


def _card_in_groups(groups: list[str], separators: list[str]) -> tuple[int, int] | None:
    """(first, last + 1) group indices of the longest card window starting at group 0, or None."""
    best, digits = None, ""
    for end in range(len(groups)):
        if end and separators[end - 1] != separators[0]:
            break  # one separator kind within a card
        digits += groups[end]
        if len(digits) > 19:
            break
        if (len(digits) >= 13 and digits[0] != "0" and _card_layout_ok(groups[: end + 1])
                and luhn_valid(digits)):
            best = (0, end + 1)
    return best


def _card_spans(view: str, protected: list[tuple[int, int]]) -> list[Span]:
    spans = []
    for run in _RUN_RE.finditer(view):
        if run.end() - run.start() < 13:
            continue
        groups, starts, separators = [], [], []
        for g in re.finditer(r"\d+", run.group(0)):
            if groups:
                separators.append(run.group(0)[g.start() - 1])
            groups.append(g.group(0))
            starts.append(run.start() + g.start())
        i = 0
        while i < len(groups):
            found = _card_in_groups(groups[i:], separators[i:])
            if found is None:
                i += 1
                continue
            last = i + found[1] - 1
            start, end = starts[i], starts[last] + len(groups[last])
            if not _overlaps(start, end, protected):
                spans.append((start, end, "CARD", PII_PLACEHOLDERS["CARD"]))
            i = last + 1
    return spans


def _not_cards(view: str) -> list[tuple[int, int]]:
    """Spans whose digits are never a card: creditor references, and one-word IBANs whose check
    digits are wrong (a mistyped IBAN: its BBAN digits can pass Luhn by chance)."""
    return _creditor_references(view) + [
        (m.start(), m.end()) for m in _IBAN_WORD_RE.finditer(view)
        if IBAN_LENGTHS.get(m.group(1)) == m.end() - m.start()]


def _creditor_references(view: str) -> list[tuple[int, int]]:
    if "rf" not in view.lower():
        return []
    return [(m.start(), m.end()) for m in _CREDITOR_REFERENCE_RE.finditer(view) if iso11649.is_valid(m.group(0))]


def _account_spans(view: str) -> list[Span]:
    return [(m.start(1), m.end(1), "ACCOUNT", PII_PLACEHOLDERS["ACCOUNT"]) for m in _ACCOUNT_RE.finditer(view)]


def _ssn_spans(view: str) -> list[Span]:
    return [(m.start(), m.end(), "SSN", PII_PLACEHOLDERS["SSN"]) for m in _SSN_RE.finditer(view)]


def _reads_as_date(a: int, b: int) -> bool:
    return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)


def _sort_code_spans(view: str) -> list[Span]:
    spans = []
    for m in _SORT_CODE_RE.finditer(view):
        code_start = m.start("a")
        before = _ACCOUNT_BEFORE_RE.search(view, 0, code_start)
        has_keyword, has_account = m.group("kw") is not None, m.group("acc") is not None or before is not None
        if m.group("sep") == " " and not has_keyword:
            continue  # "12 34 56" is a sort code only when named
        if not (has_keyword or has_account) and _reads_as_date(int(m.group("a")), int(m.group("b"))):
            continue  # 03-11-24 is a date unless something says otherwise
        spans.append((code_start, m.end("c"), "SORT_CODE", PII_PLACEHOLDERS["SORT_CODE"]))
        for account in (m.span("acc_digits") if m.group("acc") else None, before.span(1) if before else None):
            if account:
                spans.append((*account, "ACCOUNT", PII_PLACEHOLDERS["ACCOUNT"]))
    return spans


def _is_phone(candidate: str, keyword_before: bool) -> bool:
    """Whether one separated digit string is a phone number (rules in the module docstring)."""
    digits = re.sub(r"\D", "", candidate)
    separated = not candidate.isdigit()
    try:
        if candidate.startswith(("+", "00")):
            number = phonenumbers.parse("+" + candidate[2:] if candidate.startswith("00") else candidate, None)
            return 8 <= len(digits) - (2 if candidate.startswith("00") else 0) <= 15 and (
                phonenumbers.is_possible_number(number))
        if digits.startswith("0") and 10 <= len(digits) <= 11:
            if (separated or keyword_before) and phonenumbers.is_possible_number(phonenumbers.parse(digits, "GB")):
                return True
            return any(phonenumbers.is_valid_number(phonenumbers.parse(digits, region)) for region in NATIONAL_REGIONS)
        if len(digits) in (10, 11) and (_NANP_LAYOUT_RE.fullmatch(candidate) or keyword_before):
            return phonenumbers.is_possible_number(phonenumbers.parse(digits, "US"))
    except phonenumbers.NumberParseException:
        return False
    return False


def _phone_spans(view: str) -> list[Span]:
    spans = []
    for run in _PHONE_RUN_RE.finditer(view):
        text = run.group(0)
        if sum(ch.isdigit() for ch in text) < 8 or (run.start() and view[run.start() - 1].isalnum()):
            continue
        groups = [(g.start(), g.end()) for g in _PHONE_GROUP_RE.finditer(text)]
        keyword = _PHONE_KEYWORD_RE.search(view, 0, run.start()) is not None
        i = 0
        while i < len(groups):
            # The longest number starting at this group that the rules accept; digits before or
            # after it (a date, a reference) are left alone.
            end = next((j for j in range(len(groups) - 1, i - 1, -1)
                        if _is_phone(text[groups[i][0]:groups[j][1]], keyword and i == 0)), None)
            if end is None:
                i += 1
                continue
            spans.append((run.start() + groups[i][0], run.start() + groups[end][1], "PHONE", PII_PLACEHOLDERS["PHONE"]))
            i = end + 1
    return spans


def _overlaps(start: int, end: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start < r_end and r_start < end for r_start, r_end in ranges)


_DIGIT_RE = re.compile(r"\d")
# In matching order; each runs on the text the ones before it left.
_DETECTORS: list[Callable[[str], list[Span]]] = [
    _iban_spans,
    lambda view: _card_spans(view, _not_cards(view)),
    _account_spans,
    _ssn_spans,
    _sort_code_spans,
    _phone_spans,
]


def _replace(text: str, spans: list[Span], counts: Counter) -> str:
    """Replace non-overlapping spans (the first listed wins an overlap), counting each kind."""
    kept: list[Span] = []
    for span in spans:
        if not _overlaps(span[0], span[1], [(s[0], s[1]) for s in kept]):
            kept.append(span)
    for start, end, kind, replacement in sorted(kept, reverse=True):
        text = text[:start] + replacement + text[end:]
        counts[kind] += 1
    return text


def _mask_once(text: str, counts: Counter) -> str:
    text = _replace(text, _email_spans(detection_view(text)), counts)
    view = detection_view(text)
    if not _DIGIT_RE.search(view):
        return text
    for detect in _DETECTORS:
        text = _replace(text, detect(view), counts)
        view = detection_view(text)
    return text


def mask_pii(text: str) -> tuple[str, Counter]:
    """Mask card numbers, IBANs, e-mails, phones, SSNs, sort codes and account numbers."""
    counts: Counter = Counter()
    while True:
        before = sum(counts.values())
        text = _mask_once(text, counts)
        if sum(counts.values()) == before:
            return text, counts
