"""Helpers shared by tests."""

from __future__ import annotations

import sys


def run_cli(monkeypatch, *args: str) -> int:
    """Run `pipeline.py ARGS` in this process; its exit code (0 when it returns normally)."""
    import pipeline

    monkeypatch.setattr(sys, "argv", ["pipeline.py", *args])
    try:
        pipeline.main()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0
