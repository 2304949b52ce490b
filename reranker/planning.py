"""Pass planning, pure: which documents of which requests each forward pass holds.

No threads, no clock, no torch: the scheduler (`scheduler.py`) and a request scored on its own
(`score_alone`) plan passes with the same functions, and the model code plans its padded
batches here too. The budget counts every row a pass runs through the model (a request's
shared prompt once, plus each document), so it bounds activation memory whatever the requests
look like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

PayloadT = TypeVar("PayloadT")


@dataclass
class Prepared(Generic[PayloadT]):
    """One tokenized request, as the engine wants it and the scheduler can plan it.

    `costs[u]` is the number of rows unit `u` (a distinct document) adds to a pass, `shared`
    the rows of the part every unit of the request reads (the Qwen3 prompt and query; 0 for a
    cross-encoder); `slot[d]` is the unit that scores document `d`; `tokens` is what the
    request reads, reported to the client. `payload` is the engine's own (its ids): only the
    engine that prepared the request reads it.
    """

    shared: int
    costs: list[int]
    slot: list[int]
    tokens: int
    payload: PayloadT

    @property
    def rows(self) -> int:
        return self.shared + sum(self.costs)


class BatchEngine(Protocol):
    """One forward pass over units of several prepared requests: their raw scores, per request,
    in the order of the units given."""

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]: ...


def run_order(prepared: Prepared) -> list[int]:
    """The order a request's units run in: shortest first, so the last pass a request spans is
    the fullest it can be."""
    return sorted(range(len(prepared.costs)), key=lambda u: (prepared.costs[u], u))


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
    """Indices of `lengths`, shortest first, cut into padded batches within the budget: a batch
    costs its size times its longest item. An item over budget gets a batch of its own."""
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


def score_alone(engine: BatchEngine, prepared: Prepared, token_budget: int) -> list[float]:
    """One request's scores, one per document, in passes planned as the scheduler plans them."""
    order = run_order(prepared)
    results: list[float] = [0.0] * len(prepared.costs)
    while order:
        (count,) = plan_pass([(prepared.shared, [prepared.costs[u] for u in order])], token_budget)
        units, order = order[:count], order[count:]
        for unit, value in zip(units, engine.forward([(prepared, units)])[0]):
            results[unit] = value
    return [results[u] for u in prepared.slot]
