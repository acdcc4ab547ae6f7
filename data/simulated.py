"""Simulated fintech examples: customer queries, card/bank transactions and support tickets.

``generate_examples(num_records, seed)`` returns a long-format DataFrame with one row per
(record, task): a customer query gives an ``intent`` row, a transaction a
``transaction_category`` row, and a support ticket three rows (``ticket_product``,
``ticket_priority``, ``ticket_reply``) that share ``record_id`` and ``text``.

Design:

- Words live in ``data.vocabularies``; this module only combines them. Query texts are
  paraphrase templates x slot fillers x openers/closers x noise (typos, casing, ``acct``/``pmt``
  shorthand, dropped punctuation); transactions are statement descriptors + amount + date in
  varied formats; tickets are ``Subject: ...\\n\\n<body>`` with product- and priority-specific
  wording, and a templated agent reply as the ``ticket_reply`` target.
- Labels are dealt by quota, not drawn independently: Zipf-ish shares (rank ** -0.5, first
  label of each vocabulary list most common) rounded by largest remainder, then shuffled. That
  gives real-looking imbalance with a guaranteed floor, so with 600 records every label has
  enough rows for a stratified split. Record types are dealt 50/30/20 the same way.
- Ticket priority is dealt by quota too, but to tickets ranked by product severity + noise, so
  fraud tickets are mostly urgent without priority being a function of product.
- About 7% of records carry PII-like strings (Luhn-valid card numbers, mod-97-valid IBANs,
  e-mails, phones, SSNs, account numbers with sort codes) and about 5% carry look-alikes
  (16-digit non-Luhn order numbers, reference codes): ``text`` is raw, masking is Transform's job.
- Slash dates are always day-first (DD/MM/YYYY), the convention ``normalise_financial`` assumes.
- All randomness comes from one ``numpy.random.default_rng(seed)``; uniforms are drawn in blocks
  (``_Stream``) because a Generator call per choice would dominate the run time at 100k records.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
from functools import cache

import numpy as np
import pandas as pd

from data import vocabularies as vocab
from data.vocabularies.transactions import CARD_PATTERNS

COLUMNS = ["id", "record_id", "record_type", "task", "text", "target", "source", "source_row",
           "channel", "amount", "currency", "mcc", "date"]  # fmt: skip
RECORD_TYPES = ["customer_query", "transaction", "support_ticket"]
RECORD_TYPE_SHARES = [0.5, 0.3, 0.2]
ZIPF_EXPONENT = 0.5
PII_RATE = 0.07
LOOKALIKE_RATE = 0.05
_FIRST_DATE = dt.date(2024, 1, 1)
_DATES = [_FIRST_DATE + dt.timedelta(days=k) for k in range(700)]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_REF_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
_ABBREVIATION_RE = re.compile(r"\b(" + "|".join(vocab.ABBREVIATIONS) + r")\b", re.IGNORECASE)


def labels_by_task() -> dict[str, list[str]]:
    """The sorted label vocabulary of every label task (what data/labels.json must contain)."""
    return {
        "intent": sorted(vocab.INTENT_TEMPLATES),
        "transaction_category": sorted(vocab.CATEGORIES),
        "ticket_product": sorted(vocab.TICKET_PRODUCTS),
        "ticket_priority": list(vocab.PRIORITIES),
    }


class _Stream:
    """Block-buffered uniforms from one Generator: cheap per-choice randomness, still seeded."""

    def __init__(self, rng: np.random.Generator, block: int = 1 << 16):
        self._rng, self._block = rng, block
        self._buf: list[float] = []
        self._i = 0

    def random(self) -> float:
        if self._i == len(self._buf):
            self._buf, self._i = self._rng.random(self._block).tolist(), 0
        self._i += 1
        return self._buf[self._i - 1]

    def pick(self, seq):
        return seq[int(self.random() * len(seq))]

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high]."""
        return low + int(self.random() * (high - low + 1))

    def chance(self, p: float) -> bool:
        return self.random() < p

    def weighted(self, seq, shares):
        u, acc = self.random(), 0.0
        for item, share in zip(seq, shares):
            acc += share
            if u < acc:
                return item
        return seq[-1]

    def digits(self, k: int) -> str:
        return "".join(str(int(self.random() * 10)) for _ in range(k))

    def normal(self) -> float:
        # Box-Muller: one normal from two uniforms of the same stream.
        return math.sqrt(-2.0 * math.log(1.0 - self.random())) * math.cos(2 * math.pi * self.random())


def _quota(n: int, shares) -> np.ndarray:
    """Split n into integer counts proportional to shares (largest remainder)."""
    raw = np.asarray(shares, dtype=float) / np.sum(shares) * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def _deal(labels: list[str], n: int, rng: np.random.Generator, shares=None) -> list[str]:
    """n labels in Zipf-ish (or given) proportions, in random order."""
    if shares is None:
        shares = 1.0 / np.arange(1, len(labels) + 1) ** ZIPF_EXPONENT
    return rng.permutation(np.repeat(np.array(labels, dtype=object), _quota(n, shares))).tolist()


@cache
def _fields(template: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def _fill(template: str, fillers: dict) -> str:
    return template.format(**{name: fillers[name]() for name in _fields(template)})


# --- amounts and dates -------------------------------------------------------------------------


def _format_amount(value: float, currency: str, s: _Stream, sign: str = "") -> str:
    """Money in one of the formats seen in the wild: $1,234.50, 1.234,50 EUR, USD 12, 12.5 GBP."""
    plain = f"{value:.2f}"
    style = s.integer(0, 5)
    symbol = vocab.CURRENCY_SYMBOLS.get(currency)
    if style == 0 and symbol:
        return f"{sign}{symbol}{value:,.2f}"
    if style == 1 and currency == "EUR":
        return f"{sign}{value:,.2f}".translate(str.maketrans(",.", ".,")) + " EUR"
    if style == 2:
        return f"{currency} {sign}{plain}"
    if style == 3 and value == int(value):
        return f"{currency} {sign}{int(value)}"
    if style == 4 and symbol and value >= 1000:
        return f"{sign}{symbol}{value:,.0f}"
    return f"{sign}{plain} {currency}"


def _format_date(d: dt.date, s: _Stream) -> str:
    style = s.integer(0, 4)
    if style == 0:
        return f"{d.day:02d}/{d.month:02d}/{d.year}"  # day-first, see module docstring
    if style == 1:
        return d.isoformat()
    if style == 2:
        return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"
    if style == 3:
        return f"{d.day:02d} {_MONTHS[d.month - 1].upper()} {d.year}"
    return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"


def _query_amount(s: _Stream) -> str:
    currency = s.pick(["GBP", "GBP", "EUR", "USD", "USD", "CHF"])
    value = round(math.exp(3.5 + 1.1 * s.normal()), 0 if s.chance(0.6) else 2)
    if s.chance(0.15):  # how people write it in a chat, not how a bank prints it
        word = {"GBP": "pounds", "EUR": "euros", "USD": "dollars"}.get(currency, "francs")
        return f"{value:g} {word}"
    return _format_amount(max(value, 1.0), currency, s)


# --- PII and look-alikes -----------------------------------------------------------------------


def _luhn_digit(payload: str) -> int:
    """Check digit that makes payload + digit Luhn-valid."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


_CARD_PREFIXES = [("4", 16), ("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16),
                  ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("3528", 16)]  # fmt: skip


def _fake_card(s: _Stream) -> str:
    prefix, length = s.pick(_CARD_PREFIXES)
    payload = prefix + s.digits(length - len(prefix) - 1)
    number = payload + str(_luhn_digit(payload))
    style = s.integer(0, 3)
    if style == 0:
        return number
    if length == 15:  # Amex prints 4-6-5
        return " ".join([number[:4], number[4:10], number[10:]])
    sep = " " if style < 3 else "-"
    return sep.join(number[i : i + 4] for i in range(0, length, 4))


_IBAN_BBAN = {"GB": "AAAA" + "9" * 14, "DE": "9" * 18, "FR": "9" * 23, "ES": "9" * 20,
              "NL": "AAAA" + "9" * 10, "IE": "AAAA" + "9" * 14, "IT": "A" + "9" * 22,
              "BE": "9" * 12, "PL": "9" * 24}  # fmt: skip


def _fake_iban(s: _Stream) -> str:
    country = s.pick(list(_IBAN_BBAN))
    bban = "".join(s.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if c == "A" else s.digits(1)
                   for c in _IBAN_BBAN[country])  # fmt: skip
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if s.chance(0.6) else iban


def _fake_phone(s: _Stream) -> str:
    d3, d2 = s.digits(3), s.digits(2)
    return s.pick([f"+44 20 7946 0{d3}", f"+44 7700 900{d3}", f"07700 900{d3}",
                   f"020 7946 0{d3}", f"(415) 555-01{d2}", f"+1 212 555 01{d2}",
                   f"+44 (0)161 496 0{d3}", f"312-555-01{d2}"])  # fmt: skip


def _fake_email(s: _Stream) -> str:
    first, last = s.pick(vocab.FIRST_NAMES).lower(), s.pick(vocab.LAST_NAMES).lower()
    domain = s.pick(["gmail.com", "outlook.com", "yahoo.co.uk", "icloud.com", "proton.me"])
    return f"{first}.{last}{s.integer(1, 99)}@{domain}"


def _order_number(s: _Stream) -> str:
    """16 digits that fail the Luhn check: an order number, not a card."""
    payload = str(s.integer(1, 9)) + s.digits(14)
    return payload + str((_luhn_digit(payload) + s.integer(1, 9)) % 10)


_PII = {
    "card_number": _fake_card,
    "iban": _fake_iban,
    "phone": _fake_phone,
    "email": _fake_email,
    "ssn": lambda s: f"{s.integer(100, 665)}-{s.integer(10, 99)}-{s.integer(1000, 9999)}",
    "account": lambda s: str(s.integer(1, 9)) + s.digits(7),
    "sort_code": lambda s: f"{s.digits(2)}-{s.digits(2)}-{s.digits(2)}",
    "order": _order_number,
    "ref": lambda s: "".join(s.pick(_REF_ALPHABET) for _ in range(6)),
}
_PII_SENTENCES = [" My card number is {card_number}.", " Card: {card_number}", " You can reach me at {email}.",
                  " Call me on {phone}.", " My IBAN is {iban}.", " My SSN is {ssn} if needed.",
                  " Account number {account}, sort code {sort_code}.", " my acct no {account}",
                  " email {email} or phone {phone}"]  # fmt: skip
_LOOKALIKE_SENTENCES = [" My order number is {order}.", " Reference {ref}.",
                        " Order #{order}", " Case ID RF-{ref}"]  # fmt: skip
_TXN_PII = [" A/C {account} SC {sort_code}", " IBAN {iban}", " CARD {card_number}"]
_TXN_LOOKALIKE = [" ORDER {order}", " REF {ref}"]


def _extra(s: _Stream, fillers: dict, pii: list[str], lookalike: list[str]) -> str:
    """Occasionally a PII-like or look-alike phrase, for the masking step to deal with."""
    u = s.random()
    if u < PII_RATE:
        return _fill(s.pick(pii), fillers)
    if u < PII_RATE + LOOKALIKE_RATE:
        return _fill(s.pick(lookalike), fillers)
    return ""


# --- the three record types --------------------------------------------------------------------


def _noisy(text: str, s: _Stream) -> str:
    """Typos, shorthand, casing and missing punctuation, as customers really type."""
    if s.chance(0.12):
        text = _ABBREVIATION_RE.sub(lambda m: vocab.ABBREVIATIONS[m.group(1).lower()], text)
    if s.chance(0.12):
        words = text.split(" ")
        long_words = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
        if long_words:
            i = s.pick(long_words)
            w, j = words[i], s.integer(0, len(words[i]) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]  # swap two neighbouring letters
            text = " ".join(words)
    if s.chance(0.15):
        text = text.lower()
    elif s.chance(0.03):
        text = text.upper()
    if s.chance(0.2):
        text = text.rstrip("?.!")
    return text


def _query(intent: str, s: _Stream, fillers: dict) -> str:
    body = _fill(s.pick(vocab.INTENT_TEMPLATES[intent]), fillers)
    text = _noisy(s.pick(vocab.OPENERS) + body + s.pick(vocab.CLOSERS), s)
    return text + _extra(s, fillers, _PII_SENTENCES, _LOOKALIKE_SENTENCES)


def _transaction(category: str, s: _Stream, fillers: dict) -> tuple[str, float, str, str, str]:
    spec = vocab.CATEGORIES[category]
    city, cc, currency = s.pick(vocab.CITIES)
    if s.chance(0.15):  # spending abroad / foreign-currency online shops
        currency = s.pick(["GBP", "USD", "EUR"])
    patterns = spec["patterns"] + (CARD_PATTERNS if spec["card"] else [])
    merchants = spec["merchants"] or ["BANK"]
    local = {**fillers, "city": lambda: city, "cc": lambda: cc,
             "merchant": lambda: s.pick(merchants), "employer": lambda: s.pick(merchants)}  # fmt: skip
    descriptor = _fill(s.pick(patterns), local) + _extra(s, fillers, _TXN_PII, _TXN_LOOKALIKE)
    median, sigma = spec["amount"]
    amount = round(median * math.exp(sigma * s.normal()), 2)
    sign = "-" if spec["sign"] < 0 and s.chance(0.5) else ("+" if spec["sign"] > 0 and s.chance(0.3) else "")
    day = s.pick(_DATES)
    parts = [descriptor, _format_amount(amount, currency, s, sign), _format_date(day, s)]
    if s.chance(0.3):
        parts = [parts[2], parts[0], parts[1]]  # some banks print the date first
    text = s.pick(["  ", " ", " | ", ", "]).join(parts)
    return text, amount, currency, s.pick(spec["mcc"]), day.isoformat()


def _ticket(product: str, priority: str, channel: str, s: _Stream, fillers: dict) -> tuple[str, str]:
    spec = vocab.TICKET_PRODUCTS[product]
    prefixes, cues = vocab.PRIORITY_CUES[priority]
    first, last = s.pick(vocab.FIRST_NAMES), s.pick(vocab.LAST_NAMES)
    subject = s.pick(prefixes) + s.pick(spec["subjects"])
    opening = s.pick(["I am writing because", "I'm contacting you because", "Unfortunately",
                      "Hello again,", "Please help,"])  # fmt: skip
    core = _fill(s.pick(spec["bodies"]), fillers)
    details = _extra(s, fillers, _PII_SENTENCES, _LOOKALIKE_SENTENCES).strip()
    body = (
        f"{vocab.CHANNELS[channel]}{s.pick(['Hello,', 'Hi,', 'Dear Sir or Madam,', 'Hi team,'])}"
        f"\n\n{opening} {core}. {s.pick(cues)}"
        + (f"\n\n{details}" if details else "")
        + f"\n\n{s.pick(['Thanks', 'Regards', 'Kind regards', 'Best'])},\n{first} {last}"
    )
    reply = (
        f"Dear {first},\n\nThank you for contacting us about {spec['topic']}. "
        f"{s.pick(spec['actions'])} {vocab.REPLY_PRIORITY_LINES[priority]}\n\n"
        f"Kind regards,\n{s.pick(vocab.AGENTS)}, {s.pick(vocab.TEAMS)}"
    )
    return f"Subject: {subject}\n\n{body}", reply


def _ticket_priorities(products: list[str], rng: np.random.Generator) -> list[str]:
    """Deal priority quotas to tickets ranked by product severity + noise (most severe first)."""
    severity = np.array([vocab.PRODUCT_SEVERITY[p] for p in products]) + rng.normal(0, 0.8, len(products))
    counts = _quota(len(products), vocab.PRIORITY_SHARES)
    ranked = np.repeat(np.array(vocab.PRIORITIES[::-1], dtype=object), counts[::-1])
    out = np.empty(len(products), dtype=object)
    out[np.argsort(-severity, kind="stable")] = ranked
    return out.tolist()


def generate_examples(num_records: int = 6000, seed: int = 0) -> pd.DataFrame:
    """num_records simulated records as a long DataFrame, one row per (record, task).

    Columns are COLUMNS (see the module docstring); same seed gives an identical frame.
    """
    if num_records < 0:
        raise ValueError(f"num_records must be >= 0, got {num_records}")
    rng = np.random.default_rng(seed)
    types = _deal(RECORD_TYPES, num_records, rng, RECORD_TYPE_SHARES)
    n_query, n_txn, n_ticket = (types.count(t) for t in RECORD_TYPES)
    intents = iter(_deal(list(vocab.INTENT_TEMPLATES), n_query, rng))
    categories = iter(_deal(list(vocab.CATEGORIES), n_txn, rng))
    products = _deal(list(vocab.TICKET_PRODUCTS), n_ticket, rng)
    priorities = iter(_ticket_priorities(products, rng))
    products_it = iter(products)
    s = _Stream(rng)
    fillers = {name: (lambda v=values: s.pick(v)) for name, values in vocab.QUERY_SLOTS.items()}
    fillers.update({name: (lambda f=f: f(s)) for name, f in _PII.items()})
    fillers.update(
        {
            "amount": lambda: _query_amount(s),
            "days": lambda: str(s.integer(2, 21)),
            "store": lambda: s.digits(s.integer(3, 4)),
            "loc": lambda: s.digits(4),
            "name": lambda: f"{s.pick(vocab.FIRST_NAMES)[0]} {s.pick(vocab.LAST_NAMES)}".upper(),
        }
    )

    cols: dict[str, list] = {c: [] for c in COLUMNS}
    nan = float("nan")

    def add(row, rtype, task, text, target, channel="", amount=nan, currency="", mcc="", date=""):
        rid = f"sim-{row:06d}"
        for col, value in zip(COLUMNS, (f"{rid}-{task}", rid, rtype, task, text, target, "simulated",
                                        row, channel, amount, currency, mcc, date)):  # fmt: skip
            cols[col].append(value)

    for row, rtype in enumerate(types, start=1):
        if rtype == "customer_query":
            intent = next(intents)
            add(row, rtype, "intent", _query(intent, s, fillers), intent)
        elif rtype == "transaction":
            category = next(categories)
            text, amount, currency, mcc, date = _transaction(category, s, fillers)
            add(row, rtype, "transaction_category", text, category, "", amount, currency, mcc, date)
        else:
            product, priority = next(products_it), next(priorities)
            channel = s.weighted(list(vocab.CHANNELS), vocab.CHANNEL_SHARES)
            text, reply = _ticket(product, priority, channel, s, fillers)
            for task, target in (("ticket_product", product), ("ticket_priority", priority),
                                 ("ticket_reply", reply)):  # fmt: skip
                add(row, rtype, task, text, target, channel)

    frame = pd.DataFrame(cols, columns=COLUMNS)
    frame["source_row"] = frame["source_row"].astype("int64")
    frame["amount"] = frame["amount"].astype("float64")
    return frame
