"""The Optimizer's student stage on a finished run, against the teacher's int8 TFLite file.

    python benchmarks/bench_student.py RUN_DIR [--set steps=1000 --set alphas=0.5,0.9 ...] [--out DIR]

Runs `distill_student` (the same code as the pipeline's student component) on the run's
fine-tuned model and Transform output, measures the student on the Evaluator's test rows of that
run, then times the teacher's dynamic-range int8 TFLite file (the Optimizer's) on the same single
requests, in this process, right after the student. Prints the before/after pruning and QAT table
and writes `student.json`, `student.tflite` and `bench_student.json` into --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import types
import typing
from dataclasses import asdict
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from check_export_agreement import run_artifact  # noqa: E402

from components.common.variant_quality import evaluation_rows  # noqa: E402
from components.config import coerce_value  # noqa: E402
from components.student.settings import StudentSettings  # noqa: E402
from components.student.stage import distill_student, latency  # noqa: E402
from models.export.exported import ExportedModel  # noqa: E402
from models.llm.language_model import load_model  # noqa: E402
from models.scoring.constrained import LabelTrie  # noqa: E402
from models.student.compression import tflite_student_fn  # noqa: E402
from models.student.model import StudentScorer  # noqa: E402
from schemas.artifacts import DatasetsFiles, EvaluationFiles, VariantsFiles  # noqa: E402


def settings_from(flags: list[str]) -> StudentSettings:
    hints = typing.get_type_hints(StudentSettings)
    values = {}
    for flag in flags:
        name, _, value = flag.partition("=")
        if name not in hints:
            raise SystemExit(f"--set {flag}: StudentSettings has no field {name!r}")
        values[name] = coerce_value(value, hints[name], name)
    return StudentSettings(**{**values, "enabled": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--set", action="append", default=[], dest="flags", metavar="FIELD=VALUE")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_student"))
    parser.add_argument("--latency-only", action="store_true", help="re-time the student and teacher int8 files "
                        "of an earlier run of this script in --out (e.g. on a quiet machine); nothing is trained")
    parser.add_argument("--eval-examples", type=int, default=50, help="Evaluator rows per task (the default "
                        "profile's optimizer.eval_examples, so the teacher int8's figures are on the same rows)")
    args = parser.parse_args()
    settings = settings_from(args.flags)
    datasets = DatasetsFiles(run_artifact(args.run_dir, "transform", "datasets"))
    variants = VariantsFiles(run_artifact(args.run_dir, "optimizer", "variants"))
    evaluation = EvaluationFiles(run_artifact(args.run_dir, "evaluator", "evaluation"))
    causal_lm, tokenizer, _ = load_model(run_artifact(args.run_dir, "trainer", "model"))
    labels = datasets.labels()
    test = pd.read_parquet(datasets.split_table("test"), columns=["id", "prompt_ids"])
    rows = evaluation_rows(evaluation.predictions_file, test, args.eval_examples)
    started = time.perf_counter()
    if not args.latency_only:
        distill_student(causal_lm, tokenizer, datasets.folder, labels, args.out, settings, eval_rows=rows)
    seconds = time.perf_counter() - started
    student_files = VariantsFiles(args.out)  # the student stage lays its files out as in the Optimizer's variants
    report = json.loads(student_files.student_report_file.read_text())

    # The teacher's int8 file on the same single requests (one test prompt per task, median of the runs).
    manifest = variants.manifest()
    teacher = ExportedModel(variants.tflite("dynamic_int8"), num_threads=settings.num_threads)
    tries = {task: LabelTrie(names, tokenizer) for task, names in labels.items()}
    rows = rows[rows["task"].isin(tries)]  # the rows (and so the requests) the student stage measured
    scorer = types.SimpleNamespace(classify=functools.partial(teacher.classify, num_nodes=manifest["tree"]["nodes"]))
    teacher_ms = latency(scorer, rows, tries, settings.latency_runs)["request_ms"]
    if args.latency_only:  # the student's int8 file, timed the same way right after the teacher's
        student = StudentScorer(tflite_student_fn(student_files.student_file, settings.num_threads),
                                report["student"]["output_tokens"], report["student"]["max_length"])
        report["stages"]["int8"]["request_ms"] = latency(student, rows, tries, settings.latency_runs)["request_ms"]
    int8_quality = next(v for v in manifest["variants"] if v["name"] == "tflite_dynamic_int8")["quality"]
    int8_mb = variants.tflite("dynamic_int8").stat().st_size / 1e6
    keras = report["teacher"]["quality"]

    lines = ["| model | accuracy | macro-F1 | agreement | size MB | gzipped MB | zero weights | request ms |",
             "|---|---|---|---|---|---|---|---|",
             f"| teacher Keras float32 | {keras['accuracy']:.3f} | {keras['macro_f1']:.3f} | — | — | — | — | — |",
             f"| teacher TFLite dynamic int8 | {int8_quality['accuracy']:.3f} | {int8_quality['macro_f1']:.3f} | "
             f"{int8_quality['label_agreement']:.3f} | {int8_mb:.1f} | — | — | {teacher_ms:.1f} |"]
    for stage, figures in report["stages"].items():
        q = figures["quality"]
        lines.append(f"| student {stage} | {q['accuracy']:.3f} | {q['macro_f1']:.3f} | {q['label_agreement']:.3f} | "
                     f"{figures['size_bytes'] / 1e6:.1f} | {figures['gzipped_bytes'] / 1e6:.1f} | "
                     f"{figures['zero_fraction']:.1%} | {figures['request_ms']:.1f} |")
    student_ms = report["stages"]["int8"]["request_ms"]
    summary = {"rows": len(rows), "latency_only": args.latency_only, "teacher_int8_request_ms": teacher_ms,
               "student_int8_request_ms": student_ms, "latency_ratio": student_ms / teacher_ms,
               "macro_f1_drop_points": (keras["macro_f1"] - report["stages"]["int8"]["quality"]["macro_f1"]) * 100,
               "chosen": report["chosen"], "parameters": report["student"]["parameters"],
               "seconds": {**report["seconds"], "bench_total": seconds}, "settings": asdict(settings)}
    (args.out / "bench_student.json").write_text(json.dumps(summary, indent=2))
    print("\n".join(lines))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
