"""Cutting text before tokenizing it: a request reads at most a few thousand tokens of each
text, so a 14 MB document must not be tokenized in full (the tokenizer's encodings hold about
1.2 KB a token: gigabytes for the text, all of it past the maximum length thrown away).

`cut(tokenizer, text, tokens)` returns a prefix of `text` whose tokens begin with the first
`tokens` tokens of the whole text, found by tokenizing doubling prefixes. Why a prefix's tokens
are the text's: the tokenizers served here (Qwen3's byte-level BPE, WordPiece, SentencePiece)
split the normalized text into pre-tokens ("words": a letter run, a digit, a punctuation run, a
whitespace run) and tokenize each word on its own; cutting the text can only change the word it
falls in and, through the pre-tokenizer's one-character look-ahead and Unicode normalization
at the cut, the word before it. So every token of a prefix outside its last two words is a token
of the whole text, and once a prefix has `tokens` such tokens it is long enough. The search
starts at 8 characters a token (no cut, and no extra work, for shorter text), doubles, and stops
at `(tokens + 2) x` the longest vocabulary entry in characters (128 for Qwen3): `tokens + 2`
words of at least one token each fit in that many characters only if no word is longer, so the
cap is reached only by text with a single word of more than about a megabyte (no space, no
punctuation change), which is then cut inside that word.
"""

from __future__ import annotations

import functools

FIRST_GUESS_CHARS_PER_TOKEN = 8


@functools.lru_cache(maxsize=8)
def longest_token_chars(tokenizer) -> int:
    """The longest vocabulary entry, in characters of its spelling: an upper bound of the
    characters one token covers (a byte-level entry spells one character per byte; WordPiece's
    `##` and SentencePiece's `▁` only add to it)."""
    return max(len(token) for token in tokenizer.get_vocab())


def cut(tokenizer, text: str, tokens: int) -> str:
    """A prefix of `text` whose tokenization starts with the whole text's first `tokens` tokens
    (user text, special tokens split, as the engines tokenize it)."""
    size = FIRST_GUESS_CHARS_PER_TOKEN * tokens + 64
    cap = (tokens + 2) * longest_token_chars(tokenizer)
    while size < len(text):
        encoding = tokenizer(text[:size], add_special_tokens=False, split_special_tokens=True)
        words = [w for w in encoding.word_ids() if w is not None]
        if words:
            stable = sum(1 for w in words if w < words[-1] - 1)
            if stable >= tokens:
                return text[:size]
        if size >= cap:
            return text[:size]
        size = min(2 * size, cap)
    return text
