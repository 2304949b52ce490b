"""Batching: how documents are grouped into forward passes, and how requests reach the model.

Two separate concerns live here, apart from the model math in `engine.py`:

* `plan_batches` (pure): the documents of one request, sorted by length and packed into
  forward passes under a token budget. The engine packs each pass without padding, so the
  budget bounds activation memory, and length order keeps similar documents together.
* `Scheduler`: one worker thread owns the model; requests wait in a bounded queue and a full
  queue is answered at once with `Overloaded` (HTTP 429) instead of piling up latency.
  Cross-request batching would slot in here without touching the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import Overloaded

T = TypeVar("T")


def plan_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices of `lengths`, shortest first, cut into batches whose total stays within budget.

    A single item longer than the budget gets a batch of its own (it cannot be split); every
    index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and used + lengths[i] > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches


class Scheduler:
    """A bounded queue in front of a single model worker thread.

    `submit(fn, *args)` awaits `fn(*args)` run on the worker; when `max_queue` requests are
    already waiting or running it raises `Overloaded` without queueing.
    """

    def __init__(self, max_queue: int, name: str = "reranker-worker"):
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the awaiting request, never lost
                    future.set_exception(exc)
            self._queue.task_done()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, fn: Callable[..., T], *args: Any) -> T:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._queue.put_nowait((future, fn, args))
        except queue.Full:
            raise Overloaded(
                f"the server is busy ({self._queue.maxsize} requests queued); retry later"
            ) from None
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Let queued work finish, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout=60)
