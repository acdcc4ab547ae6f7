"""Text cleaning and financial normalisation for fintech text.

``clean_text`` makes text well-formed: HTML entities unescaped, Unicode NFKC (full-width digits,
non-breaking spaces, ligatures become plain), control and zero-width characters removed,
whitespace collapsed. Line breaks survive (runs of blank lines become one blank line) because
tickets are ``Subject: ...\\n\\n<body>`` and the paragraph structure carries meaning.

``normalise_financial`` gives the model one spelling for things written many ways:

- amounts: ``$1,234.50``, ``1.234,50 EUR``, ``USD 12``, ``£7``, ``12.5 GBP``, ``20 euros`` all
  become ``<ISO code> <value with 2 decimals>``, e.g. ``USD 1234.50``; a minus sign stays in
  front of the value (``GBP -23.45``). ``$`` is read as USD. Number parsing: when both ``,`` and
  ``.`` occur, the last one is the decimal mark; a lone separator followed by exactly three
  digits is a thousands separator (``1,234`` = 1234, ``1.234 EUR`` = 1234), otherwise decimal
  (``12,5 EUR`` = 12.50). Bare numbers without a currency are left alone.
- dates: ``2024-11-03``, ``03/11/2024``, ``3.11.24``, ``3 Nov 2024``, ``Nov 3, 2024`` become
  ISO ``2024-11-03``. Slash/dot dates are read day-first (DD/MM/YYYY, the UK/EU convention
  and the one the simulated data uses) when ambiguous; a first field > 12 can only be the day
  and a second field > 12 can only be the day (month-first, ``11/23/2024``), whatever
  ``day_first`` says. Pass ``day_first=False`` for US-style data. Two-digit years are 20YY.
  Impossible dates (``31/02/2024``) are left as they were.
- banking shorthand expanded as whole words, case-insensitively: acct/acc/a/c -> account,
  pmt/pymt -> payment, xfer/xfr/trf -> transfer, txn/trx -> transaction, bal -> balance,
  amt -> amount, stmt -> statement, chq -> cheque, wdl/wdrl -> withdrawal, dep -> deposit,
  intl -> international, ccy -> currency. An all-capitals abbreviation expands in capitals.

Dates are rewritten before amounts so the year of ``03/11/2024 GBP 12`` is never read as an
amount. All patterns are compiled once at import; the fast paths skip work on plain ASCII text.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import unicodedata

# C0/C1 controls except \t \n \r, plus zero-width and bidi marks that NFKC keeps.
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_HSPACE_RE = re.compile(r"[^\S\n]+")  # any whitespace except newline
_SPACED_NEWLINE_RE = re.compile(r" ?\n ?")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Unescape HTML entities, NFKC-normalise, drop control characters, collapse whitespace."""
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).replace("\u2028", "\n").replace("\u2029", "\n\n")
    text = _CONTROL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _HSPACE_RE.sub(" ", text)
    if "\n" in text:
        text = _BLANK_LINES_RE.sub("\n\n", _SPACED_NEWLINE_RE.sub("\n", text))
    return text.strip()


# --- dates -------------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_MONTH_NAME = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_ISO_DATE_RE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_NUMERIC_DATE_RE = re.compile(r"(?<![\d/.-])(\d{1,2})([/.])(\d{1,2})\2(\d{4}|\d{2})(?![\d/]|\.\d)")
_DAY_MONTH_RE = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH_NAME + r",?\s+(\d{4})\b", re.I)
_MONTH_DAY_RE = re.compile(r"\b" + _MONTH_NAME + r"\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})\b", re.I)


def _iso(year: int, month: int, day: int, original: str) -> str:
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return original  # 31/02/2024 is not a date; leave it for a human to see


def _numeric_date(match: re.Match, day_first: bool) -> str:
    a, b, year = int(match.group(1)), int(match.group(3)), match.group(4)
    year_value = int(year) + 2000 if len(year) == 2 else int(year)
    if a > 12 or (day_first and b <= 12):
        day, month = a, b
    else:
        month, day = a, b
    return _iso(year_value, month, day, match.group(0))


# --- amounts -----------------------------------------------------------------------------------

_CODES = "USD|EUR|GBP|JPY|CHF|CAD|AUD|NZD|SEK|NOK|DKK|PLN|CZK|HUF|INR|SGD|HKD|MXN|ZAR|BRL|CNY|TRY|AED"
_SYMBOLS = {"$": "USD", "£": "GBP", "€": "EUR", "¥": "JPY"}
_WORDS = {"dollar": "USD", "dollars": "USD", "euro": "EUR", "euros": "EUR", "pound": "GBP",
          "pounds": "GBP", "quid": "GBP"}  # fmt: skip
_NUMBER = r"\d{1,3}(?:[.,]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_END = r"(?![\d/-]|[.,]\d)"  # the number really ends here (not 12.345, not a date)
_SYMBOL = r"[$£€¥]"
_AMOUNT_RE = re.compile(
    # USD 12 | GBP -23.45
    rf"(?<!\w)(?P<pc>{_CODES})\s?(?P<ps>[-+]?)(?P<pn>{_NUMBER}){_END}"
    # $1,234.50 | -£68.00
    rf"|(?P<ss>[-+]?)(?P<sy>{_SYMBOL})\s?(?P<sn>{_NUMBER}){_END}"
    # 12.5 GBP | 1.234,50 EUR | 12,50€ | 20 euros; never starts inside a word, number or date
    rf"|(?<![\w.,/-])(?P<ns>[-+]?)(?P<nn>{_NUMBER})\s?"
    # ...but in "#1083 EUR -45.43" the code belongs to the amount after it
    rf"(?:(?P<nc>{_CODES})(?!\s?[-+]?(?:{_NUMBER}){_END})|(?P<nsy>{_SYMBOL})|(?P<nw>{'|'.join(_WORDS)}))"
    r"(?!\w)",
    re.IGNORECASE,
)


def _parse_number(raw: str) -> float:
    """1,234.50 / 1.234,50 / 1,234 / 12,5 -> float (rules in the module docstring)."""
    last_dot, last_comma = raw.rfind("."), raw.rfind(",")
    if last_dot >= 0 and last_comma >= 0:
        decimal = "." if last_dot > last_comma else ","
    elif last_dot >= 0 or last_comma >= 0:
        sep = "." if last_dot >= 0 else ","
        decimal = None if len(raw) - raw.rfind(sep) - 1 == 3 else sep
    else:
        decimal = None
    if decimal is None:
        return float(raw.replace(",", "").replace(".", ""))
    whole, fraction = raw.rsplit(decimal, 1)
    return float(whole.replace(",", "").replace(".", "") + "." + fraction)


def _amount(match: re.Match) -> str:
    g = match.groupdict()
    if g["pc"]:
        code, sign, raw = g["pc"].upper(), g["ps"], g["pn"]
    elif g["sy"]:
        code, sign, raw = _SYMBOLS[g["sy"]], g["ss"], g["sn"]
    else:
        sign, raw = g["ns"], g["nn"]
        if g["nc"]:
            code = g["nc"].upper()
        elif g["nsy"]:
            code = _SYMBOLS[g["nsy"]]
        else:
            code = _WORDS[g["nw"].lower()]
    return f"{code} {sign}{_parse_number(raw):.2f}"


# --- abbreviations -----------------------------------------------------------------------------

ABBREVIATIONS = {
    "acct": "account", "acc": "account", "a/c": "account", "pmt": "payment", "pymt": "payment",
    "xfer": "transfer", "xfr": "transfer", "trf": "transfer", "txn": "transaction",
    "trx": "transaction", "bal": "balance", "amt": "amount", "stmt": "statement", "chq": "cheque",
    "wdl": "withdrawal", "wdrl": "withdrawal", "dep": "deposit", "intl": "international",
    "ccy": "currency",
}  # fmt: skip
_ABBREVIATION_RE = re.compile(
    r"(?<![\w/])(" + "|".join(sorted(map(re.escape, ABBREVIATIONS), key=len, reverse=True)) + r")(?![\w/])",
    re.IGNORECASE,
)


def _expand(match: re.Match) -> str:
    word = match.group(1)
    full = ABBREVIATIONS[word.lower()]
    return full.upper() if word.isupper() and len(word) > 1 else full


def normalise_financial(text: str, day_first: bool = True) -> str:
    """Canonical amounts (``USD 1234.50``), ISO dates and expanded banking abbreviations."""
    if any(ch.isdigit() for ch in text):
        text = _ISO_DATE_RE.sub(lambda m: _iso(int(m[1]), int(m[2]), int(m[3]), m[0]), text)
        text = _NUMERIC_DATE_RE.sub(lambda m: _numeric_date(m, day_first), text)
        text = _DAY_MONTH_RE.sub(lambda m: _iso(int(m[3]), _MONTHS[m[2].lower()], int(m[1]), m[0]), text)
        text = _MONTH_DAY_RE.sub(lambda m: _iso(int(m[3]), _MONTHS[m[1].lower()], int(m[2]), m[0]), text)
        text = _AMOUNT_RE.sub(_amount, text)
    return _ABBREVIATION_RE.sub(_expand, text)
