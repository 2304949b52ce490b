"""Test-only: the whole serving path on the local control plane, every process on 127.0.0.1.

`start_stack` runs, for the reranker ModelServices of one namespace,
* the operator (`python -m modelservice --namespace=<ns>`, through `python -m testkit.loopback
  operator`), its autoscaler reading the pods at their entries of the address file and the
  gateway's `gateway_requests_held` at the gateway's /metrics;
* the local pod runner (podrunner.py): a real reranker process on a tiny model for every Ready
  pod, written into the address file;
* the gateway (`python -m gateway`, through `python -m testkit.loopback gateway`), routing through
  the same address file.

Nothing is ever sent to a pod IP of the simulated cluster. `ClosedLoopLoad` is a bounded load
of a few clients, each sending its next request when the last is answered. The autoscaling
cluster test (tests/cluster/test_autoscaling.py) and benchmarks/autoscale_bench.py share both;
nothing in the gateway imports this module.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import kubernetes

from .podrunner import LocalPodRunner
from .processes import BackendProcess, die_with_parent, free_port, start_process

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stack:
    """The running processes; `stop()` ends them all (the runner's rerankers included)."""

    namespace: str
    url: str                                  # the gateway
    gateway: BackendProcess
    operator: subprocess.Popen
    operator_log: Path
    runner: LocalPodRunner
    addresses: Path

    def pod_metrics(self) -> dict[str, str]:
        """Each running reranker's /metrics text, by pod name (read at its loopback address)."""
        texts = {}
        for name, pod in list(self.runner.running.items()):
            try:
                with urllib.request.urlopen(f"{pod.backend.url}/metrics", timeout=5) as response:
                    texts[name] = response.read().decode()
            except OSError:
                continue
        return texts

    def stop(self) -> None:
        try:
            self.gateway.stop()
        finally:
            try:
                if self.operator.poll() is None:
                    os.killpg(self.operator.pid, signal.SIGTERM)
                    try:
                        self.operator.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(self.operator.pid, signal.SIGKILL)
                        self.operator.wait()
            finally:
                self.runner.stop()


def start_stack(env: Mapping[str, str], namespace: str, modelservices: Sequence[str], model_dir: os.PathLike | str,
                workdir: os.PathLike | str, gateway_env: Mapping[str, str] | None = None) -> Stack:
    """Starts the gateway, the operator (serving `namespace` only) and the pod runner for
    `modelservices`; `env` carries KUBECONFIG (and PATH); logs go to `workdir`."""
    workdir = Path(workdir)
    addresses = workdir / "addresses.json"
    port = free_port()
    gateway = start_process(
        "testkit.loopback", {**env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                             "GATEWAY_NAMESPACE": namespace, "GATEWAY_NAMESPACES": namespace,
                             "GATEWAY_SCALE_FROM_ZERO_TIMEOUT": "120", **(gateway_env or {})},
        port, args=("gateway", str(addresses)), log=workdir / "gateway.log", timeout=60)
    operator_log = workdir / "operator.log"
    operator = None
    runner = None
    try:
        with open(operator_log, "ab") as out:
            operator = subprocess.Popen(
                [sys.executable, "-m", "testkit.loopback", "operator", str(addresses),
                 f"--namespace={namespace}", "--verbose", f"--gateway-metrics-url={gateway.url}/metrics"],
                env={**env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent())
        client = kubernetes.config.new_client_from_config(config_file=env["KUBECONFIG"])
        runner = LocalPodRunner(client, namespace, modelservices, model_dir, addresses, workdir).start()
    except BaseException:
        gateway.stop()
        if operator is not None:
            os.killpg(operator.pid, signal.SIGKILL)
            operator.wait()
        raise
    return Stack(namespace, gateway.url, gateway, operator, operator_log, runner, addresses)


@dataclass(frozen=True)
class Answer:
    """One request of the load: when it was sent and answered, and its HTTP status (0: no
    answer)."""

    client: int
    sent: float       # time.monotonic()
    answered: float
    status: int


@dataclass
class ClosedLoopLoad:
    """`clients` threads, each POSTing `body` to `url` and sending the next one when the last is
    answered, until `stop()` or `max_seconds`. `answers` holds every request's outcome."""

    url: str
    body: Mapping
    clients: int
    max_seconds: float = 120
    timeout: float = 150
    answers: list[Answer] = field(default_factory=list)
    _stopped: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "ClosedLoopLoad":
        deadline = time.monotonic() + self.max_seconds
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i, deadline), daemon=True, name=f"load-{i}")
            thread.start()
            self._threads.append(thread)
        return self

    def _client(self, index: int, deadline: float) -> None:
        data = json.dumps(self.body).encode()
        while not self._stopped.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.answers.append(Answer(index, sent, time.monotonic(), status))
            if status != 200:
                self._stopped.wait(0.2)

    def stop(self) -> list[Answer]:
        """Stops the clients once their requests in flight are answered; returns the answers."""
        self._stopped.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return list(self.answers)


def rerank(url: str, model: str, documents: Sequence[str], query: str = "capital of France",
           timeout: float = 150) -> tuple[int, dict]:
    """One Cohere v2 rerank through the gateway at `url`: (status, body)."""
    request = urllib.request.Request(f"{url}/v2/rerank", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": model, "query": query,
                                                      "documents": list(documents)}).encode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
