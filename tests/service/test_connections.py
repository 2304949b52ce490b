"""Idle and half-sent connections are closed, a stalled body is answered 408: a client cannot
hold a connection (and its buffers) open for longer than the RERANKER_*_TIMEOUT settings say."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from reranker.settings import Settings

from .conftest import FakeEngine, wait_ready

TIMEOUTS = Settings(keep_alive_timeout=0.5, header_timeout=0.5, body_timeout=0.5)


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.settimeout(5)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took;
    fails if it is still open after the socket's timeout."""
    started = time.monotonic()
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Le"],
    ids=["nothing", "half the headers"],
)
def test_a_connection_without_complete_headers_is_closed(serve, sent):
    url = serve(TIMEOUTS, FakeEngine())
    with connect(url) as sock:
        sock.sendall(sent)
        received, seconds = read_until_closed(sock)
    assert received == b""
    assert 0.4 < seconds < 3


def test_an_idle_kept_alive_connection_is_closed(serve):
    url = serve(TIMEOUTS, FakeEngine())
    with connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received, seconds = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 ")
    assert seconds < 3


def test_a_body_that_stalls_is_answered_408_and_the_connection_closed(serve):
    url = serve(TIMEOUTS, FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
    body = json.dumps({"query": "q", "documents": ["a", "b"]}).encode()
    with connect(url) as sock:
        sock.sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        received, seconds = read_until_closed(sock)
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(payload) == {
        "message": "body: 10 bytes arrived in 0.5 s, not the whole body (RERANKER_BODY_TIMEOUT)",
        "type": "request_timeout",
    }
    assert seconds < 3
    with httpx.Client(base_url=url) as client:
        metrics = client.get("/metrics").text
    assert 'reranker_requests_total{endpoint="/v1/rerank",status="408"} 1.0' in metrics


def test_bodies_past_the_in_flight_limit_are_refused_429_before_they_are_read(serve):
    """RERANKER_BODY_BYTES_IN_FLIGHT bounds the bodies held at once, the slow ones included:
    one more is answered at once with Retry-After, without waiting for (or buffering) its body;
    a body that still fits is served."""
    mib = 1024 * 1024
    settings = Settings(max_body_bytes=mib, body_bytes_in_flight=mib + mib // 2, body_timeout=30)
    url = serve(settings, FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
    head = (
        "POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {mib}\r\n\r\n"
    ).encode()
    with connect(url) as slow, connect(url) as refused:
        slow.sendall(head + b'{"query": ')  # holds a 1 MiB reservation while it trickles
        time.sleep(0.3)
        refused.sendall(head)
        answer = refused.recv(65536)
        status, _, rest = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 429 "), answer
        assert b"retry-after: " in rest.lower()
        assert b'"type":"overloaded"' in answer and b"RERANKER_BODY_BYTES_IN_FLIGHT" in answer
        small = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["q a", "b"]})
        assert small.status_code == 200
    time.sleep(0.3)  # the slow client is gone: its reservation is released
    big = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a " * (mib // 3)]})
    assert big.status_code == 200
