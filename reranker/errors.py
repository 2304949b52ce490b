"""Every error the service answers with, and the one table that maps each kind to an HTTP status.

Handlers raise `ServiceError` subclasses; `api.py` turns them into `{"message": ..., "type": ...}`
bodies with the status below. Anything else that escapes is logged and answered as a 424
(backend failure) without internals, so no client input can crash the process or leak a
traceback.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `kind` selects the HTTP status in `STATUS_BY_KIND`."""

    kind = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """The body parsed but makes no sense (fields missing, contradictory, out of range)."""

    kind = "invalid_request"


class PayloadTooLarge(ServiceError):
    """More documents than the configured maximum, or a body over the size limit."""

    kind = "payload_too_large"


class Unauthorized(ServiceError):
    """An API key is configured and the request did not carry it."""

    kind = "unauthorized"


class Overloaded(ServiceError):
    """The request queue is full; the client should retry after `retry_after` seconds."""

    kind = "overloaded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Timeout(ServiceError):
    """The request was not scored within the configured timeout (queue wait included)."""

    kind = "timeout"


class NotReady(ServiceError):
    """The model is still loading, or failed to load."""

    kind = "not_ready"


class BackendError(ServiceError):
    """The model raised while scoring (out of memory, a device fault)."""

    kind = "backend"


# TEI's convention: 413 too large, 422 unprocessable, 424 backend, 429 overloaded, 503 not ready;
# and 504 for a request that ran out of time.
STATUS_BY_KIND: dict[str, int] = {
    InvalidRequest.kind: 422,
    PayloadTooLarge.kind: 413,
    Unauthorized.kind: 401,
    Overloaded.kind: 429,
    NotReady.kind: 503,
    Timeout.kind: 504,
    BackendError.kind: 424,
    ServiceError.kind: 424,
}


def http_status(error: ServiceError) -> int:
    return STATUS_BY_KIND.get(error.kind, 424)
