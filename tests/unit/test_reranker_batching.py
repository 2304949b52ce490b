"""Batch planning (pure) and the bounded request queue in front of the model."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reranker.batching import Scheduler, plan_batches
from reranker.errors import Overloaded


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


def test_a_full_queue_answers_overloaded_and_recovers():
    async def scenario():
        scheduler = Scheduler(max_queue=1)
        release = threading.Event()
        started = threading.Event()

        def slow():
            started.set()
            release.wait(5)
            return "slow done"

        first = asyncio.ensure_future(scheduler.submit(slow))
        await asyncio.to_thread(started.wait, 5)  # the worker holds the first request
        second = asyncio.ensure_future(scheduler.submit(lambda: "queued"))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="busy"):
            await scheduler.submit(lambda: "refused")
        release.set()
        assert await first == "slow done"
        assert await second == "queued"
        assert await scheduler.submit(lambda: "after") == "after"
        scheduler.close()

    asyncio.run(scenario())


def test_an_exception_in_the_worker_reaches_the_caller_and_the_worker_lives_on():
    async def scenario():
        scheduler = Scheduler(max_queue=2)

        def boom():
            raise RuntimeError("device fault")

        with pytest.raises(RuntimeError, match="device fault"):
            await scheduler.submit(boom)
        assert await scheduler.submit(lambda: 7) == 7
        scheduler.close()

    asyncio.run(scenario())
