"""The TEI container the operator builds, run through the real router (`make tei`'s build): its
exact arguments and environment, with the model on a ModelCache volume as the download Job
(`python -m modelservice.cache.download`, against the Hub stand-in) leaves it, served offline.

The chart renders the same container (tests/chart compares the two renderers), so this covers
the chart's TEI too. What a pod has that a process here has not is substituted, and only that:
the volume's mount point (/data) is the test's volume, secretKeyRef values are read from a
dict, and --hostname 0.0.0.0 / --port 8080 become 127.0.0.1 and a free port (tests listen on
loopback only)."""

from __future__ import annotations

import dataclasses
import secrets

import httpx
import pytest
from modelservice.api.models import parse_modelservice
from modelservice.cache.builders import CacheMount
from modelservice.cache.download import model_path
from modelservice.placement.builders import CACHE_PATH, build_deployment
from modelservice.placement.plan import build_plan

from testkit import teirouter
from testkit.hub import HubServer, files_of
from testkit.models import MINILM_DIR

from .test_model_download import run

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
NAME = "embed"  # the ModelService: TEI serves the model under this name (--served-model-name)
KEY = "sk-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A ModelCache volume holding all-MiniLM-L6-v2, filled by the download Job."""
    tmp = tmp_path_factory.mktemp("model-cache")
    with HubServer() as hub:
        hub.add_repo(MINILM, files_of(MINILM_DIR))
        rc, result, log = run(hub, tmp, MINILM)
        assert rc == 0, log
    return tmp / "volume"


def pod_container(spec: dict, volume) -> dict:
    """The model container of the Deployment the operator builds for `spec`, its model on
    `volume` (a ModelCache mounted at the operator's CACHE_PATH)."""
    ms = parse_modelservice({"metadata": {"name": NAME, "namespace": "apps"}, "spec": spec})
    plan = build_plan(ms.spec)
    cache = CacheMount("minilm", "minilm-cache", f"{CACHE_PATH}/{model_path(MINILM, 'main')}")
    deployment = build_deployment(ms, dataclasses.replace(plan, cache=cache))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def as_process(container: dict, volume, secret_values: dict[str, str]):
    """The container's args and env with the pod-only parts substituted (module docstring)."""
    port = teirouter.free_port()
    args = [a.replace(CACHE_PATH, str(volume)) for a in container["args"]]
    args[args.index("--hostname") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    env = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_values[f"{ref['name']}/{ref['key']}"]
        else:
            env[item["name"]] = item["value"].replace(CACHE_PATH, str(volume))
    return args, env, port


CPU_SPEC = {"task": "embed", "model": MINILM, "accelerator": "cpu",
            "cache": {"modelCache": "minilm"},
            "engineArgs": {"maxBatchTokens": 2048, "autoTruncate": True, "pooling": "mean",
                           "apiKeySecretRef": {"name": "tei-key", "key": "key"}}}


def test_the_operators_cpu_container_serves_the_cache_offline_and_logs_no_key(
        tei_binary, volume, tmp_path):
    container = pod_container(CPU_SPEC, volume)
    args, env, port = as_process(container, volume, {"tei-key/key": KEY})
    assert env["HF_HUB_OFFLINE"] == "1"
    router = teirouter.launch(tei_binary, args, port=port, log=tmp_path / "tei.log", env=env,
                               threads=None)
    try:
        url = router.url
        assert httpx.post(f"{url}/embed", json={"inputs": "x"}).status_code == 401
        headers = {"Authorization": f"Bearer {KEY}"}
        embed = httpx.post(f"{url}/v1/embeddings", json={"input": ["a text"]}, headers=headers)
        assert embed.status_code == 200, embed.text
        assert len(embed.json()["data"][0]["embedding"]) == 384
        # the OpenAI answer names the model as clients asked for it, not the volume's path
        assert embed.json()["model"] == NAME
        info = httpx.get(f"{url}/info", headers=headers).json()
        assert info["model_dtype"] == "float32"  # CPU: float32 whatever the build's default
        assert info["auto_truncate"] is True and info["max_batch_tokens"] == 2048
        long = httpx.post(f"{url}/embed", json={"inputs": "word " * 2000}, headers=headers)
        assert long.status_code == 200  # --auto-truncate
        # the kubelet's probes and the autoscaler read these without a key
        assert httpx.get(f"{url}/health").status_code == 200
        assert "te_queue_size" in httpx.get(f"{url}/metrics").text
    finally:
        router.stop()
    output = router.output()
    assert "Ready" in output
    assert KEY not in output and KEY[3:] not in output


def test_without_the_operators_log_filter_tei_prints_the_key(tei_binary, volume, tmp_path):
    """What LOG_LEVEL is there for: TEI 1.9.3's own default logs its arguments, key included."""
    container = pod_container(CPU_SPEC, volume)
    args, env, port = as_process(container, volume, {"tei-key/key": KEY})
    del env["LOG_LEVEL"]
    router = teirouter.launch(tei_binary, args, port=port, log=tmp_path / "tei.log", env=env,
                               threads=None)
    router.stop()
    assert KEY in router.output()


def test_the_operators_hub_id_container_downloads_once_then_serves_from_its_cache(
        tei_binary, tmp_path):
    """Without a ModelCache: --model-id is the Hub id and HUGGINGFACE_HUB_CACHE the pod's cache
    volume. The first start fetches from the Hub (the stand-in, as HF_ENDPOINT); a restart with
    no Hub reachable serves from the volume (TEI reads no HF_HUB_OFFLINE: it is the cache that
    makes this work)."""
    ms = parse_modelservice({"metadata": {"name": NAME, "namespace": "apps"},
                             "spec": {"task": "embed", "model": MINILM, "accelerator": "cpu"}})
    (container,) = build_deployment(ms, build_plan(ms.spec))["spec"]["template"]["spec"]["containers"]
    data = tmp_path / "data"
    data.mkdir()
    args, env, port = as_process(container, data, {})
    assert args[args.index("--model-id") + 1] == MINILM
    with HubServer() as hub:
        hub.add_repo(MINILM, files_of(MINILM_DIR))
        first = teirouter.launch(tei_binary, args, port=port, log=tmp_path / "first.log",
                                  env={**env, "HF_ENDPOINT": hub.url}, threads=None)
        first.stop()
        assert hub.requests, "the first start fetched nothing"
    restart = teirouter.launch(tei_binary, args, port=port, log=tmp_path / "restart.log",
                                env=env, threads=None)
    try:
        answer = httpx.post(f"{restart.url}/v1/embeddings", json={"input": "a text"})
        assert answer.status_code == 200 and answer.json()["model"] == NAME
    finally:
        restart.stop()
