"""Scale from zero: the one call the HTTP side makes to ask for a replica.

A request for a ModelService with no ready endpoint and `replicas == 0` calls
`scaler.scale_from_zero(key)` and then waits in the registry for an endpoint. Many requests may
be waiting for the same model; the HTTP side already calls the scaler once per model per wait
(see `Registry.wait_for_endpoint`), and implementations are idempotent besides.
"""

from __future__ import annotations

from typing import Protocol

from .keys import ModelKey


class Scaler(Protocol):
    async def scale_from_zero(self, key: ModelKey) -> None:
        """Ask for one replica of a ModelService at zero. Idempotent, may be called by many
        waiting requests: implementations write at most once per model while one is pending."""


class NoScaler:
    """Outside Kubernetes (a static GATEWAY_MODELS_FILE): nothing can be scaled; requests for
    a model without endpoints wait out the timeout and get a 503."""

    async def scale_from_zero(self, key: ModelKey) -> None:
        return None
