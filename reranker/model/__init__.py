"""The model code behind the `Engine` protocol, one responsibility a module.

* `prompt`: Qwen3-Reranker's prompt as token ids, a shared part and one tail per document.
* `attention`: the packed-attention kernel, many sequences of one pass in a few SDPA calls.
* `qwen3`: the Qwen3-Reranker scorer and its packed forward pass, with the prompt-head cache.
* `cross_encoder`: the classic sequence-classification scorer.
* `loader`: device and dtype, the scorer chosen from config.json, `TransformersEngine`.
"""
