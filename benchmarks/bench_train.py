"""Training throughput of the Trainer's configuration: tokens/s, useful (non-padding) tokens/s, peak RSS.

    python benchmarks/bench_train.py [--profile default] [--steps 24] [--variants eager,jit] [--set k=v ...]

Each variant trains in its own process (so peak RSS is its own) for `--steps` steps in two rounds;
the figures are from the second round, after tracing/compilation. Upstream artifacts (data, base
model, tokenised datasets) come from the pipeline's cache under runs/bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = {"float32": {"precision": "float32", "jit_compile": False},
            "float32_jit": {"precision": "float32", "jit_compile": True},
            "bf16": {"precision": "mixed_bfloat16", "jit_compile": False},
            "bf16_jit": {"precision": "mixed_bfloat16", "jit_compile": True}}


def upstream(profile: str, set_flags: list[str], runs_root: Path):
    import pipeline
    from components.runner import LocalRunner

    params, _ = pipeline.build_params(pipeline.params_classes(), profile, None, set_flags)
    nodes = [n for n in pipeline.build_pipeline() if n.name in ("example_gen", "base_model", "transform")]
    result = LocalRunner(nodes, runs_root, log=lambda *_: None).run(runs_root / f"upstream-{profile}", params, profile)
    if result.status != "succeeded":
        raise SystemExit(f"upstream failed: {result.error}")
    return params["trainer"], result.artifacts["transform"]["datasets"].uri, result.artifacts["base_model"]["model"].uri


def run_variant(args) -> dict:
    from components.base import ExecutionContext
    from components.trainer.component import Trainer
    from components.trainer.loop import train_trial

    trainer_params, datasets, base = upstream(args.profile, args.set, Path(args.runs_root))
    half = max(1, args.steps // 2)
    p = dataclasses.replace(trainer_params, steps=2 * half, validate_every=half, early_stopping_patience=0,
                            max_validation_batches=1, validation_label_examples=4, **VARIANTS[args.variant])
    work = Path(args.runs_root) / f"work-{args.variant}-{time.time_ns()}"
    ctx = ExecutionContext(Trainer(), p, {}, work, {}, log=lambda *_: None, fingerprint="bench")
    started = time.monotonic()
    result = train_trial(ctx, p, datasets, base, work / "tb", ctx.work_dir)
    steady = result.history[-1]
    return {"variant": args.variant, "batch_size": p.batch_size, "lora_rank": p.lora_rank, "steps_timed": half,
            "tokens_per_s": round(steady["tokens_per_s"], 1),
            "useful_tokens_per_s": round(steady["useful_tokens_per_s"], 1),
            "padding_fraction": round(1 - steady["useful_tokens_per_s"] / steady["tokens_per_s"], 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "wall_s": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--variants", default="float32,bf16")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--runs-root", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(run_variant(args)))
        return
    upstream(args.profile, args.set, Path(args.runs_root))  # once, before the children share it
    rows = []
    for variant in args.variants.split(","):
        command = [sys.executable, __file__, "--profile", args.profile, "--steps", str(args.steps), "--variant",
                   variant, "--runs-root", args.runs_root] + [f"--set={s}" for s in args.set]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"variant {variant} failed")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    out = Path(args.runs_root) / f"bench_train_{args.profile}.json"
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "profile": args.profile, "rows": rows}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
