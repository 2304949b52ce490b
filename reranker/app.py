"""`create_app(settings, engine=None)`: the FastAPI application and its lifespan.

The model loads in a background thread after the server starts listening, so /health answers
503 `loading` at once (what a Kubernetes startup probe wants) and 200 once the model is ready;
a failed load (an unsupported architecture included) stays 503 `failed` with the reason. The
engine, the request scheduler and the metrics live on `app.state`; nothing is read from the
environment here.

Shutdown is graceful (`server.py` has the sequence): /health answers 503 `stopping` for
RERANKER_SHUTDOWN_DELAY while everything else is served; then the server stops accepting
connections and waits (RERANKER_SHUTDOWN_TIMEOUT) for the requests in flight, whose documents
the scheduler keeps scoring, and answers those still running 503 (`server.DrainDeadline`); only
then does the lifespan close the scheduler and release the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from . import __version__
from .api import BodySizeLimit, UnexpectedErrors, build_router, install_error_handlers
from .engine import Engine
from .metrics import Metrics, RequestMetrics
from .model.loader import TransformersEngine
from .scheduler import Scheduler
from .server import DrainDeadline, ShutdownState
from .settings import Settings

log = logging.getLogger("reranker.app")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    engine = engine if engine is not None else TransformersEngine(settings)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.status = "loading"
        app.state.status_message = None
        scheduler = Scheduler(
            engine,
            max_queue=settings.max_queue,
            token_budget=settings.batch_tokens,
            batch_requests=settings.batch_requests,
            on_pass=metrics.observe_pass,
        )
        app.state.scheduler = scheduler
        metrics.track_queue(lambda: scheduler.depth)
        metrics.track_prompt_cache(getattr(engine, "prompt_cache", lambda: None))
        loader = asyncio.create_task(_load(app))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await asyncio.to_thread(scheduler.close, max(settings.shutdown_timeout, 1.0))
            engine.stop()

    async def _load(app: FastAPI) -> None:
        try:
            await asyncio.to_thread(engine.start)
        except Exception as exc:
            log.exception("model failed to load")
            app.state.status = "failed"
            app.state.status_message = f"the model failed to load: {type(exc).__name__}: {exc}"
            return
        app.state.status = "ok"
        log.info("ready: %s on %s", engine.info.model, engine.info.device)

    app = FastAPI(
        title="Reranker",
        version=__version__,
        description="Qwen3-Reranker and cross-encoder scores behind Cohere-compatible rerank "
        "endpoints (v1 and v2), with Prometheus metrics at /metrics.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.status = "loading"
    app.state.status_message = None
    app.state.shutdown = ShutdownState()
    install_error_handlers(app)
    router = build_router()
    app.include_router(router)
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(
        BodySizeLimit,
        limit=settings.max_body_bytes,
        timeout=settings.body_timeout,
        in_flight=settings.body_bytes_in_flight,
    )
    app.add_middleware(DrainDeadline, state=app.state.shutdown)
    paths = frozenset(route.path for route in router.routes)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=paths)
    return app
