"""Kill drills and determinism (issue 18): SIGKILL inside every component of a smoke run, then run again.

One drill run, `python pipeline.py run --profile smoke` in a child process under its own runs root, is
killed (the whole process group, SIGKILL) once inside each component; each time it is started again. The
kill moment is read from `run.json`: once a component is `running`, the drill kills when the component's
temporary output or work folder holds its first file (a half-written artifact, or the Trainer's first
checkpoint), or after `KILL_AFTER_S`, whichever comes first. After every kill no artifact folder is
incomplete, and the next start finds every component finished before the kill in the cache.

The uninterrupted reference is the suite's smoke run (`conftest.smoke_run`), with the same settings and
seed up to the Evaluator. So the drill is also the determinism check: two runs with one seed write
byte-identical files (SHA-256 of every file) and identical metrics, with two exceptions where the
format forbids byte identity: a JSON file may differ in measured times and throughputs only, and the
Trainer's HDF5 weights file in its container's bookkeeping only (its arrays must be bit-identical; no
floating-point tolerance is needed on one machine). To keep the drill short its Optimizer makes the
float32 variant only and the Student is disabled; that variant's quality is compared with the
reference's float32 variant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from components.base import Artifact
from components.runner import load_run_record, topological_order
from pipeline import build_pipeline
from tests.helpers import SMOKE_FAST

REPO = Path(__file__).resolve().parents[1]
# The pipeline's components in the order they run (the drill follows the DAG as it is).
COMPONENTS = [node.name for node in topological_order(build_pipeline())]
SAME_AS_REFERENCE = COMPONENTS[:COMPONENTS.index("evaluator") + 1]  # same settings as the reference run
DRILL_ONLY = ["--set", "optimizer.variants=float32", "--set", "student.enabled=false"]
KILL_AFTER_S = 2.0  # the longest a drill waits inside a component for its first file before killing it
# Metrics that measure time or memory, not results: they differ from run to run by nature.
MEASURED = ("duration", "latency", "_ms", "per_s", "tok_s", "rss", "seconds", "elapsed", "throughput")


def start(runs: Path, serving: Path, log: Path, *extra: str) -> subprocess.Popen:
    """The drill run in a new process group; its output goes to `log` (a pipe nobody reads would fill)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "pipeline.py", "--runs-root", str(runs), "run", "--profile", "smoke", "--run-dir",
             str(runs / "drill"), "--set", f"exporter.serving_dir={serving}", *SMOKE_FAST, *DRILL_ONLY, *extra],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def statuses(run_dir: Path, not_started_at: str | None = None) -> dict[str, str]:
    """Component statuses in run.json; {} while it is still the record of a run started at `not_started_at`."""
    record = load_run_record(run_dir) or {}
    if not_started_at is not None and record.get("started_at") == not_started_at:
        return {}
    return {name: c["status"] for name, c in record.get("components", {}).items()}


def started_at(run_dir: Path) -> str | None:
    return (load_run_record(run_dir) or {}).get("started_at")


def first_file_in(component_dir: Path) -> bool:
    """Whether the component's temporary output or work folder holds any file yet.

    os.walk, not rglob: the folder may be renamed into place while it is walked, and os.walk skips a folder
    that vanished where rglob raises.
    """
    return any(files for pattern in (".tmp-*", ".work-*") for folder in component_dir.glob(pattern)
               for _, _, files in os.walk(folder))


def kill_inside(process: subprocess.Popen, run_dir: Path, target: str, at_once: bool = False) -> str | None:
    """SIGKILL the run's process group inside `target` (or whichever component runs when it is reached late).

    Returns the component that was running at the kill, or None when the run ended first. Until the new
    process rewrites run.json, the record is the killed predecessor's (a component still `running`): ignored.
    """
    previous, seen_running = started_at(run_dir), None
    while process.poll() is None:
        now = statuses(run_dir, previous)
        running = next((name for name, status in now.items() if status == "running"), None)
        if running is not None and COMPONENTS.index(running) >= COMPONENTS.index(target):
            seen_running = seen_running or time.monotonic()
            if at_once or first_file_in(run_dir / running) or time.monotonic() - seen_running > KILL_AFTER_S:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return next((name for name, status in statuses(run_dir).items() if status == "running"), None)
        time.sleep(0.002)
    return None


def assert_no_incomplete_artifact(run_dir: Path) -> None:
    """Every artifact folder in the run is complete: its artifact.json loads and its files match their record."""
    for component in COMPONENTS:
        for folder in (run_dir / component).glob("[!.]*") if (run_dir / component).is_dir() else ():
            if folder.is_dir():
                artifact = Artifact.load(folder)
                assert artifact is not None and artifact.damaged_file() is None, folder


def results(metrics: object) -> object:
    """Metrics without the measured times and memory."""
    if isinstance(metrics, dict):
        return {k: results(v) for k, v in metrics.items() if not any(word in k for word in MEASURED)}
    if isinstance(metrics, list):
        return [results(v) for v in metrics]
    return metrics


def test_sigkill_inside_every_component_then_rerun_matches_an_uninterrupted_run(smoke_run, tmp_path):
    root, _, code = smoke_run
    assert code == 0, "the reference smoke run failed; see test_smoke_pipeline.py"
    reference = root / "runs" / "first"
    runs, serving = tmp_path / "runs", tmp_path / "serving"
    run_dir = runs / "drill"
    killed: list[str] = []
    outputs: list[str] = []
    for target in COMPONENTS:
        for attempt in range(3):
            if target in killed:
                break
            finished_before = [name for name, status in statuses(run_dir).items() if status in ("done", "cached")]
            # A fast component (ExampleGen, the Exporter) can finish between two looks at run.json; it is then
            # cached, so the retry re-runs it with --from and kills it as soon as it runs.
            log = tmp_path / f"start-{len(outputs)}.log"
            process = start(runs, serving, log, *(("--from", target) if attempt else ()))
            inside = kill_inside(process, run_dir, target, at_once=attempt > 0)
            outputs.append(log.read_text())
            assert inside is not None, f"the run ended before a kill in {target}: {outputs[-1][-3000:]}"
            killed.append(inside)
            now = statuses(run_dir)
            # What had finished before this start, upstream of the kill, was a cache hit, not run again.
            upstream = COMPONENTS[:COMPONENTS.index(inside)]
            assert all(now[name] == "cached" for name in finished_before if name in upstream), (now, finished_before)
            assert_no_incomplete_artifact(run_dir)
    assert sorted(set(killed), key=COMPONENTS.index) == COMPONENTS, killed  # a kill inside each component

    log = tmp_path / "last.log"
    process = start(runs, serving, log)
    process.wait()
    assert process.returncode == 0, log.read_text()[-3000:]
    final = load_run_record(run_dir)
    assert final["status"] == "succeeded"
    assert {name: c["status"] for name, c in final["components"].items()} == {
        **{name: "cached" for name in COMPONENTS[:-1]}, COMPONENTS[-1]: "done"}
    leftovers = [p for p in run_dir.rglob(".*") if p.name.startswith((".tmp-", ".work-", ".stale-"))]
    assert leftovers == []

    # Same seed, same settings: the same artifacts, file for file, and the same metrics.
    found: list[str] = []
    for component in SAME_AS_REFERENCE:
        ours = Artifact.load(next(p for p in (run_dir / component).glob("[!.]*") if p.is_dir()))
        theirs = Artifact.load(next(p for p in (reference / component).glob("[!.]*") if p.is_dir()))
        if ours.fingerprint != theirs.fingerprint:
            found.append(f"{component}: another fingerprint (other settings or code than the reference run)")
        for name in sorted(ours.files.keys() | theirs.files.keys()):
            if ours.files.get(name, {}).get("sha256") != theirs.files.get(name, {}).get("sha256"):
                found += same_content(ours.path(name), theirs.path(name), f"{component}/{name}")
        found += differences(results(ours.metrics), results(theirs.metrics), f"{component} metrics")
    # The drill's one variant, float32, scores like the reference's float32 variant.
    ours, theirs = ([v for v in json.loads((run / "optimizer" / "variants" / "variants.json").read_text())["variants"]
                     if v["name"] == "tflite_float32"][0] for run in (run_dir, reference))
    found += differences(results(ours["quality"]), results(theirs["quality"]), "tflite_float32 quality")
    assert found == [], "the drill run differs from the uninterrupted run:\n" + "\n".join(found)


def same_content(ours: Path, theirs: Path, where: str) -> list[str]:
    """Why two files with other bytes differ in content: a JSON file may differ only in measured times; an
    HDF5 weights file only in its container's bookkeeping (object timestamps), so its arrays must be equal."""
    if not (ours.exists() and theirs.exists()):
        return [f"{where}: in one run only"]
    if ours.suffix == ".json":
        return differences(results(json.loads(ours.read_text())), results(json.loads(theirs.read_text())), where)
    if ours.suffix == ".h5":
        import h5py
        import numpy as np

        with h5py.File(ours, "r") as a, h5py.File(theirs, "r") as b:
            names: list[str] = []
            a.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
            return [f"{where}: array {name} differs" for name in names
                    if name not in b or not np.array_equal(a[name][()], b[name][()])]
    return [f"{where}: other bytes"]


def differences(ours: object, theirs: object, where: str) -> list[str]:
    """Each leaf where two JSON values differ, as 'where: ours != theirs'."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [line for key in sorted(ours.keys() | theirs.keys(), key=str)
                for line in differences(ours.get(key), theirs.get(key), f"{where}.{key}")]
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [line for i, (a, b) in enumerate(zip(ours, theirs)) for line in differences(a, b, f"{where}[{i}]")]
    return [] if ours == theirs else [f"{where}: {ours!r} != {theirs!r}"[:300]]
