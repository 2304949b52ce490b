"""modelservice.cache.download without a network: model_path, select_files (on real repository
listings and on hypothesis' ones), the failure reasons, the progress lines."""

from __future__ import annotations

import errno
import re
from pathlib import PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelservice.cache.download import Context, Progress, classify, model_path, select_files

# Repository listings transcribed from the Hub's file trees (main, 2025); the Hub cannot be
# reached from the test machines.
ALL_MINILM_L6_V2 = """
.gitattributes 1_Pooling/config.json README.md config.json config_sentence_transformers.json
data_config.json model.safetensors modules.json onnx/model.onnx onnx/model_O1.onnx
onnx/model_O2.onnx onnx/model_O3.onnx onnx/model_O4.onnx onnx/model_qint8_arm64.onnx
onnx/model_qint8_avx512.onnx onnx/model_qint8_avx512_vnni.onnx onnx/model_quint8_avx2.onnx
openvino/openvino_model.bin openvino/openvino_model.xml
openvino/openvino_model_qint8_quantized.bin openvino/openvino_model_qint8_quantized.xml
pytorch_model.bin rust_model.ot sentence_bert_config.json special_tokens_map.json tf_model.h5
tokenizer.json tokenizer_config.json train_script.py vocab.txt
""".split()
BGE_RERANKER_V2_M3 = """
.gitattributes README.md assets/BEIR-bge-en-v1.5.png assets/BEIR-e5-mistral.png
assets/CMTEB-retrieval-bge-zh-v1.5.png assets/llama-index.png assets/miracl-bge-m3.png
config.json model.safetensors sentencepiece.bpe.model special_tokens_map.json tokenizer.json
tokenizer_config.json
""".split()
QWEN3_RERANKER_0_6B = """
.gitattributes LICENSE README.md config.json generation_config.json merges.txt
model.safetensors tokenizer.json tokenizer_config.json vocab.json
""".split()
QWEN3_RERANKER_4B = """
.gitattributes LICENSE README.md config.json generation_config.json merges.txt
model-00001-of-00002.safetensors model-00002-of-00002.safetensors
model.safetensors.index.json tokenizer.json tokenizer_config.json vocab.json
""".split()
BGE_M3 = """
.gitattributes 1_Pooling/config.json README.md colbert_linear.pt config.json
config_sentence_transformers.json imgs/bm25.jpg imgs/long.jpg imgs/miracl.jpg imgs/mkqa.jpg
imgs/nqa.jpg imgs/others.webp long.jpg modules.json onnx/Constant_7_attr__value onnx/config.json
onnx/model.onnx onnx/model.onnx_data onnx/sentencepiece.bpe.model
onnx/special_tokens_map.json onnx/tokenizer.json onnx/tokenizer_config.json pytorch_model.bin
sentence_bert_config.json sentencepiece.bpe.model sparse_linear.pt special_tokens_map.json
tokenizer.json tokenizer_config.json
""".split()
# A sentence-transformers model with a Dense module (LaBSE's layout) and PyTorch weights only.
LABSE = """
.gitattributes 1_Pooling/config.json 2_Dense/config.json 2_Dense/pytorch_model.bin
2_Dense/model.safetensors 3_Normalize/.gitkeep README.md config.json
config_sentence_transformers.json model.safetensors modules.json onnx/model.onnx
pytorch_model.bin sentence_bert_config.json special_tokens_map.json tf_model.h5
tokenizer.json tokenizer_config.json vocab.txt
""".split()
OLD_BERT = """
.gitattributes README.md config.json flax_model.msgpack pytorch_model.bin rust_model.ot
tf_model.h5 tokenizer.json tokenizer_config.json vocab.txt
""".split()
SHARDED_BIN = """
config.json pytorch_model-00001-of-00002.bin pytorch_model-00002-of-00002.bin
pytorch_model.bin.index.json tokenizer.json tokenizer_config.json special_tokens_map.json
""".split()

OTHER_FORMATS = re.compile(
    r"(^|/)(onnx|openvino|coreml|tf|flax|imgs|assets)/|\.onnx$|\.onnx_data$|tf_model\.h5$|"
    r"flax_model\.msgpack$|rust_model\.ot$|\.gguf$|\.tflite$|\.pt$|README|\.png$|\.jpg$|"
    r"\.webp$|\.py$|LICENSE|\.gitattributes")


@pytest.mark.parametrize("listing, expected", [
    (ALL_MINILM_L6_V2, ["1_Pooling/config.json", "config.json",
                        "config_sentence_transformers.json", "data_config.json",
                        "model.safetensors", "modules.json", "sentence_bert_config.json",
                        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                        "vocab.txt"]),
    (BGE_RERANKER_V2_M3, ["config.json", "model.safetensors", "sentencepiece.bpe.model",
                          "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]),
    (QWEN3_RERANKER_0_6B, ["config.json", "generation_config.json", "merges.txt",
                           "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                           "vocab.json"]),
    (QWEN3_RERANKER_4B, ["config.json", "generation_config.json", "merges.txt",
                         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                         "model.safetensors.index.json", "tokenizer.json",
                         "tokenizer_config.json", "vocab.json"]),
    (BGE_M3, ["1_Pooling/config.json", "config.json", "config_sentence_transformers.json",
              "modules.json", "pytorch_model.bin", "sentence_bert_config.json",
              "sentencepiece.bpe.model", "special_tokens_map.json", "tokenizer.json",
              "tokenizer_config.json"]),
    (LABSE, ["1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors",
             "config.json", "config_sentence_transformers.json", "model.safetensors",
             "modules.json", "sentence_bert_config.json", "special_tokens_map.json",
             "tokenizer.json", "tokenizer_config.json", "vocab.txt"]),
    (OLD_BERT, ["config.json", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                "vocab.txt"]),
    (SHARDED_BIN, ["config.json", "pytorch_model-00001-of-00002.bin",
                   "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
                   "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]),
], ids=["all-MiniLM-L6-v2", "bge-reranker-v2-m3", "Qwen3-Reranker-0.6B", "Qwen3-Reranker-4B",
        "bge-m3", "LaBSE-layout", "old-bert", "sharded-bin"])
def test_select_files_on_real_listings(listing, expected):
    selected = select_files(listing)
    assert selected == expected
    assert not [f for f in selected if OTHER_FORMATS.search(f)]
    _assert_one_format(selected)


def _assert_one_format(selected):
    for folder in {str(PurePosixPath(f).parent) for f in selected}:
        here = [PurePosixPath(f).name for f in selected if str(PurePosixPath(f).parent) == folder]
        assert not (any(f.endswith(".safetensors") for f in here)
                    and any(f.endswith(".bin") for f in here)), (folder, here)


# --- hypothesis: random repositories built from the names real ones use ---------------------------

FOLDERS = ["", "1_Pooling/", "2_Dense/", "onnx/", "openvino/", "tf/", "coreml/", "imgs/",
           "checkpoint-100/"]
NAMES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "vocab.txt", "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
         "modules.json", "model.safetensors", "model-00001-of-00002.safetensors",
         "model-00002-of-00002.safetensors", "model.safetensors.index.json",
         "pytorch_model.bin", "pytorch_model-00001-of-00002.bin",
         "pytorch_model.bin.index.json", "model.onnx", "model_O4.onnx", "tf_model.h5",
         "flax_model.msgpack", "rust_model.ot", "model.gguf", "model.tflite",
         "openvino_model.bin", "openvino_model.xml", "README.md", "card.png", "train.py",
         "training_args.bin", "colbert_linear.pt", "adapter_model.safetensors"]
listings = st.sets(st.builds(lambda d, n: d + n, st.sampled_from(FOLDERS), st.sampled_from(NAMES)),
                   max_size=40)
WEIGHT_LEVELS = {"", "1_Pooling/", "2_Dense/"}
NEEDED = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "vocab.txt", "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
          "modules.json"}


@settings(max_examples=400, deadline=None)
@given(listings)
def test_select_files_keeps_what_is_needed_once(listing):
    selected = select_files(listing)
    assert set(selected) <= listing and selected == sorted(set(selected))
    assert select_files(selected) == selected  # a selection is its own selection
    assert select_files(reversed(sorted(listing))) == selected
    _assert_one_format(selected)
    assert not [f for f in selected if OTHER_FORMATS.search(f) or "checkpoint-100/" in f
                and not f.endswith(".json")]
    for folder in WEIGHT_LEVELS:
        here = {f[len(folder):] for f in listing if f.startswith(folder) and "/" not in
                f[len(folder):]}
        kept = {f[len(folder):] for f in selected if f.startswith(folder) and "/" not in
                f[len(folder):]}
        assert here & NEEDED <= kept, "a config or tokenizer file is missing"
        shards = {f for f in here if re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", f)}
        bins = {f for f in here if re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin", f)}
        if shards:
            assert shards <= kept and not bins & kept
        elif any(f.endswith(".safetensors") for f in here):
            assert {f for f in here if f.endswith(".safetensors")} <= kept
        elif bins:
            assert bins <= kept
        else:
            assert not {f for f in kept if f.endswith((".bin", ".safetensors"))}


# --- model_path ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, revision, path", [
    ("BAAI/bge-reranker-v2-m3", "main", "models/BAAI--bge-reranker-v2-m3/main"),
    ("Qwen/Qwen3-Reranker-0.6B", "refs/pr/12", "models/Qwen--Qwen3-Reranker-0.6B/refs--pr--12"),
    ("a/b", "release/v1.0/", "models/a--b/release--v1.0--"),
    ("a/b", "0123456789abcdef0123456789abcdef01234567",
     "models/a--b/0123456789abcdef0123456789abcdef01234567"),
])
def test_model_path(model, revision, path):
    assert model_path(model, revision) == path


@pytest.mark.parametrize("model, revision", [
    ("noorg", "main"), ("a/b/c", "main"), ("/b", "main"), ("a/", "main"), ("../x", "main"),
    ("a/b", ""), ("a/b", ".."), ("a/b", "."),
])
def test_model_path_refuses_what_would_leave_the_volume(model, revision):
    with pytest.raises(ValueError):
        model_path(model, revision)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9._-]{1,10}(/[A-Za-z0-9._-]{1,10}){0,3}", fullmatch=True))
def test_model_path_is_one_folder_under_the_model(name, revision):
    try:
        path = model_path(f"org/{name}", revision)
    except ValueError:
        assert name in (".", "..") or revision.replace("/", "--") in (".", "..")
        return
    parts = PurePosixPath(path).parts
    assert parts[:2] == ("models", f"org--{name}") and len(parts) == 3
    assert parts[2] not in (".", "..") and "/" not in parts[2]


# --- failure reasons -------------------------------------------------------------------------------

def test_a_full_volume_says_how_much_to_add():
    ctx = Context("a/b", "main", False, current_file="model.safetensors", missing_bytes=3 << 30)
    failure = classify(OSError(errno.ENOSPC, "No space left on device"), ctx)
    assert failure.reason == "InsufficientStorage" and failure.exit_code == 2
    assert "3.00 GiB" in failure.message and "storage size" in failure.message


def test_an_unknown_error_is_transient():
    failure = classify(RuntimeError("boom"), Context("a/b", "main", False))
    assert failure.exit_code == 1


# --- progress ---------------------------------------------------------------------------------------

def test_progress_logs_at_most_every_interval():
    now = [0.0]
    lines = []
    progress = Progress(1000, interval=5.0, clock=lambda: now[0], emit=lines.append)
    bar = progress.bar_class()(total=1000, desc="x")
    for _ in range(10):
        now[0] += 1.0
        bar.update(100)
    bar.update_transfer(5)
    bar.close()
    assert lines == ["progress: 500/1000 bytes (50.0%)", "progress: 1000/1000 bytes (100.0%)"]


# --- the chart-only pods' wait for their download (python -m modelservice.cache.download --wait) ---

def test_wait_returns_only_once_the_revision_is_complete_on_the_volume(tmp_path):
    import threading
    import time

    from modelservice.cache.download import main, model_path

    snapshot = tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    link = tmp_path / model_path("BAAI/bge-small-en-v1.5", "v1.0")
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (main(["--model", "BAAI/bge-small-en-v1.5", "--revision", "v1.0",
                                                    "--dir", str(tmp_path), "--wait", "--wait-interval", "0.05"]),
                                              done.set()))
    waiter.start()
    time.sleep(0.3)
    assert not done.is_set(), "returned before the revision was complete"
    link.parent.mkdir(parents=True)
    link.symlink_to(snapshot)  # what a complete download makes, last
    waiter.join(timeout=5)
    assert done.is_set()
    assert not (tmp_path / "hub" / "models--BAAI--bge-small-en-v1.5" / "blobs").exists(), "it fetched nothing"
