"""Trainer step time: one process (distribution=none, Keras fit) vs two MultiWorkerMirroredStrategy workers on loopback.

    python benchmarks/bench_distributed.py [--profile smoke] [--steps 12] [--set k=v ...]

Both train the same global batch for `--steps` steps in two validation rounds through the real CLI
(`pipeline.py run --only trainer`, plus `pipeline.py worker` for the second worker); the figure is the
second round's steps/s from training_history.json, after tracing. Upstream artifacts come from the
pipeline's cache under runs/bench-distributed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from components.trainer.cluster import free_loopback_ports  # noqa: E402
from schemas.artifacts import ModelFiles  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cli(runs_root: Path, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "pipeline.py"), "--runs-root", str(runs_root), *args]


def second_round(run_dir: Path) -> dict:
    history = ModelFiles(run_dir / "trainer" / "model").training_history()
    return history[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--set", dest="set_flags", action="append", default=[])
    parser.add_argument("--runs-root", type=Path, default=REPO / "runs" / "bench-distributed")
    args = parser.parse_args()
    flags = [*args.set_flags, f"trainer.steps={args.steps}", f"trainer.validate_every={args.steps // 2}",
             "trainer.early_stopping_patience=0"]
    sets = [a for f in flags for a in ("--set", f)]
    root = args.runs_root
    for component in ("example_gen", "base_model", "transform"):
        subprocess.run(cli(root, "run", "--profile", args.profile, "--run-dir", str(root / "upstream"), "--only",
                           component, *sets), check=True, stdout=subprocess.DEVNULL)
    one = root / "one-process"
    subprocess.run(cli(root, "run", "--profile", args.profile, "--run-dir", str(one), "--only", "trainer", "--force",
                       *sets), check=True, stdout=subprocess.DEVNULL)
    two = root / "two-workers"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_loopback_ports(2)]}
    settings = ["--profile", args.profile, "--run-dir", str(two), *sets, "--set", "trainer.distribution=multi_worker"]
    commands = [cli(root, "run", "--only", "trainer", "--force", *settings), cli(root, "worker", *settings)]
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, env={
        **os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i, command in enumerate(commands)]
    if any(p.wait() != 0 for p in processes):
        raise SystemExit("the two-worker run failed")
    rows = {"one process (none)": second_round(one), "two loopback workers (multi_worker)": second_round(two)}
    base = rows["one process (none)"]["steps_per_s"]
    print("| trainer | s/step | steps/s | useful tok/s | vs one process |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {1 / row['steps_per_s']:.3f} | {row['steps_per_s']:.2f} | {row['useful_tokens_per_s']:.0f} "
              f"| {row['steps_per_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
