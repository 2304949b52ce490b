"""Error paths over real HTTP with a fake engine: loading, failures, limits, auth, overload."""

from __future__ import annotations

import threading
import time

import httpx

from reranker.settings import Settings

from .conftest import FakeEngine, wait_ready

REQUEST = {"query": "paris france", "documents": ["paris is in france", "berlin", "france"]}


def test_health_is_503_while_loading_then_200(serve):
    gate = threading.Event()
    url = serve(Settings(), FakeEngine(load_gate=gate))
    loading = httpx.get(f"{url}/health")
    assert loading.status_code == 503
    assert loading.json()["status"] == "loading"
    early = httpx.post(f"{url}/v1/rerank", json=REQUEST)
    assert early.status_code == 503 and "loading" in early.json()["message"]
    gate.set()
    with httpx.Client(base_url=url) as client:
        wait_ready(client, 10)
    assert httpx.get(f"{url}/health").json() == {
        "status": "ok",
        "model": "fake-reranker",
        "device": "cpu",
    }
    assert httpx.post(f"{url}/v1/rerank", json=REQUEST).status_code == 200


def test_a_failed_load_keeps_health_503_with_the_reason(serve):
    url = serve(Settings(), FakeEngine(fail_start=True))
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/health").json()["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.02)
    health = httpx.get(f"{url}/health")
    assert health.status_code == 503
    assert health.json()["status"] == "failed"
    assert "/models/missing" in health.json()["message"]
    assert httpx.post(f"{url}/v1/rerank", json=REQUEST).status_code == 503


def test_results_are_sorted_cut_to_top_n_and_echo_documents(serve):
    url = serve(Settings(), FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        body = client.post("/v1/rerank", json={**REQUEST, "top_n": 2}).json()
        assert [r["index"] for r in body["results"]] == [0, 2]
        assert body["results"][0]["document"] == {"text": "paris is in france"}
        assert body["results"][0]["relevance_score"] > body["results"][1]["relevance_score"]
        # top_n larger than the list returns everything
        assert len(client.post("/v1/rerank", json={**REQUEST, "top_n": 10}).json()["results"]) == 3


def test_instruction_and_max_tokens_reach_the_engine(serve):
    engine = FakeEngine()
    url = serve(Settings(), engine)
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        client.post(
            "/v2/rerank", json={**REQUEST, "instruction": "find it", "max_tokens_per_doc": 5}
        )
    assert engine.calls[-1] == (REQUEST["query"], REQUEST["documents"], "find it", 5)


def test_api_key_required_except_for_health_and_metrics(serve):
    url = serve(Settings(api_key="s3cret"), FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        assert client.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.post("/v1/rerank", json=REQUEST, headers=headers)
            assert response.status_code == 401
            assert "Authorization: Bearer" in response.json()["message"]
        assert client.get("/info").status_code == 401
        assert client.get("/metrics").status_code == 200  # scrapers need no key
        ok = client.post("/v2/rerank", json=REQUEST, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_a_non_ascii_bearer_token_is_401_and_counted_as_401(serve):
    """Header bytes outside ASCII (httpx sends them as latin-1) are a wrong key like any other:
    401 to the client and in /metrics, never a server failure."""
    url = serve(Settings(api_key="s3cret"), FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        for token in ("s3cr\u00e9t", "\u00ff" * 6):
            headers = {"Authorization": f"Bearer {token}".encode("latin-1")}
            response = client.post("/v1/rerank", json=REQUEST, headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["type"] == "unauthorized"
        metrics = client.get("/metrics").text
    assert 'reranker_requests_total{endpoint="/v1/rerank",status="401"} 2.0' in metrics
    assert 'status="500"' not in metrics and 'status="424"' not in metrics


def test_an_unexpected_failure_is_counted_with_the_status_the_client_got(serve):
    """Whatever escapes a handler is answered 424 without internals; /metrics must count the
    424 the client saw, not a 500 nobody was sent."""

    class BrokenInfo:
        model, device = "fake-reranker", "cpu"

        @property
        def max_length(self):
            raise KeyError("secret detail")

    engine = FakeEngine()
    engine.info = BrokenInfo()
    url = serve(Settings(), engine)
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        response = client.get("/info")
        assert response.status_code == 424 and "secret detail" not in response.text
        metrics = client.get("/metrics").text
    assert 'reranker_requests_total{endpoint="/info",status="424"} 1.0' in metrics
    assert 'status="500"' not in metrics


def test_body_over_the_limit_is_413_with_or_without_content_length(serve):
    url = serve(Settings(max_body_bytes=2048), FakeEngine())
    big = {"query": "q", "documents": ["x" * 3000]}
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        response = client.post("/v1/rerank", json=big)
        assert response.status_code == 413
        assert "2048" in response.json()["message"]

        def chunked():
            yield b'{"query": "q", "documents": ["'
            for _ in range(10):
                yield b"x" * 500
            yield b'"]}'

        streamed = client.post(
            "/v1/rerank", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert client.post("/v1/rerank", json=REQUEST).status_code == 200


def test_engine_failure_is_424_without_internals_and_the_server_lives_on(serve):
    url = serve(Settings(), FakeEngine(fail_score=True))
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        response = client.post("/v1/rerank", json=REQUEST)
        assert response.status_code == 424
        assert "secret detail" not in response.text
        assert response.json()["type"] == "backend"
        assert client.get("/health").status_code == 200


def test_a_full_queue_is_429_with_retry_after(serve):
    """max_queue=2: one request is scored, one waits, the next is refused at once."""
    from reranker.app import create_app

    from .conftest import RunningServer, free_port

    gate = threading.Event()
    engine = FakeEngine(score_gate=gate)
    server = RunningServer(create_app(Settings(max_queue=2), engine), free_port()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wait_ready(client)
            results = {}

            def post(name):
                results[name] = client.post("/v1/rerank", json=REQUEST)

            running = threading.Thread(target=post, args=("running",))
            running.start()
            assert engine.scoring.wait(10)
            waiting = threading.Thread(target=post, args=("waiting",))
            waiting.start()
            deadline = time.monotonic() + 10
            while server.app.state.scheduler.depth < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = client.post("/v1/rerank", json=REQUEST)
            depth = client.get("/metrics").text
            gate.set()
            running.join(10)
            waiting.join(10)
    finally:
        gate.set()
        server.stop()
    assert refused.status_code == 429
    assert refused.json()["type"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert "reranker_queue_depth 2.0" in depth
    assert results["running"].status_code == 200
    assert results["waiting"].status_code == 200


def test_engine_stops_on_shutdown(serve):
    from reranker.app import create_app

    from .conftest import RunningServer, free_port

    engine = FakeEngine()
    server = RunningServer(create_app(Settings(), engine), free_port()).start()
    with httpx.Client(base_url=server.url) as client:
        wait_ready(client)
    server.stop()
    assert engine.stopped
