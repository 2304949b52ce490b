"""Parity: the engine's scores against the model card's recipe, on the same random Qwen3 model.

Real architecture and real Qwen3 tokenizer, random weights (tests/qwen_models.py); random and
unicode queries and documents, documents long enough to be truncated, duplicates, a query that
fills the whole budget. Scores must agree within 1e-4, whatever the batching.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.qwen_models import OfficialRecipe, shared_tiny_model  # noqa: E402

from reranker.engine import TransformersEngine, sigmoid  # noqa: E402
from reranker.settings import Settings  # noqa: E402

TOLERANCE = 1e-4
# The card pads with `padding=True, max_length=...`, which transformers warns about; it is the card.
pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored")
WORDS = [
    "paris",
    "capital",
    "france",
    "the",
    "of",
    "tower",
    "river",
    "城市",
    "東京",
    "café",
    "naïve",
    "e\u0301",
    "Ωμέγα",
    "Привет",
    "🙂",
    "42",
    "3.14",
    "<|im_end|>",
    "yes",
    "no",
    "\n",
    "  ",
    "!?",
]


def random_text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return shared_tiny_model(tmp_path_factory.getbasetemp())


def engine_for(model_dir, **overrides) -> TransformersEngine:
    engine = TransformersEngine(Settings(model=str(model_dir), device="cpu", **overrides))
    engine.start()
    return engine


def documents(seed: int, long: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = [random_text(rng, 0, 40) for _ in range(10)]
    docs += [random_text(rng, 100, 160) for _ in range(long)]  # cut at max_length=160
    docs += ["", " leading space", "\n\nnewlines first", docs[0]]  # edge cases and a duplicate
    return docs


@pytest.mark.parametrize(
    "max_length,batch_tokens,long",
    [(8192, 8192, 0), (160, 8192, 4), (160, 300, 4)],
    ids=["untruncated", "truncated", "truncated-small-batches"],
)
def test_scores_match_the_model_card(model_dir, max_length, batch_tokens, long):
    card = OfficialRecipe(model_dir, max_length=max_length)
    engine = engine_for(model_dir, max_length=max_length, batch_tokens=batch_tokens)
    rng = random.Random(max_length + batch_tokens)
    for seed in range(2):
        query = random_text(rng, 1, 12)
        docs = documents(seed, long)
        expected = card.scores(query, docs, batch_size=8)
        if long:
            bodies = [card.format_instruction(None, query, d) for d in docs]
            assert any(len(card.tokenizer(b)["input_ids"]) > max_length for b in bodies)
        got = [sigmoid(x) for x in engine.score(query, docs).logits]
        assert max(abs(a - b) for a, b in zip(expected, got)) <= TOLERANCE
        # The random model must spread its scores, or agreement would prove little.
        assert max(expected) - min(expected) > 0.01


def test_raw_scores_are_the_log_odds_of_the_card_probability(model_dir):
    card = OfficialRecipe(model_dir)
    engine = engine_for(model_dir)
    docs = documents(7)
    expected = card.scores("où est la tour Eiffel ?", docs)
    raw = engine.score("où est la tour Eiffel ?", docs).logits
    for p, x in zip(expected, raw):
        assert abs(math.log(p / (1 - p)) - x) <= 1e-3


def test_custom_instruction_matches_the_card(model_dir):
    card = OfficialRecipe(model_dir)
    engine = engine_for(model_dir)
    docs = documents(3)
    instruction = "Given a question, find the passage that answers it: ünïcödé"
    expected = card.scores("question?", docs, instruction=instruction)
    got = [sigmoid(x) for x in engine.score("question?", docs, instruction=instruction).logits]
    assert max(abs(a - b) for a, b in zip(expected, got)) <= TOLERANCE
    default = [sigmoid(x) for x in engine.score("question?", docs).logits]
    assert max(abs(a - b) for a, b in zip(default, got)) > TOLERANCE


def test_a_query_over_the_budget_gives_every_document_the_cards_score(model_dir):
    card = OfficialRecipe(model_dir, max_length=128)
    engine = engine_for(model_dir, max_length=128)
    query = "a very long query " * 60
    docs = ["one", "two", "three"]
    expected = card.scores(query, docs)
    got = [sigmoid(x) for x in engine.score(query, docs).logits]
    assert max(abs(a - b) for a, b in zip(expected, got)) <= TOLERANCE
    assert len(set(got)) == 1


def test_documents_scored_alone_or_together_agree(model_dir):
    engine = engine_for(model_dir, batch_tokens=256)
    docs = documents(11)
    together = engine.score("query", docs).logits
    alone = [engine.score("query", [d]).logits[0] for d in docs]
    assert max(abs(a - b) for a, b in zip(together, alone)) <= 1e-4


def test_tokens_read_are_reported(model_dir):
    engine = engine_for(model_dir)
    one = engine.score("q", ["a"]).tokens
    two = engine.score("q", ["a", "a b c"]).tokens
    assert two > one > 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_path_stays_close_to_fp32(model_dir, dtype):
    """The GPU default is bf16 (fp16 without bf16): the same code path, run here on the CPU."""
    docs = documents(5)
    full = [sigmoid(x) for x in engine_for(model_dir).score("where is paris", docs).logits]
    engine = engine_for(model_dir, dtype=dtype)
    assert engine.info.dtype == dtype
    half = [sigmoid(x) for x in engine.score("where is paris", docs).logits]
    assert max(full) - min(full) > 0.05  # the scores spread wider than the tolerance
    assert max(abs(a - b) for a, b in zip(full, half)) < 0.01


def test_requests_sharing_a_pass_score_as_they_do_alone(model_dir):
    """Cross-request batching: documents of several queries in one pass, each against its own
    shared prompt, give each request's scores alone (and the card's)."""
    engine = engine_for(model_dir, max_length=160)
    rng = random.Random(5)
    requests = [(random_text(rng, 1, 30), documents(seed, long=2)) for seed in range(3)]
    alone = [engine.score(q, docs).logits for q, docs in requests]
    prepared = [engine.prepare(q, docs) for q, docs in requests]
    # One pass over everything, the second request's units in reverse order for good measure.
    parts = [(p, list(range(len(p.costs)))) for p in prepared]
    parts[1] = (prepared[1], parts[1][1][::-1])
    raw = engine.forward(parts)
    for (p, units), values, expected in zip(parts, raw, alone):
        by_unit = dict(zip(units, values))
        together = [by_unit[u] for u in p.slot]
        assert max(abs(a - b) for a, b in zip(together, expected)) <= 1e-4


def test_a_document_longer_than_the_attention_chunk_scores_as_the_card(model_dir, monkeypatch):
    """Attention runs in chunks of query rows; a document spanning several agrees with the card."""
    import reranker.engine as engine_module

    monkeypatch.setattr(engine_module, "ATTENTION_ROWS", 16)
    card = OfficialRecipe(model_dir, max_length=200)
    engine = engine_for(model_dir, max_length=200)
    rng = random.Random(9)
    docs = [random_text(rng, 60, 120), random_text(rng, 5, 10)]
    expected = card.scores("long documents", docs)
    got = [sigmoid(x) for x in engine.score("long documents", docs).logits]
    assert max(abs(a - b) for a, b in zip(expected, got)) <= TOLERANCE
