"""Vocabularies of the simulated fintech data set (see data/simulated.py).

Plain Python data rather than JSON/YAML: comments can say why an entry exists, and importing
costs nothing. Split by record type so each file stays readable:

- ``intents``       customer-query intents, paraphrase templates, slot fillers, noise tables
- ``transactions``  transaction categories with statement-descriptor patterns, merchants, MCCs
- ``tickets``       support-ticket products, priorities, channels, subjects/bodies, replies
- ``people``        names, cities, countries, currencies shared by all three

Order matters: the first label of each list is the most frequent one (Zipf rank 1).
"""

from data.vocabularies.intents import ABBREVIATIONS, CLOSERS, INTENT_TEMPLATES, OPENERS, QUERY_SLOTS
from data.vocabularies.people import CITIES, CURRENCY_SYMBOLS, FIRST_NAMES, LAST_NAMES
from data.vocabularies.tickets import (
    AGENTS,
    CHANNEL_SHARES,
    CHANNELS,
    PRIORITIES,
    PRIORITY_CUES,
    PRIORITY_SHARES,
    PRODUCT_SEVERITY,
    REPLY_PRIORITY_LINES,
    TEAMS,
    TICKET_PRODUCTS,
)
from data.vocabularies.transactions import CATEGORIES

__all__ = [
    "AGENTS",
    "CHANNEL_SHARES",
    "PRIORITY_SHARES",
    "TEAMS",
    "ABBREVIATIONS",
    "CATEGORIES",
    "CHANNELS",
    "CITIES",
    "CLOSERS",
    "CURRENCY_SYMBOLS",
    "FIRST_NAMES",
    "INTENT_TEMPLATES",
    "LAST_NAMES",
    "OPENERS",
    "PRIORITIES",
    "PRIORITY_CUES",
    "PRODUCT_SEVERITY",
    "QUERY_SLOTS",
    "REPLY_PRIORITY_LINES",
    "TICKET_PRODUCTS",
]
