"""HTTP routes, request checks and the mapping of every error to one JSON shape.

Routes: GET /health, GET /info, GET /metrics (Prometheus), POST /rerank and /v1/rerank
(Cohere v1), POST /v2/rerank (Cohere v2). Every error body is `{"message": ..., "type": ...}`
with the status its `errors.ServiceError` class carries; request validation problems are 422s
whose message names the field, a 429 carries Retry-After.

Rerank answers carry timing and size headers (times in milliseconds):

| header | value |
|---|---|
| x-compute-time | time in the service: tokenization + queue + inference |
| x-tokenization-time | tokenizing the request |
| x-queue-time | waiting for the request's first forward pass |
| x-inference-time | the forward passes that held the request's documents |
| x-compute-tokens | tokens the request reads (the `meta.tokens.input_tokens` of the body) |
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .engine import sigmoid
from .errors import (
    ERRORS,
    BackendError,
    InvalidRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unauthorized,
)
from .schemas import (
    ErrorBody,
    Health,
    Info,
    Limits,
    RerankRequestV1,
    RerankRequestV2,
    RerankResponse,
    document_text,
)
from .metrics import CONTENT_TYPE_LATEST
from .settings import Settings

log = logging.getLogger("reranker.api")

# The OpenAPI responses of the protected routes, one per error class.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    error.status: {"model": ErrorBody, "description": error.description} for error in ERRORS
}


def error_response(error: ServiceError) -> JSONResponse:
    """The answer to `error`: its status and headers, body `{"message": ..., "type": kind}`."""
    return JSONResponse(
        {"message": error.message, "type": error.kind},
        status_code=error.status,
        headers=error.headers(),
    )


def describe_validation_error(exc: RequestValidationError) -> str:
    """One readable line per problem, each naming the field: `documents[2]: ...`."""
    problems: dict[str, list[str]] = {}
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", error["msg"])
            problems.setdefault("body", []).append(f"not valid JSON ({reason})")
            continue
        where = ""
        union_member = False
        for part in error.get("loc", ()):
            if part == "body":
                continue
            if isinstance(part, int):
                where += f"[{part}]"
            elif part in {"str", "dict[str,any]"}:
                union_member = True  # the member of `str | object` that failed, not a field
            else:
                where += f".{part}" if where else part
        if error.get("type") == "missing":
            message = "field required"
        elif not where and error.get("type") in {"model_attributes_type", "dict_type"}:
            where, message = "body", "expected a JSON object"
        else:
            message = error["msg"].removeprefix("Value error, ")
        if union_member:
            message = "must be a string or an object with a `text` field"
        problems.setdefault(where, [])
        if message not in problems[where]:
            problems[where].append(message)
    lines = [f"{where}: {m}" if where else m for where, ms in problems.items() for m in ms]
    return "; ".join(lines) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequest(describe_validation_error(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        undecodable = exc.__cause__
        if isinstance(undecodable, UnicodeDecodeError):
            # FastAPI answers a body json.loads cannot decode with a bare 400: JSON is UTF-8,
            # so this is malformed JSON like any other, the client's to fix.
            byte = undecodable.object[undecodable.start]
            return error_response(
                InvalidRequest(
                    f"body: not valid JSON (not UTF-8: byte 0x{byte:02x} at position "
                    f"{undecodable.start})"
                )
            )
        # Starlette's own answers (404 no such route, 405 wrong method), in the same shape.
        body = {"message": str(exc.detail), "type": "http_error"}
        return JSONResponse(body, status_code=exc.status_code)


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def require_api_key(request: Request) -> None:
    key = _settings(request).api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # Compared as bytes: the header is whatever bytes the client sent (Starlette decodes them
    # as latin-1), and compare_digest refuses str with characters outside ASCII.
    sent = token.strip().encode("latin-1")
    if scheme.lower() != "bearer" or not secrets.compare_digest(sent, key.encode()):
        raise Unauthorized("missing or wrong API key: send `Authorization: Bearer <key>`")


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: Any, where: str) -> str | None:
    """Where in `value` (strings, lists, objects, walked) a lone surrogate is, or None.

    JSON can escape half of a UTF-16 surrogate pair (`"\\ud800"`); Python then holds a string
    that is not Unicode text, which no tokenizer reads and no UTF-8 answer can echo."""
    if isinstance(value, str):
        found = LONE_SURROGATE.search(value)
        if found is None:
            return None
        return f"{where}: a lone surrogate U+{ord(found.group()):04X} at character {found.start()}"
    if isinstance(value, dict):
        items = ((f"{where}.{key}", item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", item) for i, item in enumerate(value))
    else:
        return None
    for path, item in items:
        if (found := lone_surrogate(item, path)) is not None:
            return found
    return None


def refuse_lone_surrogates(fields: dict[str, Any]) -> None:
    for where, value in fields.items():
        if (found := lone_surrogate(value, where)) is not None:
            raise InvalidRequest(
                f"{found}, not Unicode text (escape characters outside the BMP as a pair)"
            )



async def rerank(
    request: Request, response: Response, body: RerankRequestV1 | RerankRequestV2, version: str
) -> RerankResponse:
    arrived = time.perf_counter()
    settings = _settings(request)
    items = body.items()
    if len(items) > settings.max_documents:
        raise PayloadTooLarge(
            f"documents: {len(items)} documents, more than the maximum of {settings.max_documents}"
        )
    refuse_lone_surrogates(
        {"query": body.query, "instruction": body.instruction, "documents": items}
    )
    rank_fields = getattr(body, "rank_fields", None)
    try:
        texts = [document_text(item, i, rank_fields) for i, item in enumerate(items)]
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None

    state = request.app.state
    if state.status != "ok":
        raise NotReady(f"the model is {state.status}: {state.status_message or 'not ready'}")
    tokenized: list[float] = []

    def prepare():
        started = time.perf_counter()
        try:
            return state.engine.prepare(
                body.query, texts, body.instruction, body.max_tokens_per_doc
            )
        finally:
            tokenized.append(time.perf_counter() - started)

    try:
        outcome = await state.scheduler.run(prepare, settings.request_timeout)
    except ServiceError:
        raise
    except Exception as exc:  # the model's own failure: logged in full, answered without it
        log.exception("scoring failed")
        raise BackendError(f"the model failed while scoring: {type(exc).__name__}") from exc

    response.headers.update(
        {
            "x-compute-time": _ms(time.perf_counter() - arrived),
            "x-tokenization-time": _ms(sum(tokenized)),
            "x-queue-time": _ms(outcome.queue_seconds),
            "x-inference-time": _ms(outcome.inference_seconds),
            "x-compute-tokens": str(outcome.tokens),
        }
    )
    values = outcome.scores if body.raw_scores else [sigmoid(x) for x in outcome.scores]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    if body.top_n is not None:
        order = order[: body.top_n]
    results = []
    for i in order:
        result: dict[str, Any] = {"index": i, "relevance_score": values[i]}
        if body.return_documents:
            item = items[i]
            result["document"] = {"text": item} if isinstance(item, str) else item
        results.append(result)
    return RerankResponse(
        id=f"rerank-{uuid.uuid4().hex}",
        results=results,
        meta={
            "api_version": {"version": version},
            "billed_units": {"search_units": -(-len(texts) // 100)},
            "tokens": {"input_tokens": outcome.tokens},
        },
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass(frozen=True)
class RerankRoute:
    """One rerank route: its path, the request body it parses and the API version it answers."""

    path: str
    name: str  # the endpoint's name, from which OpenAPI's operationId is made
    body: type[RerankRequestV1] | type[RerankRequestV2]
    version: str
    summary: str


RERANK_ROUTES = (
    RerankRoute(
        "/rerank", "rerank_default", RerankRequestV1, "1", "Rerank documents (Cohere v1 shape)"
    ),
    RerankRoute("/v1/rerank", "rerank_v1", RerankRequestV1, "1", "Rerank documents (Cohere v1)"),
    RerankRoute("/v2/rerank", "rerank_v2", RerankRequestV2, "2", "Rerank documents (Cohere v2)"),
)


def rerank_endpoint(route: RerankRoute):
    """The endpoint of `route`. FastAPI reads the body type from the signature, hence the
    annotation set to the route's request class."""

    async def endpoint(request: Request, response: Response, body: Any) -> RerankResponse:
        return await rerank(request, response, body, route.version)

    endpoint.__annotations__["body"] = route.body
    return endpoint


def build_router() -> APIRouter:
    router = APIRouter()
    protected = [Depends(require_api_key)]

    @router.get(
        "/health",
        response_model=Health,
        responses={
            503: {"model": Health, "description": "Loading, the model failed, or stopping"}
        },
        summary="Readiness: 200 once the model is loaded",
    )
    async def health(request: Request):
        state = request.app.state
        info = state.engine.info
        if state.shutdown.stopping:
            status, message = "stopping", "the server is shutting down"
        else:
            status, message = state.status, state.status_message
        body = Health(status=status, model=info.model, device=info.device, message=message)
        code = 200 if status == "ok" else 503
        return JSONResponse(body.model_dump(exclude_none=True), status_code=code)

    @router.get("/info", response_model=Info, dependencies=protected, responses=ERROR_RESPONSES)
    async def info(request: Request) -> Info:
        settings = _settings(request)
        engine_info = request.app.state.engine.info
        return Info(
            model=engine_info.model,
            max_length=engine_info.max_length,
            dtype=engine_info.dtype,
            device=engine_info.device,
            architecture=engine_info.architecture,
            instruction=settings.instruction,
            limits=Limits(
                max_documents=settings.max_documents,
                max_body_bytes=settings.max_body_bytes,
                max_queue=settings.max_queue,
                batch_tokens=settings.batch_tokens,
                batch_requests=settings.batch_requests,
                request_timeout=settings.request_timeout,
            ),
            version=__version__,
        )

    for route in RERANK_ROUTES:
        router.add_api_route(
            route.path,
            rerank_endpoint(route),
            methods=["POST"],
            name=route.name,
            response_model=RerankResponse,
            response_model_exclude_none=True,
            dependencies=protected,
            responses=ERROR_RESPONSES,
            summary=route.summary,
        )

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
        summary="Prometheus metrics: requests, latency, queue depth, batch sizes, tokens",
    )
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


class StartWatch:
    """An ASGI `send` that notes whether the answer has begun: once it has, no error answer can
    take its place (the middlewares that answer errors themselves ask it)."""

    def __init__(self, send):
        self.send = send
        self.started = False

    async def __call__(self, message):
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class UnexpectedErrors:
    """ASGI middleware: whatever escapes the app is logged and answered as a `BackendError`
    without internals. It runs inside `RequestMetrics`, so /metrics counts the status the
    client got (Starlette's own catch-all sits outside every middleware, where it would be
    counted as a 500 nobody was sent)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        watched = StartWatch(send)
        try:
            await self.app(scope, receive, watched)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if watched.started:
                raise
            answer = error_response(BackendError("the model backend failed; see the server log"))
            await answer(scope, receive, send)


class BodySizeLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is parsed,
    one not all in within `timeout` seconds 408 (a stalled client holds no connection and no
    buffer for longer), and the bodies held at once are bounded: a request whose body would
    take them past `in_flight` bytes is answered 429 with Retry-After before it is read.

    A body counts from the moment it is admitted until its answer is sent (it is read, parsed,
    queued and scored in between, and its parsed documents are echoed back): its Content-Length,
    or `limit` when it is chunked. Checks Content-Length up front, then reads the body (chunked
    ones too) counting bytes, and hands the app the buffered body: the app would buffer it
    anyway to parse the JSON.
    """

    def __init__(self, app, limit: int, timeout: float, in_flight: int):
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.in_flight = in_flight
        self.held = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(
            PayloadTooLarge(
                f"body: the request body is larger than the limit of {self.limit} bytes"
            )
        )
        size: int | None = None
        chunked = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                size = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        if size is not None and size > self.limit:
            return await too_large(scope, receive, send)
        cost = self.limit if chunked and size is None else size or 0
        if cost and self.held + cost > self.in_flight:
            scheduler = getattr(scope["app"].state, "scheduler", None)
            wait = scheduler.retry_after() if scheduler is not None else 1
            busy = Overloaded(
                f"the server holds {self.held} bytes of request bodies, and this one would "
                f"pass the limit of {self.in_flight} (RERANKER_BODY_BYTES_IN_FLIGHT); retry in "
                f"{wait} s",
                retry_after=wait,
            )
            return await error_response(busy)(scope, receive, send)
        self.held += cost
        try:
            await self._read_and_serve(scope, receive, send, too_large)
        finally:
            self.held -= cost

    async def _read_and_serve(self, scope, receive, send, too_large) -> None:
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                event = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                late = RequestTimeout(
                    f"body: {size} bytes arrived in {self.timeout:g} s, not the whole body "
                    "(RERANKER_BODY_TIMEOUT)"
                )
                return await error_response(late)(scope, receive, send)
            if event["type"] != "http.request":
                return  # the client went away
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await too_large(scope, receive, send)
            chunks.append(chunk)
            if not event.get("more_body", False):
                break

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
