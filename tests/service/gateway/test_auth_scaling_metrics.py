"""API keys, holding requests while a model scales up from zero, /metrics, /health and /ready."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import cohere
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.registry import Endpoint

from .conftest import model

RERANK = {"model": "r", "query": "q", "documents": ["d"]}


@pytest.fixture
def keyed(gateway, tei_server, tmp_path):
    embed, _ = tei_server(kind="embedding")
    rerank, _ = tei_server(kind="reranker")
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-all\nsk-rerank-only  r, other/x\n")
    return gateway([(model("e", "embed", "tei", "e/e"), [embed.address]),
                    (model("r", "rerank", "tei", "r/r"), [rerank.address])],
                   api_keys_file=keys)


def test_no_key_or_a_wrong_one_is_a_401_in_each_dialect(keyed):
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-all"}):
        answer = httpx.post(f"{keyed.url}/v1/rerank", json=RERANK, headers=headers)
        assert answer.status_code == 401 and answer.json()["type"] == "unauthorized"
    client = openai.OpenAI(api_key="sk-wrong", base_url=f"{keyed.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="e", input="x")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_key_may_use_its_models_only(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    co = cohere.ClientV2(api_key="sk-rerank-only", base_url=keyed.url)
    assert co.rerank(model="r", query="q", documents=["d"]).results[0].index == 0
    client = openai.OpenAI(api_key="sk-rerank-only", base_url=f"{keyed.url}/v1", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.embeddings.create(model="e", input="x")
    assert "apps/e" in caught.value.body["message"]
    assert [m.id for m in client.models.list()] == ["r"]
    everything = openai.OpenAI(api_key="sk-all", base_url=f"{keyed.url}/v1")
    assert len(everything.embeddings.create(model="e", input="x").data) == 1
    assert "sk-rerank-only" not in caplog.text and "sk-all" not in caplog.text


def test_health_and_metrics_need_no_key(keyed):
    assert httpx.get(f"{keyed.url}/health").status_code == 200
    assert httpx.get(f"{keyed.url}/ready").status_code == 200
    assert httpx.get(f"{keyed.url}/metrics").status_code == 200


class CountingScaler:
    """A Scaler that counts its calls and, like the operator would, brings a pod up after
    `delay` seconds: it sets the model's endpoints on the gateway's loop."""

    def __init__(self, delay: float, address: str | None):
        self.calls = []
        self.delay = delay
        self.address = address
        self.gateway = None

    async def scale_from_zero(self, key):
        self.calls.append(key)
        if self.address is not None:
            registry = self.gateway.registry
            loop = asyncio.get_running_loop()
            loop.call_later(self.delay, registry.set_endpoints, key, [Endpoint("r-0", self.address)])


def metric(url: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_requests_for_a_model_at_zero_are_held_one_scale_up_and_all_answered(gateway, tei_server):
    server, tei = tei_server(kind="reranker")
    scaler = CountingScaler(delay=1.5, address=server.address)
    gw = gateway([(model("r", "rerank", "tei", "r/r", replicas=0), [])], scaler=scaler,
                 scale_from_zero_timeout=10)
    scaler.gateway = gw
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = [pool.submit(httpx.post, f"{gw.url}/v1/rerank", json=RERANK, timeout=12)
                   for _ in range(5)]
        deadline = time.monotonic() + 5
        while metric(gw.url, "gateway_requests_held", model="apps/r") < 5:
            assert time.monotonic() < deadline, "the requests were not held"
            time.sleep(0.05)
        # The pod comes up 1.5 s after the scale-up: every held request is answered soon after
        # (well before the 10 s hold would give up).
        done, _ = concurrent.futures.wait(answers, timeout=8)
        assert len(done) == 5, f"{5 - len(done)} held requests not answered 8 s after scale-up"
        assert [a.result().status_code for a in answers] == [200] * 5
    assert len(scaler.calls) == 1 and str(scaler.calls[0]) == "apps/r"
    assert len(tei.received) == 5
    assert metric(gw.url, "gateway_requests_held", model="apps/r") == 0


def test_a_model_whose_pods_are_starting_is_waited_for_without_scaling(gateway, tei_server):
    server, _ = tei_server(kind="reranker")
    scaler = CountingScaler(delay=0, address=None)
    r = model("r", "rerank", "tei", "r/r", replicas=2)
    gw = gateway([(r, [])], scaler=scaler, scale_from_zero_timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{gw.url}/v2/rerank", json=RERANK, timeout=12)
        time.sleep(0.5)
        gw.set_endpoints(r.key, [server.address])
        done, _ = concurrent.futures.wait([answer], timeout=5)
        assert done, "the held request was not answered 5 s after its pod became ready"
        assert answer.result().status_code == 200
    assert scaler.calls == []


def test_no_replica_in_time_is_a_503_with_retry_after_and_the_next_request_asks_again(gateway):
    scaler = CountingScaler(delay=0, address=None)
    gw = gateway([(model("r", "rerank", "tei", "r/r", replicas=0), [])], scaler=scaler,
                 scale_from_zero_timeout=0.5)
    for expected_calls in (1, 2):
        answer = httpx.post(f"{gw.url}/v1/rerank", json=RERANK, timeout=10)
        assert answer.status_code == 503
        assert int(answer.headers["Retry-After"]) > 0
        assert "scaling up from zero" in answer.json()["message"]
        assert len(scaler.calls) == expected_calls
    openai_answer = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "r", "input": "x"})
    assert openai_answer.status_code == 404  # a rerank model: refused before any wait


def test_metrics_count_requests_by_model_route_and_status(gateway, tei_server):
    server, _ = tei_server(kind="reranker", delay=1.0)
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [server.address])])
    for _ in range(3):
        httpx.post(f"{gw.url}/v2/rerank", json=RERANK)
    httpx.post(f"{gw.url}/v2/rerank", json={**RERANK, "model": "missing"})
    assert metric(gw.url, "gateway_requests_total", model="apps/r", route="/v2/rerank",
                  status="200") == 3
    assert metric(gw.url, "gateway_requests_total", model="", route="/v2/rerank",
                  status="404") == 1
    assert metric(gw.url, "gateway_request_duration_seconds_count", model="apps/r",
                  route="/v2/rerank") == 3
    assert metric(gw.url, "gateway_request_duration_seconds_sum", model="apps/r",
                  route="/v2/rerank") >= 3.0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(httpx.post, f"{gw.url}/v2/rerank", json=RERANK) for _ in range(2)]
        time.sleep(0.5)
        assert metric(gw.url, "gateway_requests_in_flight", model="apps/r") == 2
        assert [p.result().status_code for p in pending] == [200, 200]
    assert metric(gw.url, "gateway_requests_in_flight", model="apps/r") == 0
    assert metric(gw.url, "gateway_ready_endpoints", model="apps/r") == 1


def test_ready_waits_for_the_registry_to_sync(gateway):
    from gateway.app import create_app
    from gateway.registry import Registry
    from gateway.scaling import NoScaler
    from gateway.settings import Settings
    from testkit.processes import ServerThread

    registry = Registry("apps")
    server = ServerThread(create_app(Settings(), registry, NoScaler())).start()
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.get(f"{server.url}/ready").status_code == 503
        server.call(registry.mark_synced)
        assert httpx.get(f"{server.url}/ready").status_code == 200
    finally:
        server.stop()


@pytest.fixture
def restricted(gateway, tei_server, tmp_path):
    """Four models over one TEI stand-in: `e` and `x` here (apps), `x` and `y` in `other`; a
    key for `e` only and a key for `other/x` only."""
    server, tei = tei_server(kind="reranker")
    keys = tmp_path / "keys"
    keys.write_text("sk-e  e\nsk-other-x  other/x\n")
    models = [model("e", "rerank", "tei", "e/e"), model("x", "rerank", "tei", "x/x"),
              model("x", "rerank", "tei", "ox/ox", namespace="other"),
              model("y", "rerank", "tei", "y/y", namespace="other")]
    return gateway([(m, [server.address]) for m in models], api_keys_file=keys), tei


def pass_through(gw, key: str, path: str) -> int:
    return httpx.post(f"{gw.url}{path}", json={"query": "q", "texts": ["d"]},
                      headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_restricted_key_gets_403_for_other_models_on_the_pass_through_routes(restricted):
    gw, tei = restricted
    assert pass_through(gw, "sk-e", "/models/e/rerank") == 200
    assert pass_through(gw, "sk-e", "/namespaces/apps/models/e/rerank") == 200
    for path in ("/models/x/rerank", "/namespaces/apps/models/x/rerank",
                 "/namespaces/other/models/x/rerank", "/namespaces/other/models/y/rerank"):
        assert pass_through(gw, "sk-e", path) == 403, path
    assert len(tei.received) == 2  # the refused requests reached no pod


def test_a_key_for_namespace_slash_name_may_use_that_model_and_no_other(restricted):
    gw, tei = restricted
    assert pass_through(gw, "sk-other-x", "/namespaces/other/models/x/rerank") == 200
    headers = {"Authorization": "Bearer sk-other-x"}
    allowed = httpx.post(f"{gw.url}/v1/rerank", headers=headers,
                         json={"model": "other/x", "query": "q", "documents": ["d"]})
    assert allowed.status_code == 200
    for name in ("x", "apps/x", "e", "other/y"):  # `x` alone is the home namespace's
        refused = httpx.post(f"{gw.url}/v1/rerank", headers=headers,
                             json={"model": name, "query": "q", "documents": ["d"]})
        assert refused.status_code == 403, name
    for path in ("/models/x/rerank", "/namespaces/apps/models/x/rerank",
                 "/namespaces/other/models/y/rerank"):
        assert pass_through(gw, "sk-other-x", path) == 403, path
    assert len(tei.received) == 2
