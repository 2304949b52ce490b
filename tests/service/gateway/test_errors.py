"""Bad input and overload answer in the route's dialect: OpenAI's error object on
/v1/embeddings and /v1/models, Cohere's `message` on rerank; nothing reaches a backend."""

from __future__ import annotations

import concurrent.futures

import cohere
import httpx
import openai
import pytest

from .conftest import model, standard_models


def test_unknown_model_is_a_404_naming_it_in_each_dialect(backends, gateway):
    gw = gateway(standard_models(backends))
    client = openai.OpenAI(api_key="unused", base_url=f"{gw.url}/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-model", input=["x"])
    assert "no-such-model" in caught.value.body["message"]
    assert caught.value.body["code"] == "model_not_found"
    co = cohere.ClientV2(api_key="unused", base_url=gw.url)
    with pytest.raises(cohere.core.api_error.ApiError) as caught:
        co.rerank(model="no-such-reranker", query="q", documents=["d"])
    assert caught.value.status_code == 404
    assert "no-such-reranker" in caught.value.body["message"]


def test_a_model_of_the_wrong_task_is_not_found_on_that_route(backends, gateway):
    gw = gateway(standard_models(backends))
    answer = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "minilm", "input": "x"})
    assert answer.status_code == 404
    assert "rerank model" in answer.json()["error"]["message"]
    answer = httpx.post(f"{gw.url}/v2/rerank",
                        json={"model": "all-minilm", "query": "q", "documents": ["d"]})
    assert answer.status_code == 404 and "embed model" in answer.json()["message"]


def test_no_model_field_or_no_json_is_a_400(backends, gateway):
    gw = gateway(standard_models(backends))
    no_model = httpx.post(f"{gw.url}/v1/embeddings", json={"input": "x"})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["message"].startswith("model:")
    not_json = httpx.post(f"{gw.url}/v1/rerank", content=b"{not json")
    assert not_json.status_code == 400 and "JSON" in not_json.json()["message"]


def test_an_ambiguous_hugging_face_id_is_a_400_listing_the_candidates(backends, gateway):
    models = standard_models(backends)
    twin = model("minilm-b", "rerank", "reranker", "cross-encoder/ms-marco-MiniLM-L-6-v2",
                 namespace="search")
    gw = gateway(models + [(twin, [backends.minilm.address])])
    answer = httpx.post(f"{gw.url}/v1/rerank", json={
        "model": "cross-encoder/ms-marco-MiniLM-L-6-v2", "query": "q", "documents": ["d"]})
    assert answer.status_code == 400
    assert "apps/minilm" in answer.json()["message"]
    assert "search/minilm-b" in answer.json()["message"]
    by_name = httpx.post(f"{gw.url}/v1/rerank",
                         json={"model": "search/minilm-b", "query": "q", "documents": ["d"]})
    assert by_name.status_code == 200


def test_a_body_over_the_limit_is_a_413_before_it_reaches_a_backend(gateway, tei_server):
    server, tei = tei_server(kind="embedding")
    gw = gateway([(model("e", "embed", "tei", "e/e"), [server.address])], max_body_bytes=4096)
    answer = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "e", "input": ["x" * 5000]})
    assert answer.status_code == 413 and answer.json()["error"]["type"] == "payload_too_large"
    chunked = httpx.post(f"{gw.url}/v1/embeddings",
                         content=iter([b'{"model": "e", "input": "', b"x" * 5000, b'"}']))
    assert chunked.status_code == 413
    assert tei.received == []


def test_the_models_concurrency_cap_is_a_429_with_retry_after(gateway, tei_server):
    server, _ = tei_server(kind="reranker", delay=1.0)
    gw = gateway([(model("r", "rerank", "tei", "r/r"), [server.address])],
                 max_in_flight_per_model=2, retry_after=3)
    body = {"model": "r", "query": "q", "documents": ["d"]}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{gw.url}/v2/rerank", json=body,
                                                     timeout=10), range(3)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 429]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["Retry-After"] == "3"
    assert refused.json()["type"] == "overloaded"


def test_a_backend_timeout_is_a_504(gateway, tei_server):
    server, _ = tei_server(kind="embedding", delay=3.0)
    gw = gateway([(model("e", "embed", "tei", "e/e"), [server.address])], request_timeout=0.5)
    answer = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "e", "input": "x"}, timeout=10)
    assert answer.status_code == 504
    assert answer.json()["error"]["type"] == "timeout"


def test_teis_own_errors_come_back_in_the_routes_dialect(backends, gateway):
    """The real router's refusals (empty batch: 400; batch over --max-client-batch-size: 422),
    with TEI's status and message, in the gateway's dialects."""
    gw = gateway(standard_models(backends))
    tei_embed, tei_rerank = backends.tei_embed.url, backends.tei_rerank.url
    cases = [
        ("/v1/embeddings", {"model": "all-minilm", "input": []},
         f"{tei_embed}/v1/embeddings", {"input": []}),
        ("/v1/embeddings", {"model": "all-minilm", "input": ["x"] * 33},
         f"{tei_embed}/v1/embeddings", {"input": ["x"] * 33}),
        ("/v1/rerank", {"model": "tei-reranker", "query": "q", "documents": ["d"] * 33},
         f"{tei_rerank}/rerank", {"query": "q", "texts": ["d"] * 33, "truncate": True}),
    ]
    for route, through, direct_url, direct_body in cases:
        answer = httpx.post(f"{gw.url}{route}", json=through)
        direct = httpx.post(direct_url, json=direct_body)
        assert direct.status_code in (400, 422), direct.text
        assert answer.status_code == direct.status_code, (route, answer.text)
        message = direct.json().get("message") or direct.json()["error"]
        if route == "/v1/embeddings":
            assert answer.json()["error"]["message"] == message
        else:
            assert answer.json()["message"] == message
