"""The gateway's HTTP/1.1 client for backends: keep-alive connections pooled per address.

`BackendPool.request(address, method, target, headers, body, timeout)` is an async context
manager whose value is the backend's answer (`BackendResponse`: `status`, `headers`, a
case-insensitive multidict, `content_length`, `read()` and `content`, an aiohttp
`StreamReader` with `iter_chunked(n)`). The request is written by hand: the request line,
`Host`, `Content-Length` (unless a GET-like request has no body) and the headers given, exactly
as given (no User-Agent, Accept or Accept-Encoding of its own). The answer is parsed by
aiohttp's HTTP parser (its C parser where built), so chunked, close-delimited and
`Connection: close` answers are read as aiohttp's own client reads them.

A connection goes back to its address's pool only when its answer was read to the end by the
parser, without error, and the backend did not ask to close; any other way out of the context
manager (an exception, an answer left partway, a 503 not read) closes it, so no connection is
ever reused with bytes of an old answer pending. Idle connections are reused most recent first,
closed after `keepalive_timeout` seconds idle, and at most `max_idle` are kept per address
(none is ever refused for lack of a connection: the pool bounds what it keeps, not what is in
use). A connection the backend closes while idle leaves the pool when its close arrives; one it
closes as the request reaches it, before any byte of answer, has the request sent once more on
a new connection.

`timeout` bounds the whole exchange, up to the answer's last byte (the connect part also by
`connect_timeout`): past it the answer's read raises `asyncio.TimeoutError` and the connection
is closed. A connect that fails is `Unreachable`; a connection that breaks before the answer's
head is `Broken`, and one that breaks in the body fails the body's read with `BrokenAnswer`.

This is an HTTP/1.1 client for the gateway's own use, not a general one: no TLS, proxies,
redirects, cookies, compression or upgrades (an upgrade answer is `Broken`). It drives aiohttp's
parser as aiohttp's own client does (`ResponseHandler` in aiohttp/client_proto.py), through the
modules that client uses (`http_parser`, `base_protocol`, `streams`); checked with aiohttp 3.14.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import Mapping
from urllib.parse import quote

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

# Buffered bytes of an answer's body past which reading from the socket pauses (the parser's
# flow control; a reader asking for larger chunks raises it to its chunk size).
READ_LIMIT = 2**16
# Bodies at least this large are written after the head instead of being joined to it.
JOIN_BODY_BYTES = 16 * 1024
# Methods that define no meaning for a body: sent without Content-Length when they have none.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
# A request target that can go out as it is (RFC 3986 path and query characters, and escapes);
# anything else is percent-encoded first.
PLAIN_TARGET = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
TARGET_SAFE = "/-._~!$&'()*+,;=:@?%"


class BackendError(Exception):
    """The backend could not be reached or broke the exchange."""


class Unreachable(BackendError):
    """No connection could be opened to the backend (refused, unreachable)."""


class Broken(BackendError):
    """The connection broke, or the backend's bytes were not HTTP, before the answer's head."""


class BrokenAnswer(BackendError):
    """The connection broke, or the bytes were not HTTP, in the answer's body."""


class _Stale(Exception):
    """A pooled connection broke before any byte of the answer arrived."""


class BackendResponse:
    """A backend's answer: its head, and its body as an aiohttp StreamReader (`content`)."""

    __slots__ = ("status", "reason", "headers", "content", "should_close")

    def __init__(self, message, content: StreamReader):
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = content
        self.should_close: bool = message.should_close

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        """The whole body."""
        content = self.content
        if content.is_eof():
            return content.read_nowait()  # all here (small answers come with their head)
        return await content.read()


class Connection(BaseProtocol):
    """One connection to a backend: an asyncio protocol feeding aiohttp's response parser.

    One exchange at a time: `exchange(data)` writes a request and waits for the head of its
    answer; the body then arrives in the StreamReader the parser made for it."""

    __slots__ = ("address", "pool", "head", "payload", "received", "closed", "idle_since",
                 "failure")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: BackendPool, address: str,
                 bodyless: bool = False):
        super().__init__(loop)
        self._parser = HttpResponseParser(
            self, loop, READ_LIMIT, payload_exception=BrokenAnswer,
            response_with_body=not bodyless, read_until_eof=True, auto_decompress=False,
        )
        self.address = address
        self.pool = pool
        self.head: asyncio.Future | None = None  # the current exchange's answer head
        self.payload: StreamReader | None = None  # the current exchange's answer body
        self.received = False  # whether any byte of the current exchange's answer arrived
        self.closed = False
        self.idle_since = 0.0
        self.failure: BaseException | None = None

    async def exchange(self, data: bytes, body: bytes) -> BackendResponse:
        self.head = self._loop.create_future()
        self.payload = None
        self.received = False
        assert self.transport is not None
        self.transport.write(data)
        if body:
            self.transport.write(body)
        message, payload = await self.head
        self.payload = payload
        return BackendResponse(message, payload)

    def reusable(self, response: BackendResponse) -> bool:
        """Whether the answer was parsed to its end, cleanly, on a connection to keep."""
        payload = response.content
        return (not self.closed and not response.should_close and payload.is_eof()
                and payload.exception() is None and self.failure is None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def fail(self, exc: BaseException) -> None:
        """End the exchange in progress with `exc` and drop the connection."""
        if self.failure is None:
            self.failure = exc
        head = self.head
        if head is not None and not head.done():
            head.set_exception(exc)
        payload = self.payload
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            payload.set_exception(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def time_out(self) -> None:
        self.fail(asyncio.TimeoutError())

    def resume_reading(self, *args, **kwargs) -> None:
        # aiohttp's StreamReader calls this after each read below its low-water mark, paused or
        # not; parsing and the socket only ever wait when pause_reading() paused them. (The
        # arguments pass through as given, whatever this aiohttp's BaseProtocol takes.)
        if self._reading_paused:
            super().resume_reading(*args, **kwargs)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if data:
            if self.head is None and (self.payload is None or self.payload.is_eof()):
                # Bytes nobody asked for (after the answer's end, or while idle).
                self.fail(Broken("the backend sent bytes outside an answer"))
                return
            self.received = True
        try:
            messages, upgraded, _ = self._parser.feed_data(data)
        except Exception as exc:
            self.fail(Broken(f"the backend's answer is not valid HTTP: {exc}"))
            return
        for message, payload in messages:
            if 100 <= message.code < 200 and message.code != 101:
                continue  # an interim answer (100 Continue): the final one follows
            head = self.head
            if head is None or head.done() or upgraded:
                self.fail(Broken("the backend answered more than it was asked, or upgraded"))
                return
            self.head = None
            self.payload = payload
            head.set_result((message, payload))

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.closed = True
        self.pool.forget(self)
        payload = self.payload
        try:
            self._parser.feed_eof()  # ends a close-delimited body; fails a cut one
        except Exception as error:
            if payload is not None and not payload.is_eof() and payload.exception() is None:
                payload.set_exception(BrokenAnswer(f"the answer was cut short: {error}"))
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            payload.set_exception(BrokenAnswer("the connection closed in the answer"))
        head = self.head
        if head is not None and not head.done():
            reason = f" ({exc})" if exc is not None else ""
            head.set_exception(
                Broken(f"the connection closed before the answer{reason}")
                if self.received else _Stale()
            )


class Exchange:
    """`BackendPool.request`'s context manager: one request, its answer, then the connection
    back to the pool or closed."""

    __slots__ = ("pool", "address", "method", "data", "body", "timeout", "connection",
                 "response", "timer", "timed_out")

    def __init__(self, pool: BackendPool, address: str, method: str, data: bytes, body: bytes,
                 timeout: float):
        self.pool = pool
        self.address = address
        self.method = method
        self.data = data
        self.body = body
        self.timeout = timeout
        self.connection: Connection | None = None
        self.response: BackendResponse | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out = False

    def _time_out(self) -> None:
        self.timed_out = True
        if self.connection is not None:
            self.connection.time_out()

    async def __aenter__(self) -> BackendResponse:
        pool = self.pool
        loop = pool.loop
        deadline = loop.time() + self.timeout
        self.timer = loop.call_at(deadline, self._time_out)
        try:
            bodyless = self.method == "HEAD"
            connection = None if bodyless else pool.take(self.address)
            if connection is not None:
                self.connection = connection
                try:
                    self.response = await connection.exchange(self.data, self.body)
                    return self.response
                except _Stale:
                    # The backend closed this idle connection as the request went out (or
                    # before), and no byte of an answer came: try once more on a new
                    # connection. The request may have reached the backend, so it may run
                    # twice; the gateway accepts that because its requests (inference) have
                    # no effects beyond their answer and are sent again at most once here
                    # (plus once to another endpoint on a refused connection or a 503).
                    self.connection = None
            self.connection = connection = await pool.connect(self.address, deadline, bodyless)
            if self.timed_out:
                raise asyncio.TimeoutError()
            try:
                self.response = await connection.exchange(self.data, self.body)
            except _Stale:
                raise Broken("the connection closed before the answer") from None
            return self.response
        except BaseException:
            self.timer.cancel()
            if self.connection is not None:
                self.connection.close()
            raise

    async def __aexit__(self, exc_type, exc, tb) -> None:
        assert self.timer is not None and self.connection is not None
        self.timer.cancel()
        connection = self.connection
        response = self.response
        if (exc_type is None and response is not None and self.method != "HEAD"
                and connection.reusable(response)):
            self.pool.release(connection)
        else:
            connection.close()


class BackendPool:
    """Keep-alive connections to backends, per address (`host:port`)."""

    def __init__(self, connect_timeout: float, keepalive_timeout: float = 30.0,
                 max_idle: int = 100):
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_idle = max_idle
        self.idle: dict[str, deque[Connection]] = {}  # oldest first
        self.sweeper: asyncio.TimerHandle | None = None

    def request(self, address: str, method: str, target: str, headers: Mapping[str, str],
                body: bytes, timeout: float) -> Exchange:
        """Send `method target` with `headers` and `body` to `address`; the context manager's
        value is the answer. Raises Unreachable, Broken or asyncio.TimeoutError; ValueError for
        a header or target that cannot be written."""
        if PLAIN_TARGET.fullmatch(target) is None:
            target = quote(target, safe=TARGET_SAFE)
            if not target.startswith("/"):
                raise ValueError(f"request target {target!r}: not a path")
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise ValueError("a header name or value holds a line break")
        if body or method not in BODYLESS_METHODS:
            head = (f"{method} {target} HTTP/1.1\r\nHost: {address}\r\n"
                    f"Content-Length: {len(body)}\r\n{lines}\r\n")
        else:
            head = f"{method} {target} HTTP/1.1\r\nHost: {address}\r\n{lines}\r\n"
        data = head.encode("utf-8", "surrogateescape")
        if len(body) < JOIN_BODY_BYTES:
            data, body = data + body, b""
        return Exchange(self, address, method, data, body, timeout)

    async def connect(self, address: str, deadline: float, bodyless: bool) -> Connection:
        host, _, port = address.rpartition(":")
        timeout = min(self.connect_timeout, deadline - self.loop.time())
        if timeout <= 0:
            raise asyncio.TimeoutError()
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: Connection(self.loop, self, address, bodyless),
                    host.strip("[]"), int(port),
                ),
                timeout,
            )
        except OSError as exc:
            raise Unreachable(f"cannot connect to {address}: {exc}") from None
        return connection

    def take(self, address: str) -> Connection | None:
        """The most recently used idle connection to `address`, if any."""
        idle = self.idle.get(address)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def release(self, connection: Connection) -> None:
        """Keep `connection`, whose last answer was read to its end, for the next request."""
        idle = self.idle.get(connection.address)
        if idle is None:
            idle = self.idle[connection.address] = deque()
        connection.idle_since = self.loop.time()
        idle.append(connection)
        if len(idle) > self.max_idle:
            idle.popleft().close()
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.keepalive_timeout, self.sweep)

    def forget(self, connection: Connection) -> None:
        """Drop a closed connection from the idle ones."""
        idle = self.idle.get(connection.address)
        if idle:
            try:
                idle.remove(connection)
            except ValueError:
                pass

    def sweep(self) -> None:
        """Close the connections idle for keepalive_timeout; come back when the next is due."""
        self.sweeper = None
        now = self.loop.time()
        expired = now - self.keepalive_timeout
        oldest = None
        for address, idle in list(self.idle.items()):
            while idle and idle[0].idle_since <= expired:
                idle.popleft().close()
            if idle:
                first = idle[0].idle_since
                oldest = first if oldest is None else min(oldest, first)
            else:
                del self.idle[address]
        if oldest is not None:
            self.sweeper = self.loop.call_at(oldest + self.keepalive_timeout, self.sweep)

    def idle_count(self, address: str | None = None) -> int:
        if address is not None:
            return len(self.idle.get(address, ()))
        return sum(len(idle) for idle in self.idle.values())

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for idle in self.idle.values():
            for connection in idle:
                connection.close()
        self.idle.clear()
