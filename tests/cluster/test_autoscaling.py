"""Autoscaling end to end on the real control plane: the operator's autoscaler follows real load.

The operator (`python -m modelservice`, this namespace only) reads demand from real reranker
processes that the local pod runner starts for the ModelService's Ready pods, and the requests the
gateway (`python -m gateway`) holds, both started by `python -m testkit.loopback` on the
runner's address file; a few closed-loop
clients send reranks through the gateway. Every request goes to 127.0.0.1, never to a kwok pod IP
(testkit/localstack.py).
"""
from __future__ import annotations

import time
import uuid
from typing import Iterator

import pytest

from control_plane import MODELSERVICE_CRD, Cluster, wait_for
from testkit.localstack import ClosedLoopLoad, Stack, rerank, start_stack
from modelservice.autoscaling.demand import parse_metrics

pytestmark = pytest.mark.cluster

API = "serving.embedding-images.io/v1alpha1"
DELAY_S = 6
CLIENTS = 3
DOCUMENTS = [f"Document {i}: Paris is the capital of France, and the Seine runs through it." for i in range(24)]


@pytest.fixture
def stack(cluster: Cluster, tmp_path) -> Iterator[Stack]:
    from testkit.models import shared_tiny_model

    cluster.apply_crds(MODELSERVICE_CRD)
    ns = f"as-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    model_dir = shared_tiny_model(tmp_path / "models")
    s = start_stack(cluster.env, ns, ["qwen"], model_dir, tmp_path)
    try:
        yield s
    finally:
        print(f"logs: {tmp_path}")
        s.stop()
        cluster.kubectl("delete", "modelservices", "--all", "-n", ns, "--wait=true", "--timeout=60s", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def replicas(cluster: Cluster, ns: str) -> int:
    return cluster.get("modelservice", "qwen", "-n", ns)["spec"]["replicas"]


def scale_events(cluster: Cluster, ns: str) -> list[dict]:
    """The ScaledUp / ScaledDown Events of the ModelService, oldest first."""
    items = cluster.get("events", "-n", ns, "--field-selector", "involvedObject.name=qwen")["items"]
    return sorted((e for e in items if e["reason"] in ("ScaledUp", "ScaledDown")),
                  key=lambda e: (e["firstTimestamp"], e["metadata"]["creationTimestamp"]))


def served(stack: Stack) -> dict[str, float]:
    """Rerank requests each running reranker answered with 200, by pod."""
    return {pod: sum(s.value for s in parse_metrics(text)
                     if s.name == "reranker_requests_total" and s.labels.get("status") == "200")
            for pod, text in stack.pod_metrics().items()}


def test_replicas_follow_the_load_up_down_to_zero_and_back(cluster, stack):
    ns = stack.namespace
    cluster.apply({"apiVersion": API, "kind": "ModelService", "metadata": {"name": "qwen"},
                   "spec": {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "cpu",
                            "replicas": 1, "engineArgs": {"maxDocuments": 64},
                            "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "targetRequests": 1,
                                            "scaleDownDelaySeconds": DELAY_S, "windowSeconds": 3,
                                            "scrapeIntervalSeconds": 1}}}, namespace=ns)
    # A Ready pod whose process is not up yet is an incomplete sample: no scale-down meanwhile.
    wait_for("the first pod's process", lambda: list(stack.runner.running), timeout=120)
    try:
        # Load: CLIENTS requests always in flight, 1 per replica wanted.
        load = ClosedLoopLoad(f"{stack.url}/v2/rerank", {"model": "qwen", "query": "capital of France",
                                                         "documents": DOCUMENTS}, CLIENTS, max_seconds=120).start()
        step = time.monotonic()
        wait_for("a scale-up", lambda: replicas(cluster, ns) > 1, timeout=30)
        scale_up_s = time.monotonic() - step
        status = cluster.get("modelservice", "qwen", "-n", ns)["status"]["autoscaling"]
        assert status["targetRequests"] == 1 and status["lastScaleTime"], status
        up = scale_events(cluster, ns)[0]
        assert up["reason"] == "ScaledUp" and up["type"] == "Normal", up
        assert "1 -> " in up["message"] and "demand" in up["message"] and "target 1 per replica" in up["message"]

        # The new pods become processes, and the gateway spreads the load over them.
        wait_for("processes for 2 or more pods", lambda: len(stack.runner.running) >= 2, timeout=120)
        busy = wait_for("2 or more processes serving requests",
                        lambda: [p for p, n in served(stack).items() if n > 0] if
                        sum(n > 0 for n in served(stack).values()) >= 2 else None, timeout=60)
        assert len(busy) >= 2
        assert 2 <= replicas(cluster, ns) <= 3
    finally:
        answers = load.stop()
    # A scale-down while the load ran (at exactly 3 x the target a 3 -> 2 can happen: see
    # benchmarks/README.md, flaps_on_plateau) is not this part's subject: the steps after the stop are.
    downs_under_load = sum(e["reason"] == "ScaledDown" for e in scale_events(cluster, ns))
    peak = replicas(cluster, ns)
    assert answers and all(a.status == 200 for a in answers), {a.status for a in answers}

    # Load stops: after the delay, down by at most half at a time, to zero.
    stopped = time.monotonic()
    wait_for("replicas 0", lambda: replicas(cluster, ns) == 0, timeout=DELAY_S * 3 * 2 + 30)
    to_zero_s = time.monotonic() - stopped
    downs = [e for e in scale_events(cluster, ns) if e["reason"] == "ScaledDown"][downs_under_load:]
    assert [e["message"].split(":")[0] for e in downs] == \
        {3: ["3 -> 2", "2 -> 1", "1 -> 0"], 2: ["2 -> 1", "1 -> 0"]}[peak], [e["message"] for e in downs]
    assert to_zero_s >= DELAY_S * len(downs) - 1, to_zero_s   # one whole delay before each step
    wait_for("every process to stop", lambda: not stack.runner.running, timeout=60)
    assert cluster.get("modelservice", "qwen", "-n", ns)["status"]["autoscaling"]["desiredReplicas"] == 0

    # From zero: one request is held at the gateway, brings one replica back and succeeds.
    status_code, body = rerank(stack.url, "qwen", DOCUMENTS[:3])
    assert status_code == 200 and sorted(r["index"] for r in body["results"]) == [0, 1, 2]
    assert replicas(cluster, ns) == 1
    assert len(stack.runner.running) == 1
    print(f"scale-up after {scale_up_s:.1f} s of load; zero {to_zero_s:.1f} s after it stopped")
