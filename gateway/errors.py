"""Every error the gateway answers with: each class carries its HTTP status and description.

The one table, as in reranker/errors.py: code raises a `GatewayError` subclass; `dialects.py`
renders it in the dialect of the route it happened on (the OpenAI error object on `/v1/*`
OpenAI routes, Cohere's `{"message": ...}` on rerank routes, a plain `{"message", "type"}`
elsewhere) with its `status` and `headers()`.
"""

from __future__ import annotations

from typing import Sequence

from reranker.errors import HTTPError, RetryLater


class GatewayError(HTTPError, abstract=True):
    """The gateway's errors: each subclass sets `kind`, `status` and `description` (the base
    class, shared with the reranker service, refuses one that does not)."""


class BadRequest(GatewayError):
    """The body is not a JSON object, has no `model`, or names a model ambiguously."""

    kind = "bad_request"
    status = 400
    description = "No `model` field, a body that is not JSON, or an ambiguous model name"


class AmbiguousModel(BadRequest):
    """A Hugging Face id served by more than one ModelService: the message lists them."""

    def __init__(self, model: str, candidates: Sequence[str]):
        super().__init__(
            f"model {model!r} is served by several models: {', '.join(candidates)}; "
            "name one of them"
        )
        self.candidates = tuple(candidates)


class Unauthorized(GatewayError):
    """API keys are configured and the request carried none, or a wrong one."""

    kind = "unauthorized"
    status = 401
    description = "Missing or wrong API key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(GatewayError):
    """The key is valid but may not use this model."""

    kind = "forbidden"
    status = 403
    description = "The API key may not use this model"


class UnknownModel(GatewayError):
    """No ModelService by that name, namespace/name or Hugging Face id; or one of the wrong
    task for the route (an embedder asked to rerank)."""

    kind = "model_not_found"
    status = 404
    description = "No model by that name serves this route"


class PayloadTooLarge(GatewayError):
    """The body is over GATEWAY_MAX_BODY_BYTES."""

    kind = "payload_too_large"
    status = 413
    description = "The body is over the size limit"


class InvalidRequest(GatewayError):
    """A rerank request for a TEI-served model that does not fit the Cohere schema, or asks for
    what TEI cannot do: the same answer (422, `invalid_request`) the reranker service gives."""

    kind = "invalid_request"
    status = 422
    description = "Malformed or invalid request"


class Overloaded(GatewayError, RetryLater):
    """The model's concurrency cap (GATEWAY_MAX_IN_FLIGHT_PER_MODEL) is reached."""

    kind = "overloaded"
    status = 429
    description = "The model has as many requests in flight as it may; retry after Retry-After"


class InternalError(GatewayError):
    """A fault in the gateway itself: logged in full, answered without internals."""

    kind = "internal"
    status = 500
    description = "The gateway failed; its log says why"


class BadGateway(GatewayError):
    """Every endpoint tried refused the connection or broke it off."""

    kind = "bad_gateway"
    status = 502
    description = "The model's pods could not be reached"


class Unavailable(GatewayError, RetryLater):
    """No ready endpoint came within GATEWAY_SCALE_FROM_ZERO_TIMEOUT (scaling up from zero or
    pods starting), or the gateway has not synced its watches yet."""

    kind = "unavailable"
    status = 503
    description = "No ready replica of the model (yet); retry after Retry-After"

    default_retry_after = 5


class GatewayTimeout(GatewayError):
    """The backend did not answer within GATEWAY_REQUEST_TIMEOUT."""

    kind = "timeout"
    status = 504
    description = "The model did not answer within GATEWAY_REQUEST_TIMEOUT"


def _all_errors(base: type[GatewayError]) -> list[type[GatewayError]]:
    found = []
    for cls in base.__subclasses__():
        found.append(cls)
        found.extend(_all_errors(cls))
    return found


# Every error the gateway answers with, in status order.
ERRORS: tuple[type[GatewayError], ...] = tuple(
    sorted(_all_errors(GatewayError), key=lambda error: error.status)
)
