"""The APIs the gateway speaks: errors in each route's dialect, and Cohere rerank over TEI.

Errors: the OpenAI error object (`{"error": {"message", "type", "param", "code"}}`) on the
OpenAI routes (`/v1/embeddings`, `/v1/models`), Cohere's `{"message": ..., "type": kind}` on the
rerank routes (the reranker service's own shape), and the same plain shape elsewhere.

Cohere rerank for TEI-served rerankers. The request is parsed with the reranker service's own
Cohere schemas (`reranker.schemas`, one definition of the Cohere shape) and sent to TEI's
`POST /rerank`; TEI's answer comes back in the shape the reranker service gives, so a client
cannot tell the engines apart: results best first (ties by position), cut to `top_n`,
`relevance_score` (TEI's sigmoid of the logit, or the logit with `raw_scores`), `document`
echoed per `return_documents` (v1 default true, v2 false, as the reranker does), an `id` and
`meta` (api version, search units, `tokens.input_tokens` from TEI's `x-compute-tokens`).

TEI's schema is that of the pinned release's OpenAPI document: text-embeddings-inference tag
v1.9.3, `docs/openapi.json` (the chart pins TEI 1.9). `RerankRequest`: `query` (string,
required), `texts` (array of strings, required), `raw_scores`, `return_text`, `truncate`
(booleans, default false), `truncation_direction` ("Left" | "Right"); `RerankResponse`: an
array of `Rank` `{index, score, text?}`, which TEI's router (router/src/http/server.rs) sorts
by descending score, ties in reverse position, hence the re-sort here. Errors:
`ErrorResponse` `{error, error_type}` with 400 empty batch, 413 batch too large, 422
tokenization, 424 backend, 429 overloaded; the 1.9.3 router itself answers 422 for a batch too
large and axum's plain-text rejection (422, or 400 when not JSON) for a body off the schema
(tests/service/test_tei_router.py), which `backend_error_message` passes on as the message.
"""

from __future__ import annotations

import enum
import json
import uuid
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from reranker.schemas import RerankRequestV1, RerankRequestV2, document_text

from .errors import GatewayError, InvalidRequest


class Dialect(enum.Enum):
    """The API family of a route, which decides the shape of its errors."""

    OPENAI = "openai"
    COHERE = "cohere"
    PLAIN = "plain"


def error_body(dialect: Dialect, error: GatewayError) -> dict[str, Any]:
    if dialect is Dialect.OPENAI:
        return {"error": {"message": error.message, "type": error.kind, "param": None,
                          "code": error.kind}}
    return {"message": error.message, "type": error.kind}


def error_response(dialect: Dialect, error: GatewayError) -> web.Response:
    return web.json_response(
        error_body(dialect, error), status=error.status, headers=error.headers()
    )


def backend_error_message(body: bytes) -> str:
    """The message of an error a backend answered, whichever shape it used (TEI's
    `{"error"}` or `{"message"}`, the reranker's `{"message"}`, an OpenAI `{"error": {...}}`)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:500]
    if isinstance(parsed, dict):
        for field in ("message", "error"):
            value = parsed.get(field)
            if isinstance(value, str):
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
    return str(parsed)[:500]


def openai_error_from_backend(status: int, body: bytes,
                              headers: dict[str, str] | None = None) -> web.Response:
    """A backend's error on an OpenAI route, re-rendered as the OpenAI error object."""
    kind = {400: "bad_request", 413: "payload_too_large", 422: "invalid_request",
            424: "backend", 429: "overloaded", 503: "unavailable"}.get(status, "backend")
    message = backend_error_message(body)
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": kind}},
        status=status, headers=headers,
    )


def cohere_error_from_backend(status: int, body: bytes,
                              headers: dict[str, str] | None = None) -> web.Response:
    """TEI's `{"error", "error_type"}` answered as the reranker service's `{"message", "type"}`."""
    kind = {400: "invalid_request", 413: "payload_too_large", 422: "invalid_request",
            424: "backend", 429: "overloaded", 503: "not_ready"}.get(status, "backend")
    return web.json_response({"message": backend_error_message(body), "type": kind},
                             status=status, headers=headers)


# --- Cohere rerank over TEI ----------------------------------------------------------------------


class TeiRerank:
    """One Cohere rerank request, parsed, with the TEI request it becomes."""

    def __init__(self, body: dict[str, Any], version: str):
        schema = RerankRequestV2 if version == "2" else RerankRequestV1
        try:
            self.request = schema.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from None
        if self.request.instruction is not None:
            raise InvalidRequest("instruction: a cross-encoder takes no instruction")
        if self.request.max_tokens_per_doc is not None:
            raise InvalidRequest(
                "max_tokens_per_doc: this model (served by TEI) cuts documents to its own "
                "maximum length only"
            )
        self.version = version
        self.items = self.request.items()
        rank_fields = getattr(self.request, "rank_fields", None)
        try:
            self.texts = [document_text(item, i, rank_fields) for i, item in enumerate(self.items)]
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None

    def tei_body(self) -> dict[str, Any]:
        """TEI's RerankRequest. `truncate`: documents too long for the model are cut, as the
        reranker service cuts them, instead of failing the request."""
        return {
            "query": self.request.query,
            "texts": self.texts,
            "raw_scores": self.request.raw_scores,
            "return_text": False,
            "truncate": True,
        }

    def cohere_answer(self, ranks: list[dict[str, Any]], input_tokens: int) -> dict[str, Any]:
        """TEI's RerankResponse (a list of Rank) in the reranker service's Cohere shape."""
        scores = {int(rank["index"]): float(rank["score"]) for rank in ranks}
        if sorted(scores) != list(range(len(self.texts))):
            raise ValueError(f"TEI ranked {sorted(scores)} for {len(self.texts)} texts")
        order = sorted(scores, key=lambda i: (-scores[i], i))
        if self.request.top_n is not None:
            order = order[: self.request.top_n]
        results = []
        for i in order:
            result: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if self.request.return_documents:
                item = self.items[i]
                result["document"] = {"text": item} if isinstance(item, str) else item
            results.append(result)
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "results": results,
            "meta": {
                "api_version": {"version": self.version},
                "billed_units": {"search_units": -(-len(self.texts) // 100)},
                "tokens": {"input_tokens": input_tokens},
            },
        }



def describe_validation_error(exc: ValidationError) -> str:
    """Pydantic's errors as `field: message` lines, as the reranker service words them."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)
