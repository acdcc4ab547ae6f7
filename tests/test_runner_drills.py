"""Reliability drills on the runner (issue 18): a corrupted cache, two runs at once, a full or read-only disk.

The toy pipeline of `tests/test_runner.py` (source -> doubler -> summer) plus a component that waits for a
signal file, so two processes can be made to overlap inside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.base import Component, PipelineError, UsageError
from components.config import param
from components.runner import LocalRunner, Node, load_run_record
from tests import test_runner
from tests.helpers import run_cli
from tests.test_runner import CALLS, CountParams, Summer, run

REPO = Path(__file__).resolve().parents[1]


SPAWNED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    Summer.fail = False
    yield
    while SPAWNED:  # a failed drill leaves no process waiting at its gate
        process = SPAWNED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


def log_lines() -> tuple[list[str], callable]:
    lines: list[str] = []
    return lines, lines.append


# --- corruption: files that no longer match their recorded SHA-256 ---------------------------------------


def _runner(tmp_path, log=lambda message: None) -> LocalRunner:
    return LocalRunner(test_runner.toy_pipeline(), tmp_path / "runs", log=log)


def test_artifact_json_records_every_file_with_its_sha256(tmp_path):
    import hashlib

    result = run(tmp_path)
    artifact = result.artifacts["doubler"]["doubled"]
    data = (artifact.uri / "numbers.json").read_bytes()
    assert artifact.files == {"numbers.json": {"size": len(data), "mtime_ns": (artifact.uri / "numbers.json").stat()
                                               .st_mtime_ns, "sha256": hashlib.sha256(data).hexdigest()}}
    assert json.loads((artifact.uri / "artifact.json").read_text())["files"] == artifact.files


@pytest.mark.parametrize("damage, reason", [
    (lambda f: f.write_text(f.read_text().replace("2", "9")), "no longer matches its SHA-256"),  # same size
    (lambda f: f.write_text("[2"), "changed size"),
    (lambda f: f.unlink(), "is missing"),
])
def test_a_corrupted_cache_entry_is_recomputed_not_used(tmp_path, damage, reason):
    run(tmp_path, "r1")
    damage(tmp_path / "runs" / "r1" / "doubler" / "doubled" / "numbers.json")
    CALLS.clear()
    lines, log = log_lines()
    result = _runner(tmp_path, log).run(tmp_path / "runs" / "r2", {"source": CountParams(1)})
    assert CALLS == ["doubler"]  # recomputed; summer's inputs have the same fingerprint, so summer is a hit
    assert any(reason in line and "doubler" in line for line in lines), lines
    assert json.loads((result.artifacts["doubler"]["doubled"].uri / "numbers.json").read_text()) == [2, 2, 2]
    assert result.artifacts["summer"]["total"].metrics == {"total": 6}
    # The run folder of the damaged artifact is not trusted in place either.
    damage(tmp_path / "runs" / "r2" / "doubler" / "doubled" / "numbers.json")
    CALLS.clear()
    run(tmp_path, "r2")
    assert CALLS == ["doubler"]


def test_a_touched_but_unchanged_file_is_still_a_cache_hit(tmp_path):
    run(tmp_path, "r1")
    numbers = tmp_path / "runs" / "r1" / "doubler" / "doubled" / "numbers.json"
    os.utime(numbers, ns=(numbers.stat().st_atime_ns, numbers.stat().st_mtime_ns + 10**9))  # e.g. a copy
    CALLS.clear()
    run(tmp_path, "r2")
    assert CALLS == []


# --- two runs at once on one runs root ----------------------------------------------------------------------


@dataclass
class GateParams:
    """Where the gate leaves its marks and waits for its signal."""

    signals: str = param("", "folder of the start marks and the go file")


class Gate(Component):
    """Marks that it started, then waits for `<signals>/go`: lets a test hold a run inside a component."""

    name = "gate"
    outputs = {"opened": "Numbers"}
    Params = GateParams

    def execute(self, ctx):
        signals = Path(ctx.params.signals)
        (signals / f"started-{os.getpid()}").write_text("")
        while not (signals / "go").exists():
            time.sleep(0.05)
        (ctx.output_dir("opened") / "numbers.json").write_text(json.dumps([os.getpid()]))


def gate_process(runs_root: Path, run_dir: Path, signals: Path) -> subprocess.Popen:
    """A separate Python process running the gate pipeline; its stdout carries the runner's log."""
    code = ("import sys; from pathlib import Path; from components.runner import LocalRunner, Node; "
            "from tests.test_runner_drills import Gate, GateParams; "
            f"result = LocalRunner([Node(Gate(), {{}})], Path({str(runs_root)!r}), log=lambda m: print(m, flush=True))"
            f".run(Path({str(run_dir)!r}), {{'gate': GateParams({str(signals)!r})}}); print('status', result.status)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    SPAWNED.append(process)
    return process


def wait_for(condition, what: str, guard_s: float = 120.0):
    """Poll until `condition()` holds (a guard against hanging, not a speed check)."""
    deadline = time.monotonic() + guard_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def started(signals: Path) -> int:
    return len(list(signals.glob("started-*")))


def test_a_second_run_on_the_same_fingerprint_waits_and_then_reuses_the_first_runs_artifact(tmp_path):
    signals, runs = tmp_path / "signals", tmp_path / "runs"
    signals.mkdir()
    first = gate_process(runs, runs / "a", signals)
    wait_for(lambda: started(signals) == 1, "the first run to enter the gate")
    second = gate_process(runs, runs / "b", signals)
    # The second run either waits for the first (the protection) or enters the gate itself (none).
    wait_for(lambda: started(signals) == 2 or "waiting: another run is computing" in _peek(second), "the second run")
    (signals / "go").write_text("")
    outputs = [first.communicate()[0], _peek(second) + second.communicate()[0]]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert started(signals) == 1, outputs  # computed once
    assert all(out.rstrip().endswith("status succeeded") for out in outputs), outputs
    assert load_run_record(runs / "b")["components"]["gate"]["status"] == "cached"
    assert load_run_record(runs / "b")["components"]["gate"]["artifacts"]["opened"] == str(runs / "a" / "gate" /
                                                                                          "opened")


def _peek(process: subprocess.Popen) -> str:
    """What a process has printed so far, without blocking: raw reads of its stdout pipe, kept on the process."""
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    seen = getattr(process, "_seen", b"")
    try:
        while chunk := os.read(fd, 65536):
            seen += chunk
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    process._seen = seen
    return seen.decode(errors="replace")


def test_a_second_process_in_the_same_run_folder_is_refused_and_the_first_is_not_harmed(tmp_path):
    signals, runs = tmp_path / "signals", tmp_path / "runs"
    signals.mkdir()
    first = gate_process(runs, runs / "a", signals)
    wait_for(lambda: started(signals) == 1, "the first run to enter the gate")
    second = gate_process(runs, runs / "a", signals)
    # Refused (the protection); else inside the gate too, where it clears the first one's temporary folder,
    # or waiting for the first one's fingerprint, to overwrite the first one's run.json.
    wait_for(lambda: second.poll() is not None or started(signals) == 2
             or "waiting: another run is computing" in _peek(second), "the second run")
    (signals / "go").write_text("")
    out, second_out = first.communicate()[0], _peek(second) + second.communicate()[0]
    assert started(signals) == 1 and second.returncode != 0, second_out
    assert f"UsageError: run folder {runs / 'a'} is in use by another run" in second_out, second_out
    assert first.returncode == 0 and out.rstrip().endswith("status succeeded"), out
    assert json.loads((runs / "a" / "gate" / "opened" / "numbers.json").read_text()) == [first.pid]


# --- a full or read-only file system -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only); remounted read-only by `small_disk.read_only()`."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not root'}): the disk "
                    "full and read-only drills need one")

    class Disk:
        path = mount

        @staticmethod
        def read_only():
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)

    try:
        yield Disk
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class Filler(Component):
    """Writes more than the small disk holds."""

    name = "filler"
    inputs = {"numbers": "Numbers"}
    outputs = {"big": "Blob"}

    def execute(self, ctx):
        with open(ctx.output_dir("big") / "blob.bin", "wb") as handle:
            for _ in range(64):
                handle.write(b"\0" * 16384)


def test_a_full_disk_fails_in_one_sentence_naming_the_path_and_leaves_no_partial_artifact(small_disk):
    runs = small_disk.path / "runs"
    nodes = [Node(test_runner.Source(), {}), Node(Filler(), {"numbers": ("source", "numbers")})]
    result = LocalRunner(nodes, runs, log=lambda message: None).run(runs / "r", {"source": CountParams(1)})
    assert result.status == "failed" and result.failed == "filler"
    assert isinstance(result.error, PipelineError) and not isinstance(result.error, UsageError)
    message = str(result.error)
    assert message == (f"cannot write {runs / 'r' / 'filler'}: no space is left on the device; free some space and "
                       "run again to resume (finished components are kept)")
    assert sorted(p.name for p in (runs / "r" / "filler").iterdir()) == []  # no artifact, no temporary folder
    assert (runs / "r" / "source" / "numbers" / "artifact.json").exists()  # the finished component is kept
    assert load_run_record(runs / "r")["components"]["filler"]["status"] == "failed"


def test_a_read_only_runs_root_is_a_usage_error_naming_the_path(small_disk, monkeypatch, capsys):
    runs = small_disk.path / "runs"
    runs.mkdir()
    small_disk.read_only()
    code = run_cli(monkeypatch, "--runs-root", str(runs), "run", "--profile", "smoke", "--only", "example_gen",
                   "--run-dir", str(runs / "r"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f"error: cannot write {runs / 'r'}: the file system is read-only; choose a writable --runs-root or " \
                  "--run-dir\n"


def test_a_full_disk_under_a_real_component_through_the_cli(small_disk, monkeypatch, capsys):
    runs = small_disk.path / "runs"
    runs.mkdir()
    free = os.statvfs(runs)
    (small_disk.path / "ballast").write_bytes(bytes(free.f_bavail * free.f_frsize - 48 * 1024))  # 48 KiB left
    code = run_cli(monkeypatch, "--runs-root", str(runs), "run", "--profile", "smoke", "--only", "example_gen",
                   "--run-dir", str(runs / "r"), "--set", "example_gen.num_records=3000")
    err = capsys.readouterr().err
    assert code == 1, err
    first = err.splitlines()[0]
    assert first.startswith(f"error: example_gen failed: cannot write {runs / 'r' / 'example_gen'}")
    assert "no space is left on the device" in first and "Traceback" not in err
    assert [p.name for p in (runs / "r" / "example_gen").iterdir()] == []
