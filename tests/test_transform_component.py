"""ExampleGen + Transform as components: labels in every split, no text in two splits, a user
test file honoured, a PII canary over every file they write, and BANKING77 through the CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from components.base import Artifact
from components.base_model import BaseModel, BaseModelParams
from components.common.pii import luhn_valid
from components.example_gen.component import ExampleGen, ExampleGenParams
from components.runner import ArtifactCache, LocalRunner, Node, RunResult, load_run_record
from components.transform.component import Transform, TransformParams
from components.transform.splitting import SPLITS, normalised_text_key
from data import simulated
from schemas.artifacts import DatasetsFiles, ExamplesFiles
from tests.conftest import TINY_BASE_MODEL_PARAMS
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
BANKING77 = ROOT / ".." / "shared" / "data" / "banking77"


def start_data_components(runs_root: Path, base_model_dir: Path, example_gen: ExampleGenParams,
                          transform: TransformParams | None = None, run: str = "run") -> RunResult:
    """`run_data_components` without its checks: the run's result, succeeded or not."""
    base_model = Artifact.load(base_model_dir)
    ArtifactCache(runs_root).store(base_model.fingerprint, {"model": base_model})
    nodes = [Node(ExampleGen(), {}), Node(BaseModel(), {}),
             Node(Transform(), {"examples": ("example_gen", "examples"), "base_model": ("base_model", "model")})]
    params = {"example_gen": example_gen, "base_model": BaseModelParams(**TINY_BASE_MODEL_PARAMS),
              "transform": transform or TransformParams()}
    return LocalRunner(nodes, runs_root, log=lambda message: None).run(runs_root / run, params)


def run_data_components(runs_root: Path, base_model_dir: Path, example_gen: ExampleGenParams,
                        transform: TransformParams | None = None, run: str = "run") -> RunResult:
    """ExampleGen + BaseModel + Transform through the local runner; the tiny base model is a cache hit."""
    result = start_data_components(runs_root, base_model_dir, example_gen, transform, run)
    assert result.status == "succeeded", result.error
    assert result.cached == ["base_model"] and result.executed == ["example_gen", "transform"]
    return result


def splits_of(result: RunResult) -> dict[str, pd.DataFrame]:
    datasets = DatasetsFiles(result.artifacts["transform"]["datasets"])
    return {split: pd.read_parquet(datasets.split_table(split)) for split in SPLITS}


def read_tfrecord(path: Path) -> list[tuple[list[int], int]]:
    """(token ids, answer start) of every record of a Transform TFRecord file."""
    import tensorflow as tf

    from models.llm.tfrecords import FEATURES

    records = []
    for raw in tf.data.TFRecordDataset(str(path)):
        example = tf.io.parse_single_example(raw, FEATURES)
        records.append((tf.sparse.to_dense(example["token_ids"]).numpy().tolist(),
                        int(example["answer_start"])))
    return records


def assert_no_text_in_two_splits(splits: dict[str, pd.DataFrame]) -> None:
    """The splitter's rule, checked on its outputs: a normalised text or a record sits in one split."""
    for column, key in (("model_text", normalised_text_key), ("record_id", str)):
        seen: dict[str, str] = {}
        for split, rows in splits.items():
            for value in set(rows[column].map(key)):
                assert seen.setdefault(value, split) == split, f"{column} {value!r} in {seen[value]} and {split}"


# --- the simulated set ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory, tiny_base_model_dir):
    runs_root = tmp_path_factory.mktemp("simulated")
    return run_data_components(runs_root, tiny_base_model_dir, ExampleGenParams(num_records=300, seed=0))


def test_every_label_appears_in_every_split(simulated_run):
    splits = splits_of(simulated_run)
    labels = DatasetsFiles(simulated_run.artifacts["transform"]["datasets"]).labels()
    assert labels == {task: sorted(names) for task, names in simulated.labels_by_task().items()}
    for task, task_labels in labels.items():
        for split, rows in splits.items():
            missing = set(task_labels) - set(rows.loc[rows["task"] == task, "target"])
            assert not missing, f"{task} labels {sorted(missing)} absent from {split}"
    metrics = simulated_run.artifacts["transform"]["datasets"].metrics
    assert metrics["rows_per_split"] == {split: len(rows) for split, rows in splits.items()}
    assert sum(metrics["rows_per_split"].values()) == simulated_run.artifacts["example_gen"]["examples"].metrics[
        "rows_out"]


def test_no_normalised_text_or_record_is_in_two_splits(simulated_run):
    assert_no_text_in_two_splits(splits_of(simulated_run))


def test_tfrecords_hold_prompt_then_answer_of_every_row(simulated_run, tiny_base_model_dir):
    from models.llm.prompts import answer_text
    from models.llm.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.load(tiny_base_model_dir)
    datasets = DatasetsFiles(simulated_run.artifacts["transform"]["datasets"])
    for split, rows in splits_of(simulated_run).items():
        records = read_tfrecord(datasets.tfrecord(split))
        assert len(records) == len(rows)
        for (ids, start), prompt_ids, task, target in zip(records, rows["prompt_ids"], rows["task"], rows["target"]):
            assert ids[:start] == list(prompt_ids)
            if len(ids) - start < TransformParams().max_answer_tokens:  # an uncut answer decodes whole
                assert tokenizer.decode(ids[start:]) == answer_text(task, target)
    labels = datasets.labels()
    assert "card_arrival" in labels["intent"]  # labels keep their names; only the answer reads them as words
    answers = {tokenizer.decode(ids[start:]) for ids, start in read_tfrecord(datasets.tfrecord("train"))}
    assert "card arrival" in answers and "card_arrival" not in answers


def test_two_labels_that_are_one_answer_stop_the_transform_with_one_sentence(tmp_path, tiny_base_model_dir):
    rows = [{"text": f"question {i} about my {label}", "label": label}
            for label in ("card_arrival", "card arrival", "exchange_rate") for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "clash.csv", index=False)
    result = start_data_components(tmp_path / "runs", tiny_base_model_dir,
                                   ExampleGenParams(source=str(tmp_path / "clash.csv")))
    assert result.status == "failed" and result.failed == "transform"
    assert "task intent: labels 'card arrival' and 'card_arrival' are the same answer" in str(result.error)


def test_near_duplicate_texts_stay_in_one_split(tmp_path, tiny_base_model_dir):
    """Texts that differ only in case, punctuation, spacing or amount format share one split."""
    variants = ["{t} for $1,200.00", "{t} for USD 1200?", "{T} FOR $1,200.00!!", "  {t}   for 1,200 dollars",
                "{t} for 1200.00 USD..."]
    rows = []
    for label in ("card_arrival", "exchange_rate", "top_up_failed"):
        for i in range(16):
            base = f"question {i} about {label.replace('_', ' ')}"
            rows += [{"text": v.format(t=base, T=base.upper()), "label": label} for v in variants[: 1 + i % 5]]
    source = tmp_path / "dupes.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    result = run_data_components(tmp_path / "runs", tiny_base_model_dir, ExampleGenParams(source=str(source)))
    splits = splits_of(result)
    assert_no_text_in_two_splits(splits)
    key_split = {key: split for split, df in splits.items() for key in df["model_text"].map(normalised_text_key)}
    assert len(key_split) == 48  # the variants collapse to one key per base text
    assert all(len(df) for df in splits.values())


# --- a user test file ----------------------------------------------------------------------------


def test_explicit_test_source_is_the_test_split_and_never_enters_train_or_validation(tmp_path, tiny_base_model_dir):
    labels = ("card_arrival", "exchange_rate", "top_up_failed")
    train = [{"text": f"train question {i} on {label}", "label": label} for label in labels for i in range(12)]
    test = [{"text": f"Held-out question {i} on {label}?", "label": label} for label in labels for i in range(4)]
    # Two train rows repeat test texts up to case and punctuation: they must not train the model.
    train += [{"text": "held-out QUESTION 0 on card_arrival", "label": "card_arrival"},
              {"text": "Held-out question 3 on top_up_failed!!", "label": "top_up_failed"}]
    pd.DataFrame(train).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(test).to_json(tmp_path / "heldout.jsonl", orient="records", lines=True)
    result = run_data_components(tmp_path / "runs", tiny_base_model_dir, ExampleGenParams(
        source=str(tmp_path / "train.csv"), test_source=str(tmp_path / "heldout.jsonl")))
    splits = splits_of(result)

    assert sorted(splits["test"]["text"]) == sorted(r["text"] for r in test)
    assert set(splits["test"]["source"]) == {str(tmp_path / "heldout.jsonl")}
    test_keys = {normalised_text_key(r["text"]) for r in test}
    for split in ("train", "validation"):
        assert set(splits[split]["source"]) == {str(tmp_path / "train.csv")}
        assert not test_keys & set(splits[split]["model_text"].map(normalised_text_key))
    assert len(splits["train"]) + len(splits["validation"]) == 36  # the two repeats were removed
    assert_no_text_in_two_splits(splits)
    datasets = result.artifacts["transform"]["datasets"]
    assert datasets.metrics["leaked_rows_removed"] == 2
    leaks = pd.read_json(DatasetsFiles(datasets).quarantine_leaks_file, lines=True)
    assert sorted(leaks["source_row"]) == [37, 38] and set(leaks["reason"]) == {"duplicate_of_test"}


# --- the PII canary ------------------------------------------------------------------------------


def _luhn_complete(payload: str) -> str:
    for digit in "0123456789":
        if luhn_valid(payload + digit):
            return payload + digit
    raise AssertionError("unreachable")


def _iban(rng: random.Random, country: str, bban_length: int) -> str:
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)) + "".join(
        rng.choice("0123456789") for _ in range(bban_length - 4))
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def canary_values(rng: random.Random, n: int = 60) -> dict[str, list[str]]:
    """n distinct values of each PII kind, in the formats people write them, and look-alikes."""
    def digits(k: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(k))

    cards = []
    for i in range(n):
        prefix, length = [("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("4", 19), ("4", 13)][i % 6]
        number = _luhn_complete(prefix + digits(length - len(prefix) - 1))
        style = i % 3 if length != 13 else 0
        if style == 1 and length == 15:
            number = " ".join([number[:4], number[4:10], number[10:]])
        elif style:
            number = (" " if style == 1 else "-").join(number[k:k + 4] for k in range(0, length, 4))
        cards.append(number)
    ibans = []
    for i in range(n):
        iban = _iban(rng, *[("GB", 18), ("DE", 18), ("FR", 23), ("NL", 14), ("IE", 18)][i % 5])
        ibans.append(" ".join(iban[k:k + 4] for k in range(0, len(iban), 4)) if i % 2 else iban)
    emails = [f"{rng.choice(['ann', 'bob', 'chloe', 'dev'])}.{rng.choice(['smith', 'okafor', 'ng'])}{i}"
              f"@{rng.choice(['gmail.com', 'example.co.uk', 'bank-mail.org'])}" for i in range(n)]
    phone_formats = ["+44 20 7946 0{d3}", "+44 7700 900{d3}", "07700 900{d3}", "020 7946 0{d3}",
                     "(415) 555-0{d3}", "+1 212 555 0{d3}", "+44 (0)161 496 0{d3}", "312-555-0{d3}"]
    phones = [phone_formats[i % len(phone_formats)].format(d3=f"{i:03d}") for i in range(n)]
    orders = []
    while len(orders) < 40:  # 16 digits that fail Luhn: an order number, not a card
        number = str(rng.randint(1, 9)) + digits(15)
        if not luhn_valid(number):
            orders.append(number)
    refs = [f"RF-{rng.randint(100000, 999999)}" for _ in range(40)]
    return {"card": cards, "iban": ibans, "email": emails, "phone": phones, "order": orders, "ref": refs}


_SENTENCES = {"card": [" My card number is {v}.", " Card: {v}", " CARD {v}"],
              "iban": [" My IBAN is {v}.", " IBAN {v}", " pay to {v} please"],
              "email": [" You can reach me at {v}.", " email {v}"],
              "phone": [" Call me on {v}.", " phone {v} after 5pm"],
              "order": [" My order number is {v}.", " Order #{v}"],
              "ref": [" Reference {v}.", " Case ID {v}"]}


def inject(frame: pd.DataFrame, values: dict[str, list[str]]) -> pd.DataFrame:
    """Append one PII or look-alike phrase to the text of successive records (all rows of a ticket),
    and a second one to ticket replies, so text and free-text targets both carry canaries."""
    frame = frame.copy()
    queue = [(kind, value) for kind, kind_values in values.items() for value in kind_values]
    record_ids = list(dict.fromkeys(frame["record_id"]))
    reply_rows = frame.index[frame["task"] == "ticket_reply"].tolist()
    for number, (kind, value) in enumerate(queue):
        phrase = _SENTENCES[kind][number % len(_SENTENCES[kind])].format(v=value)
        if number % 5 == 4 and reply_rows:  # every fifth canary goes into an agent's reply
            row = reply_rows.pop()
            frame.loc[row, "target"] += phrase
        else:
            record = record_ids[number % len(record_ids)]
            rows = frame["record_id"] == record
            frame.loc[rows, "text"] = frame.loc[rows, "text"] + phrase
    return frame


def file_texts(run_dir: Path, tokenizer) -> tuple[dict[str, str], set[str]]:
    """Every file under the run folder as text: Parquet cells, TFRecord and prompt token ids decoded."""
    import numpy as np

    texts, kinds = {}, set()
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        kinds.add(path.suffix)
        if path.suffix == ".parquet":
            parts = []
            for _, values in pd.read_parquet(path).items():
                for value in values:
                    if isinstance(value, (list, np.ndarray)):  # token ids
                        parts.append(tokenizer.decode(value, skip_special_tokens=False))
                    else:
                        parts.append(str(value))
            texts[str(path)] = "\n".join(parts)
        elif path.suffix == ".tfrecord":
            texts[str(path)] = "\n".join(tokenizer.decode(ids, skip_special_tokens=False)
                                         for ids, _ in read_tfrecord(path))
        else:
            texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    return texts, kinds


def _compact(value: str) -> str:
    return re.sub(r"[\s().-]", "", value).lower()


def test_pii_canaries_reach_no_file_and_look_alikes_survive(tmp_path, tiny_base_model_dir, monkeypatch):
    from models.llm.tokenizer import ChatTokenizer

    values = canary_values(random.Random(20240611))
    assert all(luhn_valid(re.sub(r"\D", "", card)) for card in values["card"])
    assert not any(luhn_valid(order) for order in values["order"])
    generate = simulated.generate_examples
    injected: list[pd.DataFrame] = []

    def generate_with_canaries(num_records, seed):
        injected.append(inject(generate(num_records, seed), values))
        return injected[-1]

    monkeypatch.setattr(simulated, "generate_examples", generate_with_canaries)
    # Long enough prompts and answers that no token is cut: every look-alike must reach the TFRecords.
    no_truncation = TransformParams(max_prompt_tokens=2048, max_answer_tokens=1024)
    result = run_data_components(tmp_path / "runs", tiny_base_model_dir, ExampleGenParams(num_records=300),
                                 no_truncation)
    assert result.artifacts["transform"]["datasets"].metrics["truncated_examples"] == 0
    raw = "\n".join(injected[0]["text"]) + "\n".join(injected[0]["target"])
    pii_kinds = ("card", "iban", "email", "phone")
    for kind in pii_kinds:  # the canaries really were in the raw rows
        assert len(values[kind]) >= 50 and all(v in raw for v in values[kind]), kind

    texts, kinds = file_texts(tmp_path / "runs" / "run", ChatTokenizer.load(tiny_base_model_dir))
    assert {".parquet", ".jsonl", ".json", ".md", ".tfrecord"} <= kinds  # everything was looked at
    everything = "\n".join(texts.values()).lower()
    compact = _compact(everything)
    leaks = [(kind, value, [name for name, text in texts.items() if value.lower() in text.lower()
                            or _compact(value) in _compact(text)])
             for kind in pii_kinds for value in values[kind]
             if value.lower() in everything or _compact(value) in compact]
    assert not leaks, f"{len(leaks)} PII canaries leaked, e.g. {leaks[:3]}"
    for name in ("[CARD]", "[IBAN]", "[EMAIL]", "[PHONE]"):
        assert name.lower() in everything
    masked = result.artifacts["example_gen"]["examples"].metrics["pii_masked"]
    for placeholder in ("CARD", "IBAN", "EMAIL", "PHONE"):
        assert masked.get(placeholder, 0) >= 50, masked

    # Look-alikes stay: in the examples table, in the split tables' original text, and (order
    # numbers, which normalisation leaves alone) in the token ids the model trains on.
    examples = "\n".join(pd.read_parquet(ExamplesFiles(result.artifacts["example_gen"]["examples"]).table_file)
                         .pipe(lambda df: pd.concat([df["text"], df["target"]])))
    split_texts = "\n".join(pd.concat([df[column] for df in splits_of(result).values()
                                       for column in ("text", "target")]))
    tfrecords = "\n".join(text for name, text in texts.items() if name.endswith(".tfrecord"))
    for kind in ("order", "ref"):
        for value in values[kind]:
            assert value in examples and value in split_texts, (kind, value)
    assert all(order in tfrecords for order in values["order"])


# --- BANKING77 through the command line ---------------------------------------------------------


def test_banking77_ingests_to_77_labels_with_the_readme_row_count(tmp_path, tiny_base_model_dir, monkeypatch):
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip(f"BANKING77 is not at {BANKING77.resolve()} (a fresh clone has no ../shared); "
                    "its ingest is not checked")
    readme = (BANKING77 / "README.md").read_text()
    readme_rows = int(re.search(r"`train\.csv`: ([\d,]+) rows", readme).group(1).replace(",", ""))
    categories = json.loads((BANKING77 / "categories.json").read_text())
    assert readme_rows == 10_003 and len(categories) == 77

    runs_root, run_dir = tmp_path / "runs", tmp_path / "runs" / "banking77"
    base_model = Artifact.load(tiny_base_model_dir)
    ArtifactCache(runs_root).store(base_model.fingerprint, {"model": base_model})  # the tiny model: cached
    monkeypatch.chdir(ROOT)  # the path below is relative to the project root, as in the issue
    flags = ["--set", "example_gen.source=../shared/data/banking77/train.csv",
             "--set", "example_gen.text_column=text", "--set", "example_gen.label_column=category",
             "--set", "example_gen.task=intent",
             *[f"--set=base_model.{k}={v}" for k, v in TINY_BASE_MODEL_PARAMS.items()]]
    common = ["--runs-root", str(runs_root), "run", "--profile", "smoke", "--run-dir", str(run_dir), *flags]
    assert run_cli(monkeypatch, *common, "--only", "example_gen") == 0
    assert run_cli(monkeypatch, *common, "--only", "transform") == 0

    record = load_run_record(run_dir)["components"]
    assert [record[c]["status"] for c in ("example_gen", "base_model", "transform")] == ["cached", "cached", "done"]
    examples = record["example_gen"]["metrics"]["examples"]
    assert examples["rows_in"] == readme_rows
    assert examples["rows_in"] == examples["rows_out"] + examples["rows_quarantined"]
    assert examples["rows_quarantined"] == 0 and examples["tasks"] == {"intent": readme_rows}
    assert ExamplesFiles(run_dir / "example_gen" / "examples").labels() == {
        "intent": sorted(categories)}
    datasets = DatasetsFiles(run_dir / "transform" / "datasets")
    splits = {split: pd.read_parquet(datasets.split_table(split)) for split in SPLITS}
    for split, rows in splits.items():
        assert set(rows["target"]) == set(categories), split  # every intent in every split
    assert sum(map(len, splits.values())) == readme_rows
    assert_no_text_in_two_splits(splits)
    stats = json.loads(datasets.statistics_file.read_text())
    assert stats["tasks"]["intent"]["num_labels"] == 77
    print("BANKING77 rows per split:", {split: len(rows) for split, rows in splits.items()})
