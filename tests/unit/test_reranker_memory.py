"""RERANKER_KEEP_FREED_MEMORY: a freed pass's memory is reused by the next, not refaulted.

Each case runs in a fresh interpreter, since the allocator setting is process-wide and must
come before any thread starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
from reranker.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
page = os.sysconf("SC_PAGE_SIZE")
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page / 2**20
before = rss_mb()
rss = []
for _ in range(3):  # three "passes" of 256 MB each, freed after use
    block = bytearray(256 * 2**20)
    del block
    rss.append(rss_mb())
print(json.dumps({"applied": applied, "before": before, "after": rss}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_kept_memory_is_reused_not_returned_or_grown():
    kept = _run("keep")
    assert kept["applied"], "glibc's mallopt refused the setting"
    first, *later = kept["after"]
    # The freed block stays in the process for the next pass...
    assert first - kept["before"] > 200
    # ...and the next passes reuse it: the RSS does not grow pass after pass.
    assert max(later) - first < 16


def test_default_allocator_returns_freed_memory():
    # What RERANKER_KEEP_FREED_MEMORY=false leaves: each pass's block goes back to the OS.
    released = _run("release")
    assert not released["applied"]
    assert max(released["after"]) - released["before"] < 50
