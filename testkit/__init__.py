"""Test machinery shared by the tests, the benchmarks and the demo; never part of the product.

The images install the product packages (reranker, modelservice, gateway) only; this package is
installed by `make setup` beside the `test` extra, from its own pyproject.toml:

- `hub`: a Hugging Face Hub stand-in on 127.0.0.1 (the ModelCache download's tests);
- `tei`: a TEI stand-in written from TEI 1.9.3's OpenAPI document;
- `processes`: servers in a thread, services as processes on loopback ports, waited for healthy;
- `models`: random-weight rerankers in the real architectures with the real tokenizers, and the
  Qwen3-Reranker model card's recipe;
- `podrunner`: real reranker processes standing in for simulated (kwok) pods;
- `localstack`: operator, pod runner and gateway together on loopback, and a closed-loop load.
"""
