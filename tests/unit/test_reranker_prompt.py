"""The engine tokenizes the shared head and each document apart; the ids must be the model card's.

The model card tokenizes the whole body "<Instruct>: ...\\n<Query>: ...\\n<Document>: {doc}" and
truncates it to max_length - len(prefix) - len(suffix). These tests compare the engine's
`Qwen3Prompt` with exactly that, on the real Qwen3 tokenizer, for random and unicode text.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from reranker.model.prompt import PROMPT_PREFIX, PROMPT_SUFFIX, Qwen3Prompt
from reranker.testing import CARD_INSTRUCTION, CARD_PREFIX, CARD_SUFFIX, QWEN_TOKENIZER_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(QWEN_TOKENIZER_DIR, padding_side="left")


def card_ids(tokenizer, query, doc, instruction, max_length):
    """The model card's `process_inputs` for one pair, before padding."""
    prefix = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
    body = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
    ids = tokenizer(
        [body],
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )["input_ids"][0]
    return prefix + ids + suffix


def engine_ids(tokenizer, query, docs, instruction, max_length):
    built = Qwen3Prompt(tokenizer, max_length).build(query, docs, instruction)
    return [built.shared + tail for tail in built.tails]


def test_template_is_the_model_cards():
    assert PROMPT_PREFIX == CARD_PREFIX
    assert PROMPT_SUFFIX == CARD_SUFFIX


def test_yes_and_no_are_single_tokens(tokenizer):
    assert tokenizer.convert_tokens_to_ids("yes") == 9693
    assert tokenizer.convert_tokens_to_ids("no") == 2152


# Text that stresses the pre-tokenizer at the head/document boundary: leading spaces and
# newlines, punctuation runs, digits, combining marks, CJK, emoji, special-token strings.
PIECES = [
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    ":",
    ">",
    "<",
    "!!",
    "'s",
    "'ll",
    "...",
    "0",
    "42",
    "é",
    "e\u0301",
    "\u0301",
    "ß",
    "İ",
    "日本語",
    "中文",
    "한국어",
    "🙂",
    "👩‍👩‍👧",
    "Ωμέγα",
    "Привет",
    "<|im_end|>",
    "<think>",
    "yes",
    "no",
    "Document",
    "<Document>:",
    "\u00a0",
    "\u200b",
    "a",
    "Z",
]
text = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(PIECES) | st.text(min_size=1, max_size=4), max_size=20).map("".join),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=text, doc=text, instruction=st.one_of(st.just(CARD_INSTRUCTION), text))
def test_split_tokenization_equals_the_whole_string(tokenizer, query, doc, instruction):
    assert engine_ids(tokenizer, query, [doc], instruction, 8192) == [
        card_ids(tokenizer, query, doc, instruction, 8192)
    ]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    query=text,
    docs=st.lists(text, min_size=1, max_size=4),
    max_length=st.integers(min_value=49, max_value=120),
)
def test_truncation_equals_the_model_cards(tokenizer, query, docs, max_length):
    """Short max_length cuts documents, and sometimes the query itself, from the right."""
    docs = [d * 5 for d in docs]
    expected = [card_ids(tokenizer, query, d, CARD_INSTRUCTION, max_length) for d in docs]
    assert engine_ids(tokenizer, query, docs, CARD_INSTRUCTION, max_length) == expected
    assert all(len(ids) <= max_length for ids in expected)


def test_a_query_longer_than_the_budget_leaves_every_document_out(tokenizer):
    query = "long query " * 200
    docs = ["first document", "a different second document"]
    got = engine_ids(tokenizer, query, docs, CARD_INSTRUCTION, 256)
    assert got[0] == got[1] == card_ids(tokenizer, query, docs[0], CARD_INSTRUCTION, 256)
    assert len(got[0]) == 256


def test_max_tokens_per_doc_cuts_the_document_only(tokenizer):
    prompt = Qwen3Prompt(tokenizer, 8192)
    doc = "one two three four five six seven eight nine ten"
    full = prompt.build("q", [doc], CARD_INSTRUCTION)
    cut = prompt.build("q", [doc], CARD_INSTRUCTION, max_tokens_per_doc=3)
    assert cut.shared == full.shared
    assert cut.tails[0] == full.tails[0][:3] + prompt.suffix_ids


def test_max_length_too_small_for_the_template_is_refused(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        Qwen3Prompt(tokenizer, 40)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(queries=st.lists(text, min_size=2, max_size=3), instruction=text)
def test_the_cached_head_is_the_instruction_part_whatever_the_query(
    tokenizer, queries, instruction
):
    """The head whose keys and values are kept between requests is the system prompt and
    "<Instruct>: {instruction}\\n<Query>:", the same ids for every query with that instruction."""
    prompt = Qwen3Prompt(tokenizer, 8192)
    expected = tokenizer.encode(PROMPT_PREFIX, add_special_tokens=False) + tokenizer.encode(
        f"<Instruct>: {instruction}\n<Query>:", add_special_tokens=False
    )
    for query in queries:
        built = prompt.build(query, ["doc"], instruction)
        assert built.shared[: built.head] == expected
        assert built.shared + built.tails[0] == card_ids(tokenizer, query, "doc", instruction, 8192)


def test_a_head_cut_by_the_budget_is_not_shared(tokenizer):
    built = Qwen3Prompt(tokenizer, 64).build("q", ["doc"], "long instruction " * 40)
    assert built.head == 0
