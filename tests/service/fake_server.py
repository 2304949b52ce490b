"""`python tests/service/fake_server.py`: the service on `FakeEngine`, in a process of its own,
for the tests that send it signals. Settings come from RERANKER_* as in `python -m reranker`;
FAKE_BLOCK=1 makes every forward pass hang (30 s), so that a request stays in flight."""

from __future__ import annotations

import os
import threading

from conftest import FakeEngine

from reranker.app import create_app
from reranker.server import build_server
from reranker.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    gate = threading.Event() if os.environ.get("FAKE_BLOCK") == "1" else None
    build_server(create_app(settings, FakeEngine(score_gate=gate)), settings).run()
