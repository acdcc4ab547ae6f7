"""Wall seconds of a component's named steps, recorded in its artifact so a slow step is visible."""

from __future__ import annotations

import time


class Laps:
    """Seconds of each named step since the last, and the total (student.json, variants.json)."""

    def __init__(self):
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 2)
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 2)}
