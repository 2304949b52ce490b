"""RERANKER_GPU_MEMORY_MIB: on CUDA the reranker caps its allocator at the pod's GPU share.

No GPU here: torch.cuda's device query and cap are replaced by recorders, so what is checked is
the call the engine makes (the fraction of the device's memory), before it loads any model."""
from __future__ import annotations

import pytest
import torch

from reranker.model.loader import TransformersEngine, memory_fraction
from reranker.settings import Settings


def test_the_fraction_is_the_cap_over_the_device_at_most_all_of_it():
    l4 = 23034 * 1024 * 1024
    assert memory_fraction(2048, l4) == pytest.approx(2048 / 23034)
    assert memory_fraction(40000, l4) == 1.0


def test_the_setting_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("RERANKER_GPU_MEMORY_MIB", "2048")
    assert Settings(model="m").gpu_memory_mib == 2048
    monkeypatch.delenv("RERANKER_GPU_MEMORY_MIB")
    assert Settings(model="m").gpu_memory_mib is None


@pytest.mark.parametrize("cap, expected", [(2048, [2048 / 81559]), (None, [])])
def test_the_engine_caps_cuda_memory_before_loading(monkeypatch, tmp_path, cap, expected):
    calls: list[float] = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: type("Props", (), {"total_memory": 81559 * 1024 * 1024})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *a: calls.append(f))
    engine = TransformersEngine(Settings(model=str(tmp_path / "absent"), device="cuda", gpu_memory_mib=cap))
    with pytest.raises(Exception):
        engine.start()  # no model there: the cap comes first
    assert calls == pytest.approx(expected)
