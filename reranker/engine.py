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
  values, layer by layer, are read by every document of the request in that pass. Its first
  part, the system prompt and instruction up to "<Query>:", is the same for every request with
  that instruction: it runs once per pass whatever the requests, and its keys and values are
  kept between passes in a small cache of `prompt_cache_tokens` rows, least recently used out
  (positions start at 0 for every sequence, so cached keys are valid for any later request).
* Documents of one or several requests are packed, without padding, into passes under a token
  budget (see `planning.plan_pass`): the linear layers run on one [tokens, hidden] matrix,
  attention runs per document against its request's shared keys and values, in chunks of
  query rows so that a long document's attention scratch stays small.
* In the last layer only each document's final token goes past attention, and the vocabulary
  projection is a single row, lm_head[yes] - lm_head[no]: the engine returns
  logit_yes - logit_no, and P(yes) = sigmoid of it.

Nothing else a pass computes outlives it, so the memory a pass needs is set by the token budget
(and max_length, for a single document longer than the budget), not by the request.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from .errors import InvalidRequest
from .planning import Prepared, plan_padded, score_alone
from .settings import Settings

log = logging.getLogger("reranker.engine")

# Documents tokenized per call: bounds the tokenizer's transient memory on huge requests.
TOKENIZE_SLICE = 64

# Attention runs in buckets of sequences, padded: at most ATTENTION_ELEMENTS (query, key)
# pairs and ATTENTION_KEYS gathered key rows per bucket, at most ATTENTION_ROWS query rows per
# sequence chunk. Together they bound the attention scratch (the mask, the gathered keys and
# values) whatever the documents and however long the query.
ATTENTION_ELEMENTS = 1 << 22
ATTENTION_KEYS = 1 << 14
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


@dataclass(frozen=True)
class PromptCacheStats:
    hits: int
    misses: int
    rows: int


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
    """The token ids of one request: a shared part and one tail per document (suffix included).

    The first `head` ids of `shared` (system prompt, instruction, up to "<Query>:") depend on
    the instruction alone, so requests with the same instruction share them; 0 when the
    budget cut into them.
    """

    shared: list[int]
    tails: list[list[int]]
    head: int = 0


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

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one prompt per engine, for its lifetime)
    def _instruction_ids(self, instruction: str) -> tuple[int, ...]:
        return tuple(
            self.tokenizer.encode(f"<Instruct>: {instruction}\n<Query>:", add_special_tokens=False)
        )

    def build(
        self,
        query: str,
        documents: list[str],
        instruction: str,
        max_tokens_per_doc: int | None = None,
    ) -> PromptIds:
        # The body's head, tokenized as the instruction part and the query part: as after
        # "<Document>:", the pre-tokenizer always ends a pre-token after "<Query>:" (a
        # punctuation run stops before the space), so the ids are the whole string's.
        instruction_ids = self._instruction_ids(instruction)
        head = list(instruction_ids) + self.tokenizer.encode(
            f" {query}\n<Document>:", add_special_tokens=False
        )
        # The card truncates the whole body from the right: a head longer than the budget
        # leaves no room for any document, and every document then scores the same.
        head = head[: self.body_budget]
        shareable = len(instruction_ids) <= len(head)
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
            head=len(self.prefix_ids) + len(instruction_ids) if shareable else 0,
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

    def __init__(self, model, yes_id: int, no_id: int, cache_rows: int = 0):
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
        # Keys and values of recent prompt heads, per layer, by their ids; at most cache_rows
        # rows in all (see score_pass). Only the scheduler's worker thread touches them.
        self.cache_rows = cache_rows
        self.cache: OrderedDict[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        # Requests whose head was read from the cache or computed for another request of the
        # same pass (hits), or computed for them (misses); for /metrics.
        self.cache_hits = 0
        self.cache_misses = 0
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

    def _attention(self, q, k, v, spans: list[tuple[int, ...]], out: torch.Tensor) -> None:
        """Attention for many short sequences of one pass, a few batched calls in all.

        q [rows, heads, d] holds the pass's query rows; k and v [keys, kv_heads, d] its key
        rows, then any cached prompt heads'. Each span is (q_start, q_len, out_start, h_start,
        h_len, p_start, p_len, k_start, k_len): query rows q_start.. attend to the keys
        h_start..+h_len (an instruction head), p_start..+p_len (a query's rows), then
        k_start..+k_len (the sequence's own), any of the first two possibly empty, query i
        seeing keys up to h_len + p_len + k_len - q_len + i; the result goes to
        out[out_start..]. Spans are sorted by key length and cut into buckets of at most
        `ATTENTION_ELEMENTS` (queries x keys, padded) and `ATTENTION_KEYS` gathered key rows,
        each one SDPA call on gathered, padded rows with a mask: the op count of a pass grows
        with its buckets, not its documents, and the attention scratch stays bounded whatever
        the documents.
        """
        device = q.device
        order = sorted(spans, key=lambda s: (s[4] + s[6] + s[8], s[1]))
        buckets: list[list[tuple[int, ...]]] = []
        current: list[tuple[int, ...]] = []
        for span in order:
            grown = current + [span]
            lq = max(s[1] for s in grown)
            lk = max(s[4] + s[6] + s[8] for s in grown)
            if current and (
                len(grown) * lq * lk > ATTENTION_ELEMENTS or len(grown) * lk > ATTENTION_KEYS
            ):
                buckets.append(current)
                grown = [span]
            current = grown
        if current:
            buckets.append(current)
        for bucket in buckets:
            cols = torch.tensor(bucket, device=device).T
            q_start, q_len, out_start, h_start, h_len, p_start, p_len, k_start, k_len = cols[
                :, :, None
            ]
            before = h_len + p_len  # keys ahead of the sequence's own
            lq, lk = int(q_len.max()), int((before + k_len).max())
            i = torch.arange(lq, device=device)[None, :]
            j = torch.arange(lk, device=device)[None, :]
            q_rows = q_start + torch.minimum(i, q_len - 1)  # padding repeats a real row
            own = (j - before).clamp(min=0)
            k_rows = torch.where(
                j < h_len,
                h_start + j,
                torch.where(
                    j < before, p_start + j - h_len, k_start + torch.minimum(own, k_len - 1)
                ),
            )
            sees = (j[:, None, :] < (before + k_len)[:, :, None]) & (
                j[:, None, :] <= (before + k_len - q_len)[:, :, None] + i[:, :, None]
            )
            out_rows = out_start + i
            real = i < q_len
            attended = F.scaled_dot_product_attention(
                q[q_rows].transpose(1, 2),
                k[k_rows].transpose(1, 2),
                v[k_rows].transpose(1, 2),
                attn_mask=sees[:, None],
                scale=self.scale,
                enable_gqa=self.heads != self.kv_heads,
            ).transpose(1, 2)  # [B, lq, heads, d]
            out.index_copy_(0, out_rows[real], attended[real])

    def _o_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        o = self.layers[i].self_attn.o_proj
        return F.linear(a.reshape(a.shape[0], -1), o.weight, o.bias)

    @staticmethod
    def _chunks(q_start, n, out_start, head, prompt, k_start) -> list[tuple[int, ...]]:
        """A sequence of n own rows cut into spans of at most ATTENTION_ROWS query rows."""
        spans = []
        for r0 in range(0, n, ATTENTION_ROWS):
            r1 = min(n, r0 + ATTENTION_ROWS)
            spans.append((q_start + r0, r1 - r0, out_start + r0, *head, *prompt, k_start, r1))
        return spans

    def score_pass(self, groups: list[tuple[list[int], int, list[list[int]]]]) -> list[list[float]]:
        """logit_yes - logit_no for each tail of each group, read after the group's shared ids.

        A group is (shared ids, head, tails): its first `head` shared ids (system prompt and
        instruction) are the same for every request with that instruction. One forward pass:
        each distinct head that is not cached, then every group's remaining shared ids and
        all tails are packed, without padding, into one [rows, hidden] matrix for the linear
        layers. In attention, the shared rows see their head's keys and values (this pass's or
        cached ones) and each other causally; each tail sees its group's head and shared rows
        of the same layer, then itself causally (see `_attention`). A head this pass computes
        is cached, least recently used out, while the cache holds at most `cache_rows` rows;
        nothing else outlives the pass, so its memory is set by its rows alone.
        """
        device = self.score_row.device
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        computed: dict[bytes, tuple[int, int]] = {}  # heads this pass runs: (start, length)
        cached: dict[bytes, int] = {}  # cached heads it reads: offset among their rows
        cached_rows = hits = 0
        heads: list[tuple[str, bytes | None, int]] = []  # per group: (source, key, length)
        for shared, head, _ in groups:
            key = array("i", shared[:head]).tobytes() if head else None
            if key is None:
                heads.append(("none", None, 0))
            elif key in self.cache:
                if key not in cached:
                    cached[key] = cached_rows
                    cached_rows += head
                heads.append(("cache", key, head))
                hits += 1
            else:
                if key not in computed:
                    computed[key] = (len(ids), head)
                    ids += shared[:head]
                    positions.append(torch.arange(head, device=device))
                else:
                    hits += 1
                heads.append(("pass", key, head))
        spans: list[tuple[int, ...]] = []
        for start, n in computed.values():
            spans += self._chunks(start, n, start, (start, 0), (start, 0), start)
        prompts: list[tuple[int, int]] = []  # (start, length) of each group's rows after the head
        tails: list[tuple[int, int, int]] = []  # (group, start, length) of each tail
        for g, (shared, head, group_tails) in enumerate(groups):
            prompts.append((len(ids), len(shared) - head))
            ids += shared[head:]
            positions.append(torch.arange(head, len(shared), device=device))
            for tail in group_tails:
                tails.append((g, len(ids), len(tail)))
                ids += tail
                positions.append(torch.arange(len(shared), len(shared) + len(tail), device=device))
        rows = len(ids)

        def head_of(g: int) -> tuple[int, int]:
            source, key, n = heads[g]
            if source == "cache":
                return rows + cached[key], n  # cached keys follow the pass's own
            if source == "pass":
                return computed[key][0], n
            return 0, 0

        for g, (start, n) in enumerate(prompts):
            spans += self._chunks(start, n, start, head_of(g), (start, 0), start)
        for g, start, n in tails:
            spans += self._chunks(start, n, start, head_of(g), prompts[g], start)
        # The last layer only carries each tail's final row on.
        last_spans = [
            (start + n - 1, 1, j, *head_of(g), *prompts[g], start, n)
            for j, (g, start, n) in enumerate(tails)
        ]
        x = self.base.embed_tokens(torch.tensor(ids, device=device))
        cos, sin = self._rope_tables(torch.cat(positions), x)
        last = torch.tensor([start + n - 1 for _, start, n in tails], device=device)
        final = len(self.layers) - 1
        new_heads: dict[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = {
            key: [] for key, (_, n) in computed.items() if n <= self.cache_rows
        }
        for i, layer in enumerate(self.layers):
            qk, v = self._qkv(i, self._norm(x, layer.input_layernorm.weight), cos, sin)
            q, k = qk[:, : self.heads], qk[:, self.heads :]
            for key, layers in new_heads.items():
                start, n = computed[key]
                layers.append((k[start : start + n].clone(), v[start : start + n].clone()))
            if cached:
                k = torch.cat([k, *(self.cache[key][i][0] for key in cached)])
                v = torch.cat([v, *(self.cache[key][i][1] for key in cached)])
            if i < final:
                out = torch.empty(rows, self.heads, self.head_dim, device=device, dtype=x.dtype)
                self._attention(q, k, v, spans, out)
                x = self._mlp(i, x.add_(self._o_proj(i, out)))
            else:
                out = torch.empty(
                    len(tails), self.heads, self.head_dim, device=device, dtype=x.dtype
                )
                self._attention(q, k, v, last_spans, out)
                x = self._mlp(i, x[last] + self._o_proj(i, out))
        hidden = self._norm(x, self.base.norm.weight)
        scores = (hidden.float() @ self.score_row.float() + self.score_bias).cpu().tolist()
        for key in cached:
            self.cache.move_to_end(key)
        for key, layers in new_heads.items():
            self._remember(key, layers)
        self.cache_hits += hits
        self.cache_misses += len(computed)
        result: list[list[float]] = [[] for _ in groups]
        for (g, _, _), score in zip(tails, scores):
            result[g].append(score)
        return result

    @property
    def cached_rows(self) -> int:
        """Token rows of the heads in the cache (a handful of entries)."""
        return sum(layers[0][0].shape[0] for layers in self.cache.values())

    def _remember(self, key: bytes, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Cache a head's keys and values, evicting the least recently used past cache_rows."""
        n = layers[0][0].shape[0]
        while self.cache and self.cached_rows + n > self.cache_rows:
            self.cache.popitem(last=False)
        self.cache[key] = layers


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
            model,
            tokenizer.convert_tokens_to_ids("yes"),
            tokenizer.convert_tokens_to_ids("no"),
            cache_rows=settings.prompt_cache_tokens,
        )

    def prepare(self, query, documents, instruction, max_tokens_per_doc) -> Prepared:
        instruction = instruction or self.settings.instruction
        built = self.prompt.build(query, [], instruction)
        shared, head = built.shared, built.head
        # Identical tails (duplicate documents, or all documents once the head fills the
        # budget) are scored once. Tails are kept as 4-byte ids and tokenized a slice of
        # documents at a time, so a request's ids take about 4 bytes a token, not the ~100 of
        # Python lists and the tokenizer's own encodings.
        unique: dict[bytes, int] = {}
        tails: list[array] = []
        slot: list[int] = []
        tokens = len(shared)
        for start in range(0, len(documents), TOKENIZE_SLICE):
            chunk = documents[start : start + TOKENIZE_SLICE]
            for ids in self.prompt.build(query, chunk, instruction, max_tokens_per_doc).tails:
                tail = array("i", ids)
                tokens += len(tail)
                key = tail.tobytes()
                if key not in unique:
                    unique[key] = len(tails)
                    tails.append(tail)
                slot.append(unique[key])
        return Prepared(
            shared=len(shared),
            costs=[len(t) for t in tails],
            slot=slot,
            tokens=tokens,
            payload=(shared, head, tails),
        )

    def forward(self, parts: list[tuple[Prepared, list[int]]]) -> list[list[float]]:
        groups = [
            (p.payload[0], p.payload[1], [p.payload[2][u] for u in units]) for p, units in parts
        ]
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
        for batch in plan_padded([len(ids) for ids, _ in pairs], self.settings.batch_tokens):
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
            "loading %s (%s) on %s (%s)",
            self.settings.model,
            kind,
            self.info.device,
            self.info.dtype,
        )
        if kind == QWEN3_RERANKER:
            backend = Qwen3Reranker(self.settings, self.info.device, self.dtype)
        else:
            backend = CrossEncoder(self.settings, self.info.device, self.dtype, config)
        self.backend = backend
        self.info = replace(self.info, max_length=backend.max_length, architecture=kind)
        log.info("model ready")

    def prompt_cache(self) -> PromptCacheStats | None:
        """The prompt-head cache's counters, for /metrics; None without one (cross-encoders)."""
        backend = self.backend
        if not isinstance(backend, Qwen3Reranker):
            return None
        packed = backend.packed
        return PromptCacheStats(packed.cache_hits, packed.cache_misses, packed.cached_rows)

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
