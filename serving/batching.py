"""Micro-batching: concurrent requests for the same model, signature and task share one model call.

TF Serving's semantics: a batch closes when it holds `max_batch_size` texts or when its first
request has waited `batch_timeout_micros`; the queue holds at most `max_enqueued_batches` batches'
worth of texts, and a request that finds it full is refused at once (UNAVAILABLE, HTTP 503) rather
than left waiting. Only requests with the same key (signature, task or max_new_tokens) share a
batch, because a batch shares one label tree or one generation length. Batches run one after the
other on the model's own thread, so the event loop keeps answering health checks and metrics.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass

from serving.config import BatchingOptions
from serving.errors import InvalidArgument, Unavailable


@dataclass
class _Waiting:
    key: Hashable
    items: list
    future: asyncio.Future
    since: float


class MicroBatcher:
    """`await submit(key, items)` -> one result per item; `run_batch(key, items)` does the work, on `executor`."""

    def __init__(self, run_batch: Callable[[Hashable, list], list], options: BatchingOptions, executor: Executor,
                 on_batch: Callable[[int], None] = lambda size: None):
        self.run_batch, self.executor, self.on_batch = run_batch, executor, on_batch
        self.max_batch_size = options.effective_batch_size
        self.timeout_s = options.batch_timeout_micros / 1e6 if options.enabled else 0.0
        self.capacity = options.max_enqueued_batches * self.max_batch_size
        self._queue: deque[_Waiting] = deque()
        self._queued_items = 0
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    async def submit(self, key: Hashable, items: list) -> list:
        if len(items) > self.max_batch_size:
            raise InvalidArgument(f"the request has {len(items)} texts; at most {self.max_batch_size} per request "
                                  "(max_batch_size)")
        if self._queued_items + len(items) > self.capacity:
            raise Unavailable("The batch scheduling queue to which this task was submitted is full; retry later")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(key, items, loop.create_future(), loop.time())
        self._queue.append(waiting)
        self._queued_items += len(items)
        self._arrived.set()
        if self._worker is None or self._worker.done():  # the worker ends when the queue is empty
            self._worker = asyncio.create_task(self._work())
        return await waiting.future

    def _same_key_items(self, key) -> int:
        return sum(len(w.items) for w in self._queue if w.key == key)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            first = self._queue[0]
            while self._same_key_items(first.key) < self.max_batch_size:
                left = first.since + self.timeout_s - loop.time()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch, size = [], 0
            for waiting in list(self._queue):  # oldest first, same key, as many whole requests as fit
                if waiting.key == first.key and size + len(waiting.items) <= self.max_batch_size:
                    batch.append(waiting)
                    size += len(waiting.items)
                    self._queue.remove(waiting)
            self._queued_items -= size
            self.on_batch(size)
            items = [item for waiting in batch for item in waiting.items]
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, first.key, items)
            except Exception as error:  # every request of the batch gets the error
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(error)
                continue
            start = 0
            for waiting in batch:
                if not waiting.future.done():  # a client that timed out no longer waits
                    waiting.future.set_result(results[start:start + len(waiting.items)])
                start += len(waiting.items)
