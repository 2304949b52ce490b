"""Fixtures for the service tests: a real uvicorn server on a loopback port, real or fake engine.

`serve(settings, engine=None)` starts `create_app(settings, engine)` under uvicorn in a thread
on a free 127.0.0.1 port and returns its base URL; servers stop at the end of the test. The
real engine runs a tiny random Qwen3 model with the real tokenizer (testkit/models.py);
`FakeEngine` scores by word overlap, instantly, and can be told to load slowly, fail, or block,
for the error paths.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from reranker.app import create_app
from reranker.engine import EngineInfo
from reranker.planning import Prepared
from reranker.server import build_server
from reranker.settings import Settings
from testkit.models import shared_tiny_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEngine:
    """Scores = number of query words in the document minus 1 (as logit_yes - logit_no).

    Implements the engine protocol (`prepare`, `forward`): a document costs its word count plus
    one token, requests share nothing. `passes` records each forward pass as a list of
    (query, documents) per request in it. Can be told to load slowly, fail, or block.
    """

    def __init__(
        self,
        *,
        load_gate: threading.Event | None = None,
        fail_start: bool = False,
        fail_score: bool = False,
        score_gate: threading.Event | None = None,
    ):
        self.info = EngineInfo(
            model="fake-reranker", device="cpu", dtype="float32", max_length=8192
        )
        self.load_gate = load_gate
        self.fail_start = fail_start
        self.fail_score = fail_score
        self.score_gate = score_gate
        self.scoring = threading.Event()
        self.calls: list[tuple] = []
        self.passes: list[list[tuple[str, list[str]]]] = []
        self.stopped = False

    def start(self) -> None:
        if self.load_gate is not None:
            self.load_gate.wait(30)
        if self.fail_start:
            raise OSError("no such model directory: /models/missing")

    def stop(self) -> None:
        self.stopped = True

    def prepare(self, query, documents, instruction=None, max_tokens_per_doc=None) -> Prepared:
        self.calls.append((query, list(documents), instruction, max_tokens_per_doc))
        costs = [len(d.split()) + 1 for d in documents]
        return Prepared(
            shared=0,
            costs=costs,
            slot=list(range(len(documents))),
            tokens=sum(costs),
            payload=(query, list(documents)),
        )

    def forward(self, parts):
        self.passes.append([(p.payload[0], [p.payload[1][u] for u in units]) for p, units in parts])
        self.scoring.set()
        if self.score_gate is not None:
            self.score_gate.wait(30)
        if self.fail_score:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (secret detail)")
        out = []
        for prepared, units in parts:
            query, documents = prepared.payload
            words = set(query.lower().split())
            out.append([float(len(words & set(documents[u].lower().split()))) - 1.0 for u in units])
        return out


class RunningServer:
    """The service's own server (`reranker.server.build_server`) on 127.0.0.1:`port`.

    `stop()` skips the shutdown delay (it sets `should_exit`, as a second signal would)."""

    def __init__(self, app, port: int):
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        settings = app.state.settings.model_copy(update={"host": "127.0.0.1", "port": port})
        self.server = build_server(app, settings, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "RunningServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def serve():
    running: list[RunningServer] = []

    def start(settings: Settings, engine=None) -> str:
        server = RunningServer(create_app(settings, engine), free_port()).start()
        running.append(server)
        return server.url

    yield start
    for server in running:
        server.stop()


def wait_ready(client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout}s: {client.get('/health').text}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return shared_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    """The real engine on the tiny model, shared by a module's tests."""
    import httpx

    model = shared_tiny_model(tmp_path_factory.getbasetemp())
    settings = Settings(model=str(model), device="cpu", max_documents=50)
    server = RunningServer(create_app(settings), free_port()).start()
    with httpx.Client(base_url=server.url) as client:
        wait_ready(client)
    yield server.url
    server.stop()
