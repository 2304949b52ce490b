"""Every error the service answers with: each class carries its HTTP status and description.

This is the one table, in the manner of TEI's `impl From<&ErrorType> for StatusCode`: handlers
raise a `ServiceError` subclass; `api.py` answers it as `{"message": ..., "type": kind}` with its
`status` and `headers()`, and lists every class in `ERRORS` as an OpenAPI response with its
`description`. TEI's convention: 413 too large, 422 unprocessable, 424 backend, 429 overloaded,
503 not ready; here also 401 for a missing key, 408 for a body that did not arrive in time and
504 for a request that ran out of time.

Anything else that escapes a handler is logged and answered as a `BackendError` without
internals (`api.UnexpectedErrors`), so no client input can crash the process or leak a
traceback; input a client got wrong (a lone surrogate, a body that is not UTF-8) is refused as
`InvalidRequest` before it can reach the model.
"""

from __future__ import annotations

from typing import ClassVar


class HTTPError(Exception):
    """An error answered with an HTTP status, the base of the reranker's and the gateway's tables.

    A concrete subclass sets `kind` (the body's `type`, a stable machine-readable name), `status`
    and `description` (what the status means there, for the OpenAPI document and the docs); a
    service's own base class is declared `abstract=True` and sets none of them."""

    kind: ClassVar[str]
    status: ClassVar[int]
    description: ClassVar[str]

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [name for name in ("kind", "status", "description") if not hasattr(cls, name)]
        if missing and not abstract:
            raise TypeError(f"{cls.__name__} must set {', '.join(missing)}")

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Response headers the answer carries besides the JSON body."""
        return {}


class RetryLater(HTTPError, abstract=True):
    """An error the client may retry: the answer carries `Retry-After` (seconds; the class's
    `default_retry_after` unless the raiser says how long)."""

    default_retry_after: ClassVar[int] = 1

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = self.default_retry_after if retry_after is None else retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceError(HTTPError, abstract=True):
    """The reranker service's errors: each subclass is one row of its table (`ERRORS`)."""


class Unauthorized(ServiceError):
    """An API key is configured and the request did not carry it."""

    kind = "unauthorized"
    status = 401
    description = "Missing or wrong API key"


class RequestTimeout(ServiceError):
    """The client did not send its whole body within RERANKER_BODY_TIMEOUT."""

    kind = "request_timeout"
    status = 408
    description = "The body did not arrive within RERANKER_BODY_TIMEOUT"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body may still come: not on this one


class PayloadTooLarge(ServiceError):
    """More documents than the configured maximum, or a body over the size limit."""

    kind = "payload_too_large"
    status = 413
    description = "Too many documents, or the body is too large"


class InvalidRequest(ServiceError):
    """The body parsed but makes no sense (fields missing, contradictory, out of range)."""

    kind = "invalid_request"
    status = 422
    description = "Malformed or invalid request"


class BackendError(ServiceError):
    """The model raised while scoring (out of memory, a device fault)."""

    kind = "backend"
    status = 424
    description = "The model failed while scoring"


class Overloaded(ServiceError, RetryLater):
    """The request queue is full; the client should retry after `retry_after` seconds."""

    kind = "overloaded"
    status = 429
    description = "Too many requests queued; retry after the Retry-After header's seconds"


class NotReady(ServiceError):
    """The model is still loading, or failed to load, or the server is shutting down."""

    kind = "not_ready"
    status = 503
    description = "The model is not loaded (yet), or the server is shutting down"


class Timeout(ServiceError):
    """The request was not scored within the configured timeout (queue wait included)."""

    kind = "timeout"
    status = 504
    description = "The request did not finish within RERANKER_REQUEST_TIMEOUT"


# Every error the service answers with, in status order: the OpenAPI responses of api.py.
ERRORS: tuple[type[ServiceError], ...] = tuple(
    sorted(ServiceError.__subclasses__(), key=lambda error: error.status)
)
