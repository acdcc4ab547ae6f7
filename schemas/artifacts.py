"""The files inside each artifact folder, named in one place.

Every component output is a folder (`runs/<run>/<component>/<output>/`); what lies in it is a
contract between the component that writes it and everything that reads it (later components,
`serving/`, `benchmarks/`, tests). Each class below wraps one kind of folder and hands out its
files' paths (`*_file`, or a method for files named by split/task/variant) and, for the small JSON
files read in many places, their parsed content (`labels()`, `transform()`, ...):

    datasets = DatasetsFiles(ctx.input("datasets"))     # an Artifact, or a folder path
    labels = datasets.labels()
    test = pd.read_parquet(datasets.split_table("test"))
    train = load_dataset(datasets.tfrecord("train"), ...)

A class takes anything with a `.uri` (the framework's `Artifact`) or a path, so this module, in the
lowest layer, imports nothing of the project's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LABELS_FILE = "labels.json"  # {task: [label, ...]}: ExampleGen, Transform, Evaluator and every bundle


class ArtifactFolder:
    """One artifact's folder; subclasses name the files in it."""

    def __init__(self, folder: str | os.PathLike | Any):
        self.folder = Path(getattr(folder, "uri", folder))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r})"

    def file(self, name: str) -> Path:
        """A file whose name is data (a manifest entry), or one the class does not name."""
        return self.folder / name


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class LabelledFolder(ArtifactFolder):
    """A folder that carries the label sets its rows were scored against (`labels.json`)."""

    @property
    def labels_file(self) -> Path:
        return self.file(LABELS_FILE)

    def labels(self) -> dict[str, list[str]]:
        return read_json(self.labels_file)


class ExamplesFiles(LabelledFolder):
    """ExampleGen's `examples`: the validated, PII-masked table, its quarantine and label sets."""

    @property
    def table_file(self) -> Path:
        return self.file("examples.parquet")

    @property
    def quarantine_file(self) -> Path:  # one JSON object per rejected row, with its reason
        return self.file("quarantine.jsonl")


class ModelFiles(ArtifactFolder):
    """A saved causal LM (BaseModel's `model`, Trainer's `model`, the import cache): config, weights, tokenizer."""

    @property
    def config_file(self) -> Path:
        return self.file("model_config.json")

    def config(self) -> dict:
        return read_json(self.config_file)

    @property
    def weights_file(self) -> Path:
        return self.file("model.weights.h5")

    @property
    def tokenizer_file(self) -> Path:
        return self.file("tokenizer.json")

    @property
    def tokenizer_config_file(self) -> Path:  # the chat template and special tokens
        return self.file("tokenizer_config.json")

    @property
    def tokenizer_files(self) -> tuple[Path, Path]:
        """The tokenizer and its config: what a bundle copies to tokenise requests."""
        return self.tokenizer_file, self.tokenizer_config_file

    # The Trainer's model also holds how it was trained.
    @property
    def training_history_file(self) -> Path:
        return self.file("training_history.json")

    def training_history(self) -> list[dict]:
        return read_json(self.training_history_file)

    @property
    def summary_file(self) -> Path:  # one trial: its parameters and best round
        return self.file("summary.json")

    @property
    def trials_file(self) -> Path:  # every trial's summary
        return self.file("trials.json")


class DatasetsFiles(LabelledFolder):
    """Transform's `datasets`: per split a table and TFRecords, the label sets, the tokenisation settings."""

    def split_table(self, split: str) -> Path:
        """The split's rows (text, target, prompt_ids, ...) as Parquet."""
        return self.file(f"{split}.parquet")

    def tfrecord(self, split: str) -> Path:
        """The split's token sequences in the `models.llm.tfrecords` format."""
        return self.file(f"{split}.tfrecord")

    @property
    def transform_file(self) -> Path:  # {"max_length": ..., "max_prompt_tokens": ...}
        return self.file("transform.json")

    def transform(self) -> dict:
        return read_json(self.transform_file)

    @property
    def quarantine_leaks_file(self) -> Path:  # rows dropped because their text was in two splits
        return self.file("quarantine_leaks.jsonl")

    STATISTICS = ("statistics.json", "statistics.md", "label_distribution.png", "length_histogram.png")

    @property
    def statistics_files(self) -> list[Path]:
        """statistics.json, statistics.md and their two plots."""
        return [self.file(name) for name in self.STATISTICS]

    @property
    def statistics_file(self) -> Path:
        return self.statistics_files[0]

    @property
    def statistics_report_file(self) -> Path:  # the same figures as Markdown tables
        return self.statistics_files[1]


class EvaluationFiles(LabelledFolder):
    """The Evaluator's `evaluation`: scored test rows, metrics, the blessing and the report."""

    @property
    def predictions_file(self) -> Path:  # one JSON object per scored test row (JSON lines)
        return self.file("predictions.jsonl")

    def predictions(self) -> list[dict]:
        return [json.loads(line) for line in self.predictions_file.read_text().splitlines()]

    @property
    def metrics_file(self) -> Path:
        return self.file("metrics.json")

    def metrics(self) -> dict:
        return read_json(self.metrics_file)

    @property
    def blessing_file(self) -> Path:
        return self.file("blessing.json")

    def blessing(self) -> dict:
        return read_json(self.blessing_file)

    @property
    def report_file(self) -> Path:
        return self.file("report.md")

    @property
    def slices_file(self) -> Path:
        return self.file("slices.json")

    def per_label_table(self, task: str, role: str) -> Path:
        return self.file(f"per_label_{task}_{role}.csv")

    def confusion_table(self, task: str) -> Path:
        return self.file(f"confusion_{task}.csv")

    def confusion_plot(self, task: str) -> Path:
        return self.file(f"confusion_{task}.png")


class BaseEvaluationFiles(ArtifactFolder):
    """The BaseEvaluator's `base_evaluation`: the base model's label per test row and its metrics."""

    @property
    def predictions_file(self) -> Path:  # JSON lines: id, label, probability (the Evaluator's rows, in order)
        return self.file("base_predictions.jsonl")

    def predictions(self):
        import pandas as pd

        return pd.read_json(self.predictions_file, lines=True, dtype={"id": str})

    @property
    def results_file(self) -> Path:  # {"results", "unconstrained", "seconds"}
        return self.file("base_results.json")

    def results(self) -> dict:
        return read_json(self.results_file)


class VariantsFiles(ArtifactFolder):
    """The Optimizer's `variants` (the float SavedModel and converted files) or the Student's `student` (its int8
    file and report), with `variants.json` describing them."""

    @property
    def manifest_file(self) -> Path:  # the variants, their quality and gate verdicts, the export's shapes
        return self.file("variants.json")

    def manifest(self) -> dict:
        return read_json(self.manifest_file)

    SAVED_MODEL = "saved_model"  # the float SavedModel's folder, here and in its bundle

    @property
    def saved_model_dir(self) -> Path:
        return self.file(self.SAVED_MODEL)

    def tflite(self, variant: str) -> Path:
        return self.file(f"{variant}.tflite")

    @property
    def student_file(self) -> Path:
        return self.file("student.tflite")

    @property
    def student_report_file(self) -> Path:
        return self.file("student.json")


class BundleFiles(LabelledFolder):
    """One Exporter bundle (or a pushed version's `assets.extra/`): model file, tokenizer, labels, card, manifest."""

    @property
    def manifest_file(self) -> Path:  # written last: SHA-256 and size of every other file
        return self.file("manifest.json")

    def manifest(self) -> dict:
        return read_json(self.manifest_file)

    @property
    def shapes_file(self) -> Path:  # the fixed input shapes the exported signatures were traced with
        return self.file("shapes.json")

    def shapes(self) -> dict:
        return read_json(self.shapes_file)

    @property
    def model_card_file(self) -> Path:
        return self.file("model_card.md")

    @property
    def saved_model_dir(self) -> Path:  # in the SavedModel's bundle
        return self.file(VariantsFiles.SAVED_MODEL)


class BundlesFiles(ArtifactFolder):
    """The Exporter's `bundles`: one folder per shipped variant and the list of those the gate kept out."""

    def bundle(self, variant: str) -> BundleFiles:
        return BundleFiles(self.file(variant))

    @property
    def excluded_file(self) -> Path:  # {variant: why the compression gate kept it out}
        return self.file("excluded.json")


PUSHED_EXTRAS = "assets.extra"  # TF Serving ignores it: a pushed SavedModel's bundle files travel there


class BenchmarkFiles(ArtifactFolder):
    """The Benchmark's `report`: every variant measured side by side."""

    @property
    def results_file(self) -> Path:
        return self.file("benchmark.json")

    def results(self) -> list[dict]:
        return read_json(self.results_file)

    @property
    def markdown_file(self) -> Path:
        return self.file("benchmark.md")

    @property
    def plot_file(self) -> Path:
        return self.file("benchmark.png")

    @property
    def compression_plot_file(self) -> Path:
        return self.file("compression.png")
