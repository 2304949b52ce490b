"""Pass planning (pure): which documents each forward pass holds, within the token budget."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reranker.planning import Prepared, plan_padded, plan_pass, score_alone


class RecordingEngine:
    """Scores each unit with its cost; records the units of each pass, in the order given."""

    def __init__(self):
        self.passes: list[list[int]] = []

    def forward(self, parts):
        ((prepared, units),) = parts  # a request scored alone: one request a pass
        self.passes.append(list(units))
        return [[float(prepared.costs[u]) for u in units]]


def alone(costs: list[int], budget: int, shared: int = 0, slot: list[int] | None = None):
    """The passes `score_alone` runs for one request, and the scores it returns."""
    slot = list(range(len(costs))) if slot is None else slot
    prepared = Prepared(shared=shared, costs=costs, slot=slot, tokens=0, payload=None)
    engine = RecordingEngine()
    scores = score_alone(engine, prepared, budget)
    return engine.passes, scores


@st.composite
def requests(draw):
    """Unit costs, a shared part, and documents that point at units (duplicates allowed)."""
    costs = draw(st.lists(st.integers(1, 500), max_size=60))
    shared = draw(st.integers(0, 300))
    slot = draw(st.lists(st.integers(0, len(costs) - 1), max_size=80)) if costs else []
    return costs, shared, slot


@given(requests(), st.integers(1, 1500))
def test_alone_every_unit_once_shortest_first_each_pass_full_and_within_budget(request, budget):
    costs, shared, slot = request
    passes, scores = alone(costs, budget, shared, slot)
    flat = [u for units in passes for u in units]
    # Every unit exactly once, shortest first (ties in unit order).
    assert flat == sorted(range(len(costs)), key=lambda u: (costs[u], u))
    for units in passes:
        rows = shared + sum(costs[u] for u in units)
        assert len(units) == 1 or rows <= budget  # a unit over budget alone: cannot be split
    for units, following in zip(passes, passes[1:]):
        # A pass is full before the next starts: the next unit would have overflowed it.
        assert shared + sum(costs[u] for u in units) + costs[following[0]] > budget
    # Each document gets its unit's score, in document order.
    assert scores == [float(costs[u]) for u in slot]


def test_alone_passes_are_full_before_a_new_one_starts_and_pay_the_shared_part_each():
    assert alone([3, 1, 2, 4], 6)[0] == [[1, 2, 0], [3]]
    assert alone([10, 1], 5)[0] == [[1], [0]]
    assert alone([5, 5, 5], 20, shared=10)[0] == [[0, 1], [2]]


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
