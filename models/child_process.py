"""Running heavy work (TFLite conversion, a benchmark measurement) in a fresh Python process.

The child's whole stderr is kept in a log file beside its output (a converter's real error is often
dozens of lines above its last one), the error names that file and quotes the last lines, and a
child that hangs is killed after `timeout_s` instead of stalling the run for ever.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

TAIL_LINES = 20


class ChildRunError(RuntimeError):
    """A child process failed, timed out, or did not write what it should have."""


def run_child(command: list[str], what: str, log_path: Path, timeout_s: float, cwd: Path | None = None) -> None:
    """Run `command`; raise ChildRunError (with the log's tail) unless it exits 0 in time."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
    except subprocess.TimeoutExpired as expired:  # subprocess.run has killed the child by now
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        log_path.write_text(stderr or "")
        raise ChildRunError(f"{what} timed out after {timeout_s:.0f} s and was killed; its stderr: {log_path}") \
            from None
    log_path.write_text(done.stderr or "")
    if done.returncode != 0:
        tail = [line for line in (done.stderr or "").splitlines() if line.strip()][-TAIL_LINES:]
        raise ChildRunError(f"{what} failed (exit {done.returncode}; whole stderr in {log_path}):\n"
                                + "\n".join(tail))
