"""Micro-batching on its own (no model): batches form by key and size, and a full queue refuses at once."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.batching import MicroBatcher
from serving.config import BatchingOptions
from serving.errors import InvalidArgument, Unavailable


def batcher(calls: list, gate: threading.Event | None = None, **options) -> MicroBatcher:
    def run_batch(key, items):
        if gate is not None:
            gate.wait()
        calls.append((key, list(items)))
        return [f"{key}:{item}" for item in items]

    return MicroBatcher(run_batch, BatchingOptions(**options), ThreadPoolExecutor(1))


def test_concurrent_requests_share_batches_by_key_and_get_their_own_results():
    calls = []

    async def main():
        b = batcher(calls, max_batch_size=4, batch_timeout_micros=200_000)
        return await asyncio.gather(b.submit("intent", ["a"]), b.submit("intent", ["b", "c"]),
                                    b.submit("priority", ["d"]), b.submit("intent", ["e", "f"]))

    results = asyncio.run(main())
    assert results == [["intent:a"], ["intent:b", "intent:c"], ["priority:d"], ["intent:e", "intent:f"]]
    # Oldest first, whole requests only, one key per batch: [a, b, c] (e, f would overflow 4), then d, then e, f.
    assert calls == [("intent", ["a", "b", "c"]), ("priority", ["d"]), ("intent", ["e", "f"])]


def test_batching_off_runs_every_request_alone():
    calls = []

    async def main():
        b = batcher(calls, enabled=False, max_batch_size=8)
        return await asyncio.gather(*(b.submit("intent", [text]) for text in "abc"))

    assert asyncio.run(main()) == [["intent:a"], ["intent:b"], ["intent:c"]]
    assert [items for _, items in calls] == [["a"], ["b"], ["c"]]


def test_a_full_queue_refuses_at_once_and_a_request_over_the_batch_size_is_a_bad_argument():
    calls, gate = [], threading.Event()

    async def main():
        b = batcher(calls, gate, max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=1)
        running = asyncio.ensure_future(b.submit("k", ["a", "b"]))  # taken by the worker, blocked in the model
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(b.submit("k", ["c", "d"]))  # fills the one batch of queue room
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="queue .* is full"):
            await b.submit("k", ["e"])
        with pytest.raises(InvalidArgument, match="at most 2"):
            await b.submit("k", ["x", "y", "z"])
        gate.set()
        return await running, await queued

    assert asyncio.run(main()) == (["k:a", "k:b"], ["k:c", "k:d"])


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_still_runs():
    def run_batch(key, items):
        if "boom" in items:
            raise RuntimeError("model failed")
        return items

    async def main():
        b = MicroBatcher(run_batch, BatchingOptions(max_batch_size=1), ThreadPoolExecutor(1))
        first = await asyncio.gather(b.submit("k", ["boom"]), return_exceptions=True)
        return first, await b.submit("k", ["ok"])

    (error,), ok = asyncio.run(main())
    assert isinstance(error, RuntimeError) and ok == ["ok"]
