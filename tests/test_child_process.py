"""Heavy work in a child process: its whole stderr kept, a failure quoted, a hang killed."""

from __future__ import annotations

import sys

import pytest

from models.child_process import TAIL_LINES, ChildRunError, run_child


def test_a_failing_child_keeps_its_whole_stderr_and_quotes_its_last_lines(tmp_path):
    script = "import sys\nfor i in range(100): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    log = tmp_path / "child.stderr.log"
    with pytest.raises(ChildRunError) as failure:
        run_child([sys.executable, "-c", script], "the test child", log, timeout_s=60)
    message = str(failure.value)
    assert "exit 3" in message and str(log) in message
    assert f"line {99 - TAIL_LINES + 1}" in message and f"line {99 - TAIL_LINES}\n" not in message
    assert log.read_text().count("line ") == 100  # nothing lost in the log


def test_a_hanging_child_is_killed_after_its_timeout(tmp_path):
    with pytest.raises(ChildRunError, match="timed out after 1 s and was killed"):
        run_child([sys.executable, "-c", "import time; time.sleep(60)"], "the test child", tmp_path / "log", 1)


def test_a_child_that_succeeds_leaves_its_log(tmp_path):
    run_child([sys.executable, "-c", "import sys; print('fine', file=sys.stderr)"], "ok", tmp_path / "log", 60)
    assert (tmp_path / "log").read_text() == "fine\n"
