"""The key of every per-model table of the gateway: one ModelService, by namespace and name.

Its own module, below both the registry (which routes by it) and the scale-from-zero protocol
(scaling.py, which the registry calls with it), so that neither imports the other for it.
"""

from __future__ import annotations

from typing import NamedTuple


class ModelKey(NamedTuple):
    """One ModelService. A tuple, so that hashing it (several dict look-ups a request) runs in
    C."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"
