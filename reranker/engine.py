"""The scoring engines: Qwen3-Reranker exactly as its model card computes it, faster, and
classic cross-encoders; which one serves a model is read from its config.json.

The model card's recipe builds, for every document,

    prefix + tokenize("<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}")[:budget] + suffix

with budget = max_length - len(prefix) - len(suffix), runs the whole causal LM over left-padded
batches, and reads P(yes) = softmax(logit_no, logit_yes)[1] at the last position. This engine
gives the same numbers while removing work:

* The body is tokenized as two parts, the per-request head "<Instruct>: ...<Query>: ...
  <Document>:" and the per-document tail " {doc}". The Qwen3 pre-tokenizer always ends a
  pre-token after that colon (a punctuation run stops before a space), so the ids are those of
  the whole string; `tests/unit/test_reranker_prompt.py` checks it on random and unicode text.
* The shared part (system prompt + head) runs once per request and forward pass; its keys and
  values, layer by layer, are read by every document of the request in that pass.
* Documents of one or several requests are packed, without padding, into passes under a token
  budget (see `batching.plan_pass`): the linear layers run on one [tokens, hidden] matrix,
  attention runs per document against its request's shared keys and values, in chunks of
  query rows so that a long document's attention scratch stays small.
* In the last layer only each document's final token goes past attention, and the vocabulary
  projection is a single row, lm_head[yes] - lm_head[no]: the engine returns
  logit_yes - logit_no, and P(yes) = sigmoid of it.

Nothing a pass computes outlives it, so the memory a pass needs is set by the token budget
(and max_length, for a single document longer than the budget), not by the request.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .batching import Prepared, plan_padded, score_alone
from .errors import InvalidRequest
from .settings import Settings

log = logging.getLogger("reranker.engine")

# Query rows per attention call: bounds the scratch of a long document's attention.
ATTENTION_ROWS = 512

PROMPT_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class Scores:
    """Raw scores (logit_yes - logit_no), in document order, and the tokens the model read."""

    logits: list[float]
    tokens: int


@dataclass(frozen=True)
class EngineInfo:
    model: str
    device: str
    dtype: str
    max_length: int
    architecture: str = "unknown"  # qwen3-reranker or cross-encoder, once loaded


class Engine(Protocol):
    """What the service needs from a scorer.

    `prepare` tokenizes one request (request threads, any number at once); `forward` runs one
    pass over units of several prepared requests and returns their raw scores (the scheduler's
    single worker thread). Raw scores are logit_yes - logit_no for Qwen3-Reranker and the
    relevance logit for a cross-encoder; relevance_score is their sigmoid either way.
    """

    info: EngineInfo

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def prepare(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Prepared: ...

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]: ...


def sigmoid(x: float) -> float:
    """P(yes) from logit_yes - logit_no, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


# --- prompt ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptIds:
    """The token ids of one request: a shared part and one tail per document (suffix included)."""

    shared: list[int]
    tails: list[list[int]]


class Qwen3Prompt:
    """The model card's template and truncation, tokenized as shared head + per-document tail."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prefix_ids = tokenizer.encode(PROMPT_PREFIX, add_special_tokens=False)
        self.suffix_ids = tokenizer.encode(PROMPT_SUFFIX, add_special_tokens=False)
        self.body_budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.body_budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room for the prompt template")

    @staticmethod
    def head_text(query: str, instruction: str) -> str:
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>:"

    def build(
        self,
        query: str,
        documents: list[str],
        instruction: str,
        max_tokens_per_doc: int | None = None,
    ) -> PromptIds:
        head = self.tokenizer.encode(self.head_text(query, instruction), add_special_tokens=False)
        # The card truncates the whole body from the right: a head longer than the budget
        # leaves no room for any document, and every document then scores the same.
        head = head[: self.body_budget]
        room = self.body_budget - len(head)
        if documents:
            tails = self.tokenizer([" " + doc for doc in documents], add_special_tokens=False)[
                "input_ids"
            ]
        else:
            tails = []
        limit = room if max_tokens_per_doc is None else min(room, max_tokens_per_doc)
        return PromptIds(
            shared=self.prefix_ids + head,
            tails=[ids[:limit] + self.suffix_ids for ids in tails],
        )


# --- the packed forward pass ---------------------------------------------------------------


class PackedQwen3:
    """Qwen3ForCausalLM's forward pass over packed documents that share a cached prefix.

    Reads the loaded model's own weights and norm parameters; the q/k/v and gate/up
    projections are concatenated into single matrices whose slices become the original
    parameters, so memory does not grow and the Hugging Face model stays usable. The
    arithmetic is Qwen3's (RMSNorm, per-head q/k norm, rotary embedding, grouped-query
    attention, SiLU MLP), written to touch each activation as few times as possible.
    """

    def __init__(self, model, yes_id: int, no_id: int):
        config = model.config
        if getattr(config, "model_type", None) != "qwen3":
            raise ValueError(f"expected a Qwen3 model, got model_type={config.model_type!r}")
        if getattr(config, "use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported")
        if config.hidden_act != "silu":
            raise ValueError(f"unsupported activation {config.hidden_act!r}")
        self.model = model
        self.base = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        self.eps = config.rms_norm_eps
        self.q_size = self.heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.inter = config.intermediate_size
        self.layers = list(self.base.layers)
        self._fuse_weights()
        lm_head = model.get_output_embeddings()
        with torch.no_grad():
            self.score_row = (lm_head.weight[yes_id] - lm_head.weight[no_id]).clone()
            bias = getattr(lm_head, "bias", None)
            self.score_bias = float(bias[yes_id] - bias[no_id]) if bias is not None else 0.0

    @torch.no_grad()
    def _fuse_weights(self) -> None:
        self.qkv: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.qk_norm: list[torch.Tensor] = []
        self.gate_up: list[torch.Tensor] = []
        sizes = (self.q_size, self.kv_size, self.kv_size)
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            weight = torch.cat([p.weight for p in projections])
            for proj, w in zip(projections, weight.split(sizes)):
                proj.weight = torch.nn.Parameter(w, requires_grad=False)
            bias = None
            if attn.q_proj.bias is not None:
                bias = torch.cat([p.bias for p in projections])
                for proj, b in zip(projections, bias.split(sizes)):
                    proj.bias = torch.nn.Parameter(b, requires_grad=False)
            self.qkv.append((weight, bias))
            # One norm call for the query and key heads together: their weights, stacked.
            self.qk_norm.append(
                torch.cat(
                    [
                        attn.q_norm.weight.expand(self.heads, -1),
                        attn.k_norm.weight.expand(self.kv_heads, -1),
                    ]
                )
            )
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            gate, up = gate_up.split(self.inter)
            mlp.gate_proj.weight = torch.nn.Parameter(gate, requires_grad=False)
            mlp.up_proj.weight = torch.nn.Parameter(up, requires_grad=False)
            self.gate_up.append(gate_up)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        # Half precision: normalise in fp32 and cast back before the weight, as Qwen3RMSNorm.
        normed = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)
        return normed if weight is None else weight * normed

    def _rope_tables(self, positions: torch.Tensor, like: torch.Tensor):
        cos, sin = self.base.rotary_emb(like, positions[None])
        half = self.head_dim // 2
        # Qwen3's tables repeat the same half twice; keep one half, shaped [T, 1, half].
        return cos[0, :, None, :half], sin[0, :, None, :half]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x * cos + rotate_half(x) * sin, written into one new tensor."""
        half = x.shape[-1] // 2
        out = torch.empty_like(x)
        x1, x2 = x[..., :half], x[..., half:]
        o1, o2 = out[..., :half], out[..., half:]
        torch.mul(x1, cos, out=o1)
        o1.addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=o2)
        o2.addcmul_(x1, sin)
        return out

    def _qkv(self, i: int, h: torch.Tensor, cos, sin):
        """Rotated queries and keys, [T, heads + kv_heads, d], and values, [T, kv_heads, d]."""
        weight, bias = self.qkv[i]
        qkv = F.linear(h, weight, bias)
        n = h.shape[0]
        qk = qkv[:, : self.q_size + self.kv_size].view(n, self.heads + self.kv_heads, self.head_dim)
        v = qkv[:, self.q_size + self.kv_size :].view(n, self.kv_heads, self.head_dim)
        qk = self._norm(qk, None) * self.qk_norm[i]
        return self._rotate(qk, cos, sin), v

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        h = self._norm(x, layer.post_attention_layernorm.weight)
        gate_up = F.linear(h, self.gate_up[i])
        act = F.silu(gate_up[:, : self.inter]).mul_(gate_up[:, self.inter :])
        return x.add_(F.linear(act, layer.mlp.down_proj.weight, layer.mlp.down_proj.bias))

    def _attend(self, q, k, v, mask=None) -> torch.Tensor:
        """q [heads, n, d] against k, v [kv_heads, m, d] -> [n, heads, d]."""
        out = F.scaled_dot_product_attention(
            q[None],
            k[None],
            v[None],
            attn_mask=mask,
            scale=self.scale,
            enable_gqa=self.heads != self.kv_heads,
        )
        return out[0].transpose(0, 1)

    def _attend_causal(self, q, k, v, out) -> None:
        """Rows q [heads, n, d] that follow the first m - n of k, v [kv_heads, m, d]: each
        sees everything before it and itself. Written into out [n, heads, d].

        Queries go in chunks of `ATTENTION_ROWS`, each against only the keys it can see, so
        the attention scratch stays bounded by the chunk, however long the document.
        """
        n, m = q.shape[1], k.shape[1]
        before = m - n
        for r0 in range(0, n, ATTENTION_ROWS):
            r1 = min(n, r0 + ATTENTION_ROWS)
            seen = before + r1
            out[r0:r1] = self._attend(
                q[:, r0:r1], k[:, :seen], v[:, :seen], mask=causal_lower_right(r1 - r0, seen)
            )

    def _o_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        o = self.layers[i].self_attn.o_proj
        return F.linear(a.reshape(a.shape[0], -1), o.weight, o.bias)

    def score_pass(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        """logit_yes - logit_no for each tail of each group, read after the group's shared ids.

        One forward pass: every group's shared ids and all tails are packed, without padding,
        into one [rows, hidden] matrix for the linear layers. Attention runs per sequence:
        the shared rows causally among themselves, each tail against its group's shared keys
        and values of the same layer, then causally against itself. Nothing outlives the pass,
        so its memory is set by its rows alone.
        """
        device = self.score_row.device
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        prefixes: list[tuple[int, int]] = []  # (start, length) of each group's shared rows
        tails: list[tuple[int, int, int]] = []  # (group, start, length) of each tail
        for g, (shared, group_tails) in enumerate(groups):
            prefixes.append((len(ids), len(shared)))
            ids += shared
            positions.append(torch.arange(len(shared), device=device))
            for tail in group_tails:
                tails.append((g, len(ids), len(tail)))
                ids += tail
                positions.append(torch.arange(len(shared), len(shared) + len(tail), device=device))
        x = self.base.embed_tokens(torch.tensor(ids, device=device))
        cos, sin = self._rope_tables(torch.cat(positions), x)
        last = torch.tensor([start + n - 1 for _, start, n in tails], device=device)
        final = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            qk, v = self._qkv(i, self._norm(x, layer.input_layernorm.weight), cos, sin)
            q = qk[:, : self.heads].transpose(0, 1)  # [heads, rows, d]
            k = qk[:, self.heads :].transpose(0, 1).contiguous()  # [kv_heads, rows, d]
            v = v.transpose(0, 1).contiguous()
            if i < final:
                out = torch.empty(x.shape[0], self.heads, self.head_dim, device=device, dtype=x.dtype)
                for start, n in prefixes:
                    span = slice(start, start + n)
                    self._attend_causal(q[:, span], k[:, span], v[:, span], out[span])
            else:  # the last layer only carries each tail's final row on
                out = torch.empty(len(tails), self.heads, self.head_dim, device=device, dtype=x.dtype)
            for j, (g, start, n) in enumerate(tails):
                p_start, p_len = prefixes[g]
                if start == p_start + p_len:  # right after its shared rows: one slice
                    keys, values = k[:, p_start : start + n], v[:, p_start : start + n]
                else:
                    keys = torch.cat([k[:, p_start : p_start + p_len], k[:, start : start + n]], 1)
                    values = torch.cat([v[:, p_start : p_start + p_len], v[:, start : start + n]], 1)
                if i < final:
                    span = slice(start, start + n)
                    self._attend_causal(q[:, span], keys, values, out[span])
                else:
                    out[j] = self._attend(q[:, start + n - 1 : start + n], keys, values)[0]
            if i < final:
                x = self._mlp(i, x.add_(self._o_proj(i, out)))
            else:
                x = self._mlp(i, x[last] + self._o_proj(i, out))
        hidden = self._norm(x, self.base.norm.weight)
        scores = (hidden.float() @ self.score_row.float() + self.score_bias).cpu().tolist()
        result: list[list[float]] = [[] for _ in groups]
        for (g, _, _), score in zip(tails, scores):
            result[g].append(score)
        return result


# --- the engine ----------------------------------------------------------------------------


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class UnsupportedModel(ValueError):
    """The model's config.json names an architecture this service cannot score with."""


QWEN3_RERANKER = "qwen3-reranker"
CROSS_ENCODER = "cross-encoder"


def choose_backend(config) -> str:
    """Which scorer fits a model, from its config.json: `architectures` and `num_labels`.

    Qwen3ForCausalLM is a Qwen3-Reranker (the yes/no prompt); any *ForSequenceClassification
    with a single label is a classic cross-encoder (bge-reranker-v2-m3, ms-marco MiniLM, ...).
    Anything else is refused with the reason, rather than scored with the wrong recipe.
    """
    architectures = list(getattr(config, "architectures", None) or [])
    if "Qwen3ForCausalLM" in architectures:
        return QWEN3_RERANKER
    classifiers = [a for a in architectures if a.endswith("ForSequenceClassification")]
    if classifiers:
        if config.num_labels != 1:
            raise UnsupportedModel(
                f"{classifiers[0]} has num_labels={config.num_labels}; a cross-encoder reranker "
                "has a single relevance logit (num_labels=1)"
            )
        return CROSS_ENCODER
    named = ", ".join(architectures) or f"none (model_type={getattr(config, 'model_type', None)})"
    raise UnsupportedModel(
        f"unsupported architecture: {named}. Supported: Qwen3ForCausalLM (Qwen3-Reranker) and "
        "*ForSequenceClassification with num_labels=1 (cross-encoders such as "
        "BAAI/bge-reranker-v2-m3 or cross-encoder/ms-marco-MiniLM-L-6-v2)"
    )


class Qwen3Reranker:
    """Qwen3-Reranker: the model card's prompt, scored by `PackedQwen3`."""

    kind = QWEN3_RERANKER

    def __init__(self, settings: Settings, device: str, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        tokenizer = AutoTokenizer.from_pretrained(settings.model)
        model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype)
        model.to(device).eval()
        self.max_length = settings.max_length
        self.prompt = Qwen3Prompt(tokenizer, settings.max_length)
        self.packed = PackedQwen3(
            model, tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
        )

    def prepare(self, query, documents, instruction, max_tokens_per_doc) -> Prepared:
        ids = self.prompt.build(
            query, documents, instruction or self.settings.instruction, max_tokens_per_doc
        )
        # Identical tails (duplicate documents, or all documents once the head fills the
        # budget) are scored once.
        unique: dict[tuple[int, ...], int] = {}
        slot = [unique.setdefault(tuple(t), len(unique)) for t in ids.tails]
        tails = [list(t) for t in unique]
        return Prepared(
            shared=len(ids.shared),
            costs=[len(t) for t in tails],
            slot=slot,
            tokens=len(ids.shared) + sum(len(t) for t in ids.tails),
            payload=(ids.shared, tails),
        )

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]:
        groups = [(p.payload[0], [p.payload[1][u] for u in units]) for p, units in parts]
        return self.packed.score_pass(groups)


class CrossEncoder:
    """A sequence-classification reranker: (query, document) pairs through the encoder, the
    single logit as the raw score, as sentence-transformers' CrossEncoder and FlagEmbedding
    compute it (pairs truncated longest-first to the model's maximum length)."""

    kind = CROSS_ENCODER

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
        enc = self.tokenizer(documents, add_special_tokens=False, return_offsets_mapping=True)
        return [
            doc if len(ids) <= limit else doc[: offsets[limit - 1][1]]
            for doc, ids, offsets in zip(documents, enc["input_ids"], enc["offset_mapping"])
        ]

    def prepare(self, query, documents, instruction, max_tokens_per_doc) -> Prepared:
        if instruction is not None:
            raise InvalidRequest(
                "instruction: this model is a cross-encoder and takes no instruction; "
                "leave the field out"
            )
        if max_tokens_per_doc is not None:
            documents = self._cut(documents, max_tokens_per_doc)
        enc = self.tokenizer(
            [query] * len(documents), documents, truncation=True, max_length=self.max_length
        )
        types = enc.get("token_type_ids") if self.token_types else None
        types = types or [None] * len(documents)
        unique: dict[tuple, int] = {}
        slot = [
            unique.setdefault((tuple(ids), tuple(t) if t else None), len(unique))
            for ids, t in zip(enc["input_ids"], types)
        ]
        pairs = list(unique)
        return Prepared(
            shared=0,
            costs=[len(ids) for ids, _ in pairs],
            slot=slot,
            tokens=sum(len(ids) for ids in enc["input_ids"]),
            payload=pairs,
        )

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]:
        pairs = [p.payload[u] for p, units in parts for u in units]
        scores = [0.0] * len(pairs)
        for batch in plan_padded(
            [len(ids) for ids, _ in pairs], self.settings.batch_tokens
        ):
            features = {"input_ids": [list(pairs[i][0]) for i in batch]}
            if pairs[batch[0]][1] is not None:
                features["token_type_ids"] = [list(pairs[i][1]) for i in batch]
            inputs = self.tokenizer.pad(features, return_tensors="pt").to(self.device)
            logits = self.model(**inputs).logits[:, 0].float().cpu().tolist()
            for i, value in zip(batch, logits):
                scores[i] = value
        out, at = [], 0
        for _, units in parts:
            out.append(scores[at : at + len(units)])
            at += len(units)
        return out


class TransformersEngine:
    """Loads the model with transformers; the scorer is chosen from the model's config.json."""

    def __init__(self, settings: Settings):
        self.settings = settings
        device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, device)
        self.info = EngineInfo(
            model=settings.model_name,
            device=device,
            dtype=str(self.dtype).removeprefix("torch."),
            max_length=settings.max_length,
        )
        self._tokenize = threading.Lock()
        self.backend: Qwen3Reranker | CrossEncoder | None = None

    def start(self) -> None:
        from transformers import AutoConfig

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        config = AutoConfig.from_pretrained(self.settings.model)
        kind = choose_backend(config)
        log.info(
            "loading %s (%s) on %s (%s)", self.settings.model, kind, self.info.device, self.info.dtype
        )
        if kind == QWEN3_RERANKER:
            backend = Qwen3Reranker(self.settings, self.info.device, self.dtype)
        else:
            backend = CrossEncoder(self.settings, self.info.device, self.dtype, config)
        self.backend = backend
        self.info = replace(self.info, max_length=backend.max_length, architecture=kind)
        log.info("model ready")

    def stop(self) -> None:
        self.backend = None
        if self.info.device == "cuda":
            torch.cuda.empty_cache()

    def _started(self) -> Qwen3Reranker | CrossEncoder:
        if self.backend is None:
            raise RuntimeError("engine not started")
        return self.backend

    def prepare(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Prepared:
        """Tokenize one request; safe to call from request threads while `forward` runs."""
        backend = self._started()
        with self._tokenize:
            return backend.prepare(query, documents, instruction, max_tokens_per_doc)

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]:
        """One pass: raw scores for the given units of each prepared request. One caller."""
        backend = self._started()
        with torch.inference_mode():
            return backend.forward(parts)

    def score(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Scores:
        """One request on its own, in passes under the token budget (no scheduler)."""
        prepared = self.prepare(query, documents, instruction, max_tokens_per_doc)
        logits = score_alone(self, prepared, self.settings.batch_tokens)
        return Scores(logits=logits, tokens=prepared.tokens)
