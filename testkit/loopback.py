"""Test-only: the real gateway and operator reaching simulated pods at loopback processes.

kwok's pods run no process, and their IPs are never sent traffic. The local pod runner
(podrunner.py) starts a real process for each ready pod it runs and writes an address file,
`{"<namespace>/<pod>": "127.0.0.1:<port>"}`. The entry points here start the product's own
gateway and operator with the product's pod-address seam replaced by that file:

    python -m testkit.loopback gateway FILE          # python -m gateway (settings from GATEWAY_*)
    python -m testkit.loopback operator FILE [ARG...]  # python -m modelservice ARG...

The gateway (`gateway.kube.PodAddresses`) routes a ready pod the file names to its entry, does not
route one it does not name (a pod that became ready before its process answered), and computes
every model's endpoints again when the file changes; the operator's autoscaler
(`modelservice.autoscaling.demand.pod_address`) reads a pod's metrics at its entry and does not
read one without an entry (its reading is then incomplete). Nothing is ever sent to a pod IP.
The product packages never import this module.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from gateway.kube import PodAddress, PodAddresses

log = logging.getLogger("testkit.loopback")

# How often the gateway's side looks at the file (its inode, size and modification time: a local
# stat, not the API).
CHECK_SECONDS = 0.5


class AddressFile:
    """The address file, read again when it changed (its inode, size or modification time). A
    missing file is empty; a file that does not parse (being rewritten) keeps the last content."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        self.addresses: dict[str, str] = {}
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def reload_if_changed(self) -> bool:
        """Reads the file again when it changed since the last read; True when its content did."""
        with self._lock:
            try:
                st = self.path.stat()
                signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                signature = None
            if signature == self._signature:
                return False
            self._signature = signature
            if signature is None:
                new: dict[str, str] = {}
            else:
                try:
                    new = {str(k): str(v) for k, v in json.loads(self.path.read_text()).items()}
                except (OSError, ValueError, AttributeError) as exc:
                    log.warning("address file %s unreadable (%s); keeping the previous one", self.path, exc)
                    self._signature = None
                    return False
            changed, self.addresses = new != self.addresses, new
            return changed

    def get(self, namespace: str, pod: str) -> str | None:
        return self.addresses.get(f"{namespace}/{pod}")


class GatewayAddresses(PodAddresses):
    """The gateway's seam: a ready pod at its entry of the file, none without one."""

    def __init__(self, path: os.PathLike | str):
        self.file = AddressFile(path)
        self.file.reload_if_changed()

    def address(self, namespace: str, pod: PodAddress) -> str | None:
        return self.file.get(namespace, pod.pod)

    async def watch(self, changed: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            if self.file.reload_if_changed():
                changed()


class OperatorAddresses:
    """The operator's seam (a `modelservice.autoscaling.demand.PodAddress`): a pod's metrics at its
    entry of the file, read again when it changed; None (not read) without one."""

    def __init__(self, path: os.PathLike | str):
        self.file = AddressFile(path)

    def __call__(self, pod: Mapping[str, Any]) -> str | None:
        self.file.reload_if_changed()
        meta = pod.get("metadata") or {}
        return self.file.get(str(meta.get("namespace")), str(meta.get("name")))


USAGE = "usage: python -m testkit.loopback {gateway FILE | operator FILE [modelservice ARG...]}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("gateway", "operator"):
        print(USAGE, file=sys.stderr)
        return 2
    component, path, rest = argv[0], argv[1], argv[2:]
    if component == "gateway":
        from gateway.__main__ import main as gateway_main  # noqa: PLC0415

        return gateway_main(rest, addresses=GatewayAddresses(path))
    from modelservice.__main__ import main as operator_main  # noqa: PLC0415

    return operator_main(rest, pod_address=OperatorAddresses(path))


if __name__ == "__main__":
    sys.exit(main())
