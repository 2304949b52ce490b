"""Real clients, unmodified, through the gateway to real backends: the OpenAI SDK's
embeddings, Cohere's v1 and v2 rerank on every engine, with the answers the backends give
when called directly."""

from __future__ import annotations

import cohere
import httpx
import openai
import pytest

from .conftest import model, standard_models

QUERY = "capital of France"
DOCS = ["Carson City is the capital of Nevada", "Paris is the capital city of France", "Rome",
        "France has many cities"]
RERANKERS = ["qwen3-reranker", "minilm", "tei-reranker"]


def direct_cohere(backends, name: str, **request) -> list[tuple[int, float]]:
    """(index, relevance_score) best first, from the backend itself: the reranker service's
    Cohere API, or TEI's /rerank."""
    if name == "tei-reranker":
        ranks = httpx.post(f"{backends.tei_rerank.url}/rerank",
                           json={"query": request["query"], "texts": request["documents"]}).json()
        ranks = sorted(ranks, key=lambda r: (-r["score"], r["index"]))
        return [(r["index"], r["score"]) for r in ranks][: request.get("top_n")]
    url = (backends.qwen if name == "qwen3-reranker" else backends.minilm).url
    answer = httpx.post(f"{url}/v1/rerank", json=request).json()
    return [(r["index"], r["relevance_score"]) for r in answer["results"]]


def test_openai_sdk_embeddings_equal_teis_own(backends, gateway):
    gw = gateway(standard_models(backends))
    client = openai.OpenAI(api_key="unused", base_url=f"{gw.url}/v1")
    texts = ["the first text", "a second one"]
    through = client.embeddings.create(model="all-minilm", input=texts)  # base64, decoded by the SDK
    floats = client.embeddings.create(model="apps/all-minilm", input=texts, encoding_format="float")
    direct = httpx.post(f"{backends.tei_embed.url}/v1/embeddings",
                        json={"input": texts, "encoding_format": "float"}).json()
    expected = [item["embedding"] for item in direct["data"]]
    for got, want in zip(through.data, expected, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-7)
    assert [d.embedding for d in floats.data] == expected
    assert through.usage.prompt_tokens == direct["usage"]["prompt_tokens"]


@pytest.mark.parametrize("name", RERANKERS)
def test_cohere_v1_client_scores_equal_the_backends(backends, gateway, name):
    gw = gateway(standard_models(backends))
    co = cohere.Client(api_key="unused", base_url=gw.url)
    response = co.rerank(model=name, query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    expected = direct_cohere(backends, name, query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in response.results] == [i for i, _ in expected]
    assert [r.relevance_score for r in response.results] == pytest.approx(
        [s for _, s in expected], abs=1e-6)
    assert [r.document.text for r in response.results] == [DOCS[i] for i, _ in expected]
    assert response.id.startswith("rerank-")
    assert response.meta.api_version.version == "1"


@pytest.mark.parametrize("name", RERANKERS)
def test_cohere_v2_client_scores_equal_the_backends(backends, gateway, name):
    gw = gateway(standard_models(backends))
    co = cohere.ClientV2(api_key="unused", base_url=gw.url)
    response = co.rerank(model=name, query=QUERY, documents=DOCS)
    expected = direct_cohere(backends, name, query=QUERY, documents=DOCS)
    assert [(r.index, r.relevance_score) for r in response.results] == [
        (i, pytest.approx(s, abs=1e-6)) for i, s in expected]
    assert all(getattr(r, "document", None) is None for r in response.results)
    assert response.meta.api_version.version == "2"


def test_a_client_cannot_tell_tei_from_the_reranker_service(backends, gateway):
    """The same request to a TEI reranker and to the reranker service answers the same keys,
    the same document echo, the same order rules; only the scores differ (other models)."""
    gw = gateway(standard_models(backends))
    request = {"query": QUERY, "documents": [{"text": d, "id": n} for n, d in enumerate(DOCS)],
               "top_n": 2}
    tei = httpx.post(f"{gw.url}/v1/rerank", json={"model": "tei-reranker", **request}).json()
    ours = httpx.post(f"{gw.url}/v1/rerank", json={"model": "minilm", **request}).json()
    assert tei.keys() == ours.keys() == {"id", "results", "meta"}
    assert tei["meta"].keys() == ours["meta"].keys()
    assert tei["meta"]["billed_units"] == ours["meta"]["billed_units"] == {"search_units": 1}
    assert tei["meta"]["tokens"]["input_tokens"] > 0
    for answer in (tei, ours):
        assert len(answer["results"]) == 2
        assert [r.keys() for r in answer["results"]] == [{"index", "relevance_score", "document"}] * 2
        for result in answer["results"]:
            assert result["document"] == request["documents"][result["index"]]
    v2 = httpx.post(f"{gw.url}/v2/rerank",
                    json={"model": "tei-reranker", "query": QUERY, "documents": DOCS}).json()
    assert all("document" not in r for r in v2["results"])


def test_tei_ties_keep_request_order_as_the_reranker_service_does(backends, gateway):
    """TEI lists equal scores in reverse position; the reranker service (and so the gateway) in
    position order. Equal documents score equally."""
    gw = gateway(standard_models(backends))
    docs = ["nothing here", "France", "nothing here", "nor there", "France"]
    direct = httpx.post(f"{backends.tei_rerank.url}/rerank",
                        json={"query": "France", "texts": docs}).json()
    scores = {r["index"]: r["score"] for r in direct}
    assert scores[0] == scores[2] and scores[1] == scores[4]
    teis = [r["index"] for r in direct]
    assert teis.index(2) < teis.index(0) and teis.index(4) < teis.index(1)
    answer = httpx.post(f"{gw.url}/rerank",
                        json={"model": "tei-reranker", "query": "France", "documents": docs}).json()
    assert [r["index"] for r in answer["results"]] == sorted(range(5), key=lambda i: (-scores[i], i))


def test_tei_rerank_with_rank_fields_and_raw_scores(backends, gateway):
    gw = gateway(standard_models(backends))
    docs = [{"title": "Nevada", "body": "Carson City"}, {"title": "France", "body": "capital Paris"}]
    answer = httpx.post(f"{gw.url}/v1/rerank", json={
        "model": "tei-reranker", "query": "capital of France", "documents": docs,
        "rank_fields": ["title", "body"], "raw_scores": True}).json()
    texts = ["title: Nevada\nbody: Carson City", "title: France\nbody: capital Paris"]
    direct = httpx.post(f"{backends.tei_rerank.url}/rerank", json={
        "query": "capital of France", "texts": texts, "raw_scores": True}).json()
    expected = sorted(direct, key=lambda r: (-r["score"], r["index"]))
    assert [r["index"] for r in answer["results"]] == [r["index"] for r in expected]
    assert [r["relevance_score"] for r in answer["results"]] == pytest.approx(
        [r["score"] for r in expected], abs=1e-6)
    assert any(abs(r["score"]) > 1 or r["score"] < 0 for r in direct)  # logits, not sigmoids
    assert answer["results"][0]["document"] == docs[expected[0]["index"]]


def test_tei_rerank_refuses_what_tei_cannot_do_as_the_reranker_service_does(backends, gateway):
    gw = gateway(standard_models(backends))
    for name in ("tei-reranker", "minilm"):
        answer = httpx.post(f"{gw.url}/v1/rerank", json={
            "model": name, "query": "q", "documents": ["d"], "instruction": "judge"})
        assert answer.status_code == 422, name
        assert answer.json()["type"] == "invalid_request"
        assert "instruction" in answer.json()["message"]
    missing = httpx.post(f"{gw.url}/v1/rerank", json={"model": "tei-reranker", "query": "q"})
    assert missing.status_code == 422 and "documents" in missing.json()["message"]


def test_models_are_named_by_name_namespace_or_hugging_face_id(gateway, tei_server):
    """Each name reaches the pod of the model it names: by name in the gateway's namespace,
    `namespace/name`, or the Hugging Face id, with a model of the same name in another
    namespace beside it."""
    pods = {key: tei_server(kind="reranker") for key in ("apps/minilm", "search/minilm", "apps/bge")}
    gw = gateway([
        (model("minilm", "rerank", "tei", "cross-encoder/ms-marco-MiniLM-L-6-v2"),
         [pods["apps/minilm"][0].address]),
        (model("minilm", "rerank", "tei", "org/minilm-twin", namespace="search"),
         [pods["search/minilm"][0].address]),
        (model("bge", "rerank", "tei", "BAAI/bge-reranker-base"), [pods["apps/bge"][0].address]),
    ])
    co = cohere.ClientV2(api_key="unused", base_url=gw.url)
    names = {"minilm": "apps/minilm", "apps/minilm": "apps/minilm",
             "cross-encoder/ms-marco-MiniLM-L-6-v2": "apps/minilm",
             "search/minilm": "search/minilm", "org/minilm-twin": "search/minilm",
             "bge": "apps/bge", "BAAI/bge-reranker-base": "apps/bge"}
    for name in names:
        assert len(co.rerank(model=name, query=name, documents=DOCS).results) == len(DOCS)
    for key, (_, tei) in pods.items():
        reached = [body["query"] for _, body in tei.received]
        assert reached == [name for name, serving in names.items() if serving == key], key


@pytest.mark.parametrize("version", ["1", "2"])
def test_tei_rerank_honours_return_documents_both_ways(backends, gateway, version):
    gw = gateway(standard_models(backends))
    for flag in (True, False):
        results = httpx.post(f"{gw.url}/v{version}/rerank", json={
            "model": "tei-reranker", "query": QUERY, "documents": DOCS,
            "return_documents": flag}).json()["results"]
        assert len(results) == len(DOCS)
        if flag:
            assert [r["document"] for r in results] == [{"text": DOCS[r["index"]]} for r in results]
        else:
            assert all("document" not in r for r in results), results


def test_models_list(backends, gateway):
    gw = gateway(standard_models(backends))
    client = openai.OpenAI(api_key="unused", base_url=f"{gw.url}/v1")
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"qwen3-reranker", "minilm", "tei-reranker", "all-minilm"}
    assert listed["all-minilm"].model_extra["task"] == "embed"
    assert listed["tei-reranker"].model_extra["engine"] == "tei"
    assert listed["qwen3-reranker"].model_extra["ready_replicas"] == 1


def test_raw_pass_through_reaches_teis_own_routes(backends, gateway):
    gw = gateway(standard_models(backends))
    embed = httpx.post(f"{gw.url}/models/all-minilm/embed", json={"inputs": ["a text"]})
    assert embed.status_code == 200
    assert embed.json() == httpx.post(f"{backends.tei_embed.url}/embed",
                                      json={"inputs": ["a text"]}).json()
    info = httpx.get(f"{gw.url}/namespaces/apps/models/tei-reranker/info")
    assert info.json() == httpx.get(f"{backends.tei_rerank.url}/info").json()
    assert "reranker" in info.json()["model_type"]
    qwen = httpx.get(f"{gw.url}/models/qwen3-reranker/info")
    assert qwen.json()["architecture"] == "qwen3-reranker"
