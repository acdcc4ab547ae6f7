"""Agreement of exported TFLite files with the Keras model on the *whole* test split of a finished run.

    python benchmarks/check_export_agreement.py RUN_DIR [--variants float32,dynamic_int8]

The pipeline's Optimizer measures this on the Evaluator's sample (`optimizer.eval_examples` rows
per task); this script scores every label-task row of the test split with the Keras model (exact
tree scoring) and through each TFLite file, and prints accuracy, macro-F1, top-1 label agreement
and answer perplexity per variant as JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.base import ARTIFACT_FILE  # noqa: E402
from components.common.metrics import sample_label_rows, score_model  # noqa: E402
from components.common.variant_quality import keras_quality, variant_quality  # noqa: E402
from components.runner import load_run_record  # noqa: E402
from models.export.exported import ExportedModel  # noqa: E402
from models.llm.language_model import load_model  # noqa: E402
from models.scoring.constrained import LabelTrie  # noqa: E402
from schemas.artifacts import DatasetsFiles, VariantsFiles  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--variants", default="float32,float16,dynamic_int8")
    args = parser.parse_args()
    datasets = DatasetsFiles(run_artifact(args.run_dir, "transform", "datasets"))
    model_dir = run_artifact(args.run_dir, "trainer", "model")
    variants = VariantsFiles(run_artifact(args.run_dir, "optimizer", "variants"))
    causal_lm, tokenizer, _ = load_model(model_dir)
    labels = datasets.labels()
    tries = {task: LabelTrie(names, tokenizer) for task, names in labels.items()}
    rows = sample_label_rows(pd.read_parquet(datasets.split_table("test")), 0, 0)
    started = time.perf_counter()
    keras = score_model(causal_lm, tokenizer, rows, labels, batch_size=8)
    rows["after"] = [p.label for p in keras]
    rows["after_gold_log_prob"] = [p.log_probabilities.get(t) for p, t in zip(keras, rows["target"])]
    report = {"rows": len(rows), "keras_float32": {**keras_quality(rows, tries),
                                                   "seconds": time.perf_counter() - started}}
    nodes = variants.manifest()["tree"]["nodes"]
    for variant in args.variants.split(","):
        started = time.perf_counter()
        exported = ExportedModel(variants.tflite(variant))
        report[f"tflite_{variant}"] = {**variant_quality(rows, tries, functools.partial(exported.classify,
                                                                                         num_nodes=nodes)),
                                       "seconds": time.perf_counter() - started}
        print(json.dumps({f"tflite_{variant}": report[f"tflite_{variant}"]}), flush=True)
    print(json.dumps(report, indent=2))


def run_artifact(run_dir: Path, component: str, output: str) -> Path:
    """A component's output folder in a run (cached components point at the run that made them)."""
    local = run_dir / component / output
    if (local / ARTIFACT_FILE).exists():
        return local
    record = load_run_record(run_dir)["components"][component]
    return Path(record["artifacts"][output])


if __name__ == "__main__":
    main()
