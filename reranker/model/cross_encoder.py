"""Classic cross-encoders: (query, document) pairs through a sequence-classification model."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InvalidRequest
from ..planning import Prepared, plan_padded
from ..settings import Settings
from .textcut import cut


class Pair(NamedTuple):
    """One (query, document) pair as the model reads it; segment ids only where it has them."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None


class CrossEncoder:
    """A sequence-classification reranker: (query, document) pairs through the encoder, the
    single logit as the raw score, as sentence-transformers' CrossEncoder and FlagEmbedding
    compute it (pairs truncated longest-first to the model's maximum length).

    A prepared request's payload is its distinct pairs, one per unit.
    """

    def __init__(self, settings: Settings, device: str, dtype: torch.dtype, config):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.settings = settings
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                settings.model, dtype=dtype, attn_implementation="sdpa"
            )
        except ValueError:  # an architecture without an SDPA implementation
            model = AutoModelForSequenceClassification.from_pretrained(settings.model, dtype=dtype)
        self.model = model.to(device).eval()
        self.max_length = min(settings.max_length, self._model_limit(config))
        # Segment ids only where the model has more than one segment embedding (BERT, not
        # XLM-R): a tokenizer may emit them either way.
        self.token_types = (getattr(config, "type_vocab_size", 0) or 0) > 1

    def _model_limit(self, config) -> int:
        limits = []
        positions = getattr(config, "max_position_embeddings", None)
        if positions:
            # RoBERTa-style position ids start after the padding index.
            if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
                positions -= (config.pad_token_id or 0) + 1
            limits.append(positions)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if tokenizer_limit and tokenizer_limit < 1_000_000:
            limits.append(tokenizer_limit)
        return min(limits) if limits else self.settings.max_length

    def _cut(self, documents: list[str], limit: int) -> list[str]:
        """Each document cut after its first `limit` tokens, at that token's last character."""
        enc = self.tokenizer(
            documents,
            add_special_tokens=False,
            return_offsets_mapping=True,
            split_special_tokens=True,
        )
        return [
            doc if len(ids) <= limit else doc[: offsets[limit - 1][1]]
            for doc, ids, offsets in zip(documents, enc["input_ids"], enc["offset_mapping"])
        ]

    def prepare(self, query, documents, instruction, max_tokens_per_doc) -> Prepared[list[Pair]]:
        if instruction is not None:
            raise InvalidRequest(
                "instruction: this model is a cross-encoder and takes no instruction; "
                "leave the field out"
            )
        # Longest-first truncation keeps at most max_length tokens of either text, and its
        # outcome depends on no more than that of each: the rest is never tokenized.
        query = cut(self.tokenizer, query, self.max_length)
        documents = [cut(self.tokenizer, doc, self.max_length) for doc in documents]
        if max_tokens_per_doc is not None:
            documents = self._cut(documents, max_tokens_per_doc)
        # Special tokens in the user's text are text ("[SEP]" in a document cannot end it).
        enc = self.tokenizer(
            [query] * len(documents),
            documents,
            truncation=True,
            max_length=self.max_length,
            split_special_tokens=True,
        )
        types = enc.get("token_type_ids") if self.token_types else None
        types = types or [None] * len(documents)
        unique: dict[Pair, int] = {}
        slot = [
            unique.setdefault(Pair(tuple(ids), tuple(t) if t else None), len(unique))
            for ids, t in zip(enc["input_ids"], types)
        ]
        pairs = list(unique)
        return Prepared(
            shared=0,
            costs=[len(pair.input_ids) for pair in pairs],
            slot=slot,
            tokens=sum(len(ids) for ids in enc["input_ids"]),
            payload=pairs,
        )

    def forward(self, parts: list[tuple[Prepared[list[Pair]], list[int]]]) -> list[list[float]]:
        pairs = [p.payload[u] for p, units in parts for u in units]
        scores = [0.0] * len(pairs)
        lengths = [len(pair.input_ids) for pair in pairs]
        for batch in plan_padded(lengths, self.settings.batch_tokens):
            features = {"input_ids": [list(pairs[i].input_ids) for i in batch]}
            if pairs[batch[0]].token_type_ids is not None:
                features["token_type_ids"] = [list(pairs[i].token_type_ids) for i in batch]
            inputs = self.tokenizer.pad(features, return_tensors="pt").to(self.device)
            logits = self.model(**inputs).logits[:, 0].float().cpu().tolist()
            for i, value in zip(batch, logits):
                scores[i] = value
        out, at = [], 0
        for _, units in parts:
            out.append(scores[at : at + len(units)])
            at += len(units)
        return out
