"""`make demo`: the whole toolkit on one machine, without Docker and without a download.

1. helm and kubectl into .cache/bin (tests/cluster/tools.sh);
2. the simulated control plane of tests/cluster (a real kube-apiserver, scheduler and
   controller-manager with kwok's simulated CPU and GPU nodes), built on first use; a cluster that
   already runs is used as it is, and so is the one of `--kubeconfig`;
3. the chart (helm upgrade --install), with its operator RBAC but without its own models;
4. every ModelService of examples/ (kubectl apply);
5. the operator as a local process (`python -m modelservice` with the chart Deployment's own
   arguments), authenticated as the chart's ServiceAccount, until every ModelService is Ready or
   its unready pods are explained (the scheduler's reason);
6. `kubectl get modelservices -o wide` and where each model's pods run;
7. the reranker pods of the CPU reranker examples brought to life: the local pod runner
   (testkit/podrunner.py) starts the reranker (`python -m reranker`) for each of their ready pods,
   with the pod's own environment, on a loopback port, and writes its address into a file
   (pod -> 127.0.0.1:port). The model is a tiny random-weight Qwen3 reranker with the real Qwen3
   tokenizer, built into .cache/demo (no download; the answers are real computations of a model
   that knows nothing, so the scores are not meaningful). kwok's pod IPs are never sent anything;
8. the gateway (`python -m gateway`, started by `python -m testkit.loopback gateway`, which
   routes each pod to its address in that file) with the chart Deployment's settings,
   authenticated as the chart's gateway ServiceAccount;
9. the curl examples of README.md's "Gateway" section against it, by model name;
10. scale from zero: the CPU reranker scaled to 0 replicas, and one request through the gateway
   that brings it back (the gateway patches its scale subresource and holds the request).

Then it stops the gateway, the rerankers and the operator, and stops the cluster when it started
it (or removes the release and the namespace from a cluster it found running), unless KEEP=1.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".cache" / "bin"
STATE = ROOT / ".cache" / "demo"
# The pod runner's address file: each ready pod's reranker process on 127.0.0.1 (testkit/loopback.py).
ADDRESSES = STATE / "pod-addresses.json"
CLUSTER_SH = ROOT / "tests" / "cluster" / "cluster.sh"
TOOLS_SH = ROOT / "tests" / "cluster" / "tools.sh"
LOCAL_KUBECONFIG = ROOT / ".cache" / "cluster" / "kubeconfig"
CHART = ROOT / "charts" / "embedding-images"
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
CRD = "modelservices.serving.embedding-images.io"
README_SECTION = "Gateway"   # the README section whose curl examples the demo runs
README_PORT = 8080           # the gateway's port in those examples (and its default)
STEPS = 10


class DemoError(Exception):
    """A step failed; the message says which and what to look at."""


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


def local_rerankers(docs: list[dict[str, Any]]) -> list[str]:
    """The examples whose pods the demo runs for real: rerank models on CPU served by the
    reranker service (its tiny Qwen3 stands in for their model; TEI cannot run here)."""
    return [d["metadata"]["name"] for d in docs
            if d["spec"].get("task") == "rerank" and d["spec"].get("accelerator") == "cpu"
            and d["spec"].get("engine", "auto") in ("auto", "reranker")]


def literal_env(container: dict[str, Any], prefix: str) -> dict[str, str]:
    """A container's `prefix*` variables with literal values (those from fields or Secrets are
    the pod's own)."""
    return {e["name"]: str(e["value"]) for e in container.get("env") or []
            if e["name"].startswith(prefix) and "value" in e}


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
    kubeconfig: Path | None = None  # a cluster of the user's: nothing started or stopped
    progress: Progress = field(default_factory=Progress)
    env: dict[str, str] = field(default_factory=dict)
    started_cluster: bool = False
    installed_release: bool = False
    created_crd: bool = False
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    runner: Any = None              # testkit.podrunner.LocalPodRunner, once started
    pod_processes: dict[str, Any] = field(default_factory=dict)  # pod -> its BackendProcess, every one seen
    local_models: list[str] = field(default_factory=list)

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
                            f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "kubectl"), *args, **kw)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json", what=f"kubectl get {args[0]}").stdout)

    def start_process(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        from testkit.processes import die_with_parent   # this checkout's, once main() set the path

        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent())
        self.processes[name] = proc
        self.progress.say(f"{name}: pid {proc.pid}, log {log.relative_to(ROOT)}")
        return proc

    def stop_process(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # kopf and uvicorn both shut down cleanly on SIGINT
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"    stopped the {name} (pid {proc.pid})", flush=True)

    def wait(self, what: str, probe: Callable[[], Any], timeout: float,
             alive: tuple[str, Path] | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if alive is not None:
                proc = self.processes[alive[0]]
                if proc.poll() is not None:
                    raise DemoError(f"the {alive[0]} exited ({proc.returncode}) while waiting for "
                                    f"{what}; last lines of {alive[1].relative_to(ROOT)}:\n{tail(alive[1])}")
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                extra = f"; last lines of {alive[1].relative_to(ROOT)}:\n{tail(alive[1])}" if alive else ""
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
            time.sleep(0.5)

    # -- steps --

    def tools(self) -> None:
        self.progress.step("helm and kubectl (tests/cluster/tools.sh)")
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        self.run(str(TOOLS_SH), what="installing helm and kubectl", timeout=600)
        version = self.run(str(BIN / "helm"), "version", "--short", what="helm version").stdout.strip()
        self.progress.done(f"helm {version}, kubectl in {BIN.relative_to(ROOT)}")

    def cluster(self) -> None:
        if self.kubeconfig is not None:
            self.progress.step(f"the cluster of {self.kubeconfig} (used as it is)")
            self.env["KUBECONFIG"] = str(self.kubeconfig)
            self.kubectl("version", what="reaching the cluster", timeout=30)
            self.progress.done()
            return
        self.progress.step("the simulated control plane (tests/cluster/cluster.sh up)")
        self.env["KUBECONFIG"] = str(LOCAL_KUBECONFIG)
        if self.run(str(CLUSTER_SH), "status", what="cluster status", check=False).returncode == 0:
            self.progress.done("already running: used as it is and left running")
            return
        if self.run(str(CLUSTER_SH), "built", what="cluster binaries", check=False).returncode != 0:
            self.progress.say("first use: building kube-apiserver, etcd and kwok from the Go module "
                              "proxy (about 10 minutes on two cores; log .cache/cluster/build*.log)")
        self.started_cluster = True
        # Its progress lines go straight to the terminal.
        up = subprocess.run([str(CLUSTER_SH), "up"], cwd=ROOT, env=self.env)
        if up.returncode != 0:
            raise DemoError("tests/cluster/cluster.sh up failed; its message above names the "
                            "component and its log")
        nodes = self.get("nodes")["items"]
        gpus = sum(1 for n in nodes if n["metadata"].get("labels", {}).get("nvidia.com/gpu.present") == "true")
        simulated = sum(1 for n in nodes if n["metadata"].get("annotations", {}).get("kwok.x-k8s.io/node") == "fake")
        real = len(nodes) - simulated
        self.progress.done(f"{simulated} simulated nodes, {gpus} with NVIDIA GPUs"
                           + (f", {real} real node{'s' if real != 1 else ''}" if real else ""))

    def chart(self) -> None:
        self.progress.step(f"the chart: helm upgrade --install {self.release} charts/embedding-images "
                           f"-n {self.namespace}")
        def namespace_usable() -> bool:
            ns = self.kubectl("get", "namespace", self.namespace, "-o", "jsonpath={.status.phase}",
                              what="the namespace", check=False)
            return ns.returncode != 0 or ns.stdout.strip() != "Terminating"

        if not namespace_usable():
            self.progress.say(f"namespace {self.namespace} is still being deleted (an earlier run); waiting")
            self.wait(f"namespace {self.namespace} to be deleted", namespace_usable, 120)
        crd = self.kubectl("get", "crd", CRD, "-o", "json", what="CRD", check=False)
        values = ["--set", "embedding.enabled=false", "--set", "reranker.enabled=false",
                  "--set", f"operator.watchNamespaces={{{self.namespace}}}"]
        if crd.returncode == 0:
            owner = json.loads(crd.stdout)["metadata"].get("annotations", {})
            ours = (owner.get("meta.helm.sh/release-name") == self.release
                    and owner.get("meta.helm.sh/release-namespace") == self.namespace)
            if not ours:
                # Another release (or kubectl) owns it: the chart leaves it alone.
                self.progress.say(f"the ModelService CRD is already installed (owner: "
                                  f"{owner.get('meta.helm.sh/release-name', 'not Helm')}); using it")
        else:
            self.created_crd = True
        self.installed_release = True
        proc = self.run(str(BIN / "helm"), "upgrade", "--install", self.release, str(CHART),
                        "--namespace", self.namespace, "--create-namespace", *values,
                        "--wait", "--timeout", "3m", what="installing the chart", timeout=240)
        status = next((line for line in proc.stdout.splitlines() if line.startswith("STATUS:")), "")
        self.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s",
                     what="the ModelService CRD")
        self.progress.done(f"release {self.release} {status.lower() or 'installed'}; the CRD is served")

    def examples(self) -> list[dict[str, Any]]:
        found = example_modelservices()
        self.progress.step(f"the examples: kubectl apply -n {self.namespace} -f examples/<{len(found)} files>")
        if not found:
            raise DemoError("examples/ has no ModelService manifests")
        args = [a for path, _ in found for a in ("-f", str(path.relative_to(ROOT)))]
        out = self.kubectl("apply", "-n", self.namespace, *args, what="applying examples/").stdout
        self.progress.say(out)
        self.progress.done()
        return [doc for _, doc in found]

    def service_account_kubeconfig(self, service_account: str, user: str) -> Path:
        """A kubeconfig (.cache/demo/<user>-kubeconfig) holding a short-lived token of one of the
        chart's ServiceAccounts, so that a local process has exactly that account's rights."""
        token = self.kubectl("create", "token", service_account, "-n", self.namespace, "--duration=1h",
                             what=f"a token for the {user}'s ServiceAccount").stdout.strip()
        admin = yaml.safe_load(Path(self.env["KUBECONFIG"]).read_text())
        context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
        cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": user,
            "clusters": [{"name": "demo", "cluster": cluster["cluster"]}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "demo", "user": user,
                                                    "namespace": self.namespace}}],
        }
        STATE.mkdir(parents=True, exist_ok=True)
        path = STATE / f"{user}-kubeconfig"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config))
        return path

    def chart_pod_spec(self, component: str) -> dict[str, Any]:
        """The pod template of the chart's Deployment of `component` (operator, gateway)."""
        deployments = self.get("deployments", "-n", self.namespace,
                               "-l", f"app.kubernetes.io/component={component},"
                               f"app.kubernetes.io/instance={self.release}")["items"]
        if len(deployments) != 1:
            raise DemoError(f"expected the chart's {component} Deployment in {self.namespace}, found "
                            f"{len(deployments)}")
        return deployments[0]["spec"]["template"]["spec"]

    def operator(self, docs: list[dict[str, Any]]) -> None:
        self.progress.step("the operator: python -m modelservice, as the chart's ServiceAccount")
        pod = self.chart_pod_spec("operator")
        (container,) = pod["containers"]
        # The chart's own arguments; the liveness port is the pod's, not this machine's.
        args = [a for a in container.get("args", []) if not a.startswith("--liveness")]
        kubeconfig = self.service_account_kubeconfig(pod["serviceAccountName"], "operator")
        self.progress.say(f"python -m modelservice {shlex.join(args)}")
        self.progress.say("(the chart's operator pod is a simulated one: kwok runs no containers)")
        log = STATE / "operator.log"
        self.start_process("operator", [sys.executable, "-m", "modelservice", *args],
                           {**self.env, "KUBECONFIG": str(kubeconfig)}, log)
        names = [d["metadata"]["name"] for d in docs]
        last: list[str] = []
        waiting: dict[str, dict[str, Any]] = {}

        def probe() -> bool:
            nonlocal last
            items = {m["metadata"]["name"]: m for m in self.get("modelservices", "-n", self.namespace)["items"]}
            pods = self.get("pods", "-n", self.namespace)["items"]
            done, line = [], []
            waiting.clear()
            for name in names:
                ms = items.get(name, {"metadata": {}})
                selector = (ms.get("status") or {}).get("selector", "")
                wanted = dict(kv.split("=", 1) for kv in selector.split(",") if "=" in kv)
                own = [p for p in pods if wanted and wanted.items() <= p["metadata"].get("labels", {}).items()]
                if ms.get("status") and settled(ms, own):
                    done.append(name)
                else:
                    waiting[name] = ms
                line.append(f"{name}: {(ms.get('status') or {}).get('phase', 'waiting')}")
            if line != last:
                self.progress.say(f"{len(done)}/{len(names)} settled: " + ", ".join(line))
                last = line
            return len(done) == len(names)

        try:
            self.wait("every ModelService to be Ready or explained", probe, self.timeout, alive=("operator", log))
        except DemoError as exc:
            raise DemoError(f"{exc}\n{self.explain_waiting(waiting)}") from None
        self.progress.done()

    def explain_waiting(self, waiting: dict[str, dict[str, Any]]) -> str:
        """What each unsettled ModelService's status says, beside what its Deployment says."""
        lines = ["still waiting for:"]
        for name, ms in waiting.items():
            status = ms.get("status") or {}
            ready = condition(ms, "Ready")
            deployment = self.kubectl("get", "deployment", name, "-n", self.namespace, "-o", "json",
                                      what="the Deployment", check=False)
            if deployment.returncode == 0:
                d = json.loads(deployment.stdout).get("status") or {}
                live = f"its Deployment has {d.get('readyReplicas', 0)}/{d.get('replicas', 0)} pods ready"
            else:
                live = "it has no Deployment"
            lines.append(f"  {name}: status {status.get('phase', 'not written')} {status.get('ready', '')} "
                         f"({ready.get('reason', '-')}: {ready.get('message', '')}); {live}")
        return "\n".join(lines)

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
            wanted = dict(kv.split("=", 1) for kv in status.get("selector", "").split(",") if "=" in kv)
            own = [p for p in pods if wanted and wanted.items() <= p["metadata"].get("labels", {}).items()]
            placed = []
            for node in sorted({p["spec"]["nodeName"] for p in own if p["spec"].get("nodeName")}):
                product = nodes.get(node, {}).get("nvidia.com/gpu.product")
                placed.append(f"{node} ({product})" if product else node)
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
        self.progress.done("(the endpoints resolve inside the cluster)")

    def tiny_model(self) -> Path:
        """The tiny Qwen3 reranker of .cache/demo, built on first use with the tests' builder."""
        model = STATE / "tiny-qwen3-reranker"
        if not (model / "config.json").is_file():
            self.progress.say(f"building a random-weight Qwen3 reranker with the real Qwen3 tokenizer "
                              f"into {model.relative_to(ROOT)} (once)")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from testkit.models import build_qwen3_reranker  # the builder the tests use

            build_qwen3_reranker(model, "tiny")
        return model

    def admin_client(self) -> Any:
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=self.env["KUBECONFIG"])

    def note_pod_processes(self) -> None:
        """Records the runner's processes (each is reported when it starts and when it stops)."""
        for name, pod in dict(self.runner.running).items():
            if name not in self.pod_processes:
                self.pod_processes[name] = pod.backend
                own = " ".join(f"{k}={v}" for k, v in sorted(pod.env.items()) if k.startswith("RERANKER_")
                               and k not in ("RERANKER_MODEL", "RERANKER_HOST", "RERANKER_PORT"))
                self.progress.say(f"reranker for pod {name}: pid {pod.backend.process.pid}, "
                                  f"{pod.backend.address}, log {pod.backend.log.relative_to(ROOT)}\n"
                                  f"  with the pod's {own}")

    def pod_addresses(self) -> dict[str, str]:
        try:
            return json.loads(ADDRESSES.read_text())
        except (OSError, ValueError):
            return {}

    def reranker_pods(self, docs: list[dict[str, Any]]) -> None:
        self.local_models = local_rerankers(docs)
        if not self.local_models:
            raise DemoError("examples/ has no reranker ModelService on CPU for the gateway to route to")
        self.progress.step(f"the reranker pods of {', '.join(self.local_models)}: python -m reranker "
                           f"for each ready pod (testkit/podrunner.py)")
        model = self.tiny_model()
        from testkit.podrunner import LocalPodRunner

        logs = STATE / "pods"
        logs.mkdir(parents=True, exist_ok=True)
        self.progress.say("kwok's pods run no process: each ready pod gets the real reranker with "
                          "the pod's own RERANKER_* environment\n"
                          "on 127.0.0.1, and writes the pod's address there into "
                          f"{ADDRESSES.relative_to(ROOT)} for the gateway")
        self.runner = LocalPodRunner(self.admin_client(), self.namespace, self.local_models, model,
                                     ADDRESSES, logs).start()
        wanted = {name: int(self.get("modelservice", name, "-n", self.namespace)["spec"].get("replicas", 1))
                  for name in self.local_models}

        def all_running() -> bool:
            pods = self.get("pods", "-n", self.namespace, "-l",
                            f"serving.embedding-images.io/modelservice in ({','.join(self.local_models)})")["items"]
            ready = {p["metadata"]["name"] for p in pods if pod_ready(p) and not p["metadata"].get("deletionTimestamp")}
            return len(ready) >= sum(wanted.values()) and ready == set(self.runner.running)

        self.wait("a reranker process for every ready pod", all_running, 180)
        self.note_pod_processes()
        self.progress.done(f"{len(self.runner.running)} reranker process(es): {json.dumps(self.pod_addresses())}")

    def http(self, path: str, timeout: float = 5) -> tuple[int, Any]:
        """GET on the demo's gateway: (status, parsed JSON body or None); (0, None) when it does
        not answer."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (urllib.error.URLError, OSError, ValueError):
            return 0, None

    def routable(self, name: str) -> dict[str, Any] | None:
        """The gateway's /v1/models entry of `name`, if it has a ready replica to route to."""
        status, listing = self.http("/v1/models")
        for model in (listing or {}).get("data", []) if status == 200 else []:
            if model.get("id") == name and model.get("ready_replicas", 0) > 0:
                return model
        return None

    def gateway(self) -> None:
        self.progress.step(f"the gateway: python -m gateway, as the chart's ServiceAccount, port {self.port}")
        pod = self.chart_pod_spec("gateway")
        (container,) = pod["containers"]
        # The chart's own settings; where it listens is this machine's, not the pod's.
        settings = {k: v for k, v in literal_env(container, "GATEWAY_").items()
                    if k not in ("GATEWAY_HOST", "GATEWAY_PORT")}
        kubeconfig = self.service_account_kubeconfig(pod["serviceAccountName"], "gateway")
        env = {**settings, "GATEWAY_NAMESPACE": self.namespace, "GATEWAY_HOST": "127.0.0.1",
               "GATEWAY_PORT": str(self.port)}
        self.progress.say(" ".join(f"{k}={v}" for k, v in sorted(env.items())) + " python -m gateway")
        self.progress.say(f"(through python -m testkit.loopback gateway {ADDRESSES.relative_to(ROOT)}: "
                          "only the pods it names are routed, to 127.0.0.1)")
        log = STATE / "gateway.log"
        self.start_process("gateway", [sys.executable, "-m", "testkit.loopback", "gateway", str(ADDRESSES)],
                           {**self.env, **env, "KUBECONFIG": str(kubeconfig)}, log)
        self.wait("the gateway's watches to sync (/ready)", lambda: self.http("/ready")[0] == 200, 60,
                  alive=("gateway", log))
        for name in self.local_models:
            model = self.wait(f"the gateway to route {name}", lambda: self.routable(name), 60,
                              alive=("gateway", log))
            self.progress.say(f"{name}: {model['ready_replicas']} replica(s) routable")
        services = self.get("services", "-n", self.namespace, "-l", "app.kubernetes.io/component=gateway,"
                            f"app.kubernetes.io/instance={self.release}")["items"]
        for service in services:
            self.progress.say(f"in the cluster: http://{service['metadata']['name']}.{self.namespace}"
                              f".svc.cluster.local:{service['spec']['ports'][0]['port']} (the chart's Service)")
        self.progress.done(f"ready on http://127.0.0.1:{self.port}")

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

    def curl_examples(self) -> list[tuple[str, int, Any]]:
        self.progress.step(f"the curl examples of README.md ({README_SECTION}), through the gateway by model name")
        commands = readme_curl_commands(README.read_text())
        if self.port != README_PORT:
            self.progress.say(f"(localhost:{README_PORT} in the README is localhost:{self.port} here)")
        answers = []
        for command in commands:
            command = retarget(command, self.port)
            code, parsed = self.curl(command)
            if code != 200:
                raise DemoError(f"the README example answered HTTP {code}: {str(parsed)[:300]}")
            answers.append((command, code, parsed))
        print()
        self.progress.done(f"{len(answers)} examples answered")
        return answers

    def scale_from_zero(self) -> None:
        name = self.local_models[0]
        self.progress.step(f"scale from zero: kubectl scale modelservice {name} --replicas=0, then one request")
        self.kubectl("scale", "modelservice", name, "-n", self.namespace, "--replicas=0",
                     what="scaling to zero")
        self.progress.say(f"$ kubectl scale modelservice {name} -n {self.namespace} --replicas=0")

        def at_zero() -> bool:
            self.note_pod_processes()
            status, listing = self.http("/v1/models")
            model = next((m for m in (listing or {}).get("data", []) if m.get("id") == name), {})
            return not self.runner.running and model.get("replicas") == 0 and model.get("ready_replicas") == 0

        self.wait(f"{name}'s pod and its process to go, and the gateway to see 0 replicas", at_zero, 90)
        self.progress.say(f"{name}: 0 replicas, no pod, no process")
        command = next(c for c in readme_curl_commands(README.read_text()) if is_rerank(c))
        started = time.monotonic()
        code, _ = self.curl(retarget(command, self.port))
        held = time.monotonic() - started
        if code != 200:
            raise DemoError(f"the request to {name} at zero replicas answered HTTP {code}")
        replicas = self.get("modelservice", name, "-n", self.namespace)["spec"].get("replicas")
        self.note_pod_processes()
        print(flush=True)
        self.progress.done(f"held {held:.1f} s while the gateway scaled {name} to {replicas} replica(s) "
                           f"and its new pod started")

    # -- cleanup --

    def cleanup(self) -> None:
        print("\n==> cleaning up", flush=True)
        self.stop_process("gateway")
        if self.runner is not None:
            self.note_pod_processes()
            self.runner.stop()
            for pod, backend in self.pod_processes.items():
                backend.stop()   # already stopped by the runner; waits for it all the same
                print(f"    stopped the reranker for pod {pod} (pid {backend.process.pid})", flush=True)
        self.stop_process("operator")
        if self.keep:
            where = "the simulated control plane" if self.kubeconfig is None else str(self.kubeconfig)
            print(f"    KEEP=1: {where} and release {self.release} stay; look around with\n"
                  f"      KUBECONFIG={self.env.get('KUBECONFIG')} .cache/bin/kubectl get msvc,deploy,pods "
                  f"-n {self.namespace} -o wide\n"
                  f"    and stop it with `make cluster-down` when done", flush=True)
            return
        if self.started_cluster:
            subprocess.run([str(CLUSTER_SH), "down"], cwd=ROOT, env=self.env or None)
            print("    stopped the control plane this demo started", flush=True)
            return
        if self.installed_release:
            self.run(str(BIN / "helm"), "uninstall", self.release, "-n", self.namespace,
                     "--ignore-not-found", what="helm uninstall", check=False)
            self.kubectl("delete", "namespace", self.namespace, "--ignore-not-found", "--wait=false",
                         what="deleting the namespace", check=False)
            if self.created_crd:
                # Waited for, so that whatever installs the CRD next does not race its deletion.
                self.kubectl("delete", "crd", CRD, "--ignore-not-found", "--timeout=90s",
                             what="deleting the CRD this demo installed", check=False, timeout=120)
            print(f"    removed release {self.release} and namespace {self.namespace}; "
                  f"the cluster stays as it was found", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="embedding-demo", help="namespace of the release and examples")
    parser.add_argument("--release", default="demo", help="Helm release name")
    parser.add_argument("--port", type=int, default=None,
                        help=f"gateway port (default {README_PORT}, the README's; a free one when it is taken)")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds the ModelServices may take to be Ready")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="use this cluster instead of the simulated one; nothing is started or stopped")
    parser.add_argument("--keep", action="store_true", default=os.environ.get("KEEP", "") not in ("", "0"),
                        help="leave the cluster and the release running (KEEP=1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))   # testkit.podrunner and testkit.models, from this checkout
    from testkit.processes import interrupt_on_termination
    interrupt_on_termination()   # SIGTERM and SIGHUP clean up as Ctrl-C does
    if args.port is None:
        port = README_PORT if not port_in_use(README_PORT) else free_port()
    elif port_in_use(args.port):
        print(f"demo: ERROR: --port {args.port} is in use; choose another or leave it out", file=sys.stderr)
        return 2
    else:
        port = args.port
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        print(f"demo: ERROR: --kubeconfig {args.kubeconfig} does not exist", file=sys.stderr)
        return 2
    demo = Demo(namespace=args.namespace, release=args.release, port=port, keep=args.keep,
                timeout=args.timeout, kubeconfig=args.kubeconfig and args.kubeconfig.resolve())
    print("embedding-images demo: the chart, the operator and the examples on a simulated cluster, "
          "and the gateway and rerankers on this machine", flush=True)
    if port != README_PORT and args.port is None:
        print(f"(port {README_PORT} is taken: the gateway listens on {port})", flush=True)
    code = 0
    try:
        demo.tools()
        demo.cluster()
        demo.chart()
        docs = demo.examples()
        demo.operator(docs)
        demo.show(docs)
        demo.reranker_pods(docs)
        demo.gateway()
        demo.curl_examples()
        demo.scale_from_zero()
    except DemoError as exc:
        print(f"\ndemo: ERROR: {exc}", file=sys.stderr, flush=True)
        code = 1
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
