"""No process outlives what started it: a run that starts a TEI stand-in and a gateway as
processes of their own (as benchmarks/gateway_bench.py does; the demo and the local stack start
theirs the same way) and then ends, by failing, by Ctrl-C, by SIGTERM, by SIGKILL or by
exiting without stopping them, leaves neither running (checked by PID).

The run is a script in a process of its own, which stops nothing itself: what stops its
children is the process machinery (testkit.processes' start_process: atexit, SIGTERM as Ctrl-C,
PR_SET_PDEATHSIG)."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import json, sys, tempfile, time
from pathlib import Path

from testkit.processes import free_port, start_process, write_models_file
from testkit.tei import start_tei_process

tei = start_tei_process("embedding")
port = free_port()
models = write_models_file(Path(tempfile.mkdtemp()) / "models.json", [
    {"name": "e", "task": "embed", "engine": "tei", "endpoints": [tei.address]}])
gateway = start_process("gateway", {"GATEWAY_MODELS_FILE": str(models), "GATEWAY_HOST": "127.0.0.1",
                                    "GATEWAY_PORT": str(port)}, port, timeout=60)
print(json.dumps([tei.process.pid, gateway.process.pid]), flush=True)
if sys.argv[1] == "fail":
    raise RuntimeError("the run failed")
if sys.argv[1] == "exit":
    sys.exit(0)
time.sleep(120)
"""

SIGNALS = {"interrupt": signal.SIGINT, "terminate": signal.SIGTERM, "kill": signal.SIGKILL}


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.parametrize("end", ["exit", "fail", "interrupt", "terminate", "kill"])
def test_no_child_outlives_the_run(end):
    run = subprocess.Popen([sys.executable, "-c", RUN, end], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        ready, _, _ = select.select([run.stdout], [], [], 120)
        assert ready, "the run did not start its processes within 120 s"
        line = run.stdout.readline()
        assert line, f"the run ended before starting its processes: {run.stderr.read()[-2000:]}"
        pids = json.loads(line)
        assert all(alive(pid) for pid in pids)
        if end in SIGNALS:
            run.send_signal(SIGNALS[end])
        run.wait(60)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in pids if alive(pid)] == [], f"left running after the run ended ({end})"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for pid in pids:  # a failed check leaves nothing behind either
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
