"""The scheduler: one worker, bounded queue, passes across requests."""

from __future__ import annotations

import asyncio
import threading

import pytest

from reranker.errors import NotReady, Overloaded, Timeout
from reranker.planning import Prepared
from reranker.scheduler import Scheduler


class GatedEngine:
    """Scores each unit with its cost; records the passes; can block or fail a pass."""

    def __init__(self):
        self.passes: list[list[tuple[str, list[int]]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False

    def forward(self, parts):
        self.passes.append([(p.payload, list(units)) for p, units in parts])
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("device fault")
        return [[float(p.costs[u]) for u in units] for p, units in parts]


def prepared(name: str, costs: list[int], shared: int = 0) -> Prepared:
    return Prepared(
        shared=shared, costs=costs, slot=list(range(len(costs))), tokens=sum(costs), payload=name
    )


def test_requests_that_wait_together_share_passes_and_get_their_own_scores():
    async def scenario(batch_requests):
        engine = GatedEngine()
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=8, token_budget=100, batch_requests=batch_requests)
        first = asyncio.ensure_future(scheduler.run(lambda: prepared("a", [10, 20]), 10))
        await asyncio.to_thread(engine.entered.wait, 5)  # "a" holds the worker
        others = [
            asyncio.ensure_future(scheduler.run(lambda n=n: prepared(n, [30, 5, 1]), 10))
            for n in ("b", "c")
        ]
        while scheduler.depth < 3 or len(scheduler._jobs) < 3:
            await asyncio.sleep(0.01)
        engine.gate.set()
        outcomes = [await first] + [await o for o in others]
        scheduler.close()
        return engine.passes, outcomes

    passes, outcomes = asyncio.run(scenario(batch_requests=True))
    assert [[name for name, _ in p] for p in passes] == [["a"], ["b", "c"]]
    assert [o.scores for o in outcomes] == [[10.0, 20.0], [30.0, 5.0, 1.0], [30.0, 5.0, 1.0]]

    passes, outcomes = asyncio.run(scenario(batch_requests=False))
    assert [[name for name, _ in p] for p in passes] == [["a"], ["b"], ["c"]]
    assert [o.scores for o in outcomes][1:] == [[30.0, 5.0, 1.0]] * 2


def test_a_full_queue_answers_overloaded_and_recovers():
    async def scenario():
        engine = GatedEngine()
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=2, token_budget=100)
        first = asyncio.ensure_future(scheduler.run(lambda: prepared("a", [1]), 10))
        await asyncio.to_thread(engine.entered.wait, 5)
        second = asyncio.ensure_future(scheduler.run(lambda: prepared("b", [1]), 10))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="busy") as refused:
            await scheduler.run(lambda: prepared("refused", [1]), 10)
        assert refused.value.retry_after >= 1
        engine.gate.set()
        assert (await first).scores == [1.0]
        assert (await second).scores == [1.0]
        assert (await scheduler.run(lambda: prepared("after", [3]), 10)).scores == [3.0]
        scheduler.close()

    asyncio.run(scenario())


def test_a_timed_out_request_is_504_and_its_remaining_documents_are_dropped():
    async def scenario():
        engine = GatedEngine()
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=4, token_budget=10)
        slow = asyncio.ensure_future(scheduler.run(lambda: prepared("slow", [9, 9, 9]), 0.3))
        with pytest.raises(Timeout, match=r"within 0.3 s"):
            await slow
        engine.gate.set()
        assert scheduler.depth == 0
        assert (await scheduler.run(lambda: prepared("next", [2]), 10)).scores == [2.0]
        scheduler.close()
        return engine.passes

    passes = asyncio.run(scenario())
    # The pass running at the deadline finished; the other two documents never ran.
    assert [name for p in passes for name, _ in p] == ["slow", "next"]


def test_a_failed_pass_fails_its_requests_and_the_worker_lives_on():
    async def scenario():
        engine = GatedEngine()
        scheduler = Scheduler(engine, max_queue=2, token_budget=100)
        engine.fail = True
        with pytest.raises(RuntimeError, match="device fault"):
            await scheduler.run(lambda: prepared("a", [1]), 10)
        engine.fail = False
        assert (await scheduler.run(lambda: prepared("b", [4]), 10)).scores == [4.0]
        scheduler.close()

    asyncio.run(scenario())


def test_close_finishes_accepted_requests_and_refuses_new_ones():
    async def scenario():
        engine = GatedEngine()
        engine.gate.clear()
        scheduler = Scheduler(engine, max_queue=4, token_budget=100)
        accepted = asyncio.ensure_future(scheduler.run(lambda: prepared("a", [7]), 10))
        await asyncio.to_thread(engine.entered.wait, 5)
        closing = asyncio.ensure_future(asyncio.to_thread(scheduler.close, 10))
        await asyncio.sleep(0.05)
        with pytest.raises(NotReady, match="shutting down"):
            await scheduler.run(lambda: prepared("late", [1]), 10)
        engine.gate.set()
        assert (await accepted).scores == [7.0]
        await closing
        assert not scheduler._thread.is_alive()

    asyncio.run(scenario())
