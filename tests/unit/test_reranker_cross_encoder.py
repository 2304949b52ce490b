"""Classic cross-encoders behind the same engine, chosen from config.json.

Random tiny BertForSequenceClassification (ms-marco MiniLM's architecture) and
XLMRobertaForSequenceClassification (bge-reranker-v2-m3's) with the real MiniLM WordPiece
tokenizer, loaded through the engine's own from_pretrained path. The reference is the
transformers recipe sentence-transformers and FlagEmbedding use: the pair tokenized as a batch,
truncated longest-first to the model's maximum length, the single logit read out.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reranker.errors import InvalidRequest
from reranker.model.loader import (
    CROSS_ENCODER,
    QWEN3_RERANKER,
    TransformersEngine,
    UnsupportedModel,
    choose_backend,
)
from reranker.settings import Settings
from testkit.models import MINILM_DIR, shared_cross_encoder

QUERY = "what is the capital of france"
DOCS = [
    "paris is the capital of france",
    "berlin is in germany",
    "word " * 700,  # over the model's 512 positions: truncated, never refused
    "",
    "naïve café 東京 🙂",
    "paris is the capital of france",  # a duplicate
    "the eiffel tower " * 20,
]


def reference_scores(model_dir, query, docs, max_length=512):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    segments = model.config.type_vocab_size > 1
    out = []
    with torch.no_grad():
        for doc in docs:
            inputs = tokenizer(
                [query],
                [doc],
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
                return_token_type_ids=segments,
            )
            out.append(float(model(**inputs).logits[0, 0]))
    return out


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("batch_tokens", [8192, 256], ids=["one-pass", "padded-passes"])
def test_scores_match_the_transformers_recipe(tmp_path_factory, arch, batch_tokens):
    model_dir = shared_cross_encoder(tmp_path_factory.getbasetemp(), arch)
    engine = TransformersEngine(
        Settings(model=str(model_dir), device="cpu", batch_tokens=batch_tokens)
    )
    engine.start()
    assert engine.info.architecture == CROSS_ENCODER
    assert engine.info.max_length == 512  # the model's limit, under RERANKER_MAX_LENGTH
    expected = reference_scores(model_dir, QUERY, DOCS)
    got = engine.score(QUERY, DOCS).logits
    assert max(abs(a - b) for a, b in zip(expected, got)) <= 1e-4
    assert max(expected) - min(expected) > 0.05  # random scores spread: agreement means something


def test_max_length_and_max_tokens_per_doc_cut_like_the_tokenizer(tmp_path_factory):
    model_dir = shared_cross_encoder(tmp_path_factory.getbasetemp(), "bert")
    engine = TransformersEngine(Settings(model=str(model_dir), device="cpu", max_length=64))
    engine.start()
    assert engine.info.max_length == 64
    expected = reference_scores(model_dir, QUERY, DOCS, max_length=64)
    got = engine.score(QUERY, DOCS).logits
    assert max(abs(a - b) for a, b in zip(expected, got)) <= 1e-4
    # max_tokens_per_doc=3 reads exactly the first three document tokens.
    cut = engine.score(QUERY, ["paris is the capital of france"], max_tokens_per_doc=3)
    whole = engine.score(QUERY, ["paris is the"])
    assert (
        cut.tokens
        == whole.tokens
        == len(AutoTokenizer.from_pretrained(MINILM_DIR)(QUERY)["input_ids"]) + 4
    )
    assert cut.logits == pytest.approx(whole.logits, abs=1e-6)


def test_an_instruction_is_refused_naming_the_field(tmp_path_factory):
    engine = TransformersEngine(
        Settings(model=str(shared_cross_encoder(tmp_path_factory.getbasetemp())), device="cpu")
    )
    engine.start()
    with pytest.raises(InvalidRequest, match="^instruction: .*cross-encoder"):
        engine.prepare(QUERY, DOCS, instruction="find the answer")


class Config:
    def __init__(self, architectures, num_labels=1, model_type="x"):
        self.architectures = architectures
        self.num_labels = num_labels
        self.model_type = model_type


def test_the_scorer_is_chosen_from_the_architecture():
    assert choose_backend(Config(["Qwen3ForCausalLM"])) == QWEN3_RERANKER
    for arch in (
        "BertForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "ModernBertForSequenceClassification",
    ):
        assert choose_backend(Config([arch])) == CROSS_ENCODER
    with pytest.raises(UnsupportedModel, match="num_labels=3.*num_labels=1"):
        choose_backend(Config(["BertForSequenceClassification"], num_labels=3))
    with pytest.raises(UnsupportedModel, match="unsupported architecture: BertModel"):
        choose_backend(Config(["BertModel"]))
    with pytest.raises(UnsupportedModel, match=r"none \(model_type=bert\)"):
        choose_backend(Config(None, model_type="bert"))


def test_an_embedding_model_is_refused_at_load_with_the_reason(tmp_path):
    """all-MiniLM-L6-v2 is a real model, but an embedder (BertModel), not a reranker."""
    assert json.loads((MINILM_DIR / "config.json").read_text())["architectures"] == ["BertModel"]
    engine = TransformersEngine(Settings(model=str(MINILM_DIR), device="cpu"))
    with pytest.raises(UnsupportedModel, match="BertModel.*ForSequenceClassification"):
        engine.start()
