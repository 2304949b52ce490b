"""The packed-attention kernel: the sequences of one pass attend in a few batched SDPA calls.

A pass packs the rows of many sequences, without padding, into one matrix. Each sequence's
query rows attend to up to three runs of key rows: a prompt head (system prompt and
instruction, computed in this pass or cached), its request's shared rows (the query), then its
own rows, causally. A `Span` names those runs for one chunk of a sequence's query rows;
`attend` sorts the spans by key length, cuts them into buckets, and runs each bucket as one
SDPA call on gathered, padded rows with a mask, so the op count of a pass grows with its
buckets, not its documents.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Attention runs in buckets of sequences, padded: at most ATTENTION_ELEMENTS (query, key)
# pairs and ATTENTION_KEYS gathered key rows per bucket, at most ATTENTION_ROWS query rows per
# sequence chunk. Together they bound the attention scratch (the mask, the gathered keys and
# values) whatever the documents and however long the query.
ATTENTION_ELEMENTS = 1 << 22
ATTENTION_KEYS = 1 << 14
ATTENTION_ROWS = 512


class Rows(NamedTuple):
    """A run of rows of a pass: the first and how many (0: none)."""

    start: int
    length: int


NO_ROWS = Rows(0, 0)


class Span(NamedTuple):
    """Query rows of one sequence chunk and the key rows they attend to.

    Query rows q_start..+q_len attend to the keys head_start..+head_len (a prompt head), then
    prompt_start..+prompt_len (its request's shared rows), then own_start..+own_len (the
    sequence's own), the first two possibly empty; query i sees keys up to
    keys - q_len + i (causal, the chunk being the end of the sequence so far). Its result
    goes to out[out_start + i].
    """

    q_start: int
    q_len: int
    out_start: int
    head_start: int
    head_len: int
    prompt_start: int
    prompt_len: int
    own_start: int
    own_len: int

    @property
    def keys(self) -> int:
        return self.head_len + self.prompt_len + self.own_len


def chunks(own: Rows, head: Rows, prompt: Rows) -> list[Span]:
    """The spans of a sequence whose query, key and output rows are `own`, cut into chunks of
    at most ATTENTION_ROWS query rows, each attending to `head`, `prompt` and its own rows so
    far."""
    spans = []
    for r0 in range(0, own.length, ATTENTION_ROWS):
        r1 = min(own.length, r0 + ATTENTION_ROWS)
        start = own.start + r0
        spans.append(Span(start, r1 - r0, start, *head, *prompt, own.start, r1))
    return spans


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spans: list[Span],
    out: torch.Tensor,
    scale: float,
) -> None:
    """Attention for many short sequences of one pass, written into `out`.

    q [rows, heads, d] holds the pass's query rows; k and v [keys, kv_heads, d] its key rows,
    then any cached prompt heads'; out [n, heads, d]. Spans are sorted by key length and cut
    into buckets of at most `ATTENTION_ELEMENTS` (queries x keys, padded) and `ATTENTION_KEYS`
    gathered key rows, each one SDPA call: the attention scratch stays bounded whatever the
    documents.
    """
    device = q.device
    order = sorted(spans, key=lambda s: (s.keys, s.q_len))
    buckets: list[list[Span]] = []
    current: list[Span] = []
    for span in order:
        grown = current + [span]
        lq = max(s.q_len for s in grown)
        lk = max(s.keys for s in grown)
        if current and (
            len(grown) * lq * lk > ATTENTION_ELEMENTS or len(grown) * lk > ATTENTION_KEYS
        ):
            buckets.append(current)
            grown = [span]
        current = grown
    if current:
        buckets.append(current)
    for bucket in buckets:
        c = Span(*torch.tensor(bucket, device=device).T[:, :, None])  # each field a [B, 1] column
        before = c.head_len + c.prompt_len  # keys ahead of the sequence's own
        lq, lk = int(c.q_len.max()), int((before + c.own_len).max())
        i = torch.arange(lq, device=device)[None, :]
        j = torch.arange(lk, device=device)[None, :]
        q_rows = c.q_start + torch.minimum(i, c.q_len - 1)  # padding repeats a real row
        own = (j - before).clamp(min=0)
        k_rows = torch.where(
            j < c.head_len,
            c.head_start + j,
            torch.where(
                j < before,
                c.prompt_start + j - c.head_len,
                c.own_start + torch.minimum(own, c.own_len - 1),
            ),
        )
        sees = (j[:, None, :] < (before + c.own_len)[:, :, None]) & (
            j[:, None, :] <= (before + c.own_len - c.q_len)[:, :, None] + i[:, :, None]
        )
        out_rows = c.out_start + i
        real = i < c.q_len
        attended = F.scaled_dot_product_attention(
            q[q_rows].transpose(1, 2),
            k[k_rows].transpose(1, 2),
            v[k_rows].transpose(1, 2),
            attn_mask=sees[:, None],
            scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
        ).transpose(1, 2)  # [B, lq, heads, d]
        out.index_copy_(0, out_rows[real], attended[real])
