"""Smoke tests of the built images: each is started with its own entrypoint, user and environment
and answers as the chart expects; no layer and no history entry carries what the build mounted."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from image_support import EMBEDDING, EMBEDDING_MODEL, NAMES, ROOT, BuiltImage, build, image_config

pytestmark = [pytest.mark.images, pytest.mark.slow]
CHART = ROOT / "charts" / "embedding-images"
QUERY = "what is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Berlin is in Germany.", "The tower is in Paris."]
ALL_NAMES = (*NAMES, EMBEDDING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, tail, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {url} answered:\n{tail()}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{tail()}")


def chart_container(name: str) -> dict:
    helm = ROOT / ".cache" / "bin" / "helm"
    if not helm.exists():
        subprocess.run([str(ROOT / "tests" / "cluster" / "tools.sh")], check=True, cwd=ROOT)
    chart_only = name in ("reranker", EMBEDDING)
    values = ["-f", str(ROOT / "examples" / "values-chart-only.yaml")] if chart_only else ["--set", "crds.enabled=false"]
    out = subprocess.run([str(helm), "template", "rel", str(CHART), "--namespace", "models", *values],
                         capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    # The chart runs the embedding image under TEI's repository name (a built image is set by `image:`).
    repository = build.load_yaml(build.VARIANTS)["tei"]["repository"] if name == EMBEDDING else f"/{name}"
    [container] = [c for d in docs for c in d["spec"]["template"]["spec"]["containers"]
                   if f"{repository}:" in c["image"]]
    return container


# --- image config -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_NAMES)
def test_image_runs_as_non_root_with_labels_and_the_charts_command(name, image_of, container):
    image = image_of(name)
    config = image_config(image.ref)
    uid, _, gid = config.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), config.user
    for label in ("title", "description", "source"):
        assert config.labels.get(f"org.opencontainers.image.{label}"), label
    chart = chart_container(name)
    if "command" in chart:
        assert chart["command"] == config.entrypoint
    # The entrypoint runs as the image's user and finds its program.
    probe = container(image.ref, args=["--help"]).run()
    assert probe.returncode == 0, probe.stderr[-2000:]


def test_operator_image_parses_the_charts_args_as_the_source_tree_does(built_images, container):
    """The chart's args (release-namespace scope) through the image's own parse_args, compared
    with the source tree's: the image accepts them and reads them the same way."""
    from modelservice.__main__ import parse_args  # noqa: PLC0415

    image = built_images["operator"]
    chart = chart_container("operator")
    assert chart["command"] == image_config(image.ref).entrypoint
    c = container(image.ref)
    script = ("import json, sys; from modelservice.__main__ import parse_args; "
              "print(json.dumps(vars(parse_args(sys.argv[1:])), default=str))")
    c.argv[c.argv.index("--") + 1:] = ["python", "-c", script, *chart["args"]]
    out = c.run()
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == json.loads(json.dumps(vars(parse_args(chart["args"])), default=str))


def layer_dirs(ref: str) -> list[Path]:
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{json .GraphDriver}}", ref],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)["Data"]
    dirs = [data["UpperDir"], *[d for d in data.get("LowerDir", "").split(":") if d]]
    return [Path(d) for d in dirs]


def pem_blocks(text: str) -> set[str]:
    return set(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_no_build_settings_secret_or_mount_in_any_layer_or_the_history(name, image_of):
    image: BuiltImage = image_of(name)
    settings = build.host_pip_settings()
    assert "cert = " + build.CA_TARGET in image.pip_conf or build.host_ca_bundle(settings) is None
    history = subprocess.run(["podman", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image.ref],
                             capture_output=True, text=True, check=True).stdout
    for needle in (image.hf_token, build.BUILD_DIR_TARGET, "pip.conf", *filter(None, [settings.get("index-url")])):
        assert needle not in history, needle

    layers = layer_dirs(image.ref)
    ca = build.host_ca_bundle(settings)
    # Certificates of the machine's bundle that none of the image's own CA bundles (Debian's,
    # certifi's) has, such as a proxy's CA: only the mounted bundle could bring them in.
    own: set[str] = set()
    for layer in layers:
        for bundle in [*layer.glob("etc/ssl/certs/ca-certificates.crt"), *layer.rglob("certifi/cacert.pem")]:
            own |= pem_blocks(bundle.read_text(errors="replace"))
    needles = [image.pip_conf.encode(), image.hf_token.encode()]
    needles += [b.encode() for b in (pem_blocks(ca.read_text()) - own if ca else set())]
    if "@" in settings.get("index-url", ""):
        needles.append(settings["index-url"].encode())
    found = []
    for layer in layers:
        for path in layer.rglob("*"):
            rel = "/" + path.relative_to(layer).as_posix()
            if rel == build.PIP_CONF_TARGET or rel.startswith(build.BUILD_DIR_TARGET):
                found.append(f"{rel} (a build mount point)")
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{rel}: {n[:40]!r}" for n in needles if n in data]
    assert not found, found


# --- started for real -------------------------------------------------------------------------

def model_copy(tmp_path: Path) -> Path:
    """The tiny Qwen3 reranker of testkit.models, files readable by the image's user."""
    from testkit.models import shared_tiny_model  # noqa: PLC0415

    dest = tmp_path / "tiny-qwen3"
    shutil.copytree(shared_tiny_model(tmp_path / "build"), dest, symlinks=False)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def rerank(url: str, model: str) -> list[tuple[int, float]]:
    r = httpx.post(f"{url}/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCUMENTS}, timeout=60)
    assert r.status_code == 200, r.text
    return [(x["index"], x["relevance_score"]) for x in r.json()["results"]]


def test_reranker_image_answers_rerank_as_the_source_tree_does(built_images, container, tmp_path):
    image = built_images["reranker"]
    model = model_copy(tmp_path)
    baked = "/models/tiny/qwen3"
    port, source_port = free_port(), free_port()
    # A baked model's environment (images/README.md), on a loopback port: nothing else differs
    # from the image's own config.
    c = container(image.ref, env={"RERANKER_MODEL": baked, "HF_HUB_OFFLINE": "1", "RERANKER_HOST": "127.0.0.1",
                                  "RERANKER_PORT": str(port), "RERANKER_DEVICE": "cpu"},
                  volumes=(f"{model}:{baked}:ro",)).start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RERANKER_MODEL": str(model),
           "RERANKER_HOST": "127.0.0.1", "RERANKER_PORT": str(source_port), "RERANKER_DEVICE": "cpu",
           "RERANKER_SERVED_MODEL_NAME": baked}
    log = tmp_path / "source.log"
    with open(log, "wb") as out:
        source = subprocess.Popen([sys.executable, "-m", "reranker"], env=env, cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        health = wait_health(f"http://127.0.0.1:{port}/health", c.proc, c.tail)
        assert health.get("model") == baked or baked in json.dumps(health)
        wait_health(f"http://127.0.0.1:{source_port}/health", source, lambda: log.read_text()[-4000:])
        in_image = rerank(f"http://127.0.0.1:{port}", baked)
        from_source = rerank(f"http://127.0.0.1:{source_port}", baked)
        assert [i for i, _ in in_image] == [i for i, _ in from_source]
        assert [s for _, s in in_image] == pytest.approx([s for _, s in from_source], abs=1e-4)
        assert c.terminate() is not None, "the reranker did not stop on SIGTERM"
    finally:
        source.terminate()
        source.wait(timeout=30)


def cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    import numpy as np  # noqa: PLC0415

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return list((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1))


def process_uid(pid: int) -> int:
    """The real uid of a process (chroot isolation shares the host's process table)."""
    [line] = [x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:")]
    return int(line.split()[1])


def test_embedding_image_serves_its_baked_model_equal_to_sentence_transformers(embedding_image, container):
    """The image started as a pod would start it (its entrypoint, command, user and environment;
    only PORT moved to a free port, and HF_ENDPOINT on a dead loopback port so that a file missing
    from the baked model fails instead of downloading) serves OpenAI's /v1/embeddings and TEI's
    /embed, each equal to sentence-transformers' embeddings of the same model."""
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415
    from testkit.models import MINILM_DIR  # noqa: PLC0415

    config = image_config(embedding_image.ref)
    # The Dockerfile's health check survives the build (podman's default OCI format drops it).
    health = json.loads(subprocess.run(["podman", "image", "inspect", "--format", "{{json .HealthCheck}}",
                                        embedding_image.ref], capture_output=True, text=True, check=True).stdout)
    assert health and "/health " in " ".join(health["Test"]), health
    port = free_port()
    started = time.monotonic()
    c = container(embedding_image.ref, env={"PORT": str(port), "HF_ENDPOINT": "http://127.0.0.1:9"}).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert c.proc.poll() is None, f"the router exited with {c.proc.returncode}:\n{c.tail()}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url}/health did not answer in 180 s:\n{c.tail()}"
        time.sleep(0.3)
    ready_s = time.monotonic() - started
    info = httpx.get(f"{url}/info", timeout=10).json()
    assert info["model_id"] == config.env["MODEL_ID"] == f"/models/{EMBEDDING_MODEL}"
    pid = c.entrypoint_pid()
    assert pid is not None and process_uid(pid) == int(config.user.split(":")[0]) != 0

    openai = httpx.post(f"{url}/v1/embeddings", json={"model": info["model_id"], "input": DOCUMENTS}, timeout=60)
    assert openai.status_code == 200, openai.text
    body = openai.json()
    assert body["object"] == "list" and body["model"] == info["model_id"]
    assert [d["index"] for d in body["data"]] == list(range(len(DOCUMENTS)))
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    assert body["usage"]["prompt_tokens"] > 0
    tei = httpx.post(f"{url}/embed", json={"inputs": DOCUMENTS}, timeout=60)
    assert tei.status_code == 200, tei.text

    reference = SentenceTransformer(str(MINILM_DIR), device="cpu").encode(DOCUMENTS).tolist()
    assert min(cosines([d["embedding"] for d in body["data"]], reference)) >= 0.9999
    assert min(cosines(tei.json(), reference)) >= 0.9999
    assert c.terminate() is not None, f"the router did not stop on SIGTERM:\n{c.tail()}"
    print(f"embedding image: /health 200 {ready_s:.1f} s after start")


def test_gateway_image_starts_on_a_static_models_file(built_images, container, tmp_path):
    image = built_images["gateway"]
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    (models / "models.json").write_text(json.dumps({"models": [
        {"name": "tiny", "namespace": "models", "task": "rerank", "engine": "reranker",
         "endpoints": ["127.0.0.1:9"]}]}))
    (models / "models.json").chmod(0o644)
    port = free_port()
    c = container(image.ref, env={"GATEWAY_MODELS_FILE": "/config/models.json", "GATEWAY_HOST": "127.0.0.1",
                                  "GATEWAY_PORT": str(port), "GATEWAY_NAMESPACE": "models"},
                  volumes=(f"{models}:/config:ro",)).start()
    wait_health(f"http://127.0.0.1:{port}/health", c.proc, c.tail, timeout=60)
    listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    assert listed.status_code == 200 and "tiny" in listed.text, listed.text
    assert c.terminate() is not None


@pytest.mark.cluster
def test_operator_image_reconciles_a_modelservice_and_stops_on_sigterm(built_images, container, cluster, tmp_path):
    image = built_images["operator"]
    crd = CHART / "crds" / "modelservices.yaml"
    cluster.apply_crds(crd)
    ns = f"img-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    kube = tmp_path / "kube"
    kube.mkdir(mode=0o755)
    # Flattened: the certificates the cluster's kubeconfig names by host path travel inside it.
    (kube / "config").write_text(cluster.kubectl("config", "view", "--raw", "--flatten").stdout)
    (kube / "config").chmod(0o644)
    health = free_port()
    chart = chart_container("operator")
    args = [a for a in chart["args"] if not a.startswith(("--liveness", "--namespace"))]
    args += [f"--liveness=http://127.0.0.1:{health}/healthz", f"--namespace={ns}"]
    c = container(image.ref, args=args, env={"KUBECONFIG": "/kube/config"}, volumes=(f"{kube}:/kube:ro",)).start()
    try:
        manifest = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
                    "metadata": {"name": "rerank-cpu"},
                    "spec": {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "cpu"}}
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert c.proc.poll() is None, f"the operator exited:\n{c.tail()}"
            ms = json.loads(cluster.kubectl("get", "modelservice", "rerank-cpu", "-n", ns, "-o", "json").stdout)
            ready = [x for x in (ms.get("status") or {}).get("conditions") or [] if x["type"] == "Ready"]
            if ready and ready[0]["status"] == "True":
                break
            time.sleep(1)
        else:
            raise AssertionError(f"not Ready in 120 s: {ms.get('status')}\n{c.tail()}")
        assert httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=5).status_code == 200
        assert c.terminate(timeout=30) == 0, f"no clean stop on SIGTERM:\n{c.tail()}"
    finally:
        cluster.kubectl("delete", "modelservices", "--all", "-n", ns, "--wait=true", "--timeout=60s", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_operator_image_runs_the_download_job_of_a_model_cache(built_images, container, tmp_path):
    """The download Job the operator builds (modelservice.cache.builders.build_download_job), its command,
    args and env as they are, run from the operator image against the Hub stand-in on 127.0.0.1:
    the model's files land on the mounted volume, at the path the ModelService pods load."""
    from modelservice.cache.builders import build_download_job
    from modelservice.cache.download import model_path
    from testkit.hub import HubServer, files_of
    from modelservice.api.models import parse_modelcache
    from testkit.models import MINILM_DIR

    image = built_images["operator"]
    model = "sentence-transformers/all-MiniLM-L6-v2"
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)   # the pod's fsGroup makes it the Job's; here the image's user writes it
    with HubServer() as hub:
        hub.add_repo(model, files_of(MINILM_DIR))
        cache = parse_modelcache({"metadata": {"name": "minilm", "namespace": "ml"},
                                  "spec": {"model": model, "size": "1Gi"}})
        (spec,) = build_download_job(cache, image=image.ref, hf_endpoint=hub.url)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in spec["env"]}
        (models_mount,) = [m for m in spec["volumeMounts"] if m["name"] == "models"]
        # The kubelet gives the Job a termination-message file; here it lies on the volume.
        ran = container(image.ref, command=spec["command"],
                        args=[*spec["args"], "--termination-log", f"{models_mount['mountPath']}/termination-log"],
                        env=env, volumes=(f"{volume}:{models_mount['mountPath']}", f"{tmp_path}:/tmp")).run(timeout=300)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        fetched = sum(hub.body_bytes.values())
    result = json.loads((volume / "termination-log").read_text())
    files = volume / model_path(model, "main")
    assert json.loads((files / "config.json").read_text())["model_type"] == "bert"
    assert (files / "model.safetensors").stat().st_size == (MINILM_DIR / "model.safetensors").stat().st_size
    assert result["bytes"] > 0 and fetched >= result["bytes"]
