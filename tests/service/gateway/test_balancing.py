"""Choosing the pod: the fewest requests in flight, one retry elsewhere on a refused
connection or a 503, never an address the registry does not hold, one slow model never
slowing another."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

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
    queries = [f"q{n}" for n in range(4)]
    answers = [httpx.post(f"{gw.url}/v1/rerank", json={**BODY, "query": q}) for q in queries]
    assert [a.status_code for a in answers] == [200] * 4
    # Each request reached the live pod once, and the failing one at most once before it.
    assert [body["query"] for _, body in good.received] == queries
    failed = [body["query"] for _, body in bad.received]
    assert failed and len(set(failed)) == len(failed), failed


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
    slow_model = model("slow", "rerank", "tei", "s/s")
    slow_key = slow_model.key
    gw = gateway([(slow_model, [slow.address]),
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
            fast_answer = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "fast", "input": "x"})
            # Answered while every slow request is still held by its model, not after them.
            assert fast_answer.status_code == 200
            assert gw.call(gw.registry.in_flight, slow_key) == 120
            assert not any(f.done() for f in held)
            assert [f.result().status_code for f in held] == [200] * 120


def test_ties_between_idle_pods_are_taken_in_turn(gateway, tei_server):
    """Requests one after another find both pods idle every time: they alternate."""
    first, first_tei = tei_server(kind="reranker")
    second, second_tei = tei_server(kind="reranker")
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [first.address, second.address])])
    for _ in range(6):
        assert httpx.post(f"{gw.url}/v1/rerank", json=BODY).status_code == 200
    assert (len(first_tei.received), len(second_tei.received)) == (3, 3)


def post_within(url: str, body: dict, seconds: float) -> httpx.Response | None:
    """The answer to a POST, or None when none came within `seconds`."""
    try:
        return httpx.post(url, json=body, timeout=seconds)
    except httpx.TimeoutException:
        return None


@pytest.mark.parametrize("dead", [2, 3])
def test_every_pod_refusing_is_a_prompt_502(gateway, dead):
    """Each pod refuses its connection: the request gives up after the retry, it does not go
    round the pods again."""
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [dead_address() for _ in range(dead)])])
    for _ in range(3):
        started = time.monotonic()
        answer = post_within(f"{gw.url}/v1/rerank", BODY, 5)
        assert answer is not None, "no answer within 5 s: the gateway kept trying the pods"
        assert answer.status_code == 502 and answer.json()["type"] == "bad_gateway"
        assert time.monotonic() - started < 2


def test_a_500_reaches_the_client_as_it_is_and_is_not_retried(gateway, tei_server):
    """A 500 may come from a request that ran: it is not sent to another pod."""
    servers = [tei_server(kind="reranker", fail_status=500) for _ in range(2)]
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [s.address for s, _ in servers])])
    for n in range(4):
        answer = httpx.post(f"{gw.url}/models/r/rerank", json={"query": f"q{n}", "texts": ["d"]})
        assert answer.status_code == 500
        assert answer.json() == {"error": "unhealthy", "error_type": "Unhealthy"}  # TEI's own
    queries = sorted(body["query"] for _, tei in servers for _, body in tei.received)
    assert queries == ["q0", "q1", "q2", "q3"]  # each request reached exactly one pod


def test_a_503_is_retried_exactly_once(gateway, tei_server):
    """Every pod answers 503: each request is sent to two pods of the three, and the client
    gets the second pod's 503."""
    servers = [tei_server(kind="reranker", fail_status=503) for _ in range(3)]
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [s.address for s, _ in servers])])
    for n in range(3):
        answer = httpx.post(f"{gw.url}/v1/rerank", json={**BODY, "query": f"q{n}"})
        assert answer.status_code == 503 and answer.json()["type"] == "not_ready"
    for n in range(3):
        reached = [i for i, (_, tei) in enumerate(servers)
                   for _, body in tei.received if body["query"] == f"q{n}"]
        assert len(reached) == 2 and len(set(reached)) == 2, f"q{n} reached pods {reached}"


@pytest.mark.parametrize("status", [503, 429])
def test_a_models_503_or_429_on_a_translated_route_says_when_to_retry(gateway, tei_server, status):
    """TEI gives no Retry-After: the gateway's (GATEWAY_RETRY_AFTER), as on its own 429."""
    rerank, _ = tei_server(kind="reranker", fail_status=status)
    embed, _ = tei_server(kind="embedding", fail_status=status)
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [rerank.address]),
                  (model("e", "embed", "tei", "e/e"), [embed.address])], retry_after=4)
    for url, body in ((f"{gw.url}/v1/rerank", BODY), (f"{gw.url}/v2/rerank", BODY),
                      (f"{gw.url}/v1/embeddings", {"model": "e", "input": "x"})):
        answer = httpx.post(url, json=body)
        assert answer.status_code == status, url
        assert answer.headers.get("Retry-After") == "4", url
