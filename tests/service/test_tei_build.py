"""`make tei` (images/tei/build.sh): the machine-wide cache answers a second call without cargo,
and the router it holds runs with nothing but its own folder (ONNX Runtime by rpath)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from testkit import teirouter


def test_a_warm_make_tei_is_a_cache_hit(tei_binary):
    start = time.monotonic()
    done = subprocess.run(["make", "-s", "tei"], cwd=teirouter.REPO, capture_output=True,
                          text=True, check=True)
    elapsed = time.monotonic() - start
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder == tei_binary.parent
    assert elapsed < 5, elapsed
    assert "Compiling" not in done.stderr and "cargo took" not in done.stderr
    key = (folder / "BUILD-KEY").read_text()
    assert "features=candle,ort,http" in key and "lto=off" in key
    assert folder.name.startswith("1.9.3-candle-ort-http-")


def test_the_router_finds_onnx_runtime_next_to_itself(tei_binary):
    env = {"PATH": os.environ["PATH"]}  # no LD_LIBRARY_PATH
    linked = subprocess.run(["ldd", str(tei_binary)], capture_output=True, text=True, env=env,
                            check=True).stdout
    line = next(l for l in linked.splitlines() if "libonnxruntime" in l)
    assert str(tei_binary.parent) in line
    version = subprocess.run([str(tei_binary), "--version"], capture_output=True, text=True,
                             env=env, check=True)
    assert "1.9.3" in version.stdout
