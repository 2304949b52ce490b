"""The TEI stand-in (testkit/tei.py) against the real router on shared cases, so the two
cannot drift: same status, same JSON shape (keys and value types, recursively), same error
type. The stand-in stays only where a test needs what the real router cannot be made to do on
demand: answer after a chosen delay (the gateway's timeouts and concurrency cap), fail every
request with a chosen status, record what reached it, and serve thousands of requests a second
on one core (the gateway benchmark's stand-in figure)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from testkit.processes import ServerThread
from testkit.tei import tei_app


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


EMBED_CASES = [
    ("/embed", {"inputs": "a text"}),
    ("/embed", {"inputs": ["a text", "another one"], "normalize": False}),
    ("/embed", {"inputs": []}),
    ("/embed", {"inputs": ["x"] * 33}),
    ("/embed", {"input": "a text"}),
    ("/embed", {"inputs": 12}),
    ("/v1/embeddings", {"input": "a text"}),
    ("/v1/embeddings", {"input": ["a text", "b"], "encoding_format": "base64"}),
    ("/v1/embeddings", {"input": []}),
    ("/v1/embeddings", {"input": ["x"] * 33}),
    ("/v1/embeddings", {"inputs": "a text"}),
    ("/rerank", {"query": "q", "texts": ["a", "b"]}),
]
RERANK_CASES = [
    ("/rerank", {"query": "q", "texts": ["a text", "b"]}),
    ("/rerank", {"query": "q", "texts": ["a text", "b"], "return_text": True, "raw_scores": True}),
    ("/rerank", {"query": "q", "texts": []}),
    ("/rerank", {"query": "q", "texts": ["x"] * 33}),
    ("/rerank", {"query": "q"}),
    ("/embed", {"inputs": "a text"}),
]


@pytest.fixture(scope="module")
def stand_ins():
    servers = {kind: ServerThread(tei_app(kind=kind)).start() for kind in ("embedding", "reranker")}
    yield servers
    for server in servers.values():
        server.stop()


def compare(real_url: str, stand_in_url: str, path: str, body: dict) -> None:
    real = httpx.post(real_url + path, json=body, timeout=60)
    ours = httpx.post(stand_in_url + path, json=body, timeout=60)
    assert ours.status_code == real.status_code, (path, body, real.text, ours.text)
    real_json, our_json = _json(real), _json(ours)
    assert shape(our_json) == shape(real_json), (path, body, real.text, ours.text)
    if real.status_code >= 400 and isinstance(real_json, dict):
        for field in ("error_type", "type"):
            if field in real_json:
                assert our_json[field] == real_json[field], (path, body, real.text, ours.text)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"text": response.text}


@pytest.mark.parametrize("path,body", EMBED_CASES, ids=lambda v: str(v)[:40])
def test_the_embedding_stand_in_answers_as_teis_router(real_tei_embed, stand_ins, path, body):
    compare(real_tei_embed.url, stand_ins["embedding"].url, path, body)


@pytest.mark.parametrize("path,body", RERANK_CASES, ids=lambda v: str(v)[:40])
def test_the_reranker_stand_in_answers_as_teis_router(real_tei_rerank, stand_ins, path, body):
    compare(real_tei_rerank.url, stand_ins["reranker"].url, path, body)


def test_info_and_health_have_teis_shape(real_tei_embed, real_tei_rerank, stand_ins):
    for real, ours in ((real_tei_embed, stand_ins["embedding"]),
                       (real_tei_rerank, stand_ins["reranker"])):
        assert httpx.get(ours.url + "/health").status_code == httpx.get(real.url + "/health").status_code
        real_info, our_info = httpx.get(real.url + "/info").json(), httpx.get(ours.url + "/info").json()
        assert set(our_info) == set(real_info)
        assert shape(our_info["model_type"]) == shape(real_info["model_type"])
