"""`create_app(settings, engine=None)`: the FastAPI application and its lifespan.

The model loads in a background thread after the server starts listening, so /health answers
503 `loading` at once (what a Kubernetes startup probe wants) and 200 once the model is ready;
a failed load stays 503 `failed` with the reason. The engine and the request scheduler live on
`app.state`; nothing is read from the environment here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI

from . import __version__
from .api import BodySizeLimit, build_router, install_error_handlers
from .batching import Scheduler
from .engine import Engine, TransformersEngine
from .settings import Settings

log = logging.getLogger("reranker.app")


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    engine = engine if engine is not None else TransformersEngine(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.status = "loading"
        app.state.status_message = None
        app.state.scheduler = Scheduler(settings.max_queue)
        loader = asyncio.create_task(_load(app))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            app.state.scheduler.close()
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
        title="Qwen3 reranker",
        version=__version__,
        description="Qwen3-Reranker scores behind Cohere-compatible rerank endpoints (v1 and v2).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.status = "loading"
    app.state.status_message = None
    install_error_handlers(app)
    app.include_router(build_router())
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    return app
