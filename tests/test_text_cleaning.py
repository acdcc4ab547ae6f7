"""Tests of clean_text and normalise_financial (components/common/text_cleaning.py)."""


import pytest

from components.common.text_cleaning import clean_text, normalise_financial


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  hello   world \t ", "hello world"),
        ("Caf\u00e9 &amp; Bar&nbsp;&#163;5", "Caf\u00e9 & Bar \u00a35"),
        ("\uff11\uff12\uff13 \ufb01le", "123 file"),  # full-width digits, ligature (NFKC)
        ("pay\x00ment\x07 due\u200b now\ufeff", "payment due now"),
        ("Subject: Hi\r\n\r\n\r\n\r\nBody  line \n next", "Subject: Hi\n\nBody line\nnext"),
        ("a\u00a0b\u2009c", "a b c"),
        ("", ""),
    ],
)
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$1,234.50", "USD 1234.50"),
        ("1.234,50 EUR", "EUR 1234.50"),
        ("USD 12", "USD 12.00"),
        ("£7", "GBP 7.00"),
        ("12.5 GBP", "GBP 12.50"),
        ("12,50€", "EUR 12.50"),
        ("1,234 USD", "USD 1234.00"),
        ("1.234.567 EUR", "EUR 1234567.00"),
        ("$1,234,567.89", "USD 1234567.89"),
        ("12,5 EUR", "EUR 12.50"),
        ("paid 20 euros", "paid EUR 20.00"),
        ("-£68.00", "GBP -68.00"),
        ("TESCO #1083 EUR -45.43", "TESCO #1083 EUR -45.43"),  # code belongs to the amount after it
        ("03/11/2024", "2024-11-03"),  # day-first when ambiguous
        ("2024-11-03", "2024-11-03"),
        ("3 Nov 2024", "2024-11-03"),
        ("03 NOV 2024", "2024-11-03"),
        ("Nov 3, 2024", "2024-11-03"),
        ("3rd November 2024", "2024-11-03"),
        ("11/23/2024", "2024-11-23"),  # second field > 12: must be month-first
        ("25.12.24", "2024-12-25"),
        ("31/02/2024", "31/02/2024"),  # not a date: untouched
        ("on 03/11/2024 GBP 12", "on 2024-11-03 GBP 12.00"),  # the year is not an amount
        ("my acct bal", "my account balance"),
        ("Pmt XFER txn AMT", "payment TRANSFER transaction AMOUNT"),
        ("a/c stmt", "account statement"),
        ("FOREIGN TXN FEE", "FOREIGN TRANSACTION FEE"),
        ("accountant balance acctg", "accountant balance acctg"),  # whole words only
        ("order 1234567812345678 and 42 items", "order 1234567812345678 and 42 items"),
    ],
)
def test_normalise_financial(raw, expected):
    assert normalise_financial(raw) == expected


def test_month_first_option():
    assert normalise_financial("03/11/2024", day_first=False) == "2024-03-11"
    assert normalise_financial("13/11/2024", day_first=False) == "2024-11-13"


def test_statement_line_end_to_end():
    line = "PAYROLL GLOBEX CORP DIR DEP, +591,57 EUR, Jun 4, 2024"
    assert normalise_financial(clean_text(line)) == "PAYROLL GLOBEX CORP DIR DEPOSIT, EUR +591.57, 2024-06-04"
