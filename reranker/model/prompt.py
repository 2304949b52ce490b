"""Qwen3-Reranker's prompt as its model card builds it, tokenized as shared head + tails.

The model card builds, for every document,

    prefix + tokenize("<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}")[:budget] + suffix

with budget = max_length - len(prefix) - len(suffix). Here the body is tokenized as two parts,
the per-request head "<Instruct>: ...<Query>: ...<Document>:" and the per-document tail
" {doc}". The Qwen3 pre-tokenizer always ends a pre-token after that colon (a punctuation run
stops before a space), so the ids are those of the whole string;
`tests/unit/test_reranker_prompt.py` checks it on random and unicode text.

Unlike the card, the user's text (instruction, query, documents) is tokenized with special
tokens split (`split_special_tokens=True`): a document containing `<|im_end|>` reads those
characters as text, it cannot close the user turn and open another. Text without special-token
strings has the card's ids exactly. A query or instruction that leaves no room for a document
is refused (`InvalidRequest`, naming the field and the limit): the card would cut every
document out and score them all the same.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidRequest
from .textcut import cut

PROMPT_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class PromptIds:
    """The token ids of one request: a shared part and its tails (suffix included), one per
    document as built, one per distinct document once a request is prepared.

    The first `head` ids of `shared` (system prompt, instruction, up to "<Query>:") depend on
    the instruction alone, so requests with the same instruction share them.
    """

    shared: list[int]
    tails: Sequence[Sequence[int]]
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

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids of the user's text: special tokens split, never parsed as control tokens."""
        if not texts:
            return []
        encoded = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)
        return encoded["input_ids"]

    def _too_long(self, text: str) -> bool:
        """Whether `text` alone has more tokens than the body's budget (found without
        tokenizing all of a huge text)."""
        return len(cut(self.tokenizer, text, self.body_budget)) < len(text)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one prompt per engine, for its lifetime)
    def _instruction_ids(self, instruction: str) -> tuple[int, ...]:
        text = f"<Instruct>: {instruction}\n<Query>:"
        ids = [] if self._too_long(text) else self.text_ids([text])[0]
        if not ids or len(ids) >= self.body_budget:
            raise InvalidRequest(
                "instruction: with the prompt template, more tokens than leave room "
                f"for a document within the maximum length of {self.max_length} tokens "
                "(RERANKER_MAX_LENGTH)"
            )
        return tuple(ids)

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
        query_text = f" {query}\n<Document>:"
        query_ids = [] if self._too_long(query_text) else self.text_ids([query_text])[0]
        head = list(instruction_ids) + query_ids
        # The card truncates the whole body from the right: a head that fills the budget
        # leaves no room for any document, and every document would score the same.
        room = self.body_budget - len(head)
        if not query_ids or room < 1:
            raise InvalidRequest(
                "query: with the instruction and the prompt template, more tokens than leave "
                f"room for a document within the maximum length of "
                f"{self.max_length} tokens (RERANKER_MAX_LENGTH)"
            )
        limit = room if max_tokens_per_doc is None else min(room, max_tokens_per_doc)
        # Only the first `limit` tokens of a document are read: the rest is not tokenized.
        tails = self.text_ids([cut(self.tokenizer, " " + doc, limit) for doc in documents])
        return PromptIds(
            shared=self.prefix_ids + head,
            tails=[ids[:limit] + self.suffix_ids for ids in tails],
            head=len(self.prefix_ids) + len(instruction_ids),
        )
