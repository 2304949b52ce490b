"""`python -m reranker` starts from RERANKER_* settings, loads a local model offline, answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port


def test_python_m_reranker_serves_health_and_rerank(tiny_model, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # nothing cached: the model must come from the directory
        "RERANKER_MODEL": str(tiny_model),
        "RERANKER_PORT": str(port),
        "RERANKER_HOST": "127.0.0.1",
        "RERANKER_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "reranker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                response = httpx.get(f"{url}/health")
                status = response.status_code
                if status == 200:
                    break
                assert status == 503 and response.json()["status"] == "loading"
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert status == 200
        assert httpx.get(f"{url}/health").json()["device"] == "cpu"
        rerank = httpx.post(f"{url}/rerank", json={"query": "q", "documents": ["a", "b"]})
        assert rerank.status_code == 200 and len(rerank.json()["results"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode in (0, -15)


def test_help_lists_the_settings():
    out = subprocess.run(
        [sys.executable, "-m", "reranker", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("RERANKER_MODEL", "RERANKER_PORT", "RERANKER_MAX_LENGTH", "RERANKER_API_KEY"):
        assert name in out


def test_sigterm_finishes_the_request_in_flight(tiny_model, tmp_path):
    """SIGTERM while a large request is being scored: it is answered in full, then the process
    exits (uvicorn's graceful shutdown, RERANKER_SHUTDOWN_TIMEOUT)."""
    import signal
    import threading

    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "RERANKER_MODEL": str(tiny_model),
        "RERANKER_PORT": str(port),
        "RERANKER_LOG_LEVEL": "warning",
        "RERANKER_SHUTDOWN_TIMEOUT": "60",
    }
    proc = subprocess.Popen([sys.executable, "-m", "reranker"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        documents = [f"document {i} " + "paris tower river city " * 100 for i in range(600)]
        answer = {}

        def post():
            body = {"query": "paris", "documents": documents, "return_documents": False}
            answer["response"] = httpx.post(f"{url}/v1/rerank", json=body, timeout=120)

        client = threading.Thread(target=post)
        client.start()
        while "reranker_queue_depth 1.0" not in httpx.get(f"{url}/metrics").text:
            assert client.is_alive(), "the request finished before it could be interrupted"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        client.join(120)
        # uvicorn re-raises the signal once the shutdown is done: -15 is a clean exit too.
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    response = answer["response"]
    assert response.status_code == 200
    assert len(response.json()["results"]) == 600


FAKE_SERVER = Path(__file__).with_name("fake_server.py")
REQUEST = {"query": "paris", "documents": ["paris tower", "berlin"], "return_documents": False}


def start_fake_server(port: int, **settings: str) -> subprocess.Popen:
    """The service on FakeEngine in its own process (fake_server.py), once /health is 200."""
    env = {**os.environ, "RERANKER_PORT": str(port), "RERANKER_LOG_LEVEL": "warning", **settings}
    proc = subprocess.Popen([sys.executable, str(FAKE_SERVER)], env=env)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def test_sigterm_keeps_serving_with_health_failing_for_the_delay_then_stops(tmp_path):
    """In Kubernetes the endpoint is removed only once readiness fails: for
    RERANKER_SHUTDOWN_DELAY the port still answers (a new connection gets its scores) while
    /health says 503 `stopping`; then the port closes and the process exits."""
    import signal

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_fake_server(port, RERANKER_SHUTDOWN_DELAY="2", RERANKER_SHUTDOWN_TIMEOUT="5")
    try:
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "stopping"
        rerank = httpx.post(f"{url}/v1/rerank", json=REQUEST)
        assert rerank.status_code == 200 and len(rerank.json()["results"]) == 2
        assert time.monotonic() - signalled < 1.5, "the checks above must run within the delay"
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - signalled >= 2
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_requests_still_running_when_the_drain_time_is_over_get_a_json_503(tmp_path):
    """Past RERANKER_SHUTDOWN_TIMEOUT a request still being scored is answered with the
    documented error body (503 `not_ready`), not uvicorn's text/plain 500, and the process
    exits."""
    import signal
    import threading

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_fake_server(
        port, FAKE_BLOCK="1", RERANKER_SHUTDOWN_DELAY="0", RERANKER_SHUTDOWN_TIMEOUT="1"
    )
    answer = {}

    def post():
        answer["response"] = httpx.post(f"{url}/v1/rerank", json=REQUEST, timeout=30)

    client = threading.Thread(target=post)
    try:
        client.start()
        while "reranker_queue_depth 1.0" not in httpx.get(f"{url}/metrics").text:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        client.join(20)
        assert proc.wait(20) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    response = answer["response"]
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "message": "the server shut down before the request finished (RERANKER_SHUTDOWN_TIMEOUT)",
        "type": "not_ready",
    }
