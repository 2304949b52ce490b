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
