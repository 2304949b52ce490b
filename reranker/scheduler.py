"""The scheduler: how requests reach the model, one worker thread owning it.

Requests are tokenized on the request's own thread, then wait in a bounded queue; a full queue
is answered at once with `Overloaded` (HTTP 429 with Retry-After) instead of piling up latency.
With cross-request batching on, each pass takes documents from every waiting request in arrival
order until the token budget is full; with it off, a pass only ever holds one request's
documents (the baseline the load benchmark compares against). Which documents a pass holds is
planned by the pure functions of `planning.py`. A request that outlives its timeout is answered
`Timeout` (HTTP 504) and its remaining documents are dropped from later passes; a client that
goes away frees its place the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import NotReady, Overloaded, Timeout
from .planning import BatchEngine, Prepared, plan_pass, run_order

log = logging.getLogger("reranker.scheduler")


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
        job.order = run_order(prepared)
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
