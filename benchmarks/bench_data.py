"""Benchmark of the data components: ExampleGen + Transform on generated records (not a test).

    python benchmarks/bench_data.py [--records 100000] [--output runs/bench/bench_data.json]

Measures, on the simulated data set (one examples row per (record, task), so 100,000 records
give about 140,000 rows):

- cleaning + PII masking alone (`clean_and_mask`, what ExampleGen does to every text and reply),
- the ExampleGen component (generation, cleaning, masking, validation, Parquet),
- the Transform component (normalisation, leak-free split, statistics and plots, prompt +
  answer tokenisation with the base model's tokenizer, TFRecords),

each in rows per second, and the peak resident memory of the process after each step
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, a high-water mark: it never goes down).
Components run through `components.runner.LocalRunner`, as `pipeline.py run` runs them, in a
fresh runs root so nothing is a cache hit. Targets (2 CPU cores): >= 5,000 rows/s cleaning +
masking, >= 2,000 rows/s for the whole Transform.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.base_model import BaseModel, BaseModelParams  # noqa: E402
from components.example_gen.component import ExampleGen, ExampleGenParams, clean_and_mask  # noqa: E402
from components.runner import LocalRunner, Node, load_run_record  # noqa: E402
from components.transform.component import Transform, TransformParams  # noqa: E402
from data.simulated import generate_examples  # noqa: E402

TARGET_CLEAN_MASK_ROWS_PER_S = 5_000
TARGET_TRANSFORM_ROWS_PER_S = 2_000
DEFAULT_OUTPUT = ROOT / "runs" / "bench" / "bench_data.json"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / (1024 if sys.platform != "darwin" else 1024 * 1024), 1)


def bench(records: int, seed: int, profile_to: Path | None = None) -> dict:
    results: dict = {"records": records, "seed": seed, "cpu_count": os.cpu_count(),
                     "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                     "python": platform.python_version(), "steps": {}}
    steps = results["steps"]

    def step(name: str, seconds: float, rows: int, **extra) -> None:
        steps[name] = {"seconds": round(seconds, 3), "rows": rows,
                       "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
                       "peak_rss_mib": peak_rss_mib(), **extra}

    started = time.perf_counter()
    raw = generate_examples(records, seed)
    step("generate", time.perf_counter() - started, len(raw))

    profiler = cProfile.Profile() if profile_to else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    _, pii_counts = clean_and_mask(raw)
    if profiler:
        profiler.disable()
    step("clean_and_mask", time.perf_counter() - started, len(raw),
         texts=2 * len(raw), pii_masked=sum(pii_counts.values()))
    del raw

    runs_root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        peaks: dict[str, float] = {}

        def log(message: str) -> None:  # a component's "done" line: note the memory high-water mark
            if message.startswith("[") and " done in " in message:
                peaks[message[1:message.index("]")]] = peak_rss_mib()

        nodes = [Node(ExampleGen(), {}), Node(BaseModel(), {}),
                 Node(Transform(), {"examples": ("example_gen", "examples"), "base_model": ("base_model", "model")})]
        params = {"example_gen": ExampleGenParams(num_records=records, seed=seed),
                  # the smoke profile's tiny model (1,024-token byte-level BPE): tokenising is the same work
                  "base_model": BaseModelParams(source="tiny-random"),
                  "transform": TransformParams()}
        if profiler:
            profiler.enable()
        result = LocalRunner(nodes, runs_root, log=log).run(runs_root / "bench", params)
        if profiler:
            profiler.disable()
        if result.status != "succeeded":
            raise SystemExit(f"benchmark run failed in {result.failed}: {result.error}")
        record = load_run_record(runs_root / "bench")["components"]
        examples = record["example_gen"]["metrics"]["examples"]
        datasets = record["transform"]["metrics"]["datasets"]
        step("example_gen", record["example_gen"]["duration_s"], examples["rows_in"],
             rows_out=examples["rows_out"], rows_quarantined=examples["rows_quarantined"])
        steps["example_gen"]["peak_rss_mib"] = peaks.get("example_gen")
        step("base_model", record["base_model"]["duration_s"], 0)
        steps["base_model"]["peak_rss_mib"] = peaks.get("base_model")
        transform_rows = sum(datasets["rows_per_split"].values())
        step("transform", record["transform"]["duration_s"], transform_rows,
             rows_per_split=datasets["rows_per_split"])
        steps["transform"]["peak_rss_mib"] = peaks.get("transform")
        both = record["example_gen"]["duration_s"] + record["transform"]["duration_s"]
        step("example_gen+transform", both, examples["rows_in"])
        sizes = {p.name: p.stat().st_size for p in (runs_root / "bench" / "transform" / "datasets").iterdir()}
        results["transform_output_bytes"] = sum(sizes.values())
    finally:
        shutil.rmtree(runs_root, ignore_errors=True)

    results["peak_rss_mib"] = peak_rss_mib()
    results["targets"] = {
        "clean_and_mask_rows_per_s": TARGET_CLEAN_MASK_ROWS_PER_S,
        "transform_rows_per_s": TARGET_TRANSFORM_ROWS_PER_S,
        "clean_and_mask_met": steps["clean_and_mask"]["rows_per_s"] >= TARGET_CLEAN_MASK_ROWS_PER_S,
        "transform_met": steps["transform"]["rows_per_s"] >= TARGET_TRANSFORM_ROWS_PER_S,
    }
    if profiler:
        profiler.dump_stats(str(profile_to))
        pstats.Stats(str(profile_to)).sort_stats("cumulative").print_stats(30)
    return results


def table(results: dict) -> str:
    lines = [f"ExampleGen + Transform on {results['records']:,} simulated records "
             f"({results['cpu_count']} CPUs, Python {results['python']})", "",
             f"{'step':<24}{'rows':>10}{'seconds':>10}{'rows/s':>10}{'peak RSS MiB':>14}"]
    for name, s in results["steps"].items():
        rate = f"{s['rows_per_s']:,.0f}" if s["rows_per_s"] else "-"
        rss = f"{s['peak_rss_mib']:,.0f}" if s["peak_rss_mib"] is not None else "-"
        lines.append(f"{name:<24}{s['rows']:>10,}{s['seconds']:>10.2f}{rate:>10}{rss:>14}")
    t = results["targets"]
    lines += ["", f"target clean+mask >= {t['clean_and_mask_rows_per_s']:,} rows/s: "
              f"{'met' if t['clean_and_mask_met'] else 'MISSED'}; "
              f"target Transform >= {t['transform_rows_per_s']:,} rows/s: {'met' if t['transform_met'] else 'MISSED'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="simulated records to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the JSON results go")
    parser.add_argument("--profile", type=Path, default=None, help="also write cProfile stats to this file")
    args = parser.parse_args(argv)
    results = bench(args.records, args.seed, args.profile)
    print(table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {args.output}")


if __name__ == "__main__":
    main()
