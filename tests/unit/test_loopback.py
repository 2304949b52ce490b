"""testkit.loopback: the real gateway and operator reaching simulated pods at loopback processes
through the product's own pod-address seams (gateway.kube.PodAddresses,
modelservice.autoscaling.demand.pod_address), from the pod runner's address file."""
from __future__ import annotations

import asyncio
import json

from gateway.kube import Sources
from gateway.registry import Endpoint, ModelKey, Registry
from testkit import loopback
from testkit.loopback import AddressFile, GatewayAddresses, OperatorAddresses
from test_gateway_kube import NS, endpoint, eps, ms


def test_only_the_pods_the_file_names_are_routed_and_it_is_reread(tmp_path):
    path = tmp_path / "addresses.json"
    addresses = GatewayAddresses(path)     # no file yet: nothing is routed
    registry = Registry(home_namespace=NS)
    s = Sources(registry, watches=2, addresses=addresses)
    s.list_models("ms", NS, [ms("m")])
    s.list_slices("eps", NS, [eps("m-a", "m", endpoint("m-1", "10.0.0.1"), endpoint("m-2", "10.0.0.2"))])
    key = ModelKey(NS, "m")
    assert registry.endpoints(key) == ()
    path.write_text(json.dumps({f"{NS}/m-1": "127.0.0.1:40001", "elsewhere/m-2": "127.0.0.1:40002"}))
    assert addresses.file.reload_if_changed()
    s.push_all()
    assert registry.endpoints(key) == (Endpoint("m-1", "127.0.0.1:40001"),)
    path.write_text("{ half written")
    assert not addresses.file.reload_if_changed()
    assert addresses.file.addresses == {f"{NS}/m-1": "127.0.0.1:40001", "elsewhere/m-2": "127.0.0.1:40002"}
    path.write_text(json.dumps({f"{NS}/m-1": "127.0.0.1:40001", f"{NS}/m-2": "127.0.0.1:40002"}))
    assert addresses.file.reload_if_changed() and not addresses.file.reload_if_changed()
    s.push_all()
    assert [e.address for e in registry.endpoints(key)] == ["127.0.0.1:40001", "127.0.0.1:40002"]


def test_the_gateway_routes_a_pod_once_its_process_is_written_without_a_slice_change(tmp_path, monkeypatch):
    """The pod became ready (its slice arrived) before its process answered: the file's change
    alone makes the sources push it, as `run_sources` runs `watch` for the gateway."""
    monkeypatch.setattr(loopback, "CHECK_SECONDS", 0.01)
    path = tmp_path / "addresses.json"
    addresses = GatewayAddresses(path)
    registry = Registry(home_namespace=NS)
    s = Sources(registry, watches=2, addresses=addresses)
    s.list_models("ms", NS, [ms("m")])
    s.list_slices("eps", NS, [eps("m-a", "m", endpoint("m-1", "10.0.0.1"))])
    assert registry.endpoints(ModelKey(NS, "m")) == ()

    async def run():
        watching = asyncio.create_task(addresses.watch(s.push_all))
        path.write_text(json.dumps({f"{NS}/m-1": "127.0.0.1:40001"}))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if registry.endpoints(ModelKey(NS, "m")):
                break
        watching.cancel()
    asyncio.run(run())
    assert registry.endpoints(ModelKey(NS, "m")) == (Endpoint("m-1", "127.0.0.1:40001"),)


def test_the_operator_reads_a_pod_at_its_entry_and_a_pod_without_one_nowhere(tmp_path):
    path = tmp_path / "addresses.json"
    address = OperatorAddresses(path)
    pod = {"metadata": {"name": "p1", "namespace": "ns"}, "status": {"podIP": "10.0.0.9"},
           "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]}}
    assert address(pod) is None            # never its pod IP
    path.write_text(json.dumps({"ns/p1": "127.0.0.1:40001"}))
    assert address(pod) == "127.0.0.1:40001"
    path.write_text(json.dumps({}))
    assert address(pod) is None


def test_a_missing_file_is_empty(tmp_path):
    file = AddressFile(tmp_path / "absent.json")
    assert not file.reload_if_changed() and file.addresses == {}


def test_the_entry_point_names_what_it_starts(capsys):
    assert loopback.main(["router", "x"]) == 2
    assert "gateway FILE" in capsys.readouterr().err
