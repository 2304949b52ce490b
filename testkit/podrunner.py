"""Test-only: the local pod runner, real reranker processes standing in for simulated pods.

On the local control plane (kwok) pods have no processes, and their IPs must never be sent
traffic. The runner watches the pods of chosen reranker ModelServices and, for each pod that is
Running and Ready, starts the real reranker (`python -m reranker`) on a free loopback port with
that pod's own container environment (so the operator's RERANKER_* settings run for real), with
the settings that name places overridden: RERANKER_MODEL (a small local model, e.g. from
testkit.models), RERANKER_HOST (127.0.0.1), RERANKER_PORT and HF_HOME (the pod's cache volume
path becomes a folder under `log_dir`); RERANKER_THREADS is 1 unless the pod sets it.
A pod that mounts a PersistentVolumeClaim bound to a hostPath (or local) PersistentVolume, as a
ModelCache's users do, keeps its own RERANKER_MODEL when it lies on that volume: the path is
mapped to the volume's folder on this machine, as a kubelet would mount it, and the reranker
loads what the cache's download put there. Once the process answers /health it writes
`{"<namespace>/<pod>": "127.0.0.1:<port>"}` into the address file that the gateway and the
operator started by `python -m testkit.loopback` read (loopback.py); a pod that goes away, or
stops being ready, loses its entry and its process. The tests of tests/cluster and the
benchmarks share it; nothing in the product imports it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import kubernetes

from gateway.kube import Watcher

from .processes import BackendProcess, free_port, start_process

log = logging.getLogger("testkit.podrunner")

MODELSERVICE_LABEL = "serving.embedding-images.io/modelservice"


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    """Running, Ready and not being deleted: what the endpoint controller routes to."""
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready and not pod["metadata"].get("deletionTimestamp")


def pod_env(pod: Mapping[str, Any]) -> dict[str, str]:
    """The literal environment of the pod's first container (values from Secrets or fields are
    the cluster's to resolve and are left out)."""
    (container, *_) = pod["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


@dataclass
class RunningPod:
    backend: BackendProcess
    env: dict[str, str]       # what the process was started with
    start_seconds: float = 0.0   # from starting the process to its first healthy answer


class LocalPodRunner:
    """Watches the pods of `modelservices` in `namespace` and runs a reranker process for each
    ready one (see the module docstring). `start()` returns at once; `stop()` ends every
    process. `running` maps pod names to their processes (read it from any thread)."""

    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str,
                 modelservices: Iterable[str], model_dir: os.PathLike | str,
                 addresses_file: os.PathLike | str, log_dir: os.PathLike | str,
                 start_timeout: float = 180):
        self.client = api_client
        self.namespace = namespace
        self.selector = f"{MODELSERVICE_LABEL} in ({','.join(sorted(modelservices))})"
        self.model_dir = str(model_dir)
        self.addresses_file = Path(addresses_file)
        self.log_dir = Path(log_dir)
        self.start_timeout = start_timeout
        self.running: dict[str, RunningPod] = {}
        self._starting: set[str] = set()
        self._wanted: dict[str, dict] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="podrunner")
        self._late_stops: list[threading.Thread] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="podrunner", daemon=True)
        self._watcher: Watcher | None = None
        self._write_addresses()

    def start(self) -> "LocalPodRunner":
        self._thread.start()

        async def begin() -> None:
            self._watcher = Watcher(
                f"pods {self.selector} in {self.namespace}", self.loop,
                kubernetes.client.CoreV1Api(self.client).list_namespaced_pod, (self.namespace,),
                on_list=self._listed, on_event=self._changed, kwargs={"label_selector": self.selector})
            self._watcher.start()
        asyncio.run_coroutine_threadsafe(begin(), self.loop).result(10)
        return self

    def stop(self) -> None:
        running: list[BackendProcess] = []

        async def end() -> None:
            self._wanted.clear()
            if self._watcher is not None:
                self._watcher.stop()
            running.extend(pod.backend for pod in self.running.values())
            self.running.clear()
        asyncio.run_coroutine_threadsafe(end(), self.loop).result(60)
        # The running processes are stopped here, not through the pool: its shutdown cancels
        # what is still queued behind starts in progress.
        self._pool.shutdown(wait=True, cancel_futures=True)
        for backend in running:
            self._stop_backend(backend)
        # A start that finished meanwhile reported in on the loop: let those reports run (each
        # stops its process, nothing being wanted any more), then wait for the stops.
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(10)
        for thread in self._late_stops:
            thread.join(60)
        for name in list(self.running):   # started while stopping
            self.running.pop(name).backend.stop()
        self._write_addresses()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    # on the loop ----------------------------------------------------------------------------

    def _listed(self, pods: list[dict]) -> None:
        self._wanted = {p["metadata"]["name"]: p for p in pods if pod_is_ready(p)}
        self._converge()

    def _changed(self, kind: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        if kind != "DELETED" and pod_is_ready(pod):
            self._wanted[name] = pod
        else:
            self._wanted.pop(name, None)
        self._converge()

    def _converge(self) -> None:
        for name in [n for n in self.running if n not in self._wanted]:
            self._stop_pod(name)
        for name, pod in self._wanted.items():
            if name not in self.running and name not in self._starting:
                self._starting.add(name)
                self._pool.submit(self._start_pod, name, pod)

    def _stop_pod(self, name: str) -> None:
        pod = self.running.pop(name, None)
        if pod is not None:
            log.info("pod %s/%s went away: stopping its reranker", self.namespace, name)
            self._write_addresses()
            self._stop_backend(pod.backend)

    def _stop_backend(self, backend) -> None:
        """Stops a process off the loop: in the pool, or, once `stop()` has shut the pool down, in
        a thread of its own that `stop()` waits for (a process must never outlive the runner)."""
        try:
            self._pool.submit(backend.stop)
        except RuntimeError:
            thread = threading.Thread(target=backend.stop, name="podrunner-stop")
            self._late_stops.append(thread)
            thread.start()

    def _started(self, name: str, pod: RunningPod | None) -> None:
        self._starting.discard(name)
        if pod is None:
            return
        if name not in self._wanted:    # went away while it started, or the runner is stopping
            self._stop_backend(pod.backend)
            return
        self.running[name] = pod
        self._write_addresses()

    def _write_addresses(self) -> None:
        """Rewrites the address file whole (a rename, so the gateway never reads half of it)."""
        tmp = self.addresses_file.with_name(self.addresses_file.name + ".tmp")
        tmp.write_text(json.dumps({f"{self.namespace}/{n}": p.backend.address for n, p in sorted(self.running.items())}))
        os.replace(tmp, self.addresses_file)

    # in the pool ----------------------------------------------------------------------------

    def _volume_folders(self, pod: dict) -> dict[str, str]:
        """{mount path: local folder} of the pod's claims bound to hostPath or local volumes."""
        core = kubernetes.client.CoreV1Api(self.client)
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["spec"].get("volumes") or [] if "persistentVolumeClaim" in v}
        folders = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            if mount["name"] not in claims:
                continue
            claim = core.read_namespaced_persistent_volume_claim(claims[mount["name"]], self.namespace)
            volume = core.read_persistent_volume(claim.spec.volume_name) if claim.spec.volume_name else None
            source = volume and (volume.spec.host_path or volume.spec.local)
            if source is not None:
                folders[mount["mountPath"]] = source.path
        return folders

    def _model(self, pod: dict, env: dict[str, str]) -> str:
        """The pod's RERANKER_MODEL mapped onto this machine when it lies on a mounted volume,
        else the runner's local model."""
        wanted = env.get("RERANKER_MODEL", "")
        for mount, folder in self._volume_folders(pod).items():
            if wanted == mount or wanted.startswith(mount.rstrip("/") + "/"):
                return folder + wanted[len(mount.rstrip("/")):]
        return self.model_dir

    def _start_pod(self, name: str, pod: dict) -> None:
        started: RunningPod | None = None
        try:
            port = free_port()
            env = {"RERANKER_THREADS": "1", **pod_env(pod)}
            env.update({"RERANKER_MODEL": self._model(pod, env),
                        "RERANKER_HOST": "127.0.0.1", "RERANKER_PORT": str(port),
                        "HF_HOME": str(self.log_dir / "hf-home"), "HF_HUB_OFFLINE": "1"})
            begun = time.monotonic()
            backend = start_process("reranker", env, port, log=self.log_dir / f"{name}.log",
                                    timeout=self.start_timeout)
            started = RunningPod(backend, env, time.monotonic() - begun)
            log.info("pod %s/%s: reranker on 127.0.0.1:%d", self.namespace, name, port)
        except Exception as exc:
            log.warning("pod %s/%s: the reranker did not start: %s", self.namespace, name, exc)
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._started, name, started)
