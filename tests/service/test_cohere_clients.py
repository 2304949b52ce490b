"""Cohere's own Python SDK, unmodified, pointed at the service: v1 and v2 rerank both work."""

from __future__ import annotations

import cohere
import httpx
import pytest

from reranker.settings import Settings

from .conftest import FakeEngine, wait_ready

DOCS = ["Carson City is the capital of Nevada", "Paris is the capital city of France", "Rome"]


def test_cohere_v1_client(serve):
    url = serve(Settings(api_key="k"), FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
    co = cohere.Client(api_key="k", base_url=url)
    response = co.rerank(query="capital of France", documents=DOCS, top_n=2, model="rerank-v3.5")
    assert [r.index for r in response.results] == [1, 0]
    assert response.results[0].relevance_score > response.results[1].relevance_score
    assert response.id.startswith("rerank-")


def test_cohere_v2_client_against_the_real_engine(live_url):
    """The v2 client's results are /v1's for the same request: same order, indices, scores."""
    co = cohere.ClientV2(api_key="unused", base_url=live_url)
    response = co.rerank(model="rerank-v3.5", query="capital of France", documents=DOCS, top_n=3)
    v1 = httpx.post(
        f"{live_url}/v1/rerank",
        json={"query": "capital of France", "documents": DOCS, "top_n": 3},
    ).json()["results"]
    assert [r.index for r in response.results] == [r["index"] for r in v1]
    assert [r.relevance_score for r in response.results] == pytest.approx(
        [r["relevance_score"] for r in v1], abs=1e-6
    )
    assert response.meta.api_version.version == "2"


def test_cohere_client_sees_the_api_error(serve):
    url = serve(Settings(api_key="k"), FakeEngine())
    with httpx.Client(base_url=url) as client:
        wait_ready(client)
    co = cohere.ClientV2(api_key="wrong", base_url=url)
    try:
        co.rerank(model="m", query="q", documents=["d"])
    except cohere.core.api_error.ApiError as error:
        assert error.status_code == 401
    else:
        raise AssertionError("a wrong key was accepted")
