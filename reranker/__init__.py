"""Qwen3-Reranker service: a Cohere-compatible rerank API over transformers and torch."""

__version__ = "0.1.0"
