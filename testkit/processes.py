"""Processes and servers for the tests, the benchmarks and the demo, on loopback only.

`ServerThread` runs an aiohttp app on a loopback port in a thread of its own; `start_process`
runs `python -m <module>` as a process of its own and waits for its /health;
`start_reranker` does that for the real reranker service (`python -m reranker`) on a tiny model
from testkit.models; `write_models_file` writes a static GATEWAY_MODELS_FILE for `python -m
gateway`; `free_port` picks a free loopback port.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """An aiohttp app served on 127.0.0.1 by an event loop in a thread of its own."""

    def __init__(self, app: web.Application, port: int | None = None):
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> "ServerThread":
        self._thread.start()

        async def up():
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self.run(up())
        return self

    def run(self, coroutine, timeout: float = 60):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function, *args):
        """Call `function(*args)` on the server's loop (registry updates) and return its result."""
        async def call():
            return function(*args)
        return self.run(call())

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class BackendProcess:
    """A server started as a process of its own on a loopback port."""

    process: subprocess.Popen
    port: int
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{process.args} exited with {process.returncode}: {detail}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not healthy after {timeout} s")


def start_process(
    module: str,
    env: dict[str, str],
    port: int,
    *,
    args: tuple[str, ...] = (),
    log: Path | None = None,
    timeout: float = 180,
    health_url: str | None = None,
) -> BackendProcess:
    """`python -m <module> <args>` with `env` added to this one's, waited for until
    `<url>/health` (or `health_url`) answers 200."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], env={**os.environ, **env},
        stdout=out, stderr=subprocess.STDOUT,
    )
    backend = BackendProcess(process, port, log)
    try:
        wait_healthy(health_url or backend.url, process, timeout, log)
    except BaseException:
        backend.stop()
        raise
    return backend


def start_reranker(
    model_dir: str | os.PathLike,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 180,
) -> BackendProcess:
    """The real reranker service (`python -m reranker`) on `model_dir` (a tiny model from
    testkit.models), on 127.0.0.1, offline, one torch thread; `env` adds or overrides
    RERANKER_* settings."""
    port = port or free_port()
    settings = {
        "RERANKER_MODEL": str(model_dir),
        "RERANKER_HOST": "127.0.0.1",
        "RERANKER_PORT": str(port),
        "RERANKER_DEVICE": "cpu",
        "RERANKER_THREADS": "1",
        "RERANKER_LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    return start_process("reranker", settings, port, log=log, timeout=timeout)


def write_models_file(path: Path, models: list[dict[str, Any]]) -> Path:
    """A GATEWAY_MODELS_FILE (registry.load_models_file's format)."""
    path.write_text(json.dumps({"models": models}))
    return path
