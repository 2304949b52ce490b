"""Under load, over real HTTP: passes shared across requests (or not), timeouts, graceful
shutdown, /metrics, timing headers, and cross-encoders behind the same API."""

from __future__ import annotations

import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from reranker.app import create_app
from reranker.settings import Settings
from testkit.models import MINILM_DIR, shared_cross_encoder

from .conftest import FakeEngine, RunningServer, free_port, wait_ready

REQUEST = {"query": "paris france", "documents": ["paris is in france", "berlin", "france"]}


def hold_first_pass(url: str, engine: FakeEngine, queries: list[str]) -> dict[str, httpx.Response]:
    """One request holds the worker while `queries` arrive and wait; then all are let go."""
    answers: dict[str, httpx.Response] = {}

    def post(query):
        body = {"query": f"{query} extra", "documents": [f"{query} one", "two", f"{query} extra"]}
        answers[query] = httpx.post(f"{url}/v1/rerank", json=body, timeout=30)

    with ThreadPoolExecutor(len(queries) + 1) as pool:
        pool.submit(post, "first")
        assert engine.scoring.wait(10)
        for q in queries:
            pool.submit(post, q)
        deadline = time.monotonic() + 10
        while len(engine.calls) < len(queries) + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the last request queues right after its tokenization
        engine.score_gate.set()
    return answers


@pytest.mark.parametrize("batch_requests", [True, False], ids=["batched", "one-at-a-time"])
def test_waiting_requests_share_a_pass_unless_batching_is_off(serve, batch_requests):
    engine = FakeEngine(score_gate=threading.Event())
    url = serve(Settings(batch_requests=batch_requests), engine)
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
    queries = ["alpha", "beta", "gamma"]
    answers = hold_first_pass(url, engine, queries)
    per_pass = [sorted(q.split()[0] for q, _ in p) for p in engine.passes]
    if batch_requests:
        assert per_pass == [["first"], queries]
    else:
        assert per_pass[0] == ["first"]
        assert sorted(per_pass[1:]) == [["alpha"], ["beta"], ["gamma"]]  # in arrival order
    for query in ["first", *queries]:
        body = answers[query].json()
        assert answers[query].status_code == 200
        # Each request gets its own scores back: the document with both its words first.
        assert [r["index"] for r in body["results"]] == [2, 0, 1]
        assert body["results"][0]["document"] == {"text": f"{query} extra"}


def test_a_request_past_its_timeout_is_504_and_the_server_goes_on(serve):
    gate = threading.Event()
    url = serve(Settings(request_timeout=0.5), FakeEngine(score_gate=gate))
    with httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        started = time.monotonic()
        late = client.post("/v1/rerank", json=REQUEST)
        assert time.monotonic() - started < 5
        gate.set()
        assert late.status_code == 504
        assert late.json()["type"] == "timeout"
        assert "within 0.5 s (RERANKER_REQUEST_TIMEOUT)" in late.json()["message"]
        assert client.post("/v1/rerank", json=REQUEST).status_code == 200


def test_shutdown_finishes_the_request_in_flight(serve):
    gate = threading.Event()
    engine = FakeEngine(score_gate=gate)
    server = RunningServer(create_app(Settings(), engine), free_port()).start()
    with httpx.Client(base_url=server.url) as client:
        wait_ready(client)
    answer = {}

    def post():
        answer["in flight"] = httpx.post(f"{server.url}/v1/rerank", json=REQUEST, timeout=30)

    in_flight = threading.Thread(target=post)
    in_flight.start()
    assert engine.scoring.wait(10)
    server.server.should_exit = True  # what SIGTERM does
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # no new connections while draining
        httpx.post(f"{server.url}/v1/rerank", json=REQUEST, timeout=2)
    assert not engine.stopped
    gate.set()
    in_flight.join(10)
    server.thread.join(10)
    assert answer["in flight"].status_code == 200
    assert len(answer["in flight"].json()["results"]) == 3
    assert engine.stopped


def metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.M)
    assert found, f"{name} {labels} not in /metrics"
    return float(found.group(1))


def test_metrics_count_requests_latency_batches_and_tokens(serve):
    url = serve(Settings(max_body_bytes=4096), FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
        for _ in range(2):
            assert client.post("/v1/rerank", json=REQUEST).status_code == 200
        assert client.post("/v2/rerank", json={"query": "q"}).status_code == 422
        assert client.get("/no/such/path").status_code == 404
        too_large = {"query": "q", "documents": ["x" * 5000]}
        assert client.post("/rerank", json=too_large).status_code == 413
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "reranker_requests_total", endpoint="/v1/rerank", status="200") == 2
    assert metric(text, "reranker_requests_total", endpoint="/v2/rerank", status="422") == 1
    assert metric(text, "reranker_requests_total", endpoint="other", status="404") == 1
    assert metric(text, "reranker_requests_total", endpoint="/rerank", status="413") == 1
    assert (
        metric(text, "reranker_request_duration_seconds_count", endpoint="/v1/rerank", status="200")
        == 2
    )
    inf = metric(
        text,
        "reranker_request_duration_seconds_bucket",
        endpoint="/v1/rerank",
        le="+Inf",
        status="200",
    )
    assert inf == 2
    assert metric(text, "reranker_batch_documents_count") == 2
    assert metric(text, "reranker_batch_documents_sum") == 6
    assert metric(text, "reranker_batch_requests_sum") == 2
    # FakeEngine: a document costs its words plus one; 5 + 2 + 2 per request.
    assert metric(text, "reranker_tokens_total") == 18
    assert metric(text, "reranker_queue_depth") == 0


def test_answers_carry_compute_time_and_token_headers(live_url):
    response = httpx.post(f"{live_url}/v1/rerank", json=REQUEST, timeout=30)
    assert response.status_code == 200
    headers = response.headers
    assert int(headers["x-compute-tokens"]) == response.json()["meta"]["tokens"]["input_tokens"]
    total = float(headers["x-compute-time"])
    parts = [float(headers[h]) for h in ("x-tokenization-time", "x-queue-time", "x-inference-time")]
    assert total > 0 and parts[2] > 0
    assert sum(parts) <= total + 1.0  # milliseconds, the parts within the whole


def test_concurrent_requests_on_the_real_engine_get_their_own_scores(live_url):
    """Eight queries at once, batched into shared passes, score as each does alone."""
    queries = [f"query number {i} about paris" for i in range(8)]
    documents = ["paris is the capital of france", "berlin", "a tower " * 30, "france"]

    def rerank(query):
        body = {"query": query, "documents": documents, "raw_scores": True}
        results = httpx.post(f"{live_url}/v1/rerank", json=body, timeout=60).json()["results"]
        return {r["index"]: r["relevance_score"] for r in results}

    alone = [rerank(q) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(rerank, queries))
    for a, b in zip(alone, together):
        assert max(abs(a[i] - b[i]) for i in a) <= 1e-4
    assert len({round(s[0], 4) for s in alone}) > 1  # different queries, different scores


def test_a_cross_encoder_serves_the_same_api(serve, tmp_path_factory):
    model = shared_cross_encoder(tmp_path_factory.getbasetemp(), "bert")
    url = serve(Settings(model=str(model), device="cpu"))
    with httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        info = client.get("/info").json()
        assert info["architecture"] == "cross-encoder" and info["max_length"] == 512
        raw = client.post("/v1/rerank", json={**REQUEST, "raw_scores": True}).json()["results"]
        v2 = client.post("/v2/rerank", json=REQUEST).json()["results"]
        assert [r["index"] for r in raw] == [r["index"] for r in v2]
        for r, p in zip(raw, v2):
            assert p["relevance_score"] == pytest.approx(1 / (1 + math.exp(-r["relevance_score"])))
        refused = client.post("/v1/rerank", json={**REQUEST, "instruction": "find it"})
        assert refused.status_code == 422
        assert refused.json()["message"].startswith("instruction:")
        assert metric(client.get("/metrics").text, "reranker_prompt_cache_rows") == 0  # none


def test_an_unsupported_architecture_fails_the_load_with_the_reason(serve):
    url = serve(Settings(model=str(MINILM_DIR), device="cpu"))
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health").json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    health = httpx.get(f"{url}/health")
    assert health.status_code == 503
    assert "unsupported architecture: BertModel" in health.json()["message"]


def test_metrics_show_the_prompt_head_cache_at_work(live_url):
    """The second request with an instruction reads its head from the cache; /metrics says so."""

    def cache() -> tuple[float, float, float]:
        text = httpx.get(f"{live_url}/metrics").text
        return (
            metric(text, "reranker_prompt_cache_hits_total"),
            metric(text, "reranker_prompt_cache_misses_total"),
            metric(text, "reranker_prompt_cache_rows"),
        )

    instruction = "Find the passage that answers the question (metrics test)"
    hits, misses, rows = cache()
    for query in ("first query", "second query"):
        body = {**REQUEST, "query": query, "instruction": instruction}
        assert httpx.post(f"{live_url}/v1/rerank", json=body, timeout=30).status_code == 200
    after = cache()
    assert after[0] == hits + 1 and after[1] == misses + 1  # computed once, then read
    assert after[2] > rows

