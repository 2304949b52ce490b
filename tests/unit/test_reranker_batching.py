"""Batch planning (pure) and the scheduler: one worker, bounded queue, passes across requests."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reranker.batching import Prepared, Scheduler, plan_batches, plan_padded, plan_pass
from reranker.errors import NotReady, Overloaded, Timeout


@given(st.lists(st.integers(min_value=1, max_value=500), max_size=60), st.integers(1, 1500))
def test_every_document_once_shortest_first_within_budget(lengths, budget):
    batches = plan_batches(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for batch in batches:
        assert len(batch) == 1 or sum(lengths[i] for i in batch) <= budget


def test_batches_are_full_before_a_new_one_starts():
    assert plan_batches([3, 1, 2, 4], 6) == [[1, 2, 0], [3]]
    assert plan_batches([10, 1], 5) == [[1], [0]]


@given(st.lists(st.integers(min_value=1, max_value=500), max_size=60), st.integers(1, 1500))
def test_padded_batches_stay_within_budget_counting_padding(lengths, budget):
    batches = plan_padded(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= budget


waiting_requests = st.lists(
    st.tuples(st.integers(0, 300), st.lists(st.integers(1, 400), min_size=1, max_size=20)),
    min_size=1,
    max_size=8,
)


@given(waiting_requests, st.integers(1, 3000))
def test_a_pass_is_first_come_first_served_and_within_budget(waiting, budget):
    taken = plan_pass(waiting, budget)
    assert len(taken) == len(waiting)
    assert taken[0] >= 1  # the oldest request always moves
    rows = sum(
        shared + sum(costs[:count]) for (shared, costs), count in zip(waiting, taken) if count
    )
    assert rows <= budget or (taken[0] == 1 and sum(taken) == 1)
    # Only the last request in the pass may be split; nobody after it is served.
    for i, ((_, costs), count) in enumerate(zip(waiting, taken)):
        if count < len(costs):
            assert all(c == 0 for c in taken[i + 1 :])
            break


def test_a_pass_takes_several_requests_and_pays_each_shared_part_once():
    assert plan_pass([(10, [5, 5]), (10, [5]), (10, [5])], 45) == [2, 1, 0]
    assert plan_pass([(10, [50])], 20) == [1]  # alone over budget: still scored


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
