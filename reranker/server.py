"""How the app is served: uvicorn with a shutdown Kubernetes can follow, and connection timeouts.

Shutdown, on SIGTERM or SIGINT (`Server`):

1. stopping: for RERANKER_SHUTDOWN_DELAY seconds the server goes on serving everything, but
   /health answers 503 `stopping`, so the readiness probe fails and the endpoint is removed
   while the port still answers: clients that still route to the pod get answers, not refused
   connections. A second signal ends the delay at once.
2. draining: the port closes, idle connections close, and the requests in flight have
   RERANKER_SHUTDOWN_TIMEOUT seconds to finish.
3. past it, the requests still running are answered 503 `not_ready` (`DrainDeadline`); uvicorn
   waits `DRAIN_MARGIN_S` more for those answers to go out, then the lifespan stops the
   scheduler and releases the model.

A pod's terminationGracePeriodSeconds must therefore exceed delay + timeout + `DRAIN_MARGIN_S`
plus the forward pass under way (the operator and the chart give reranker pods 50 s for the
defaults, 5 + 30).

Connections: an idle one closes after RERANKER_KEEP_ALIVE_TIMEOUT; one that has not sent a
request's whole headers within RERANKER_HEADER_TIMEOUT of connecting (or of the request's first
byte) is closed (`HeaderDeadline`); a body still incomplete RERANKER_BODY_TIMEOUT after its
headers is answered 408 (`api.BodySizeLimit`).
"""

from __future__ import annotations

import asyncio
import time
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .api import StartWatch, error_response
from .errors import NotReady
from .settings import Settings

# Seconds uvicorn waits past the drain deadline for the 503 answers to be written.
DRAIN_MARGIN_S = 5.0


class ShutdownState:
    """Where a shutdown stands, shared by the server that moves it on and the app that reads
    it (`app.state.shutdown`): `stopping` from the signal on (/health answers 503), and
    `drain_over` set when the drain time has run out."""

    def __init__(self) -> None:
        self.stopping = False
        self.drain_over = asyncio.Event()


class DrainDeadline:
    """ASGI middleware: once the drain time is over, a request still running is cancelled and
    answered 503 `not_ready` (JSON, like every other error) instead of being cut off by
    uvicorn with a text/plain 500. A request whose answer has begun is left to finish."""

    def __init__(self, app, state: ShutdownState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        watched = StartWatch(send)
        request = asyncio.ensure_future(self.app(scope, receive, watched))
        over = asyncio.ensure_future(self.state.drain_over.wait())
        try:
            await asyncio.wait({request, over}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            request.cancel()
            raise
        finally:
            over.cancel()
        if request.done() or watched.started:
            return await request
        request.cancel()
        try:
            await request
        except asyncio.CancelledError:
            pass
        if watched.started:
            return
        answer = error_response(
            NotReady(
                "the server shut down before the request finished (RERANKER_SHUTDOWN_TIMEOUT)"
            )
        )
        await answer(scope, receive, send)


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection that does not send a request's headers in
    time: from connecting, and from the first byte of each request. uvicorn alone keeps a
    connection that has sent nothing, or half a request line, open forever. Subclasses set
    `header_timeout` (`http_protocol`)."""

    header_timeout: float = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol(header_timeout: float) -> type[HeaderDeadline]:
    """The protocol class for uvicorn's `http` setting, with its header deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_timeout": header_timeout})


class Server(uvicorn.Server):
    """uvicorn's server with the shutdown sequence above (steps 1 and 2; the app does 3)."""

    def __init__(self, config: uvicorn.Config, state: ShutdownState, *, delay: float,
                 drain: float):
        super().__init__(config)
        self.shutdown_state = state
        self.delay = delay
        self.drain = drain
        self._stop_at: float | None = None
        self._signal = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the signal handler (or a test's thread): it only sets flags, which
        `on_tick` reads on the event loop."""
        if self.shutdown_state.stopping or self.delay <= 0:
            self.shutdown_state.stopping = True
            return super().handle_exit(sig, frame)
        self.shutdown_state.stopping = True
        self._signal = sig
        self._stop_at = time.monotonic() + self.delay

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and not self.should_exit and time.monotonic() >= self._stop_at:
            super().handle_exit(self._signal, None)
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        timer = asyncio.get_running_loop().call_later(self.drain, self.shutdown_state.drain_over.set)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def build_server(app, settings: Settings, *, log_level: str | None = None) -> Server:
    """The server of `app` (from `create_app`) on `settings.host`:`settings.port`."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level or settings.log_level,
        http=http_protocol(settings.header_timeout),
        timeout_keep_alive=settings.keep_alive_timeout,
        timeout_graceful_shutdown=settings.shutdown_timeout + DRAIN_MARGIN_S,
    )
    return Server(
        config,
        app.state.shutdown,
        delay=settings.shutdown_delay,
        drain=settings.shutdown_timeout,
    )
