"""The real server and engine (tiny random Qwen3, real tokenizer) over real HTTP on loopback."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_curl_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Reranker API", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("curl ")]


def replay_curl(command: str, base_url: str) -> httpx.Response:
    """Send what `curl -s localhost:8000/... -H ... -d ...` sends, to base_url instead."""
    args = shlex.split(command)[1:]
    headers, data, url = {}, None, None
    it = iter(args)
    for arg in it:
        if arg == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(it)
        elif not arg.startswith("-"):
            url = arg
    assert url and url.startswith("localhost:8000/"), url
    target = base_url + url.removeprefix("localhost:8000")
    if data is None:
        return httpx.get(target, headers=headers)
    return httpx.post(target, content=data, headers=headers)


def test_the_readme_examples_work_verbatim(live_url, tiny_model):
    commands = readme_curl_commands()
    assert len(commands) == 3
    france, pizza, health = (replay_curl(c, live_url) for c in commands)

    assert france.status_code == 200
    body = france.json()
    assert re.fullmatch(r"rerank-[0-9a-f]+", body["id"])
    assert len(body["results"]) == 2  # top_n
    docs = json.loads(shlex.split(commands[0])[-1])["documents"]
    for result in body["results"]:
        assert result["document"]["text"] == docs[result["index"]]
        assert 0.0 <= result["relevance_score"] <= 1.0
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["meta"]["api_version"] == {"version": "1"}
    assert body["meta"]["billed_units"] == {"search_units": 1}

    assert pizza.status_code == 200
    results = pizza.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1]
    assert all("document" not in r for r in results)

    assert health.status_code == 200
    # The server was started on the tiny model's directory (RERANKER_MODEL), no served name.
    assert health.json() == {"status": "ok", "model": str(tiny_model), "device": "cpu"}


def test_v1_v2_and_default_routes_agree_and_rank_every_document(live_url):
    docs = ["Paris is in France.", "Berlin is in Germany.", "Tokyo is in Japan.", "Rome, Italy."]
    query = "Where is Paris?"
    v1 = httpx.post(f"{live_url}/v1/rerank", json={"query": query, "documents": docs}).json()
    plain = httpx.post(f"{live_url}/rerank", json={"query": query, "texts": docs}).json()
    v2 = httpx.post(
        f"{live_url}/v2/rerank", json={"model": "any", "query": query, "documents": docs}
    ).json()
    assert v2["meta"]["api_version"] == {"version": "2"}
    assert all(set(r) == {"index", "relevance_score"} for r in v2["results"])
    pairs = lambda body: [(r["index"], round(r["relevance_score"], 6)) for r in body["results"]]
    assert pairs(v1) == pairs(plain) == pairs(v2)
    assert sorted(i for i, _ in pairs(v1)) == [0, 1, 2, 3]


def test_object_documents_and_rank_fields(live_url):
    docs = [{"text": "Paris is in France.", "id": "a"}, {"text": "Berlin.", "id": "b"}]
    body = httpx.post(f"{live_url}/v1/rerank", json={"query": "Paris", "documents": docs}).json()
    assert {r["document"]["id"] for r in body["results"]} == {"a", "b"}  # echoed as given


def test_rank_fields_choose_what_is_scored(live_url):
    """Objects are scored on the `field: value` lines of `rank_fields`, in their order; without
    rank_fields, on `text`. Every candidate text below differs, so ranking on the wrong one
    gives other scores."""
    docs = [
        {"text": "Tokyo is in Japan.", "title": "Paris", "body": "The capital of France."},
        {"text": "Rome is in Italy.", "title": "Berlin", "body": "The capital of Germany."},
    ]

    def scores(**request) -> dict[int, float]:
        request = {"query": "Where is Paris?", "return_documents": False, **request}
        answer = httpx.post(f"{live_url}/v1/rerank", json=request)
        assert answer.status_code == 200, answer.text
        return {r["index"]: r["relevance_score"] for r in answer.json()["results"]}

    ranked = scores(documents=docs, rank_fields=["title", "body"])
    lines = [f"title: {d['title']}\nbody: {d['body']}" for d in docs]
    assert ranked == pytest.approx(scores(documents=lines), abs=1e-6)
    on_text = scores(documents=docs)
    assert on_text == pytest.approx(scores(documents=[d["text"] for d in docs]), abs=1e-6)
    assert all(abs(ranked[i] - on_text[i]) > 1e-4 for i in ranked)


def test_raw_scores_are_the_log_odds_of_the_probabilities(live_url):
    docs = ["one", "two two", "three three three"]
    request = {"query": "q", "documents": docs, "return_documents": False}
    probs = httpx.post(f"{live_url}/v1/rerank", json=request).json()["results"]
    raw = httpx.post(f"{live_url}/v1/rerank", json={**request, "raw_scores": True}).json()[
        "results"
    ]
    import math

    by_index = {r["index"]: r["relevance_score"] for r in raw}
    for r in probs:
        p = r["relevance_score"]
        assert abs(math.log(p / (1 - p)) - by_index[r["index"]]) < 1e-6


def test_overlong_documents_are_truncated_not_refused(live_url):
    huge = "word " * 20000  # well over max_length=8192 tokens
    response = httpx.post(
        f"{live_url}/v1/rerank", json={"query": "q", "documents": [huge, "short"]}, timeout=120
    )
    assert response.status_code == 200
    assert response.json()["meta"]["tokens"]["input_tokens"] <= 2 * 8192


def test_max_tokens_per_doc_changes_what_is_read(live_url):
    doc = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    full = httpx.post(f"{live_url}/v2/rerank", json={"query": "q", "documents": [doc]}).json()
    cut = httpx.post(
        f"{live_url}/v2/rerank", json={"query": "q", "documents": [doc], "max_tokens_per_doc": 2}
    ).json()
    assert cut["meta"]["tokens"]["input_tokens"] < full["meta"]["tokens"]["input_tokens"]


def test_info_and_openapi(live_url):
    info = httpx.get(f"{live_url}/info").json()
    assert info["max_length"] == 8192
    assert info["dtype"] == "float32"
    assert info["limits"]["max_documents"] == 50
    assert info["version"]
    spec = httpx.get(f"{live_url}/openapi.json").json()
    assert {"/rerank", "/v1/rerank", "/v2/rerank", "/health", "/info"} <= set(spec["paths"])
    assert httpx.get(f"{live_url}/docs").status_code == 200
    # Every error the service answers with is documented on each rerank route, in one shape.
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for path, body in (("/rerank", "V1"), ("/v1/rerank", "V1"), ("/v2/rerank", "V2")):
        operation = spec["paths"][path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/RerankRequest{body}"}
        responses = operation["responses"]
        assert set(responses) == {"200", "401", "408", "413", "422", "424", "429", "503", "504"}
        for status in set(responses) - {"200"}:
            assert responses[status]["content"]["application/json"]["schema"] == error
        assert "Retry-After" in responses["429"]["description"]


@pytest.mark.parametrize(
    "body,field",
    [
        ('{"query": "q", "documents": ["a"', "JSON"),
        ('{"documents": ["a"]}', "query"),
        ('{"query": "q"}', "documents"),
        ('{"query": "q", "documents": ["a"], "texts": ["b"]}', "texts"),
        ('{"query": "q", "documents": []}', "documents"),
        ('{"query": "q", "documents": ["a", 3]}', "documents[1]"),
        ('{"query": "q", "documents": [{"title": "no text"}]}', "documents[0]"),
        ('{"query": "q", "documents": ["a"], "top_n": 0}', "top_n"),
        ('["not", "an", "object"]', "body"),
    ],
)
def test_bad_requests_get_422_naming_the_problem(live_url, body, field):
    response = httpx.post(
        f"{live_url}/v1/rerank", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert field in response.json()["message"]
    # The server lives on.
    assert httpx.get(f"{live_url}/health").status_code == 200


def test_too_many_documents_is_413(live_url):
    response = httpx.post(f"{live_url}/v1/rerank", json={"query": "q", "documents": ["d"] * 51})
    assert response.status_code == 413
    assert "50" in response.json()["message"]


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"query": "paris \ud800 france"}, "query"),
        ({"documents": ["fine", "bad \udfff text"]}, "documents[1]"),
        ({"documents": [{"text": "bad \ud83d"}]}, "documents[0].text"),
        ({"instruction": "find \ud800 it"}, "instruction"),
    ],
)
def test_a_lone_surrogate_is_the_clients_422_naming_the_field(live_url, caplog, fields, field):
    """JSON can escape half of a surrogate pair (`\\ud800`): not text any tokenizer reads, and
    the client's mistake, not the model's failure (no 424, no traceback in the log)."""
    body = {"query": "q", "documents": ["a"], **fields}
    response = httpx.post(
        f"{live_url}/v1/rerank",
        content=json.dumps(body),  # json.dumps escapes the surrogate as \\udXXX
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(f"{field}: ")
    assert "surrogate" in response.json()["message"]
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"}]
    metrics = httpx.get(f"{live_url}/metrics").text
    assert 'reranker_requests_total{endpoint="/v1/rerank",status="422"}' in metrics


def test_a_body_that_is_not_utf8_is_a_422_naming_the_body(live_url):
    response = httpx.post(
        f"{live_url}/v1/rerank",
        content='{"query": "caf\u00e9", "documents": ["a"]}'.encode("latin-1"),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["type"] == "invalid_request"
    assert response.json()["message"].startswith("body: ")
    assert "UTF-8" in response.json()["message"]


def test_a_query_longer_than_the_maximum_length_is_a_422_naming_the_limit(live_url):
    """Cut to the maximum length, such a query would leave no room for any document and every
    document would get the same score: refused instead of ranked meaninglessly."""
    response = httpx.post(
        f"{live_url}/v1/rerank",
        json={"query": "word " * 9000, "documents": ["paris", "berlin"]},
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith("query: ")
    assert "8192" in response.json()["message"]
    long_instruction = {"query": "q", "documents": ["a"], "instruction": "word " * 9000}
    response = httpx.post(f"{live_url}/v1/rerank", json=long_instruction, timeout=60)
    assert response.status_code == 422 and response.json()["message"].startswith("instruction: ")
