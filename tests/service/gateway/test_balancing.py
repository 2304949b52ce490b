"""Choosing the pod: the fewest requests in flight, one retry elsewhere on a refused
connection or a 503, never an address the registry does not hold, one slow model never
slowing another."""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from .conftest import dead_address, model

BODY = {"model": "r", "query": "q", "documents": ["d"]}


def test_a_refused_connection_is_retried_on_another_pod(gateway, tei_server):
    live, tei = tei_server(kind="reranker")
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [dead_address(), live.address])])
    answers = [httpx.post(f"{gw.url}/v1/rerank", json=BODY) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert len(tei.received) == 6


def test_a_refused_connection_with_no_other_pod_is_a_502(gateway):
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [dead_address()])])
    answer = httpx.post(f"{gw.url}/v1/rerank", json=BODY)
    assert answer.status_code == 502 and answer.json()["type"] == "bad_gateway"


def test_a_503_is_retried_once_on_another_pod(gateway, tei_server):
    failing, bad = tei_server(kind="reranker", fail_status=503)
    live, good = tei_server(kind="reranker")
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [failing.address, live.address])])
    answers = [httpx.post(f"{gw.url}/v1/rerank", json=BODY) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert len(good.received) == 4
    assert 1 <= len(bad.received) <= 4


def test_the_pod_with_fewest_requests_in_flight_is_chosen(gateway, tei_server):
    slow, slow_tei = tei_server(kind="reranker", delay=2.0)
    fast, fast_tei = tei_server(kind="reranker")
    r = model("r", "rerank", "tei", "r/r")
    gw = gateway([(r, [slow.address])])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(httpx.post, f"{gw.url}/v1/rerank", json=BODY, timeout=10)
        while not slow_tei.received:
            time.sleep(0.01)
        gw.set_endpoints(r.key, [slow.address, fast.address])
        # The slow pod has one request in flight, the fast none: every one goes to the fast.
        for _ in range(6):
            assert httpx.post(f"{gw.url}/v1/rerank", json=BODY).status_code == 200
        assert long.result().status_code == 200
    assert (len(slow_tei.received), len(fast_tei.received)) == (1, 6)


def test_a_removed_endpoint_gets_nothing(gateway, tei_server):
    old, old_tei = tei_server(kind="reranker")
    new, new_tei = tei_server(kind="reranker")
    r = model("r", "rerank", "tei", "r/r")
    gw = gateway([(r, [old.address])])
    gw.set_endpoints(r.key, [new.address])
    for _ in range(4):
        assert httpx.post(f"{gw.url}/v1/rerank", json=BODY).status_code == 200
    assert (len(old_tei.received), len(new_tei.received)) == (0, 4)


def test_one_slow_model_does_not_slow_another(gateway, tei_server):
    """120 requests held by a slow model (more than aiohttp's default pool of 100
    connections) all reach it, and do not make a fast model's request wait."""
    slow, slow_tei = tei_server(kind="reranker", delay=5.0)
    fast, _ = tei_server(kind="embedding")
    gw = gateway([(model("slow", "rerank", "tei", "s/s"), [slow.address]),
                  (model("fast", "embed", "tei", "f/f"), [fast.address])])
    slow_body = {**BODY, "model": "slow"}
    with concurrent.futures.ThreadPoolExecutor(120) as pool:
        with httpx.Client(limits=httpx.Limits(max_connections=200), timeout=20) as client:
            held = [pool.submit(client.post, f"{gw.url}/v1/rerank", json=slow_body)
                    for _ in range(120)]
            deadline = time.monotonic() + 4
            while len(slow_tei.received) < 120 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(slow_tei.received) == 120
            started = time.perf_counter()
            fast_answer = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "fast", "input": "x"})
            took = time.perf_counter() - started
            assert [f.result().status_code for f in held] == [200] * 120
    assert fast_answer.status_code == 200
    assert took < 1.0, f"the fast model's request took {took:.2f} s"
