"""The gateway's client for backends (backend.py): answers of every framing relayed intact,
a connection reused only when its last answer was read to the end, a keep-alive connection the
backend closed not an error, a bounded pool, and broken or stalled answers as 502 and 504.

The backends here are HTTP/1.1 servers written by hand (`RawBackend`) on 127.0.0.1, so that a
test decides each byte of an answer and when a connection closes, and counts connections."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import httpx
import pytest

from gateway.app import FORWARDER
from gateway.backend import BackendPool

from .conftest import model

MODEL = model("m", "embed", "tei", "m/m")
OK_BODY = b'{"ok": true}'


@dataclass
class Request:
    connection: int  # the backend's count of connections when this one was accepted
    method: str
    path: str
    headers: list[tuple[str, str]]  # (lower-cased name, value), as sent
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


Respond = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


def answer(body: bytes = OK_BODY, status: int = 200, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}",
            "Content-Type: application/json", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def ok(request: Request, writer: asyncio.StreamWriter) -> bool:
    data = answer()
    writer.write(data[:data.index(b"\r\n\r\n") + 4] if request.method == "HEAD" else data)
    await writer.drain()
    return True


class RawBackend:
    """A hand-written HTTP/1.1 server in a thread: each request is answered by `respond`, which
    writes what it likes and returns whether to keep the connection open."""

    def __init__(self, respond: Respond = ok):
        self.respond = respond
        self.requests: list[Request] = []
        self.connections = 0
        self.open = 0
        self.serving: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(asyncio.start_server(self.serve, "127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        number = self.connections
        self.serving.add(asyncio.current_task())
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = []
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers.append((name.lower(), value.strip()))
                length = next((v for k, v in headers if k == "content-length"), "0")
                body = await reader.readexactly(int(length))
                request = Request(number, method, path, headers, body)
                self.requests.append(request)
                if not await self.respond(request, writer):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass  # the gateway went away, or stop() ended this connection
        finally:
            self.open -= 1
            self.serving.discard(asyncio.current_task())
            writer.close()

    def stop(self) -> None:
        async def down():
            self.server.close()
            for task in list(self.serving):
                task.cancel()
            await asyncio.gather(*self.serving, return_exceptions=True)

        self.run(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def raw_backend():
    started: list[RawBackend] = []

    def start(respond: Respond = ok) -> RawBackend:
        backend = RawBackend(respond)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def behind_gateway(gateway, raw_backend):
    """A gateway whose one model, `m`, is served by a RawBackend answering with `respond`."""

    def start(respond: Respond = ok, **settings):
        backend = raw_backend(respond)
        return backend, gateway([(MODEL, [backend.address])], **settings)

    return start


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def in_flight(gw) -> int:
    return gw.call(gw.registry.in_flight, MODEL.key)


def idle(gw) -> int:
    return gw.call(lambda: gw.server.app[FORWARDER].pool.idle_count())


def test_an_answer_refused_over_the_limit_leaves_its_connection_unused(behind_gateway):
    """A 4 MB error answer is refused past read_bounded's 64 KiB: its connection, with most of
    the answer still to come, is closed, and the next request gets its own answer."""
    big_error = answer(b'{"error": "' + b"x" * (4 << 20) + b'"}', 400)

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(big_error if request.body == b'{"model": "m", "input": "big"}' else answer())
        await writer.drain()
        return True

    backend, gw = behind_gateway(respond)
    refused = httpx.post(f"{gw.url}/v1/embeddings", content=b'{"model": "m", "input": "big"}')
    assert refused.status_code == 502 and "over" in refused.json()["error"]["message"]
    for _ in range(3):
        fine = httpx.post(f"{gw.url}/v1/embeddings", content=b'{"model": "m", "input": "x"}')
        assert (fine.status_code, fine.content) == (200, OK_BODY)
    assert backend.connections == 2  # the refused answer's, then one kept alive
    assert in_flight(gw) == 0


def test_an_answer_its_client_left_leaves_its_connection_unused(behind_gateway):
    """A client that goes away from a streamed answer: the gateway stops reading it at its
    next chunk and closes the connection; the request counts as in flight until then."""
    size = 8 << 20
    release = threading.Event()

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.path != "/big":
            return await ok(request, writer)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()
                     + b"a" * (2 << 20))
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        writer.write(b"b" * (size - (2 << 20)))
        await writer.drain()
        return True

    backend, gw = behind_gateway(respond)
    with httpx.Client() as client:
        with client.stream("GET", f"{gw.url}/models/m/big") as streamed:
            assert streamed.status_code == 200
            chunks = streamed.iter_raw(65536)
            assert next(chunks).startswith(b"a")
            assert in_flight(gw) == 1  # counted until the answer's last byte
    release.set()  # the rest of the answer comes, to a gateway whose client has gone
    wait_until(lambda: in_flight(gw) == 0)
    for _ in range(3):
        fine = httpx.get(f"{gw.url}/models/m/small")
        assert (fine.status_code, fine.content) == (200, OK_BODY)
    assert backend.connections == 2


def test_a_chunked_answer_is_relayed_intact_and_its_connection_reused(behind_gateway):
    chunks = [b"first,", b"x" * 300_000, b"", b"y" * (1 << 20), b",last"]

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: text/plain\r\n\r\n")
        for chunk in chunks:
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    backend, gw = behind_gateway(respond)
    for _ in range(3):
        relayed = httpx.get(f"{gw.url}/models/m/chunked")
        assert relayed.status_code == 200
        assert relayed.content == b"".join(chunks)
        assert relayed.headers["content-type"] == "text/plain"
    assert backend.connections == 1
    assert idle(gw) == 1


def test_a_large_answer_is_streamed_intact_through_the_read_pauses(behind_gateway):
    """16 MB, far over the parser's buffer: reading from the backend pauses and resumes as the
    client takes the answer."""
    body = bytes(range(256)) * (1 << 16)

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        writer.write(body)
        await writer.drain()
        return True

    backend, gw = behind_gateway(respond)
    for _ in range(2):
        relayed = httpx.get(f"{gw.url}/models/m/large")
        assert relayed.status_code == 200 and relayed.content == body
    assert backend.connections == 1


def test_a_close_delimited_answer_is_relayed_intact(behind_gateway):
    """No Content-Length and `Connection: close`: the body is what comes until the backend
    closes, and that connection is not reused."""
    body = b"z" * 200_000 + b"end"

    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n")
        writer.write(body[:100_000])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[100_000:])
        await writer.drain()
        return False

    backend, gw = behind_gateway(respond)
    for _ in range(3):
        relayed = httpx.post(f"{gw.url}/models/m/close", content=b"{}")
        assert (relayed.status_code, relayed.content) == (200, body)
    assert backend.connections == 3
    assert idle(gw) == 0


def test_a_keep_alive_connection_the_backend_closed_is_not_an_error(behind_gateway):
    """Closed while idle, the connection leaves the pool; closed as the next request reached
    it (the keep-alive race: the backend reads the request and closes without a byte of
    answer), the request is sent again on a new connection."""
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.path == "/close-after":
            writer.write(answer())
            await writer.drain()
            await asyncio.sleep(0.1)
            return False  # closes the idle connection
        on_this_connection = [r for r in backend.requests if r.connection == request.connection]
        if request.path == "/race" and request.connection == 2 and len(on_this_connection) == 2:
            return False  # the second connection closes on its second request, unanswered
        return await ok(request, writer)

    backend, gw = behind_gateway(respond)
    assert httpx.get(f"{gw.url}/models/m/close-after").status_code == 200
    wait_until(lambda: backend.open == 0)
    wait_until(lambda: idle(gw) == 0)
    fine = httpx.get(f"{gw.url}/models/m/race")  # a new connection, number 2
    assert (fine.status_code, fine.content) == (200, OK_BODY)
    fine = httpx.get(f"{gw.url}/models/m/race")  # on connection 2: closed, sent again on 3
    assert (fine.status_code, fine.content) == (200, OK_BODY)
    assert [r.connection for r in backend.requests] == [1, 2, 2, 3]
    assert in_flight(gw) == 0


def test_the_pool_keeps_a_bounded_number_of_idle_connections_for_a_bounded_time(raw_backend):
    async def slow(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.2)  # all ten requests overlap: ten connections
        return await ok(request, writer)

    backend = raw_backend(slow)

    async def exercise() -> tuple[int, int, int, int]:
        pool = BackendPool(connect_timeout=2, keepalive_timeout=0.5, max_idle=4)

        async def one() -> bytes:
            async with pool.request(backend.address, "GET", "/x", {}, b"", 5) as response:
                return await response.read()

        try:
            assert await asyncio.gather(*(one() for _ in range(10))) == [OK_BODY] * 10
            after_burst = pool.idle_count(backend.address)
            await asyncio.sleep(0.2)
            open_after_burst = backend.open
            await asyncio.sleep(0.8)
            return after_burst, open_after_burst, pool.idle_count(), backend.open
        finally:
            pool.close()

    after_burst, open_after_burst, idle_later, open_later = asyncio.run(exercise())
    assert backend.connections == 10
    assert (after_burst, open_after_burst) == (4, 4)
    assert (idle_later, open_later) == (0, 0)


def test_an_answer_cut_short_is_a_502_or_a_cut_stream(behind_gateway):
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        size = 1000 if request.path == "/small" else 4 << 20
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()
                     + b"c" * (size // 2))
        await writer.drain()
        return False

    backend, gw = behind_gateway(respond)
    small = httpx.get(f"{gw.url}/models/m/small")
    assert small.status_code == 502 and small.json()["type"] == "bad_gateway"
    with pytest.raises(httpx.RemoteProtocolError):  # streamed: the status was already sent
        httpx.get(f"{gw.url}/models/m/big")
    assert in_flight(gw) == 0


def test_an_answer_that_stalls_is_a_504_and_its_connection_is_closed(behind_gateway):
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.path != "/stall":
            return await ok(request, writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        await writer.drain()
        await asyncio.sleep(3)
        writer.write(b"s" * 96)
        return True

    backend, gw = behind_gateway(respond, request_timeout=0.5)
    started = time.monotonic()
    stalled = httpx.get(f"{gw.url}/models/m/stall", timeout=10)
    assert stalled.status_code == 504 and time.monotonic() - started < 2
    fine = httpx.get(f"{gw.url}/models/m/fine")
    assert (fine.status_code, fine.content) == (200, OK_BODY)
    assert backend.connections == 2
    assert in_flight(gw) == 0


def test_the_request_goes_out_with_the_clients_headers_only(behind_gateway):
    backend, gw = behind_gateway()
    client_headers = {"X-Custom": "v", "Content-Type": "text/plain", "User-Agent": "test/1",
                      "Accept": "*/*", "Accept-Encoding": "identity"}
    sent = httpx.post(f"{gw.url}/models/m/echo%20this?a=1&b=2", content=b"payload",
                      headers=client_headers)
    assert sent.status_code == 200
    request = backend.requests[0]
    assert (request.method, request.path, request.body) == ("POST", "/echo%20this?a=1&b=2",
                                                           b"payload")
    # The client's headers, less those of its connection to the gateway, and Host and
    # Content-Length: nothing added.
    forwarded = [(name.lower(), value) for name, value in client_headers.items()]
    assert sorted(request.headers) == sorted([
        ("host", backend.address), ("content-length", "7"), *forwarded])
    # A GET without a body has no Content-Length.
    assert httpx.get(f"{gw.url}/models/m/get", headers=client_headers).status_code == 200
    assert sorted(backend.requests[1].headers) == sorted([("host", backend.address), *forwarded])
    # The answer to a HEAD has a Content-Length and no body.
    assert httpx.head(f"{gw.url}/models/m/head").status_code == 200
    fine = httpx.get(f"{gw.url}/models/m/get")
    assert (fine.status_code, fine.content) == (200, OK_BODY)


@pytest.fixture
def two_pods(gateway, raw_backend):
    """A gateway whose one model, `m`, has two pods, both RawBackends answering `respond`."""

    def start(respond: Respond, model_info=MODEL, **settings):
        backends = [raw_backend(respond), raw_backend(respond)]
        return backends, gateway([(model_info, [b.address for b in backends])], **settings)

    return start


def test_an_answer_broken_off_in_its_body_is_a_502_and_not_sent_elsewhere(two_pods):
    """The pod may have run the request: it is not sent to the other pod."""
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"c" * 500)
        await writer.drain()
        return False

    backends, gw = two_pods(respond)
    for n in range(4):
        answer = httpx.post(f"{gw.url}/models/m/embed", content=b"request %d" % n)
        assert answer.status_code == 502 and answer.json()["type"] == "bad_gateway"
    bodies = sorted(r.body for backend in backends for r in backend.requests)
    assert bodies == [b"request %d" % n for n in range(4)]  # each reached exactly one pod
    assert in_flight(gw) == 0


def test_a_503_from_the_last_pod_tried_reaches_the_client_with_its_retry_after(two_pods):
    """Both pods not ready (as the reranker service answers it): the second pod's 503, with its
    Retry-After, reaches the client, not a 502."""
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b'{"message": "not ready", "type": "not_ready"}', 503,
                            "Retry-After: 7"))
        await writer.drain()
        return True

    reranker = model("m", "rerank", "reranker", "m/m")
    backends, gw = two_pods(respond, reranker)
    for url, body in ((f"{gw.url}/v2/rerank", {"model": "m", "query": "q", "documents": ["d"]}),
                      (f"{gw.url}/models/m/v2/rerank", {"query": "q", "documents": ["d"]})):
        refused = httpx.post(url, json=body)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "7"
        assert refused.json() == {"message": "not ready", "type": "not_ready"}
    assert [len(b.requests) for b in backends] == [2, 2]  # each request: one pod, then the other


def test_a_503_whose_body_stalls_is_not_put_back_in_the_pool(gateway, raw_backend):
    """The gateway leaves a 503 unread to retry elsewhere; that connection, with the rest of
    the 503's body still to come, is closed: the pod's next request gets its own answer."""
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.path == "/first":
            writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 100\r\n\r\nnot ")
            await writer.drain()
            await asyncio.sleep(3)
            writer.write(b"r" * 96)
            await writer.drain()
            return True
        return await ok(request, writer)

    stalling, healthy = raw_backend(respond), raw_backend(ok)
    gw = gateway([(MODEL, [stalling.address, healthy.address])], request_timeout=5)
    # Until the stalling pod has had /first (and its 503 was retried on the healthy one).
    for _ in range(4):
        if stalling.requests:
            break
        retried = httpx.get(f"{gw.url}/models/m/first", timeout=10)
        assert (retried.status_code, retried.content) == (200, OK_BODY)
    assert [r.path for r in stalling.requests] == ["/first"]
    gw.set_endpoints(MODEL.key, [stalling.address])
    started = time.monotonic()
    fine = httpx.get(f"{gw.url}/models/m/second", timeout=10)
    assert (fine.status_code, fine.content) == (200, OK_BODY)
    assert time.monotonic() - started < 1
    assert [r.path for r in stalling.requests] == ["/first", "/second"]
    assert stalling.connections == 2


def test_a_pooled_connection_closed_in_the_answers_head_is_a_502_sent_once(behind_gateway):
    """Bytes of an answer arrived: the request ran, and it is not sent again on a new
    connection, as it is when a pooled connection closes before any byte of answer."""
    async def respond(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.path == "/cut":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await writer.drain()
            return False
        return await ok(request, writer)

    backend, gw = behind_gateway(respond)
    assert httpx.get(f"{gw.url}/models/m/pooled").status_code == 200
    assert idle(gw) == 1
    cut = httpx.get(f"{gw.url}/models/m/cut")
    assert cut.status_code == 502 and cut.json()["type"] == "bad_gateway"
    assert [(r.connection, r.path) for r in backend.requests] == [(1, "/pooled"), (1, "/cut")]
    assert in_flight(gw) == 0
