"""The scoring engine: Qwen3-Reranker scores, exactly as the model card computes them, faster.

The model card's recipe builds, for every document,

    prefix + tokenize("<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}")[:budget] + suffix

with budget = max_length - len(prefix) - len(suffix), runs the whole causal LM over left-padded
batches, and reads P(yes) = softmax(logit_no, logit_yes)[1] at the last position. This engine
gives the same numbers while removing work:

* The body is tokenized as two parts, the per-request head "<Instruct>: ...<Query>: ...
  <Document>:" and the per-document tail " {doc}". The Qwen3 pre-tokenizer always ends a
  pre-token after that colon (a punctuation run stops before a space), so the ids are those of
  the whole string; `tests/unit/test_reranker_prompt.py` checks it on random and unicode text.
* The shared part (system prompt + head) runs once per request; its keys and values are
  reused by every document.
* Documents are packed, without padding, into passes under a token budget (see
  `batching.plan_batches`): the linear layers run on one [tokens, hidden] matrix, attention
  runs per document against the shared keys and values.
* In the last layer only each document's final token goes past attention, and the vocabulary
  projection is a single row, lm_head[yes] - lm_head[no]: the engine returns
  logit_yes - logit_no, and P(yes) = sigmoid of it.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from .batching import plan_batches
from .settings import Settings

log = logging.getLogger("reranker.engine")

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


class Engine(Protocol):
    """What the API needs from a scorer. `score` is called from one worker thread at a time."""

    info: EngineInfo

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def score(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Scores: ...


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

    def _attend(self, q, k, v, mask=None, causal=False) -> torch.Tensor:
        """q [heads, n, d] against k, v [kv_heads, m, d] -> [n, heads, d]."""
        out = F.scaled_dot_product_attention(
            q[None],
            k[None],
            v[None],
            attn_mask=mask,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=self.heads != self.kv_heads,
        )
        return out[0].transpose(0, 1)

    def _o_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        o = self.layers[i].self_attn.o_proj
        return F.linear(a.reshape(a.shape[0], -1), o.weight, o.bias)

    def prefix_cache(self, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of every layer for the shared ids: [kv_heads, len, head_dim] each."""
        device = self.score_row.device
        n = len(ids)
        x = self.base.embed_tokens(torch.tensor(ids, device=device))
        cos, sin = self._rope_tables(torch.arange(n, device=device), x)
        cache = []
        for i, layer in enumerate(self.layers):
            qk, v = self._qkv(i, self._norm(x, layer.input_layernorm.weight), cos, sin)
            q = qk[:, : self.heads].transpose(0, 1)
            k = qk[:, self.heads :].transpose(0, 1).contiguous()
            v = v.transpose(0, 1).contiguous()
            cache.append((k, v))
            if i == len(self.layers) - 1:
                break  # the shared part's own output is never read
            x = self._mlp(i, x.add_(self._o_proj(i, self._attend(q, k, v, causal=True))))
        return cache

    def score_packed(
        self, cache: list[tuple[torch.Tensor, torch.Tensor]], tails: list[list[int]]
    ) -> torch.Tensor:
        """logit_yes - logit_no for each tail, read after `cache`'s shared prefix."""
        device = self.score_row.device
        shared = cache[0][0].shape[1]
        lengths = [len(t) for t in tails]
        total = sum(lengths)
        ids = torch.tensor([t for tail in tails for t in tail], device=device)
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        last = torch.tensor(starts[1:], device=device) - 1
        x = self.base.embed_tokens(ids)
        positions = torch.cat([torch.arange(shared, shared + n, device=device) for n in lengths])
        cos, sin = self._rope_tables(positions, x)
        # Each document's keys and values sit right after a copy of the shared ones, so one
        # contiguous slice feeds its attention: the prefix slots are refreshed per layer, the
        # document slots are written by one index_copy_.
        spans = [shared + n for n in lengths]
        offsets = [0]
        for n in spans:
            offsets.append(offsets[-1] + n)
        own = torch.cat(
            [torch.arange(o + shared, o + s, device=device) for o, s in zip(offsets, spans)]
        )
        prefix_slots = torch.cat([torch.arange(o, o + shared, device=device) for o in offsets[:-1]])
        keys = torch.empty(self.kv_heads, offsets[-1], self.head_dim, device=device, dtype=x.dtype)
        values = torch.empty_like(keys)
        # A document sees the whole prefix and, causally, itself.
        masks = {
            n: torch.ones(n, shared + n, dtype=torch.bool, device=device).tril(shared)
            for n in set(lengths)
        }
        final = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            pk, pv = cache[i]
            qk, v = self._qkv(i, self._norm(x, layer.input_layernorm.weight), cos, sin)
            q = qk[:, : self.heads].transpose(0, 1)  # [heads, T, d]
            keys.index_copy_(1, own, qk[:, self.heads :].transpose(0, 1))
            values.index_copy_(1, own, v.transpose(0, 1))
            keys.index_copy_(1, prefix_slots, pk.repeat(1, len(tails), 1))
            values.index_copy_(1, prefix_slots, pv.repeat(1, len(tails), 1))
            if i < final:
                out = torch.empty(total, self.heads, self.head_dim, device=device, dtype=x.dtype)
                for j, n in enumerate(lengths):
                    s, e, o = starts[j], starts[j + 1], offsets[j]
                    out[s:e] = self._attend(
                        q[:, s:e],
                        keys[:, o : o + spans[j]],
                        values[:, o : o + spans[j]],
                        mask=masks[n],
                    )
                x = self._mlp(i, x.add_(self._o_proj(i, out)))
            else:
                # Last layer: only each document's final token goes on.
                out = torch.empty(
                    len(tails), self.heads, self.head_dim, device=device, dtype=x.dtype
                )
                for j in range(len(tails)):
                    e, o = starts[j + 1], offsets[j]
                    out[j] = self._attend(
                        q[:, e - 1 : e], keys[:, o : o + spans[j]], values[:, o : o + spans[j]]
                    )[0]
                x = self._mlp(i, x[last] + self._o_proj(i, out))
        hidden = self._norm(x, self.base.norm.weight)
        return hidden.float() @ self.score_row.float() + self.score_bias


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


class TransformersEngine:
    """Loads the model with transformers and scores with `PackedQwen3`."""

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
        self._lock = threading.Lock()
        self.prompt: Qwen3Prompt | None = None
        self.packed: PackedQwen3 | None = None

    def start(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        log.info("loading %s on %s (%s)", self.settings.model, self.info.device, self.info.dtype)
        tokenizer = AutoTokenizer.from_pretrained(self.settings.model)
        model = AutoModelForCausalLM.from_pretrained(self.settings.model, dtype=self.dtype)
        model.to(self.info.device).eval()
        yes_id = tokenizer.convert_tokens_to_ids("yes")
        no_id = tokenizer.convert_tokens_to_ids("no")
        self.prompt = Qwen3Prompt(tokenizer, self.settings.max_length)
        self.packed = PackedQwen3(model, yes_id, no_id)
        log.info("model ready")

    def stop(self) -> None:
        self.packed = None
        self.prompt = None
        if self.info.device == "cuda":
            torch.cuda.empty_cache()

    def score(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> Scores:
        if self.packed is None or self.prompt is None:
            raise RuntimeError("engine not started")
        with self._lock, torch.inference_mode():
            return self._score(
                query, documents, instruction or self.settings.instruction, max_tokens_per_doc
            )

    def _score(self, query, documents, instruction, max_tokens_per_doc) -> Scores:
        ids = self.prompt.build(query, documents, instruction, max_tokens_per_doc)
        # Identical tails (duplicate documents, or all documents once the head fills the
        # budget) are scored once.
        unique: dict[tuple[int, ...], int] = {}
        slot = [unique.setdefault(tuple(t), len(unique)) for t in ids.tails]
        tails = [list(t) for t in unique]
        cache = self.packed.prefix_cache(ids.shared)
        results = torch.empty(len(tails), dtype=torch.float32)
        for batch in plan_batches([len(t) for t in tails], self.settings.batch_tokens):
            results[batch] = self.packed.score_packed(cache, [tails[i] for i in batch]).cpu()
        per_doc = results.tolist()
        tokens = len(ids.shared) + sum(len(t) for t in ids.tails)
        return Scores(logits=[per_doc[s] for s in slot], tokens=tokens)
