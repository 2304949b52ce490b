"""Batching: how documents are grouped into forward passes, and how requests reach the model.

Two separate concerns live here, apart from the model math in `engine.py`:

* Pure planning. `plan_pass` picks the next forward pass from the requests waiting, first come
  first served, under a token budget; `plan_batches` packs one list of items, shortest first.
  The budget counts every row a pass runs through the model (a request's shared prompt once,
  plus each document), so it bounds activation memory whatever the requests look like.
* `Scheduler`: one worker thread owns the model. Requests are tokenized on the request's own
  thread, then wait in a bounded queue; a full queue is answered at once with `Overloaded`
  (HTTP 429 with Retry-After) instead of piling up latency. With cross-request batching on,
  each pass takes documents from every waiting request in arrival order until the budget is
  full; with it off, a pass only ever holds one request's documents (the baseline the load
  benchmark compares against). A request that outlives its timeout is answered `Timeout`
  (HTTP 504) and its remaining documents are dropped from later passes; a client that goes
  away frees its place the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import NotReady, Overloaded, Timeout

log = logging.getLogger("reranker.batching")


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


def plan_pass(waiting: Sequence[tuple[int, Sequence[int]]], token_budget: int) -> list[int]:
    """How many items of each waiting request the next forward pass takes, in arrival order.

    `waiting` holds, per request, the cost of its shared part (paid once per pass that holds
    any of its items) and the costs of its remaining items, in the order they must run. The
    pass takes items front to back and stops at the first that would overflow the budget, so
    a request is only ever split at the end of a pass and nobody is overtaken. The very first
    item always goes in, even alone over budget: it cannot be split.
    """
    taken: list[int] = []
    used = 0
    for shared, costs in waiting:
        count = 0
        for cost in costs:
            extra = cost + (shared if count == 0 else 0)
            if used + extra > token_budget and used > 0:
                break
            used += extra
            count += 1
        taken.append(count)
        if count < len(costs):
            break
    return taken + [0] * (len(waiting) - len(taken))


def plan_padded(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Like `plan_batches`, for padded batches: a batch costs its size times its longest item."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class Prepared:
    """One tokenized request, as the engine wants it and the scheduler can plan it.

    `costs[u]` is the number of rows unit `u` (a distinct document) adds to a pass, `shared`
    the rows of the part every unit of the request reads (the Qwen3 prompt and query; 0 for a
    cross-encoder); `slot[d]` is the unit that scores document `d`; `tokens` is what the
    request reads, reported to the client. `payload` is the engine's own.
    """

    shared: int
    costs: list[int]
    slot: list[int]
    tokens: int
    payload: Any = None

    @property
    def rows(self) -> int:
        return self.shared + sum(self.costs)


class BatchEngine(Protocol):
    """What the scheduler needs: one forward pass over units of several prepared requests."""

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]: ...


def score_alone(engine: BatchEngine, prepared: Prepared, token_budget: int) -> list[float]:
    """One request's scores, one per document, in passes planned as the scheduler plans them."""
    order = sorted(range(len(prepared.costs)), key=lambda u: (prepared.costs[u], u))
    results: list[float] = [0.0] * len(prepared.costs)
    while order:
        (count,) = plan_pass([(prepared.shared, [prepared.costs[u] for u in order])], token_budget)
        units, order = order[:count], order[count:]
        for unit, value in zip(units, engine.forward([(prepared, units)])[0]):
            results[unit] = value
    return [results[u] for u in prepared.slot]


@dataclass(frozen=True)
class Outcome:
    """A request's scores (one per document, in order) and where its time went."""

    scores: list[float]
    tokens: int
    queue_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class PassReport:
    """One forward pass, for metrics: requests and documents it held, rows, seconds."""

    requests: int
    documents: int
    rows: int
    seconds: float


@dataclass(eq=False)
class _Job:
    prepared: Prepared
    future: concurrent.futures.Future
    enqueued: float
    order: list[int] = field(default_factory=list)  # units still to score, in run order
    results: list[float | None] = field(default_factory=list)
    first_pass: float | None = None
    inference: float = 0.0
    abandoned: bool = False


class Scheduler:
    """A bounded queue of tokenized requests in front of a single model worker thread.

    `await run(prepare, timeout)` reserves a place (or raises `Overloaded` at once when
    `max_queue` requests are already queued or in progress), runs `prepare()` on a thread,
    then waits for the worker to score every unit and returns an `Outcome`; past `timeout`
    seconds it raises `Timeout`. `close()` refuses new requests, lets the worker finish every
    accepted one, then stops it.
    """

    def __init__(
        self,
        engine: BatchEngine,
        *,
        max_queue: int,
        token_budget: int,
        batch_requests: bool = True,
        on_pass: Callable[[PassReport], None] | None = None,
        name: str = "reranker-worker",
    ):
        self.engine = engine
        self.max_queue = max_queue
        self.token_budget = token_budget
        self.batch_requests = batch_requests
        self.on_pass = on_pass
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []  # accepted, not finished, in arrival order
        self._reserved = 0  # admitted requests: tokenizing, queued or running
        self._closing = False
        self._rows_per_second: float | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # --- the request side (event loop) -------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests admitted and not yet answered."""
        return self._reserved

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queued rows at the recent model speed."""
        with self._cond:
            rows = sum(
                j.prepared.shared + sum(j.prepared.costs[u] for u in j.order) for j in self._jobs
            )
            speed = self._rows_per_second
        if not speed:
            return 1
        return max(1, min(60, math.ceil(rows / speed)))

    async def run(self, prepare: Callable[[], Prepared], timeout: float | None) -> Outcome:
        with self._cond:
            if self._closing:
                raise NotReady("the server is shutting down")
            full = self._reserved >= self.max_queue
            if not full:
                self._reserved += 1
        if full:
            wait = self.retry_after()
            raise Overloaded(
                f"the server is busy ({self.max_queue} requests queued or running); "
                f"retry in {wait} s",
                retry_after=wait,
            )
        start = time.monotonic()
        job: _Job | None = None

        async def work() -> Outcome:
            nonlocal job
            prepared = await asyncio.to_thread(prepare)
            job = self._enqueue(prepared)
            return await asyncio.shield(asyncio.wrap_future(job.future))

        try:
            return await asyncio.wait_for(work(), timeout)
        except asyncio.TimeoutError:
            ahead = self._position(job)
            raise Timeout(
                f"the request did not finish within {timeout:g} s (RERANKER_REQUEST_TIMEOUT)"
                + (f"; {ahead} requests were ahead of it" if ahead else "")
                + f"; it waited {time.monotonic() - start:.1f} s"
            ) from None
        finally:
            if job is not None and not job.future.done():
                job.abandoned = True  # timed out or the client left: drop its remaining work
            with self._cond:
                self._reserved -= 1
                self._cond.notify_all()

    def _enqueue(self, prepared: Prepared) -> _Job:
        job = _Job(prepared, concurrent.futures.Future(), time.monotonic())
        # Shortest units first: the last pass a request spans is then the fullest it can be.
        job.order = sorted(range(len(prepared.costs)), key=lambda u: (prepared.costs[u], u))
        job.results = [None] * len(prepared.costs)
        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()
        if not job.order:
            self._finish(job)
        return job

    def _position(self, job: _Job | None) -> int:
        with self._cond:
            if job is None or job not in self._jobs:
                return len(self._jobs)
            return self._jobs.index(job)

    # --- the worker ---------------------------------------------------------------------------

    def _next_pass(self) -> list[tuple[_Job, list[int]]] | None:
        """Waits for work, then plans one pass; None once closed and drained."""
        with self._cond:
            while True:
                for job in [j for j in self._jobs if j.abandoned or not j.order]:
                    self._jobs.remove(job)
                if self._jobs:
                    break
                if self._closing and self._reserved == 0:
                    return None
                self._cond.wait()
            candidates = self._jobs if self.batch_requests else self._jobs[:1]
            waiting = [
                (j.prepared.shared, [j.prepared.costs[u] for u in j.order]) for j in candidates
            ]
            taken = plan_pass(waiting, self.token_budget)
            parts = []
            for job, count in zip(candidates, taken):
                if count:
                    parts.append((job, job.order[:count]))
                    job.order = job.order[count:]
            return parts

    def _work(self) -> None:
        while True:
            parts = self._next_pass()
            if parts is None:
                return
            started = time.monotonic()
            try:
                scores = self.engine.forward([(job.prepared, units) for job, units in parts])
            except BaseException as exc:  # handed to every request in the pass, never lost
                log.exception("forward pass failed")
                with self._cond:
                    for job, _ in parts:
                        job.order = []
                for job, _ in parts:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            seconds = time.monotonic() - started
            rows = 0
            for (job, units), values in zip(parts, scores):
                if job.first_pass is None:
                    job.first_pass = started
                job.inference += seconds
                rows += job.prepared.shared + sum(job.prepared.costs[u] for u in units)
                for unit, value in zip(units, values):
                    job.results[unit] = value
                if not job.order:
                    self._finish(job)
            if seconds > 0:
                speed = rows / seconds
                self._rows_per_second = (
                    speed
                    if self._rows_per_second is None
                    else 0.8 * self._rows_per_second + 0.2 * speed
                )
            if self.on_pass is not None:
                self.on_pass(
                    PassReport(
                        requests=len(parts),
                        documents=sum(len(units) for _, units in parts),
                        rows=rows,
                        seconds=seconds,
                    )
                )

    def _finish(self, job: _Job) -> None:
        prepared = job.prepared
        first = job.first_pass if job.first_pass is not None else time.monotonic()
        outcome = Outcome(
            scores=[job.results[u] for u in prepared.slot],  # type: ignore[misc]
            tokens=prepared.tokens,
            queue_seconds=first - job.enqueued,
            inference_seconds=job.inference,
        )
        if not job.future.done():
            job.future.set_result(outcome)

    def close(self, timeout: float = 60) -> None:
        """Refuse new requests, finish the accepted ones, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout)
