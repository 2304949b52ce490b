"""`python -m gateway` with GATEWAY_MODELS_FILE, as the benchmark and `make demo` run it."""

from __future__ import annotations

import cohere

from testkit.processes import free_port, start_process, write_models_file


def test_python_m_gateway_serves_a_models_file(backends, tmp_path):
    models = write_models_file(tmp_path / "models.json", [
        {"name": "qwen3-reranker", "task": "rerank", "engine": "reranker",
         "model_id": "Qwen/Qwen3-Reranker-0.6B", "endpoints": [backends.qwen.address]},
    ])
    port = free_port()
    gateway = start_process("gateway", {"GATEWAY_MODELS_FILE": str(models),
                                        "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)},
                            port, log=tmp_path / "gateway.log", timeout=60)
    try:
        co = cohere.Client(api_key="unused", base_url=gateway.url)
        through = co.rerank(model="Qwen/Qwen3-Reranker-0.6B", query="q", documents=["a", "b q"])
        direct = cohere.Client(api_key="unused", base_url=backends.qwen.url).rerank(
            model="x", query="q", documents=["a", "b q"])
        assert [(r.index, r.relevance_score) for r in through.results] == [
            (r.index, r.relevance_score) for r in direct.results]
    finally:
        gateway.stop()
