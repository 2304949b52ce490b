"""Settings come from RERANKER_* variables once; device and dtype resolve as the issue says."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from reranker.model.loader import resolve_device, resolve_dtype
from reranker.settings import Settings


def test_defaults():
    s = Settings(_env_file=None)
    assert s.model == "Qwen/Qwen3-Reranker-0.6B"
    assert s.port == 8000
    assert s.max_length == 8192
    assert s.instruction == (
        "Given a web search query, retrieve relevant passages that answer the query"
    )
    assert s.api_key is None


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("RERANKER_MODEL", "/models/Qwen/Qwen3-Reranker-0.6B")
    monkeypatch.setenv("RERANKER_PORT", "9001")
    monkeypatch.setenv("RERANKER_MAX_DOCUMENTS", "7")
    monkeypatch.setenv("RERANKER_API_KEY", "")
    monkeypatch.setenv("RERANKER_DEVICE", "cpu")
    s = Settings()
    assert (s.model, s.port, s.max_documents, s.api_key, s.device) == (
        "/models/Qwen/Qwen3-Reranker-0.6B",
        9001,
        7,
        None,
        "cpu",
    )


def test_load_settings_are_read(monkeypatch):
    monkeypatch.setenv("RERANKER_BATCH_REQUESTS", "false")
    monkeypatch.setenv("RERANKER_REQUEST_TIMEOUT", "2.5")
    monkeypatch.setenv("RERANKER_SHUTDOWN_TIMEOUT", "0")
    s = Settings()
    assert (s.batch_requests, s.request_timeout, s.shutdown_timeout) == (False, 2.5, 0)
    monkeypatch.delenv("RERANKER_BATCH_REQUESTS")
    assert Settings().batch_requests is True  # batching across requests by default


@pytest.mark.parametrize(
    "name,value",
    [
        ("RERANKER_DEVICE", "tpu"),
        ("RERANKER_PORT", "0"),
        ("RERANKER_MAX_LENGTH", "8"),
        ("RERANKER_REQUEST_TIMEOUT", "0"),
        ("RERANKER_BATCH_REQUESTS", "sometimes"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("RERANKER_").lower()):
        Settings()


@pytest.mark.parametrize("available, expected", [(True, "cuda"), (False, "cpu")])
def test_auto_device_is_cuda_where_there_is_one(monkeypatch, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_on_cuda_is_bfloat16_where_supported_else_float16(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_dtype("auto", "cuda") is expected


def test_auto_dtype_on_cpu_is_float32_and_a_named_dtype_is_kept():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("float16", "cuda") is torch.float16


def test_bodies_in_flight_must_hold_one_body_of_the_largest_size():
    with pytest.raises(ValidationError, match="RERANKER_BODY_BYTES_IN_FLIGHT"):
        Settings(_env_file=None, max_body_bytes=2048, body_bytes_in_flight=1024)


def test_the_served_model_name_is_what_health_and_info_report(monkeypatch):
    """RERANKER_SERVED_MODEL_NAME (the operator sets it to the ModelService's name) names the model
    in /health and /info instead of its path; unset or empty, the model itself does."""
    from reranker.model.loader import TransformersEngine

    monkeypatch.setenv("RERANKER_MODEL", "/models/models/Qwen--Qwen3-Reranker-0.6B/main")
    monkeypatch.setenv("RERANKER_DEVICE", "cpu")
    assert TransformersEngine(Settings()).info.model == "/models/models/Qwen--Qwen3-Reranker-0.6B/main"
    monkeypatch.setenv("RERANKER_SERVED_MODEL_NAME", "")
    assert Settings().model_name == "/models/models/Qwen--Qwen3-Reranker-0.6B/main"
    monkeypatch.setenv("RERANKER_SERVED_MODEL_NAME", "search-rerank")
    assert TransformersEngine(Settings()).info.model == "search-rerank"
