"""API keys: optional, from a file mounted from a Secret (GATEWAY_API_KEYS_FILE).

The file holds one key per line, optionally followed by the models that key may use
(ModelService names in the gateway's namespace, or `namespace/name`), separated by spaces or
commas; blank lines and lines starting with `#` are skipped:

    sk-team-a                         # any model
    sk-team-b  bge-reranker, search/qwen3-reranker

Requests carry `Authorization: Bearer <key>`: none or a wrong one is a 401, a model the key may
not use a 403. Every configured key is compared in constant time (`hmac.compare_digest`, all
of them, whatever matches), and no key is ever logged. The file is re-read when it changes (a
Secret's mounted file is updated in place), checked at most every few seconds.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import Forbidden, Unauthorized
from .registry import ModelKey

log = logging.getLogger("gateway.auth")

RELOAD_CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class ApiKey:
    """One configured key and the models it may use (None: every model)."""

    secret: bytes
    models: frozenset[ModelKey] | None

    def allows(self, key: ModelKey) -> bool:
        return self.models is None or key in self.models


def parse_keys(text: str, home_namespace: str) -> list[ApiKey]:
    keys = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].replace(",", " ").split()
        if not line:
            continue
        secret, *models = line
        allowed = None
        if models:
            allowed = frozenset(
                ModelKey(*model.split("/", 1)) if "/" in model else ModelKey(home_namespace, model)
                for model in models
            )
        keys.append(ApiKey(secret.encode(), allowed))
    return keys


class ApiKeys:
    """The keys of GATEWAY_API_KEYS_FILE, or none (every request allowed)."""

    def __init__(self, path: Path | None, home_namespace: str):
        self.path = path
        self.home_namespace = home_namespace
        self._keys: list[ApiKey] = []
        self._stamp: int | None = None
        self._checked = 0.0
        if path is not None:
            self._reload()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key a request's Authorization header carries; None when keys are off.
        Raises Unauthorized when keys are on and it carries no valid one."""
        if self.path is None:
            return None
        self._maybe_reload()
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode()
        found = None
        for key in self._keys:
            # Every key is compared, so the time taken says nothing about which one matched.
            if hmac.compare_digest(presented, key.secret) and scheme.lower() == "bearer":
                found = key
        if found is None or not presented:
            raise Unauthorized("missing or wrong API key: send `Authorization: Bearer <key>`")
        return found

    @staticmethod
    def authorize(api_key: ApiKey | None, model: ModelKey) -> None:
        """Raises Forbidden when `api_key` may not use `model`."""
        if api_key is not None and not api_key.allows(model):
            raise Forbidden(f"this API key may not use model {str(model)!r}")

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= RELOAD_CHECK_SECONDS:
            self._checked = now
            self._reload()

    def _reload(self) -> None:
        assert self.path is not None
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp == self._stamp:
                return
            self._keys = parse_keys(self.path.read_text(), self.home_namespace)
            self._stamp = stamp
            log.info("read %d API keys from %s", len(self._keys), self.path)
        except OSError as exc:
            # Keep the keys read last; with none read yet every request is refused.
            log.error("cannot read the API keys file %s: %s", self.path, exc.strerror)
