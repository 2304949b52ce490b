"""Fixtures for the gateway tests: real processes and servers on 127.0.0.1 only.

Backends (session-wide): the real reranker service (`python -m reranker`) on the tiny Qwen3
model and on the tiny MiniLM cross-encoder (testkit/models.py), and the real TEI router
(tests/conftest.py: `make tei`'s build) serving all-MiniLM-L6-v2 as an embedder and a
random-weight cross-encoder as a reranker. The TEI stand-in (testkit/tei.py) is left for
what the real router cannot be made to do on demand: answer slowly (timeouts, the gateway's own
concurrency cap), fail with a chosen status, and list what reached it (`tei_server`).
`gateway(...)` starts the gateway in-process (its own event loop in a thread) over a registry
the test fills, with settings and a scaler the test chooses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.registry import Endpoint, ModelInfo, ModelKey, Registry
from gateway.scaling import NoScaler
from gateway.settings import Settings
from testkit.processes import ServerThread, start_reranker
from testkit.tei import TeiBehaviour, tei_app
from testkit.models import shared_cross_encoder, shared_tiny_model

NAMESPACE = "apps"


@dataclass
class Backends:
    qwen: object  # BackendProcess: the reranker service on the tiny Qwen3-Reranker
    minilm: object  # BackendProcess: the reranker service on the tiny MiniLM cross-encoder
    tei_embed: object  # tei_router.RouterProcess: the real TEI router on all-MiniLM-L6-v2
    tei_rerank: object  # tei_router.RouterProcess: the real TEI router on a cross-encoder


@pytest.fixture(scope="session")
def backends(tmp_path_factory, real_tei_embed, real_tei_rerank):
    root = tmp_path_factory.getbasetemp()
    logs = tmp_path_factory.mktemp("logs")
    qwen = start_reranker(shared_tiny_model(root), log=logs / "qwen.log")
    minilm = start_reranker(shared_cross_encoder(root), log=logs / "minilm.log")
    yield Backends(qwen, minilm, real_tei_embed, real_tei_rerank)
    for process in (qwen, minilm):
        process.stop()


def model(name: str, task: str, engine: str, model_id: str, replicas: int = 1,
          namespace: str = NAMESPACE) -> ModelInfo:
    return ModelInfo(ModelKey(namespace, name), task, engine, model_id, replicas)


def standard_models(b: Backends) -> list[tuple[ModelInfo, list[str]]]:
    return [
        (model("qwen3-reranker", "rerank", "reranker", "Qwen/Qwen3-Reranker-0.6B"), [b.qwen.address]),
        (model("minilm", "rerank", "reranker", "cross-encoder/ms-marco-MiniLM-L-6-v2"),
         [b.minilm.address]),
        (model("tei-reranker", "rerank", "tei", "test/tei-cross-encoder"), [b.tei_rerank.address]),
        (model("all-minilm", "embed", "tei", "sentence-transformers/all-MiniLM-L6-v2"),
         [b.tei_embed.address]),
    ]


class Gateway:
    """A gateway in-process on a loopback port, over a registry the test fills."""

    def __init__(self, settings: Settings, scaler):
        self.registry = Registry(NAMESPACE)
        self.settings = settings
        self.server = ServerThread(create_app(settings, self.registry, scaler)).start()
        self.url = self.server.url
        self.call(self.registry.mark_synced)

    def call(self, function, *args):
        return self.server.call(function, *args)

    def add(self, info: ModelInfo, addresses: list[str]) -> None:
        self.call(self.registry.upsert_model, info)
        self.set_endpoints(info.key, addresses)

    def set_endpoints(self, key: ModelKey, addresses: list[str]) -> None:
        endpoints = [Endpoint(f"{key.name}-{i}", a) for i, a in enumerate(addresses)]
        self.call(self.registry.set_endpoints, key, endpoints)


@pytest.fixture
def gateway():
    started: list[Gateway] = []

    def start(models=(), scaler=None, **settings) -> Gateway:
        gw = Gateway(Settings(host="127.0.0.1", namespace=NAMESPACE, **settings),
                     scaler or NoScaler())
        for info, addresses in models:
            gw.add(info, addresses)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.server.stop()


@pytest.fixture
def tei_server():
    """Extra TEI stand-ins a test shapes (slow, failing), stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(**behaviour) -> tuple[ServerThread, TeiBehaviour]:
        b = TeiBehaviour(**behaviour)
        server = ServerThread(tei_app(b)).start()
        started.append(server)
        return server, b

    yield start
    for server in started:
        server.stop()


def dead_address() -> str:
    """A loopback port nothing listens on: connections to it are refused."""
    from testkit.processes import free_port

    return f"127.0.0.1:{free_port()}"


ROOT = Path(__file__).resolve().parents[2]
