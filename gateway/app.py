"""The gateway's HTTP side: routes, body limits, auth, dialects and metrics, on aiohttp.

`create_app(settings, registry, scaler)` returns the aiohttp application. Routes:

- `POST /v1/embeddings` (OpenAI): to the TEI embedding model the body's `model` names, as is.
- `GET /v1/models` (OpenAI list): every model the key may use, with task, engine and replicas.
- `POST /v1/rerank`, `POST /v2/rerank`, `POST /rerank` (Cohere): to the rerank model named;
  passed as is to the reranker service, translated to TEI's `/rerank` and back for TEI
  (dialects.py).
- `/models/<name>/<path>` and `/namespaces/<namespace>/models/<name>/<path>` (any method): the
  request passed as is to `<path>` on one of the model's pods (TEI's /embed, /predict,
  /tokenize, ...).
- `GET /health` (the process), `GET /ready` (the registry has synced), `GET /metrics`.

Request bodies are read up to GATEWAY_MAX_BODY_BYTES (the `model` field routes them, and a
retry on another pod resends them), larger is a 413 before more is read; answers are streamed
back unless they are small and of known length.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from .auth import ApiKeys
from .backend import BackendError, BackendResponse
from .dialects import (
    Dialect,
    TeiRerank,
    cohere_error_from_backend,
    error_response,
    openai_error_from_backend,
)
from .errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    InternalError,
    PayloadTooLarge,
    Unavailable,
    UnknownModel,
)
from .metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from .proxy import Forwarder, forwarded_headers, returned_headers
from .registry import ModelInfo, Registry
from .scaling import Scaler
from .settings import Settings

log = logging.getLogger("gateway")

# Answers of at most this many bytes, of known length, are read whole and sent in one piece
# (cheaper than chunked streaming); larger or unknown-length ones are streamed.
WHOLE_ANSWER_BYTES = 1024 * 1024
# An error a backend answers on a translated route is read up to this much to re-render it.
ERROR_BODY_BYTES = 64 * 1024
STREAM_CHUNK_BYTES = 64 * 1024

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
FORWARDER = web.AppKey("forwarder", Forwarder)
KEYS = web.AppKey("keys", ApiKeys)
METRICS = web.AppKey("metrics", GatewayMetrics)

# What a handler leaves on the request for its wrapper: the model (for metrics) and the
# streamed answer once its status line is sent.
MODEL = web.RequestKey("model", str)
STREAMING = web.RequestKey("streaming", web.StreamResponse)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route(dialect: Dialect, label: str) -> Callable[[Handler], Handler]:
    """Wrap a handler: its errors answered in `dialect`, its outcome counted under `label`
    and the model the handler stored in `request[MODEL]`. Nothing escapes: an unexpected
    exception is logged and answered as a 500 without internals."""

    def wrap(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            request[MODEL] = ""
            try:
                response = await handler(request)
            except GatewayError as error:
                response = _error_or_abort(request, dialect, error)
            except (ConnectionResetError, BackendError) as exc:
                # The client went away, or the backend broke off a streamed answer.
                log.info("%s %s: connection lost: %s", request.method, request.path, exc)
                response = _error_or_abort(request, dialect, BadGateway("connection lost"))
            except web.HTTPException:
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                response = _error_or_abort(
                    request, dialect, InternalError("the gateway failed; see its log")
                )
            request.app[METRICS].observe(
                request[MODEL], label, response.status, time.perf_counter() - started
            )
            return response

        return wrapped

    return wrap


def _error_or_abort(request: web.Request, dialect: Dialect, error: GatewayError):
    streaming = request.get(STREAMING)
    if streaming is None:
        return error_response(dialect, error)
    # The status line is already sent: the only honest signal left is a cut connection.
    log.warning("%s %s: answer cut short: %s", request.method, request.path, error.message)
    if request.transport is not None:
        request.transport.close()
    return streaming


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes: PayloadTooLarge (413) as soon as it is over,
    before more is read."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes, over the {limit}-byte limit")
    content = request.content
    if content.is_eof():
        # The whole body has arrived with the headers (small bodies do): take it as it is.
        body = content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(f"body over the {limit}-byte limit")
        return body
    chunks = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise BadRequest("body: expected a JSON object")
    return parsed


def model_field(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: field required (the name of the model to use)")
    return model


def resolve(request: web.Request, name: str, task: str | None) -> ModelInfo:
    """The model `name` designates, for a request its API key may make, of `task` if given."""
    app = request.app
    api_key = app[KEYS].authenticate(request.headers.get("Authorization"))
    info = app[REGISTRY].resolve(name)
    request[MODEL] = str(info.key)
    if task is not None and info.task != task:
        raise UnknownModel(
            f"model {name!r} is a {info.task} model; this route serves {task} models"
        )
    app[KEYS].authorize(api_key, info.key)
    return info


async def relay(request: web.Request, response: BackendResponse) -> web.StreamResponse:
    """The backend's answer, as is: read whole when small and of known length, else streamed."""
    headers = returned_headers(response.headers)
    length = response.content_length
    if length is not None and length <= WHOLE_ANSWER_BYTES:
        return web.Response(body=await response.read(), status=response.status, headers=headers)
    out = web.StreamResponse(status=response.status, headers=headers)
    request[STREAMING] = out
    await out.prepare(request)
    async for chunk in response.content.iter_chunked(STREAM_CHUNK_BYTES):
        await out.write(chunk)
    await out.write_eof()
    return out


def retry_headers(response: BackendResponse, settings: Settings) -> dict[str, str]:
    """The Retry-After of a backend's 429 or 503 that a translated route re-renders: the
    backend's own, else GATEWAY_RETRY_AFTER (as the gateway's own 429)."""
    if response.status not in (429, 503):
        return {}
    return {"Retry-After": response.headers.get("Retry-After") or str(settings.retry_after)}


async def read_bounded(response: BackendResponse, limit: int) -> bytes:
    """A backend's answer read whole, refused past `limit` bytes (a translated answer must be
    parsed, so it cannot be streamed)."""
    chunks = []
    size = 0
    async for chunk in response.content.iter_chunked(STREAM_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise BadGateway(f"the model's answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --- handlers -----------------------------------------------------------------------------------


@route(Dialect.OPENAI, "/v1/embeddings")
async def embeddings(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    body = await read_body(request, settings.max_body_bytes)
    info = resolve(request, model_field(parse_json_object(body)), "embed")
    if info.engine != "tei":
        raise UnknownModel(f"model {request[MODEL]!r} is not served by TEI")

    async def answer(response: BackendResponse) -> web.StreamResponse:
        if response.status >= 400:
            return openai_error_from_backend(
                response.status, await read_bounded(response, ERROR_BODY_BYTES),
                retry_headers(response, settings),
            )
        return await relay(request, response)

    return await request.app[FORWARDER].send(
        info, "POST", "/v1/embeddings", body, forwarded_headers(request.headers), answer
    )


def rerank_handler(path: str, version: str) -> Handler:
    @route(Dialect.COHERE, path)
    async def rerank(request: web.Request) -> web.StreamResponse:
        settings = request.app[SETTINGS]
        body = await read_body(request, settings.max_body_bytes)
        parsed = parse_json_object(body)
        info = resolve(request, model_field(parsed), "rerank")
        forwarder = request.app[FORWARDER]
        headers = forwarded_headers(request.headers)
        if info.engine == "reranker":
            return await forwarder.send(info, "POST", path, body, headers, lambda r: relay(request, r))

        translated = TeiRerank(parsed, version)

        async def answer(response: BackendResponse) -> web.StreamResponse:
            raw = await read_bounded(
                response, settings.max_body_bytes if response.status < 400 else ERROR_BODY_BYTES
            )
            if response.status >= 400:
                return cohere_error_from_backend(response.status, raw,
                                                 retry_headers(response, settings))
            tokens = int(response.headers.get("x-compute-tokens", "0") or 0)
            return web.json_response(translated.cohere_answer(json.loads(raw), tokens))

        return await forwarder.send(
            info, "POST", "/rerank", json.dumps(translated.tei_body()).encode(),
            {"Content-Type": "application/json"}, answer,
        )

    return rerank


@route(Dialect.PLAIN, "passthrough")
async def passthrough(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    namespace = request.match_info.get("namespace")
    name = request.match_info["name"]
    info = resolve(request, f"{namespace}/{name}" if namespace else name, None)
    body = await read_body(request, settings.max_body_bytes)
    path = "/" + request.match_info["path"]
    if request.query_string:
        path += "?" + request.query_string
    return await request.app[FORWARDER].send(
        info, request.method, path, body, forwarded_headers(request.headers),
        lambda response: relay(request, response),
    )


@route(Dialect.OPENAI, "/v1/models")
async def list_models(request: web.Request) -> web.StreamResponse:
    app = request.app
    api_key = app[KEYS].authenticate(request.headers.get("Authorization"))
    registry = app[REGISTRY]
    data = []
    for info in registry.models():
        if api_key is not None and not api_key.allows(info.key):
            continue
        home = info.key.namespace == registry.home_namespace
        data.append({
            "id": info.key.name if home else str(info.key),
            "object": "model",
            "created": 0,
            "owned_by": info.key.namespace,
            "task": info.task,
            "engine": info.engine,
            "model_id": info.model_id,
            "replicas": info.replicas,
            "ready_replicas": len(registry.endpoints(info.key)),
        })
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@route(Dialect.PLAIN, "/ready")
async def ready(request: web.Request) -> web.StreamResponse:
    if not request.app[REGISTRY].synced:
        raise Unavailable("the gateway has not listed its models and endpoints yet", 1)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def create_app(settings: Settings, registry: Registry, scaler: Scaler) -> web.Application:
    """The gateway over `registry` (filled by the caller: kube.py's watches or a static file),
    asking `scaler` for replicas of models at zero."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[FORWARDER] = Forwarder(settings, registry, scaler)
    app[KEYS] = ApiKeys(settings.api_keys_file, registry.home_namespace)
    app[METRICS] = GatewayMetrics(registry)

    async def session(app: web.Application):
        await app[FORWARDER].start()
        # What exists now (modules, settings, routes) lives as long as the app: out of the
        # cyclic collector's way, so its collections walk only what requests leave behind
        # (7 % of its CPU under load, 2 % so); handed back to it at cleanup.
        gc.freeze()
        yield
        gc.unfreeze()
        await app[FORWARDER].close()

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    for path, version in (("/v1/rerank", "1"), ("/v2/rerank", "2"), ("/rerank", "1")):
        app.router.add_post(path, rerank_handler(path, version))
    app.router.add_route("*", "/models/{name}/{path:.*}", passthrough)
    app.router.add_route("*", "/namespaces/{namespace}/models/{name}/{path:.*}", passthrough)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
