"""ExampleGen as a component: determinism of the simulated set, and a broken user file quarantined
row by row with exact counts in the artifact's metrics (rows in = rows out + quarantined)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pandas.testing as pdt
import pytest

from components.base import Artifact, PipelineError
from components.example_gen.component import ExampleGen, ExampleGenParams
from components.runner import LocalRunner, Node, RunResult

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
CARD = "4111 1111 1111 1111"  # Luhn-valid test card: must never reach a file, quarantine included


def run_example_gen(runs_root: Path, params: ExampleGenParams, run: str = "run") -> RunResult:
    """ExampleGen alone through the local runner, in its own runs root (no cache from elsewhere)."""
    return LocalRunner([Node(ExampleGen(), {})], runs_root, log=lambda message: None).run(
        runs_root / run, {"example_gen": params})


def examples_of(result: RunResult) -> pd.DataFrame:
    return pd.read_parquet(result.artifacts["example_gen"]["examples"].path("examples.parquet"))


# --- the simulated data set through the component ------------------------------------------------


def test_simulated_examples_are_deterministic_for_a_seed_and_differ_across_seeds(tmp_path):
    first = run_example_gen(tmp_path / "a", ExampleGenParams(num_records=200, seed=3))
    again = run_example_gen(tmp_path / "b", ExampleGenParams(num_records=200, seed=3))
    other = run_example_gen(tmp_path / "c", ExampleGenParams(num_records=200, seed=4))
    assert [r.status for r in (first, again, other)] == ["succeeded"] * 3
    assert first.executed == again.executed == ["example_gen"]  # really ran twice, no cache hit
    pdt.assert_frame_equal(examples_of(first), examples_of(again))
    assert first.artifacts["example_gen"]["examples"].fingerprint == \
        again.artifacts["example_gen"]["examples"].fingerprint
    texts, other_texts = examples_of(first)["text"], examples_of(other)["text"]
    assert len(set(texts) ^ set(other_texts)) > len(texts) // 2  # mostly different texts
    metrics = first.artifacts["example_gen"]["examples"].metrics
    assert metrics["rows_in"] == metrics["rows_out"] + metrics["rows_quarantined"] == len(texts)


# --- a broken user file through the component ----------------------------------------------------


def _csv_line(*cells: str) -> bytes:
    return (",".join('"' + c.replace('"', '""') + '"' for c in cells) + "\r\n").encode()


def broken_fixture(directory: Path) -> tuple[Path, Path, dict[str, int], int]:
    """(csv path, label vocabulary path, expected quarantine reasons, good rows) of a broken file.

    30 good rows, then one row per kind of damage. Rows are numbered from 1 after the header.
    """
    lines = [_csv_line("id", "text", "label")]
    good = 0
    for i in range(30):
        lines.append(_csv_line(f"ok-{i}", f"question number {i} about my {LABELS[i % 3].replace('_', ' ')}",
                               LABELS[i % 3]))
        good += 1
    # Bad UTF-8: a lone continuation byte and an invalid start byte in the text.
    lines.append(b'"bad-utf8","my card \x80 arrived \xff broken","card_arrival"\r\n')
    # A missing cell: the row stops after the text, so the label column is absent.
    lines.append(_csv_line("no-label", "where is my card"))
    lines.append(_csv_line("no-text", "", "card_arrival"))  # empty text cell
    lines.append(_csv_line("blank", "  \t \u200b  ", "card_arrival"))  # nothing left after cleaning
    lines.append(_csv_line("huge", f"my card {CARD} " + "x" * 1_000_000, "card_arrival"))  # 1 MB text
    lines.append(_csv_line("unknown", f"card {CARD} blocked?", "blocked_card"))  # not in the vocabulary
    lines.append(_csv_line("ok-7", "a second row with the id of row 8", "exchange_rate"))  # duplicate id
    path = directory / "broken.csv"
    path.write_bytes(b"".join(lines))
    vocabulary = directory / "labels.json"
    vocabulary.write_text(json.dumps(LABELS))
    expected = {"undecodable_bytes": 1, "missing_label": 1, "missing_text": 1, "empty_after_cleaning": 1,
                "text_too_long": 1, "unknown_label": 1, "duplicate_id": 1}
    return path, vocabulary, expected, good


def test_broken_file_gives_exact_quarantine_counts_through_the_component(tmp_path):
    source, vocabulary, expected, good = broken_fixture(tmp_path)
    result = run_example_gen(tmp_path / "runs", ExampleGenParams(
        source=str(source), text_column="text", label_column="label", id_column="id",
        label_vocabulary=str(vocabulary), task="intent"))
    assert result.status == "succeeded", result.error
    artifact = Artifact.load(result.artifacts["example_gen"]["examples"].uri)  # what is on disk
    metrics = artifact.metrics
    rows_in = good + sum(expected.values())
    assert metrics["rows_in"] == rows_in
    assert metrics["rows_out"] == good
    assert metrics["rows_quarantined"] == sum(expected.values())
    assert metrics["rows_in"] == metrics["rows_out"] + metrics["rows_quarantined"]
    assert metrics["quarantine_reasons"] == expected
    assert metrics["pii_masked"] == {"CARD": 2}  # the huge row and the unknown-label row

    quarantine = pd.read_json(artifact.path("quarantine.jsonl"), lines=True, dtype={"id": str})
    assert dict(zip(quarantine["id"], quarantine["reason"])) == {
        "bad-utf8": "undecodable_bytes", "no-label": "missing_label", "no-text": "missing_text",
        "blank": "empty_after_cleaning", "huge": "text_too_long", "unknown": "unknown_label",
        "ok-7": "duplicate_id"}
    assert quarantine.loc[quarantine["id"] == "ok-7", "source_row"].item() == 37  # the later copy goes
    assert quarantine["text"].str.len().max() <= 200  # the 1 MB text is cut in the report
    assert artifact.path("quarantine.jsonl").stat().st_size < 10_000
    assert "[CARD]" in quarantine.loc[quarantine["id"] == "huge", "text"].item()
    for path in artifact.uri.iterdir():  # quarantined rows are masked too
        assert b"4111" not in path.read_bytes(), path.name

    examples = examples_of(result)
    assert len(examples) == good
    assert sorted(examples["id"]) == sorted(f"ok-{i}" for i in range(30))
    assert examples.loc[examples["id"] == "ok-7", "text"].item() == "question number 7 about my lost or stolen card"
    assert json.loads(artifact.path("labels.json").read_text()) == {"intent": sorted(LABELS)}


def test_a_file_without_the_label_column_fails_with_one_clear_sentence(tmp_path):
    source = tmp_path / "no_label.csv"
    source.write_text("id,text\n1,where is my card\n")
    result = run_example_gen(tmp_path / "runs", ExampleGenParams(source=str(source), label_column="label"))
    assert result.status == "failed" and result.failed == "example_gen"
    assert isinstance(result.error, PipelineError)
    assert "'label'" in str(result.error) and "columns found" in str(result.error)
    assert not (tmp_path / "runs" / "run" / "example_gen" / "examples").exists()  # no half artifact


def test_all_rows_quarantined_fails_and_says_why(tmp_path):
    source = tmp_path / "all_bad.csv"
    source.write_text("text,label\n,card_arrival\n   ,card_arrival\n")
    result = run_example_gen(tmp_path / "runs", ExampleGenParams(source=str(source)))
    assert result.status == "failed" and isinstance(result.error, PipelineError)
    assert "all 2 rows were quarantined" in str(result.error)


def test_statement_lines_and_ids_reach_no_file_unmasked(tmp_path):
    """The sweep's leaks (issue 19) through the component: no file of the artifact holds them."""
    from tests.test_pii import REPORTED_LEAKS

    lines = [_csv_line("id", "text", "label")]
    for i, (text, _) in enumerate(REPORTED_LEAKS):
        lines.append(_csv_line(f"cust{i}@bank.example", text, LABELS[i % 3]))
    source = tmp_path / "statements.csv"
    source.write_bytes(b"".join(lines))
    result = run_example_gen(tmp_path / "runs", ExampleGenParams(
        source=str(source), text_column="text", label_column="label", id_column="id", task="intent"))
    assert result.status == "succeeded", result.error
    examples = examples_of(result)
    assert sorted(examples["text"]) == sorted(expected for _, expected in REPORTED_LEAKS)
    assert sorted(examples["id"]) == sorted(f"[EMAIL]#{i + 1}" for i in range(len(REPORTED_LEAKS)))
    written = "".join(" ".join(pd.read_parquet(p).astype(str).to_numpy().ravel()) if p.suffix == ".parquet"
                      else p.read_text() for p in result.artifacts["example_gen"]["examples"].uri.iterdir())
    assert "[EMAIL]#1" in written  # the parquet file was read as a table, not as compressed bytes
    for secret in ("4242 4242", "4111", "GB82", "DE89", "@bank.example", "7946", "12345678"):
        assert secret not in written, secret


def test_a_header_only_file_is_a_usage_error_in_one_sentence(tmp_path):
    from components.base import UsageError
    from schemas.examples import validate_examples

    source = tmp_path / "header_only.csv"
    source.write_text("text,label\n")
    result = run_example_gen(tmp_path / "runs", ExampleGenParams(source=str(source)))
    assert result.status == "failed" and isinstance(result.error, UsageError)
    assert str(result.error) == f"{source} holds no data rows (a header alone, or nothing): nothing to train on"
    empty = pd.DataFrame({c: pd.Series([], dtype=object) for c in
                          ("id", "record_id", "record_type", "task", "text", "target", "source", "source_row")})
    valid, quarantine = validate_examples(empty)  # an empty table is no crash (was KeyError: 'id')
    assert len(valid) == len(quarantine) == 0


def test_cp1252_utf16_and_directory_sources(tmp_path):
    """A cp1252 export: quarantined rows and a hint naming the encoding, or read right with the flag;
    a UTF-16 file with its byte-order mark read as UTF-16; a folder given as the file refused in a sentence."""
    from components.base import UsageError

    text = ("id,text,label\n1,caf\u00e9 card never arrived \u20ac5,card_arrival\n2,plain row,card_arrival\n"
            "3,my card was stolen,lost_or_stolen_card\n")  # two labels: a one-label file is refused
    cp1252 = tmp_path / "export.csv"
    cp1252.write_bytes(text.encode("cp1252"))
    params = dict(source=str(cp1252), text_column="text", label_column="label", id_column="id", task="intent")
    result = run_example_gen(tmp_path / "a", ExampleGenParams(**params))
    metrics = result.artifacts["example_gen"]["examples"].metrics
    assert metrics["quarantine_reasons"] == {"undecodable_bytes": 1} and metrics["encoding_hints"] == {
        str(cp1252): "cp1252"}
    fixed = run_example_gen(tmp_path / "b", ExampleGenParams(**params, encoding="cp1252"))
    assert sorted(examples_of(fixed)["text"]) == ["caf\u00e9 card never arrived \u20ac5", "my card was stolen",
                                                  "plain row"]
    utf16 = tmp_path / "export16.csv"
    utf16.write_bytes(text.encode("utf-16"))  # with its byte-order mark
    read16 = run_example_gen(tmp_path / "c", ExampleGenParams(**{**params, "source": str(utf16)}))
    assert read16.status == "succeeded" and len(examples_of(read16)) == 3
    folder = tmp_path / "exports"
    folder.mkdir()
    refused = run_example_gen(tmp_path / "d", ExampleGenParams(**{**params, "source": str(folder)}))
    assert isinstance(refused.error, UsageError) and "is a directory" in str(refused.error)
    bad = run_example_gen(tmp_path / "e", ExampleGenParams(**params, encoding="klingon"))
    assert isinstance(bad.error, UsageError) and "'klingon'" in str(bad.error)


def test_long_complaints_are_kept_and_counted_unless_a_limit_is_set(tmp_path):
    """Real complaint narratives run past 2,000 characters: kept (the Transform cuts prompts), counted;
    a limit the user sets still quarantines; the hard limit stays against abuse."""
    long_text = "I was charged twice for the same purchase and " * 100  # ~4,600 characters
    source = tmp_path / "complaints.csv"
    source.write_bytes(b"".join([_csv_line("text", "label"), _csv_line(long_text, "card_arrival"),
                                 _csv_line("short one", "card_arrival"), _csv_line("another", "exchange_rate")]))
    kept = run_example_gen(tmp_path / "a", ExampleGenParams(source=str(source)))
    metrics = kept.artifacts["example_gen"]["examples"].metrics
    assert metrics["rows_out"] == 3 and metrics["texts_over_2000_chars_kept"] == 1
    limited = run_example_gen(tmp_path / "b", ExampleGenParams(source=str(source), max_text_chars=2_000))
    assert limited.artifacts["example_gen"]["examples"].metrics["quarantine_reasons"] == {"text_too_long": 1}
    with pytest.raises(ValueError, match="between 1 and 1,000,000"):
        ExampleGenParams(max_text_chars=50_000_000)
