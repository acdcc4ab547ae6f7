"""Ingest attacks (issue 18): files that break naive readers, each through ExampleGen.

Every attack ends one of two ways: every row is used or quarantined with a reason, and the counts
add up (`rows_in == rows_out + rows_quarantined`, reasons exact); or the run stops with one sentence
that names the file and says what to fix, and exit code 2 (a `UsageError`), never a traceback.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.example_gen.component import ExampleGen, ExampleGenParams
from components.runner import LocalRunner, Node
from schemas.examples import MAX_LABEL_CHARS
from tests.helpers import run_cli

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]


def good_rows(n: int = 6) -> list[tuple[str, str]]:
    return [(f"question {i} about my {LABELS[i % 3].replace('_', ' ')}", LABELS[i % 3]) for i in range(n)]


def csv_text(rows, header=("text", "label")) -> str:
    return "\n".join([",".join(header), *(",".join(f'"{c}"' for c in row) for row in rows)]) + "\n"


def ingest(tmp_path: Path, source: Path, **params) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(metrics, examples, quarantine) of ExampleGen on `source`; the counts are checked to add up."""
    runs = tmp_path / "runs"
    result = LocalRunner([Node(ExampleGen(), {})], runs, log=lambda message: None).run(
        runs / "run", {"example_gen": ExampleGenParams(source=str(source), **params)})
    assert result.status == "succeeded", result.error
    artifact = result.artifacts["example_gen"]["examples"]
    metrics = artifact.metrics
    examples = pd.read_parquet(artifact.path("examples.parquet"))
    quarantine = pd.read_json(artifact.path("quarantine.jsonl"), lines=True, dtype={"id": str})
    assert metrics["rows_in"] == metrics["rows_out"] + metrics["rows_quarantined"]
    assert (metrics["rows_out"], metrics["rows_quarantined"]) == (len(examples), len(quarantine))
    return metrics, examples, quarantine


def refused(tmp_path: Path, monkeypatch, capsys, source: Path, *settings: str) -> str:
    """The error message of `pipeline.py run --only example_gen` on `source`, after checking exit code 2,
    one line naming the file, no traceback, and no artifact left behind."""
    runs = tmp_path / "runs"
    code = run_cli(monkeypatch, "--runs-root", str(runs), "run", "--profile", "smoke", "--only", "example_gen",
                   "--run-dir", str(runs / "r"), "--set", f"example_gen.source={source}",
                   *(arg for setting in settings for arg in ("--set", setting)))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = err.splitlines()[0]
    assert message.startswith("error: example_gen failed: ") and source.name in message, err
    assert not (runs / "r" / "example_gen" / "examples").exists()
    return message


# --- rows used or quarantined, counts that add up ---------------------------------------------------


def test_embedded_newlines_commas_and_quotes_stay_inside_their_cells(tmp_path):
    tricky = ['He said ""stop"", twice', "line one\nline two", "line one\r\nline two", "a, b, and c",
              "ends with a quote mark "" "]
    rows = [(text, LABELS[i % 3]) for i, text in enumerate(tricky)] + good_rows(3)
    source = tmp_path / "tricky.csv"
    source.write_text(csv_text(rows) + 'say "hi" now,card_arrival\n')  # a quote inside an unquoted cell
    metrics, examples, _ = ingest(tmp_path, source)
    assert metrics["rows_in"] == metrics["rows_out"] == len(rows) + 1
    assert examples["source_row"].tolist() == list(range(1, len(rows) + 2))  # data rows, not lines
    texts = examples["text"].tolist()
    assert '"stop"' in texts[0] and "line two" in texts[1] and "line two" in texts[2] and texts[3] == "a, b, and c"
    assert texts[-1] == 'say "hi" now'


@pytest.mark.parametrize("quoted", [True, False])
def test_a_quoted_cell_left_open_is_refused_not_swallowing_the_rest(tmp_path, monkeypatch, capsys, quoted):
    rest = csv_text(good_rows(3)) if quoted else "".join(f"{t},{label}\n" for t, label in good_rows(3))
    source = tmp_path / "open_quote.csv"  # the next quote closes the cell (quoted), or the end of the file does
    source.write_text(csv_text(good_rows(3)) + '"my card never came,card_arrival\n' + rest.split("\n", 1)[1])
    message = refused(tmp_path, monkeypatch, capsys, source)
    assert "in the row that starts on line 5" in message and "quoted cell is left open" in message


def test_ragged_rows_are_quarantined_and_trailing_empty_cells_are_not(tmp_path):
    source = tmp_path / "ragged.csv"
    source.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in good_rows(4))
                      + "my card, it never came,card_arrival\n"  # an unquoted comma: 3 cells
                      + "trailing cells from a spreadsheet,exchange_rate,,\n"  # empty extras: harmless
                      + "short row with no label\n")
    metrics, examples, quarantine = ingest(tmp_path, source)
    assert metrics["rows_in"] == 7 and metrics["rows_out"] == 5
    assert metrics["quarantine_reasons"] == {"ragged_row": 1, "missing_label": 1}
    assert quarantine.loc[quarantine["reason"] == "ragged_row", "source_row"].tolist() == [5]
    assert "trailing cells from a spreadsheet" in examples["text"].tolist()


def test_labels_empty_null_emoji_and_too_long(tmp_path):
    long_label = "x" * (MAX_LABEL_CHARS + 1)
    rows = [*good_rows(4), ("empty label", ""), ("blank label", "   "), ("nan label", "NaN"), ("null label", "null"),
            ("emoji label", "💳 card"), ("very long label", long_label), ("label at the limit", "y" * MAX_LABEL_CHARS)]
    source = tmp_path / "labels.csv"
    source.write_text(csv_text(rows), encoding="utf-8")
    metrics, examples, quarantine = ingest(tmp_path, source)
    assert metrics["rows_in"] == len(rows) and metrics["rows_out"] == 6
    assert metrics["quarantine_reasons"] == {"missing_label": 4, "label_too_long": 1}
    assert dict(zip(examples["text"], examples["target"]))["emoji label"] == "💳 card"  # kept, byte for byte
    assert quarantine.loc[quarantine["reason"] == "label_too_long", "source_row"].tolist() == [10]

    # Null labels the way JSON (a NaN literal, null) and Parquet (NaN, None) write them.
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in good_rows(4))
                     + '{"text": "nan literal", "label": NaN}\n{"text": "null", "label": null}\n'
                     + '{"text": "no label key"}\n')
    metrics, _, _ = ingest(tmp_path / "j", jsonl)
    assert metrics["rows_in"] == 7 and metrics["quarantine_reasons"] == {"missing_label": 3}
    parquet = tmp_path / "labels.parquet"
    pd.DataFrame({"text": [t for t, _ in good_rows(4)] + ["nan", "none"],
                  "label": [label for _, label in good_rows(4)] + [float("nan"), None]}).to_parquet(parquet)
    metrics, _, _ = ingest(tmp_path / "p", parquet)
    assert metrics["rows_in"] == 6 and metrics["quarantine_reasons"] == {"missing_label": 2}


def test_numbers_and_booleans_in_parquet_read_as_text(tmp_path):
    source = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"text": pa.array([1234, 56, 7, 8], pa.int64()), "label": [1.0, 2.0, 1.0, 2.0],
                             "flag": [True, False, True, None]}), source)
    metrics, examples, _ = ingest(tmp_path, source)
    assert metrics["rows_out"] == 4
    assert examples["text"].tolist() == ["1234", "56", "7", "8"]
    assert examples["target"].tolist() == ["1", "2", "1", "2"]  # 1.0 reads as "1"


@pytest.mark.parametrize("bom_encoding", ["utf-16-le", "utf-16-be", "utf-8"])
def test_a_byte_order_mark_names_the_encoding(tmp_path, bom_encoding):
    mark = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-8": codecs.BOM_UTF8}
    rows = [*good_rows(4), ("Zahlung über 50 € für Café", "exchange_rate")]
    source = tmp_path / "marked.csv"
    source.write_bytes(mark[bom_encoding] + csv_text(rows).replace("\n", "\r\n").encode(bom_encoding))
    metrics, examples, _ = ingest(tmp_path, source)
    assert metrics["rows_out"] == 5 and metrics["rows_quarantined"] == 0
    assert examples["text"].iloc[-1] == "Zahlung über 50 € für Café"


def test_utf16_without_a_mark_is_refused_with_the_setting_that_reads_it(tmp_path, monkeypatch, capsys):
    source = tmp_path / "no_mark.csv"
    source.write_bytes(csv_text(good_rows(4)).encode("utf-16-le"))
    assert "--set example_gen.encoding=utf-16-le" in refused(tmp_path, monkeypatch, capsys, source)
    metrics, _, _ = ingest(tmp_path / "again", source, encoding="utf-16-le")  # and the hint works
    assert metrics["rows_out"] == 4


# --- one sentence and exit 2 ---------------------------------------------------------------------------


def _parquet_with(path: Path, text) -> Path:
    pq.write_table(pa.table({"text": text, "label": ["card_arrival", "exchange_rate"]}), path)
    return path


REFUSALS = {
    "binary": (lambda d: _write(d / "image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))),
               "holds binary data"),
    "parquet renamed": (lambda d: _write(d / "table.csv", b"PAR1\x15\x04" + bytes(64)), "is a Parquet file"),
    "xlsx renamed": (lambda d: _write(d / "sheet.csv", b"PK\x03\x04" + bytes(64)), "export the sheet as CSV"),
    "duplicate csv column": (lambda d: _write(d / "dup.csv", b"text,label,text\na,card_arrival,b\n"),
                             "Column 'text' appears more than once"),
    "duplicate json key": (lambda d: _write(d / "dup.jsonl", b'{"text": "a", "label": "x", "text": "b"}\n'),
                           "Column 'text' appears more than once"),
    "bad jsonl line": (lambda d: _write(d / "bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", oops}\n'),
                       "line 2 is not valid JSON"),
    "json object as text": (lambda d: _write(d / "obj.jsonl", b'{"text": {"en": "hi"}, "label": "x"}\n'),
                            "holds object values (first in data row 1), not text"),
    "parquet list text": (lambda d: _parquet_with(d / "lists.parquet", [["my", "card"], ["rate"]]),
                          "holds list values"),
    "parquet struct text": (lambda d: _parquet_with(d / "structs.parquet", [{"en": "card"}, {"en": "rate"}]),
                            "holds object values"),
    "one label only": (lambda d: _write(d / "one.csv", csv_text([(t, "card_arrival") for t, _ in good_rows(5)])
                                        .encode()), "every valid intent row has the label 'card_arrival'"),
    "missing path": (lambda d: d / "absent.csv", "does not exist"),
    "directory": (lambda d: _mkdir(d / "exports"), "is a directory"),
    "header only": (lambda d: _write(d / "header.csv", b"text,label\n"), "holds no data rows"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("attack", REFUSALS)
def test_a_file_that_cannot_be_read_gets_one_sentence_and_exit_2(tmp_path, monkeypatch, capsys, attack):
    make, phrase = REFUSALS[attack]
    source = make(tmp_path)
    message = refused(tmp_path, monkeypatch, capsys, source)
    assert phrase in message, message


def test_a_repeated_column_the_run_does_not_use_is_harmless(tmp_path):
    source = tmp_path / "notes.csv"
    source.write_text("text,label,notes,notes\n" + "".join(f"{t},{label},n1,n2\n" for t, label in good_rows(4)))
    metrics, _, _ = ingest(tmp_path, source)
    assert metrics["rows_out"] == 4
