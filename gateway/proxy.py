"""Forwarding one request to one of a model's ready endpoints.

`Forwarder.send` holds the request while the model has no ready endpoint (asking the scaler
for a replica when it is at zero), refuses it with 429 when the model has
GATEWAY_MAX_IN_FLIGHT_PER_MODEL requests in flight, picks the endpoint with the fewest requests
in flight, and retries once on another endpoint when the connection is refused or the answer is
a 503. Only endpoints the registry holds are ever used. The backend's answer is handed to a
callback while the request still counts as in flight, so a streamed answer is counted until its
last byte.

Requests go out through backend.py's pool of keep-alive connections (a plain asyncio HTTP/1.1
client with aiohttp's response parser: a third of the gateway's CPU per request was aiohttp's
client session). The pool has no connection limit: a slow model holding many connections never
makes a request to another model wait for one (the per-model cap bounds each model instead).
GATEWAY_REQUEST_TIMEOUT bounds each attempt up to the answer's last byte, GATEWAY_CONNECT_TIMEOUT
its connect; either is a 504.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Mapping, TypeVar

from .backend import BackendError, BackendPool, BackendResponse, Unreachable
from .errors import BadGateway, BadRequest, GatewayTimeout, Overloaded
from .registry import Endpoint, ModelInfo, Registry
from .scaling import Scaler
from .settings import Settings

T = TypeVar("T")

# Request headers that describe the client's connection to the gateway, or its credentials for
# the gateway: never passed on to a backend.
DROPPED_REQUEST_HEADERS = frozenset({
    "host", "connection", "keep-alive", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "authorization", "expect",
})
# Response headers that describe the backend's connection: never passed back.
DROPPED_RESPONSE_HEADERS = frozenset({
    "connection", "keep-alive", "transfer-encoding", "content-length", "date", "server",
    "content-encoding",
})


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in DROPPED_REQUEST_HEADERS}


def returned_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in DROPPED_RESPONSE_HEADERS}


class Forwarder:
    def __init__(self, settings: Settings, registry: Registry, scaler: Scaler):
        self.settings = settings
        self.registry = registry
        self.scaler = scaler
        self.pool: BackendPool | None = None

    async def start(self) -> None:
        self.pool = BackendPool(self.settings.connect_timeout)

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    async def send(
        self,
        info: ModelInfo,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        answer: Callable[[BackendResponse], Awaitable[T]],
    ) -> T:
        """Send the request to the model and return what `answer` makes of the response.

        Raises Overloaded (429), Unavailable (503, held too long), GatewayTimeout (504) or
        BadGateway (502, every endpoint tried refused or broke the connection).
        """
        key = info.key
        cap = self.settings.max_in_flight_per_model
        if self.registry.in_flight(key) >= cap:
            raise Overloaded(
                f"model {str(key)!r} has {cap} requests in flight, its maximum",
                self.settings.retry_after,
            )
        if not self.registry.endpoints(key):
            await self.registry.wait_for_endpoint(
                key, self.settings.scale_from_zero_timeout, self.scaler
            )
        pool = self.pool
        assert pool is not None
        timeout = self.settings.request_timeout
        tried: list[Endpoint] = []
        while True:
            endpoint = self.registry.pick(key, exclude=tried)
            if endpoint is None:
                raise BadGateway(
                    f"model {str(key)!r}: no endpoint could be reached "
                    f"({len(tried)} tried)"
                )
            last_chance = bool(tried) or len(self.registry.endpoints(key)) < 2
            try:
                exchange = pool.request(endpoint.address, method, path, headers, body, timeout)
            except ValueError as exc:
                raise BadRequest(f"the request cannot be forwarded: {exc}") from None
            with self.registry.lease(key, endpoint):
                try:
                    async with exchange as response:
                        if response.status == 503 and not last_chance:
                            tried.append(endpoint)
                            continue
                        return await answer(response)
                except Unreachable:
                    if last_chance:
                        raise BadGateway(
                            f"model {str(key)!r}: the connection to its pod was refused"
                        ) from None
                    tried.append(endpoint)
                except asyncio.TimeoutError:
                    raise GatewayTimeout(
                        f"model {str(key)!r} did not answer within {timeout:g} s"
                    ) from None
                except BackendError as exc:
                    raise BadGateway(
                        f"model {str(key)!r}: its pod broke the connection "
                        f"({type(exc).__name__})"
                    ) from None
