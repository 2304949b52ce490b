"""What the service needs from a scorer: the `Engine` protocol and the values it hands back.

The service (api.py, app.py, the scheduler) talks to this protocol only; the implementation
that loads a model with transformers is `model.loader.TransformersEngine`, and the API tests
run a fake. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .planning import Prepared


@dataclass(frozen=True)
class Scores:
    """Raw scores (logit_yes - logit_no), in document order, and the tokens the model read."""

    logits: list[float]
    tokens: int


@dataclass(frozen=True)
class EngineInfo:
    model: str
    device: str
    dtype: str
    max_length: int
    architecture: str = "unknown"  # qwen3-reranker or cross-encoder, once loaded


@dataclass(frozen=True)
class PromptCacheStats:
    hits: int
    misses: int
    rows: int


class Engine(Protocol):
    """What the service needs from a scorer.

    `prepare` tokenizes one request (request threads, any number at once); `forward` runs one
    pass over units of several prepared requests and returns their raw scores (the scheduler's
    single worker thread). Raw scores are logit_yes - logit_no for Qwen3-Reranker and the
    relevance logit for a cross-encoder; relevance_score is their sigmoid either way.
    """

    info: EngineInfo

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def prepare(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Prepared: ...

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]: ...


def sigmoid(x: float) -> float:
    """P(yes) from logit_yes - logit_no, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
