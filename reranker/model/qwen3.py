"""Qwen3-Reranker: the model card's scores, computed with less work.

The model card's recipe builds one prompt per document (see `prompt.py`), runs the whole
causal LM over left-padded batches, and reads P(yes) = softmax(logit_no, logit_yes)[1] at the
last position. This scorer gives the same numbers while removing work:

* The shared part (system prompt + head) runs once per request and forward pass; its keys and
  values, layer by layer, are read by every document of the request in that pass. Its first
  part, the system prompt and instruction up to "<Query>:", is the same for every request with
  that instruction: it runs once per pass whatever the requests, and its keys and values are
  kept between passes in a small cache of `prompt_cache_tokens` rows, least recently used out
  (positions start at 0 for every sequence, so cached keys are valid for any later request).
* Documents of one or several requests are packed, without padding, into passes under a token
  budget (see `planning.plan_pass`): the linear layers run on one [tokens, hidden] matrix,
  attention runs per document against its request's shared keys and values, in chunks of
  query rows so that a long document's attention scratch stays small (see `attention.py`).
* In the last layer only each document's final token goes past attention, and the vocabulary
  projection is a single row, lm_head[yes] - lm_head[no]: the scorer returns
  logit_yes - logit_no, and P(yes) = sigmoid of it.

Nothing else a pass computes outlives it, so the memory a pass needs is set by the token budget
(and max_length, for a single document longer than the budget), not by the request.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import replace
from enum import Enum
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..planning import Prepared
from ..settings import Settings
from .attention import NO_ROWS, Rows, Span, attend, chunks
from .prompt import PromptIds, Qwen3Prompt

# Documents tokenized per call: bounds the tokenizer's transient memory on huge requests.
TOKENIZE_SLICE = 64

# A prompt head's keys and values, one (keys, values) pair per layer.
HeadLayers = list[tuple[torch.Tensor, torch.Tensor]]


class HeadSource(Enum):
    """Where a group's prompt head (system prompt and instruction) comes from in a pass."""

    NONE = "none"  # no shareable head (the budget cut into it): all its rows are the group's
    CACHED = "cached"  # the cache, from an earlier pass
    COMPUTED = "computed"  # computed in this pass, for this group or another with that head


class Head(NamedTuple):
    """A group's prompt head in a pass: its source, its ids as the cache's key, its rows."""

    source: HeadSource
    key: bytes | None
    length: int


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
        self.cache: OrderedDict[bytes, HeadLayers] = OrderedDict()
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

    def _o_proj(self, i: int, a: torch.Tensor) -> torch.Tensor:
        o = self.layers[i].self_attn.o_proj
        return F.linear(a.reshape(a.shape[0], -1), o.weight, o.bias)

    def score_pass(self, groups: list[PromptIds]) -> list[list[float]]:
        """logit_yes - logit_no for each tail of each group, read after the group's shared ids.

        A group's first `head` shared ids (system prompt and instruction) are the same for
        every request with that instruction. One forward pass: each distinct head that is not
        cached, then every group's remaining shared ids and all tails are packed, without
        padding, into one [rows, hidden] matrix for the linear layers. In attention, the shared
        rows see their head's keys and values (this pass's or cached ones) and each other
        causally; each tail sees its group's head and shared rows of the same layer, then
        itself causally (see `attention.attend`). A head this pass computes is cached, least
        recently used out, while the cache holds at most `cache_rows` rows; nothing else
        outlives the pass, so its memory is set by its rows alone.
        """
        device = self.score_row.device
        ids: list[int] = []
        positions: list[torch.Tensor] = []
        computed: dict[bytes, Rows] = {}  # heads this pass runs, by their ids
        cached: dict[bytes, int] = {}  # cached heads it reads: offset among their rows
        cached_rows = hits = 0
        heads: list[Head] = []  # per group
        for group in groups:
            shared, head = group.shared, group.head
            key = array("i", shared[:head]).tobytes() if head else None
            if key is None:
                heads.append(Head(HeadSource.NONE, None, 0))
            elif key in self.cache:
                if key not in cached:
                    cached[key] = cached_rows
                    cached_rows += head
                heads.append(Head(HeadSource.CACHED, key, head))
                hits += 1
            else:
                if key not in computed:
                    computed[key] = Rows(len(ids), head)
                    ids += shared[:head]
                    positions.append(torch.arange(head, device=device))
                else:
                    hits += 1
                heads.append(Head(HeadSource.COMPUTED, key, head))
        spans: list[Span] = []
        for own in computed.values():
            spans += chunks(own, NO_ROWS, NO_ROWS)
        prompts: list[Rows] = []  # each group's shared rows after its head
        tails: list[tuple[int, Rows]] = []  # (group, rows) of each tail
        for g, group in enumerate(groups):
            shared, head = group.shared, group.head
            prompts.append(Rows(len(ids), len(shared) - head))
            ids += shared[head:]
            positions.append(torch.arange(head, len(shared), device=device))
            for tail in group.tails:
                tails.append((g, Rows(len(ids), len(tail))))
                ids += tail
                positions.append(torch.arange(len(shared), len(shared) + len(tail), device=device))
        rows = len(ids)

        def head_rows(g: int) -> Rows:
            head = heads[g]
            if head.source is HeadSource.CACHED:
                # Cached keys follow the pass's own.
                return Rows(rows + cached[head.key], head.length)  # type: ignore[index]
            if head.source is HeadSource.COMPUTED:
                return computed[head.key]  # type: ignore[index]
            return NO_ROWS

        for g, prompt in enumerate(prompts):
            spans += chunks(prompt, head_rows(g), NO_ROWS)
        for g, tail in tails:
            spans += chunks(tail, head_rows(g), prompts[g])
        # The last layer only carries each tail's final row on.
        last_spans = [
            Span(tail.start + tail.length - 1, 1, j, *head_rows(g), *prompts[g], *tail)
            for j, (g, tail) in enumerate(tails)
        ]
        x = self.base.embed_tokens(torch.tensor(ids, device=device))
        cos, sin = self._rope_tables(torch.cat(positions), x)
        last = torch.tensor([tail.start + tail.length - 1 for _, tail in tails], device=device)
        final = len(self.layers) - 1
        new_heads: dict[bytes, HeadLayers] = {
            key: [] for key, head in computed.items() if head.length <= self.cache_rows
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
                attend(q, k, v, spans, out, self.scale)
                x = self._mlp(i, x.add_(self._o_proj(i, out)))
            else:
                out = torch.empty(
                    len(tails), self.heads, self.head_dim, device=device, dtype=x.dtype
                )
                attend(q, k, v, last_spans, out, self.scale)
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
        for (g, _), score in zip(tails, scores):
            result[g].append(score)
        return result

    @property
    def cached_rows(self) -> int:
        """Token rows of the heads in the cache (a handful of entries)."""
        return sum(layers[0][0].shape[0] for layers in self.cache.values())

    def _remember(self, key: bytes, layers: HeadLayers) -> None:
        """Cache a head's keys and values, evicting the least recently used past cache_rows."""
        n = layers[0][0].shape[0]
        while self.cache and self.cached_rows + n > self.cache_rows:
            self.cache.popitem(last=False)
        self.cache[key] = layers


class Qwen3Reranker:
    """Qwen3-Reranker: the model card's prompt, scored by `PackedQwen3`.

    A prepared request's payload is its `PromptIds`, with one tail per distinct document.
    """

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

    def prepare(self, query, documents, instruction, max_tokens_per_doc) -> Prepared[PromptIds]:
        instruction = instruction or self.settings.instruction
        built = self.prompt.build(query, [], instruction)
        # Identical tails (duplicate documents, or all documents once the head fills the
        # budget) are scored once. Tails are kept as 4-byte ids and tokenized a slice of
        # documents at a time, so a request's ids take about 4 bytes a token, not the ~100 of
        # Python lists and the tokenizer's own encodings.
        unique: dict[bytes, int] = {}
        tails: list[array] = []
        slot: list[int] = []
        tokens = len(built.shared)
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
            shared=len(built.shared),
            costs=[len(t) for t in tails],
            slot=slot,
            tokens=tokens,
            payload=replace(built, tails=tails),
        )

    def forward(self, parts: list[tuple[Prepared[PromptIds], list[int]]]) -> list[list[float]]:
        groups = [
            replace(p.payload, tails=[p.payload.tails[u] for u in units]) for p, units in parts
        ]
        return self.packed.score_pass(groups)
