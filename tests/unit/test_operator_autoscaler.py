"""The autoscaling loop (modelservice.autoscaling.loop, modelservice.autoscaling.demand) against a fake API and real
HTTP metrics servers on 127.0.0.1 (reached through testkit.loopback's address file, as on the test
cluster)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelservice.autoscaling.loop import Autoscaler, GatewaySource
from modelservice.api.models import parse_modelservice
from modelservice.placement.plan import Plan
from modelservice.autoscaling.demand import Scraper, TeiZeros, parse_metrics, pod_address, pod_demand
from modelservice.controller.status import build_status
from testkit.loopback import OperatorAddresses


class Metrics:
    """A /metrics server whose text the test sets."""

    def __init__(self, text: str = ""):
        self.text = text
        self.up = True
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if not owner.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def pod(name: str, ip: str = "10.0.0.9") -> dict:
    return {"metadata": {"name": name, "namespace": "ns"},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


class FakeKube:
    def __init__(self, replicas: int, autoscaling: dict, pods: list[dict]):
        self.body = {"metadata": {"name": "rr", "namespace": "ns", "generation": 1, "uid": "u"},
                     "spec": {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "replicas": replicas,
                              "autoscaling": autoscaling},
                     "status": {"engine": "reranker"}}
        self.pods = pods
        self.events: list[tuple[str, str]] = []
        self.scales: list[int] = []

    def get_modelservice(self, namespace, name):
        return json.loads(json.dumps(self.body))

    def list_pods(self, namespace, selector):
        return self.pods

    def scale(self, namespace, name, replicas, expected):
        if self.body["spec"]["replicas"] != expected:
            return False
        self.body["spec"]["replicas"] = replicas
        self.scales.append(replicas)
        return True

    def set_autoscaling_status(self, namespace, name, value):
        self.body["status"]["autoscaling"] = dict(value)

    def post_event(self, body, reason, message, now, type_="Normal"):
        self.events.append((reason, message))


@pytest.fixture
def servers(tmp_path):
    made = []

    def make(text=""):
        m = Metrics(text)
        made.append(m)
        return m
    yield make
    for m in made:
        m.close()


def overrides(tmp_path, mapping) -> OperatorAddresses:
    path = tmp_path / "addresses.json"
    path.write_text(json.dumps(mapping))
    return OperatorAddresses(path)


def test_demand_scales_up_with_status_and_event_and_a_silent_pod_blocks_scale_down(tmp_path, servers):
    a, b = servers("reranker_queue_depth 7\n"), servers("reranker_queue_depth 5\n")
    kube = FakeKube(2, {"minReplicas": 0, "maxReplicas": 5, "targetRequests": 2, "windowSeconds": 1,
                        "scaleDownDelaySeconds": 10, "scrapeIntervalSeconds": 1}, [pod("p1"), pod("p2")])
    ov = overrides(tmp_path, {"ns/p1": a.address, "ns/p2": b.address})
    auto = Autoscaler(kube, Scraper(ov), wall=lambda: "2026-01-01T00:00:00Z")
    auto.tick("ns", "rr", 0.0)
    # 12 requests, target 2: 6 wanted, clamped to 5.
    assert kube.scales == [5]
    status = kube.body["status"]["autoscaling"]
    assert (status["demand"], status["desiredReplicas"], status["reason"], status["targetRequests"]) == (12, 5, "ScaledUp", 2)
    assert status["lastScaleTime"] == "2026-01-01T00:00:00Z"
    assert kube.events[0][0] == "ScaledUp" and "demand 12.00" in kube.events[0][1] and "target 2" in kube.events[0][1]

    # Idle, but p2 stops answering: never read as idle, however long.
    a.text, b.up = "reranker_queue_depth 0\n", False
    for t in range(1, 40):
        auto.tick("ns", "rr", float(t))
    assert kube.scales == [5]
    assert kube.body["status"]["autoscaling"]["reason"] == "IncompleteSamples"
    b.up, b.text = True, "reranker_queue_depth 0\n"
    for t in range(40, 52):
        auto.tick("ns", "rr", float(t))
    assert kube.scales == [5, 3]
    assert kube.events[-1][0] == "ScaledDown"


def test_a_pod_without_an_address_is_never_contacted_and_counts_as_unanswered(tmp_path, servers):
    a = servers("reranker_queue_depth 0\n")
    kube = FakeKube(1, {"minReplicas": 0, "maxReplicas": 2, "scaleDownDelaySeconds": 0, "windowSeconds": 1},
                    [pod("p1", ip="127.0.0.1"), pod("p2")])
    auto = Autoscaler(kube, Scraper(overrides(tmp_path, {"ns/p1": a.address})))
    auto.tick("ns", "rr", 0.0)
    assert kube.scales == [] and kube.body["status"]["autoscaling"]["reason"] == "IncompleteSamples"


def test_the_gateways_held_request_brings_a_model_back_from_zero(tmp_path, servers):
    gateway = servers('gateway_requests_held{model="ns/rr"} 1\ngateway_requests_held{model="ns/other"} 9\n')
    kube = FakeKube(0, {"minReplicas": 0, "maxReplicas": 3}, [])
    auto = Autoscaler(kube, Scraper(overrides(tmp_path, {})), GatewaySource(urls=(f"http://{gateway.address}/metrics",)))
    auto.tick("ns", "rr", 0.0)
    assert kube.scales == [1]


def test_demand_is_the_larger_of_the_pods_and_the_gateways_forwarded_requests_plus_held(tmp_path, servers):
    """Through the gateway a request is in flight from its forward to the last byte back, longer
    than the pod holds it: the larger count stands, the pods' when traffic bypasses the gateway,
    and nothing is counted twice."""
    a, b = servers("reranker_queue_depth 1\n"), servers("reranker_queue_depth 1\n")
    gateway = servers('gateway_requests_in_flight{model="ns/rr"} 3\ngateway_requests_held{model="ns/rr"} 1\n'
                      'gateway_requests_in_flight{model="ns/other"} 50\n')
    scraper = Scraper(overrides(tmp_path, {"ns/p1": a.address, "ns/p2": b.address}))
    pods = [pod("p1"), pod("p2")]
    through = scraper.read("ns/rr", "reranker", pods, [f"http://{gateway.address}/metrics"], {})
    assert (through.demand, through.held, through.complete) == (4.0, 1.0, True)
    a.text = b.text = "reranker_queue_depth 5\n"  # 10 at the pods, most of it bypassing the gateway
    assert scraper.read("ns/rr", "reranker", pods, [f"http://{gateway.address}/metrics"], {}).demand == 11.0


def test_a_count_written_meanwhile_is_not_overwritten(tmp_path, servers):
    a = servers("reranker_queue_depth 40\n")
    kube = FakeKube(1, {"maxReplicas": 4}, [pod("p1")])
    auto = Autoscaler(kube, Scraper(overrides(tmp_path, {"ns/p1": a.address})))
    real = kube.get_modelservice

    def stale(namespace, name):   # read at 1, then someone scales to 2 before the write
        body = real(namespace, name)
        kube.body["spec"]["replicas"] = 2
        return body
    kube.get_modelservice = stale
    auto.tick("ns", "rr", 0.0)
    assert kube.scales == [] and kube.body["spec"]["replicas"] == 2 and not kube.events


def test_tei_demand_is_its_queue_plus_requests_in_flight_from_its_counters():
    text = ('te_queue_size 3\n'
            'te_request_count{method="single"} 10\nte_request_count{method="batch"} 5\n'
            'te_request_success{method="single"} 8\nte_request_failure{err="validation"} 2\n')
    assert pod_demand("tei", parse_metrics(text)) == 3 + (15 - 8 - 2)
    assert pod_demand("reranker", parse_metrics("# HELP x\nreranker_queue_depth 4.0\n")) == 4


def tei_metrics(count: float, success: float, failure: float, queue: float = 0) -> list:
    return parse_metrics(f'te_queue_size {queue}\nte_request_count{{method="batch"}} {count}\n'
                         f'te_request_success{{method="batch"}} {success}\n'
                         f'te_request_failure{{err="model_type"}} {failure}\n')


def test_tei_refusals_counted_only_as_failures_do_not_hide_later_requests_in_flight():
    """TEI counts a /rerank on an embedding model as a failure and never as a request: after
    two of them count - success - failure is -2 when idle, and 3 requests in flight read as 1
    with a clamp at zero. The pod's lowest reading is its zero."""
    zeros = TeiZeros()
    idle = tei_metrics(count=10, success=10, failure=2)
    assert pod_demand("tei", idle, zeros.update("p1", idle)) == 0
    busy = tei_metrics(count=13, success=10, failure=2, queue=1)
    assert pod_demand("tei", busy) == 1 + 1                       # the clamp alone: 2 hidden
    assert pod_demand("tei", busy, zeros.update("p1", busy)) == 1 + 3
    # A restarted container starts its counters, and its zero, again.
    restarted = tei_metrics(count=2, success=0, failure=0)
    assert pod_demand("tei", restarted, zeros.update("p1", restarted)) == 2
    # Before the pod was ever idle the zero is not known: never more than in flight is read.
    fresh = tei_metrics(count=5, success=1, failure=3)           # 2 refusals + 1 failure: 3 in flight
    assert pod_demand("tei", fresh, zeros.update("p2", fresh)) == 1
    # A pod gone from the list is forgotten.
    assert zeros.update("p3", idle) == -2
    zeros.keep(["p2"])
    assert zeros.update("p3", busy) == 0


def test_the_reconciles_status_keeps_what_the_autoscaler_wrote_while_enabled():
    body = {"metadata": {"name": "rr", "namespace": "ns", "generation": 2},
            "spec": {"task": "rerank", "model": "m", "engine": "reranker", "accelerator": "cpu",
                     "autoscaling": {"maxReplicas": 2}},
            "status": {"autoscaling": {"desiredReplicas": 2, "reason": "ScaledUp"}}}
    plan = Plan("reranker", "cpu", "img", 0, {})
    assert build_status(parse_modelservice(body), now="t", plan=plan)["autoscaling"]["desiredReplicas"] == 2
    body["spec"]["autoscaling"]["enabled"] = False
    assert "autoscaling" not in build_status(parse_modelservice(body), now="t", plan=plan)


def test_a_pod_is_read_at_its_own_ip_and_http_port(servers):
    """Without another seam the autoscaler reads a pod at its IP and its container port named
    http; a pod without an IP yet is not read (its reading is incomplete)."""
    a = servers("reranker_queue_depth 3\n")
    host, port = a.address.rsplit(":", 1)
    served = pod("p1", ip=host)
    served["spec"]["containers"][0]["ports"] = [{"name": "metrics", "containerPort": 9}, {"name": "http", "containerPort": int(port)}]
    assert pod_address(served) == a.address
    starting = pod("p2")
    del starting["status"]["podIP"]
    assert pod_address(starting) is None
    reading = Scraper().read("ns/rr", "reranker", [served, starting], [], {})
    assert (reading.demand, reading.complete) == (3.0, False)
