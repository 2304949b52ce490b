"""Processes and servers for the tests, the benchmarks and the demo, on loopback only.

`ServerThread` runs an aiohttp app on a loopback port in a thread of its own; `start_process`
runs `python -m <module>` as a process of its own and waits for its /health;
`start_reranker` does that for the real reranker service (`python -m reranker`) on a tiny model
from testkit.models; `write_models_file` writes a static GATEWAY_MODELS_FILE for `python -m
gateway`; `free_port` picks a free loopback port.

No child outlives what started it: `start_process` puts each in a process group of its own,
stopped whole; the child gets SIGTERM when its parent dies, even by SIGKILL
(`die_with_parent`, PR_SET_PDEATHSIG); whatever still runs at exit is stopped (atexit); and
SIGTERM or SIGHUP end the run as Ctrl-C does (`interrupt_on_termination`), so its `finally`
blocks run.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


# --- children that never outlive what started them ------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for Popen: the child gets SIGTERM when this process dies, even by SIGKILL
    (Linux's PR_SET_PDEATHSIG; strictly when the thread that started it ends, so start
    long-lived children from a thread that lives as long as they should: the main one, or a
    pool's)."""
    parent = os.getpid()

    def set_death_signal() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before the call: no signal will come
                os._exit(1)

    return set_death_signal


def interrupt(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop `process` as Ctrl-C would: SIGINT (kopf and uvicorn shut down cleanly on it), then
    SIGKILL if it has not exited within `timeout` seconds; returns once it has exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP end this process as Ctrl-C does (KeyboardInterrupt in the main thread),
    so that its `finally` blocks and `stop_children` run; left alone where a handler is set."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, signal.default_int_handler)


_children: set["BackendProcess"] = set()


@atexit.register
def stop_children() -> None:
    """Stops every process start_process started that is still running."""
    for child in list(_children):
        child.stop()


@dataclass(eq=False)
class BackendProcess:
    """A server started as a process of its own on a loopback port (leader of its own process
    group: `stop()` ends the group)."""

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
        _children.discard(self)
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


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
    `<url>/health` (or `health_url`) answers 200. The process never outlives this one: it is
    stopped at exit (atexit), on SIGTERM or SIGHUP as on Ctrl-C (interrupt_on_termination),
    and when this one dies by a signal (die_with_parent)."""
    interrupt_on_termination()
    out = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], env={**os.environ, **env},
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(),
    )
    backend = BackendProcess(process, port, log)
    _children.add(backend)
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
