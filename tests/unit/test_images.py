"""The container images: what `docker build` would produce, checked without a Docker engine.

The Dockerfiles are read with BuildKit's own parser (PyPI `dockerfile`), the build context is
rebuilt from the COPY instructions and .dockerignore, and the ports, users and commands are
compared with what the chart renders, so an image and the chart that runs it cannot drift.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
CHART = ROOT / "charts" / "embedding-images"
TABLE = yaml.safe_load((CHART / "files" / "variants.yaml").read_text())
NAMES = ("embedding", "reranker", "operator", "gateway")
PY = ROOT / ".venv" / "bin" / "python"
PYTHON = str(PY) if PY.exists() else sys.executable


# --- reading Dockerfiles ---------------------------------------------------------------------

@dataclass
class Stage:
    base: str                       # FROM argument as written
    name: str = ""
    commands: list = field(default_factory=list)

    def all(self, cmd: str) -> list:
        return [c for c in self.commands if c.cmd == cmd.upper()]

    def last(self, cmd: str):
        found = self.all(cmd)
        assert found, f"stage FROM {self.base} has no {cmd}"
        return found[-1]


@dataclass
class Image:
    path: Path
    global_args: dict[str, str]     # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def args(self) -> dict[str, str]:
        """Every ARG of the file (name -> default); the same name must keep one default."""
        found = dict(self.global_args)
        for stage in self.stages:
            for cmd in stage.all("ARG"):
                name, default = split_arg(cmd)
                assert found.setdefault(name, default) == default, (
                    f"{self.path}: ARG {name} has two defaults, {found[name]!r} and {default!r}")
        return found

    def env(self, stage: Stage) -> dict[str, str]:
        values: dict[str, str] = {}
        for cmd in stage.all("ENV"):
            values.update(zip(cmd.value[::2], cmd.value[1::2]))
        return values


def split_arg(cmd) -> tuple[str, str]:
    name, _, default = cmd.value[0].partition("=")
    if len(default) >= 2 and default[0] == default[-1] and default[0] in "\"'":
        default = default[1:-1]
    return name, default


def load(name: str, file: str = "Dockerfile") -> Image:
    path = IMAGES / name / file
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for cmd in dockerfile.parse_file(str(path)):
        if cmd.cmd == "FROM":
            value = [v for v in cmd.value]
            stage_name = value[2] if len(value) == 3 and value[1].upper() == "AS" else ""
            stages.append(Stage(base=value[0], name=stage_name))
        elif not stages:
            assert cmd.cmd == "ARG", f"{path}: only ARG may come before FROM, found {cmd.original}"
            global_args.update([split_arg(cmd)])
        else:
            stages[-1].commands.append(cmd)
    return Image(path, global_args, stages)


def expand(text: str, values: dict[str, str]) -> str:
    """${VAR} and $VAR from build-argument defaults, as BuildKit expands FROM lines."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)


@pytest.fixture(scope="module", params=NAMES)
def image(request) -> Image:
    return load(request.param)


def image_name(image: Image) -> str:
    return image.path.parent.name


# --- pinned bases, users, ARG documentation ------------------------------------------------

PINNED_PYTHON = re.compile(r"^python:\d+\.\d+\.\d+-slim-\w+$")


def test_every_base_image_has_an_exact_tag(image):
    stage_names = {s.name for s in image.stages if s.name}
    for stage in image.stages:
        base = expand(stage.base, image.global_args)
        if base in stage_names:
            continue
        assert "@sha256:" in base or re.search(r":[^/]+$", base), f"{image.path}: FROM {base} has no tag"
        tag = base.rsplit(":", 1)[-1]
        assert tag != "latest" and not tag.endswith("-latest"), f"{image.path}: FROM {base} floats"
        assert re.search(r"\d+\.\d+", tag), f"{image.path}: FROM {base}: the tag names no version"
        if base.startswith("python:"):
            assert PINNED_PYTHON.match(base), f"{image.path}: {base} is not an exact Python release"


def test_embedding_image_builds_on_the_variant_tables_cpu_tag():
    image = load("embedding")
    cpu = next(v for v in TABLE["variants"] if v["name"] == "cpu")
    assert image.global_args["BASE_IMAGE"] == f"{TABLE['tei']['repository']}:{cpu['teiTag']}"
    assert image.final.base == "${BASE_IMAGE}"


def test_final_stage_runs_as_a_numeric_non_root_user(image):
    user = image.final.last("USER").value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"{image.path}: USER {user} is not numeric"
    assert int(uid) != 0 and gid != "0", f"{image.path}: USER {user} is root"
    # Nothing after USER may switch back.
    assert image.final.commands.index(image.final.last("USER")) > max(
        i for i, c in enumerate(image.final.commands) if c.cmd in {"COPY", "RUN", "ENV"})


def documented_args(name: str) -> dict[str, str]:
    """The `| ARG | Default | Meaning |` table of images/README.md's `## <name>` section."""
    text = (IMAGES / "README.md").read_text()
    section = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, f"images/README.md has no '## {name}' section"
    table = re.search(r"^\| ARG \| Default \| Meaning \|\n\|[-|]+\|\n((?:\|.*\n?)*)", section.group(1), re.M)
    assert table, f"images/README.md '## {name}' has no build-argument table"
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", table.group(1), re.M)
    return {k: ("" if v == '""' else v) for k, v in rows}


def test_every_build_arg_is_documented_with_its_default(image):
    documented = documented_args(image_name(image))
    assert documented == image.args(), (
        f"images/README.md '## {image_name(image)}' and {image.path} disagree on the build arguments")


def test_secrets_are_never_build_arguments(image):
    for name in image.args():
        assert not re.search(r"TOKEN|SECRET|PASSWORD|KEY", name), (
            f"{image.path}: ARG {name} would be recorded in the image history; use a BuildKit secret")
    for stage in image.stages:
        for run in stage.all("RUN"):
            if "HF_TOKEN" in run.value[0]:
                assert "--mount=type=secret,id=hf_token,required=false" in run.flags


# --- entry points --------------------------------------------------------------------------

def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def defines_main(module_file: Path) -> bool:
    assert module_file.is_file(), f"{module_file} is missing"
    tree = ast.parse(module_file.read_text())
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "main"
               for n in tree.body)


def test_reranker_entrypoint_is_the_packages_console_script():
    entrypoint = load("reranker").final.last("ENTRYPOINT")
    assert entrypoint.json, "exec form, so signals reach the server"
    scripts = {target: name for name, target in console_scripts().items()}
    assert list(entrypoint.value) == [scripts["reranker.__main__:main"]]
    assert defines_main(ROOT / "reranker" / "__main__.py")


def test_gateway_entrypoint_is_python_m_gateway_configured_by_environment():
    """The chart runs `python -m gateway` with GATEWAY_* variables and no arguments."""
    final = load("gateway").final
    assert list(final.last("ENTRYPOINT").value) == ["python", "-m", "gateway"]
    assert not final.all("CMD")
    assert console_scripts()["gateway"] == "gateway.__main__:main"


@pytest.mark.helm
def test_gateway_image_runs_the_charts_command(chart_containers):
    image = load("gateway")
    container = chart_container(chart_containers, "gateway")
    assert container["command"] == list(image.final.last("ENTRYPOINT").value)
    assert "args" not in container


def test_operator_entrypoint_is_python_m_modelservice():
    entrypoint = load("operator").final.last("ENTRYPOINT")
    assert list(entrypoint.value) == ["python", "-m", "modelservice"]
    assert console_scripts()["modelservice"] == "modelservice.__main__:main"
    assert defines_main(ROOT / "operator" / "modelservice" / "__main__.py")


def test_embedding_image_serves_the_baked_model_on_all_interfaces():
    image = load("embedding")
    env = image.env(image.final)
    assert env["MODEL_ID"] == "/models/${MODEL_ID}"
    assert list(image.final.last("ENTRYPOINT").value) == ["text-embeddings-router"]
    cmd = list(image.final.last("CMD").value)
    assert cmd[cmd.index("--hostname") + 1] == "0.0.0.0", "TEI would bind the pod's HOSTNAME"
    copies = [c for c in image.final.all("COPY") if "--from=model" in c.flags]
    assert any(c.value == ("/models", "/models") for c in copies)
    fetch = next(r for r in image.stages[0].all("RUN") if "fetch_model.py" in r.value[0])
    assert '"/models/${MODEL_ID}"' in fetch.value[0]


def test_reranker_image_settings_are_real_service_settings():
    """Every RERANKER_* the image sets names a field of the service's settings, and the image's
    default model is the service's default, so `docker run` serves what the docs promise."""
    image = load("reranker")
    env = {k: v for k, v in image.env(image.final).items() if k.startswith("RERANKER_")}
    from reranker.settings import Settings  # noqa: PLC0415 - the module must exist

    prefix = (Settings.model_config.get("env_prefix") or "").upper()
    assert prefix == "RERANKER_"
    fields = {name.upper(): info for name, info in Settings.model_fields.items()}
    for key in env:
        assert key.removeprefix(prefix) in fields, f"the image sets {key}, which the service ignores"
    fallback = re.search(r"\$\{MODEL_ID:-([^}]*)\}", env["RERANKER_MODEL"]).group(1)
    assert fallback == fields["MODEL"].default
    assert int(env["RERANKER_PORT"]) == int(image.final.last("EXPOSE").value[0])


def test_documented_reranker_defaults_are_the_services():
    from reranker.settings import Settings  # noqa: PLC0415

    text = (IMAGES / "README.md").read_text()
    rows = re.findall(r"^\| `RERANKER_(\w+)` \| (`[^`]*`|\(none\)) \|", text, re.M)
    image_sets = set(k.removeprefix("RERANKER_") for k in load("reranker").env(load("reranker").final))
    documented = {k: v for k, v in rows if k not in image_sets}
    assert documented, "images/README.md documents no reranker defaults"
    fields = {name.upper(): info for name, info in Settings.model_fields.items()}
    for key, value in documented.items():
        assert key in fields, f"images/README.md documents RERANKER_{key}, which the service does not read"
        default = fields[key].default
        if isinstance(default, bool):
            default = str(default).lower()  # as the environment variable is written
        assert value == ("(none)" if default is None else f"`{default}`"), f"RERANKER_{key}"
    missing = set(fields) - set(documented) - image_sets
    assert not missing, f"images/README.md does not document RERANKER_{sorted(missing)}"


# --- ports and health checks against the chart ---------------------------------------------

def exposed(image: Image) -> list[int]:
    return [int(p.split("/")[0]) for c in image.final.all("EXPOSE") for p in c.value]


def test_healthcheck_asks_the_health_endpoint_on_the_exposed_port(image):
    check = image.final.last("HEALTHCHECK")
    assert check.value[0] == "CMD" and check.json, f"{image.path}: HEALTHCHECK must run a command"
    assert any(f.startswith("--start-period=") for f in check.flags), "model loading needs a start period"
    probe = " ".join(check.value[1:])
    [port] = exposed(image)
    env = image.env(image.final)
    if image_name(image) == "embedding":
        assert "/health " in probe and int(env["PORT"]) == port
    elif image_name(image) == "reranker":
        assert "/health'" in probe and int(env["RERANKER_PORT"]) == port
    elif image_name(image) == "gateway":
        assert f"127.0.0.1:{port}/health'" in probe
    else:
        assert f"127.0.0.1:{port}/healthz" in probe
        liveness = [a for a in image.final.last("CMD").value if a.startswith("--liveness=")]
        assert liveness == [f"--liveness=http://0.0.0.0:{port}/healthz"]


def fetch_helm() -> Path:
    helm = ROOT / ".cache" / "bin" / "helm"
    if not helm.exists():
        subprocess.run([str(ROOT / "tests" / "cluster" / "tools.sh")], check=True, cwd=ROOT)
    return helm


def render(*args: str) -> list[dict]:
    out = subprocess.run([str(fetch_helm()), "template", "rel", str(CHART), "--namespace", "models", *args],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# The operator's Deployment with default values, without the CRD (it is not what these tests check).
OPERATOR_ONLY = ("--set", "crds.enabled=false")


def containers(docs: list[dict]) -> dict[str, dict]:
    """Deployment containers by image name."""
    return {c["image"]: c for d in docs if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]}


@pytest.fixture(scope="module")
def chart_containers() -> dict[str, dict]:
    plain = containers(render("-f", str(ROOT / "examples" / "values-chart-only.yaml")))
    plain.update(containers(render(*OPERATOR_ONLY)))
    return plain


def chart_container(chart_containers: dict[str, dict], name: str) -> dict:
    starts = {"embedding": TABLE["tei"]["repository"] + ":", "reranker": TABLE["reranker"]["repository"] + ":",
              "operator": "ghcr.io/embedding-images/operator:",
              "gateway": "ghcr.io/embedding-images/gateway:"}[name]
    [container] = [c for img, c in chart_containers.items() if img.startswith(starts)]
    return container


@pytest.mark.helm
def test_exposed_port_is_the_charts_container_port(image, chart_containers):
    container = chart_container(chart_containers, image_name(image))
    assert [p["containerPort"] for p in container["ports"]] == exposed(image)


@pytest.mark.helm
def test_image_user_is_the_user_the_chart_runs_it_as(image):
    docs = (render(*OPERATOR_ONLY) if image_name(image) in ("operator", "gateway")
            else render("-f", str(ROOT / "examples" / "values-chart-only.yaml")))
    wanted = image_name(image)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"
                    and d["metadata"]["labels"].get("app.kubernetes.io/component") == wanted]
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    uid, _, gid = image.final.last("USER").value[0].partition(":")
    assert (pod["runAsUser"], pod.get("runAsGroup")) == (int(uid), int(gid))


@pytest.mark.helm
def test_operator_image_runs_the_charts_command(chart_containers):
    from modelservice.__main__ import parse_args  # noqa: PLC0415  (the operator's own parser)

    image = load("operator")
    container = chart_container(chart_containers, "operator")
    assert container["command"] == list(image.final.last("ENTRYPOINT").value)
    # The image's default arguments configure the operator as the chart's cluster-wide mode does
    # (an image cannot know a release namespace, the chart's default scope), so `docker run`
    # behaves like that install: the same settings once parsed, whichever defaults are spelled out,
    # but for the NetworkPolicy peers (the gateway's and the operator's pods in the release
    # namespace) and the gateway's pods read for autoscaling, which name the release; the image
    # admits none and reads no gateway. Nor can an image name itself: the chart gives the operator
    # its own image reference for the download Jobs (--downloader-image); the image gives none.
    [cluster_wide] = [c for c in containers(render(*OPERATOR_ONLY, "--set", "operator.clusterWide=true")).values()
                      if c["image"].startswith("ghcr.io/embedding-images/operator:")]
    chart, image_args = vars(parse_args(cluster_wide["args"])), vars(parse_args(list(image.final.last("CMD").value)))
    for release_bound, unset in (("network_policy_peers", ()), ("gateway_namespace", None), ("gateway_selector", None),
                                   ("downloader_image", None)):
        assert image_args.pop(release_bound) == unset
        chart.pop(release_bound)
    assert chart == image_args


# --- `make images` and `make kind-up` ------------------------------------------------------

def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # -o: never reinstall the virtual environment from inside a test.
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "-o", "tools",
                           f"PY={PYTHON}", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def docker_builds(stdout: str) -> list[dict]:
    builds = []
    for line in stdout.splitlines():
        argv = shlex.split(line.removeprefix("$ "))
        if argv[:3] != ["docker", "buildx", "build"]:
            continue
        opts: dict = {"build_args": {}, "argv": argv}
        for flag, value in zip(argv, argv[1:]):
            if flag == "--build-arg":
                key, _, val = value.partition("=")
                opts["build_args"][key] = val
            elif flag in {"--file", "--tag"}:
                opts[flag[2:]] = value
        builds.append(opts)
    return builds


def test_make_images_dry_run_builds_every_variant_of_the_table():
    out = make("images", "DRY_RUN=1")
    assert out.returncode == 0, out.stderr
    builds = docker_builds(out.stdout)
    for b in builds:
        assert (ROOT / b["file"]).is_file() and b["argv"][-1] == "."
    by_file = lambda f: [b for b in builds if b["file"] == f"images/{f}/Dockerfile"]  # noqa: E731

    embedding = by_file("embedding")
    wanted = [f"{TABLE['tei']['repository']}:{v['teiTag']}" for v in TABLE["variants"]]
    assert [b["build_args"]["BASE_IMAGE"] for b in embedding] == wanted
    assert len({b["tag"] for b in embedding}) == len(embedding), "two variants share an image tag"

    # The reranker images carry exactly the tags the operator and the chart ask for.
    reranker = {b["tag"]: b["build_args"]["TORCH_VARIANT"] for b in by_file("reranker")}
    wanted_torch = {f"{TABLE['reranker']['repository']}:{v['rerankerTag']}": "cuda" if v["gpu"] else "cpu"
                    for v in TABLE["variants"]}
    assert reranker == wanted_torch

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert [b["tag"] for b in by_file("operator")] == [f"{values['operator']['image']['repository']}:{app_version}"]
    assert [b["tag"] for b in by_file("gateway")] == [f"{values['gateway']['image']['repository']}:{app_version}"]
    assert len(builds) == len(embedding) + len(reranker) + 2


def test_make_images_passes_the_hf_token_only_as_a_secret():
    out = make("images", "DRY_RUN=1", "ONLY=embedding", env={**os.environ, "HF_TOKEN": "hf_not_a_real_token"})
    assert out.returncode == 0, out.stderr
    assert "hf_not_a_real_token" not in out.stdout
    for b in docker_builds(out.stdout):
        assert "id=hf_token,env=HF_TOKEN" in b["argv"]


@pytest.mark.parametrize("target", ["images", "kind-up"])
def test_docker_targets_stop_at_once_without_an_engine(target):
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    # `make images` falls back to podman when it is installed; ENGINE=docker asks for Docker only.
    out = make(target, *(["ENGINE=docker"] if target == "images" else []), env=env)
    assert out.returncode != 0
    assert f"make {target} needs Docker" in out.stderr
    assert f"make {target} DRY_RUN=1" in out.stderr
    assert "==>" not in out.stdout and "$ " not in out.stdout, "nothing may run before the check"


def test_kind_up_dry_run_loads_the_images_the_cluster_needs_and_applies_the_cpu_examples():
    out = make("kind-up", "DRY_RUN=1")
    assert out.returncode == 0, out.stderr
    lines = [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("$ ")]
    built = {b["tag"] for b in docker_builds(out.stdout)}
    [load_cmd] = [c for c in lines if c[:3] == ["kind", "load", "docker-image"]]
    cpu = next(v for v in TABLE["variants"] if v["name"] == "cpu")
    assert set(load_cmd[5:]) == built
    assert f"{TABLE['reranker']['repository']}:{cpu['rerankerTag']}" in built
    [helm] = [c for c in lines if c[0] == "helm"]
    assert "charts/embedding-images" in helm
    operator_tag = [c for c in built if "/operator:" in c][0]
    assert f"operator.image.tag={operator_tag.rsplit(':', 1)[1]}" in helm
    gateway_image = [c for c in built if "/gateway:" in c][0]
    assert f"gateway.image.repository={gateway_image.rsplit(':', 1)[0]}" in helm
    assert f"gateway.image.tag={gateway_image.rsplit(':', 1)[1]}" in helm
    [apply] = [c for c in lines if c[0] == "kubectl" and "apply" in c]
    applied = [Path(apply[i + 1]) for i, a in enumerate(apply) if a == "-f"]
    cpu_examples = sorted(p.relative_to(ROOT) for p in (ROOT / "examples").glob("*.yaml")
                          if (d := yaml.safe_load(p.read_text())).get("kind") == "ModelService"
                          and d["spec"]["accelerator"] == "cpu")
    assert applied == cpu_examples and cpu_examples
    posts = [line for line in out.stdout.splitlines() if line.startswith("POST ")]
    assert len(posts) == len(cpu_examples)


# --- the build context ---------------------------------------------------------------------

def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the context: the last pattern that matches the
    path or one of its parents decides, `!` re-admits (BuildKit's rules for *, ?, ** and !)."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            else:
                out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = regex(raw.lstrip("!").strip("/"))
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def context_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def stage_context(image: Image, stage: Stage, dest: Path) -> None:
    """Apply the stage's context COPYs to `dest`, keeping symlinks as symlinks as COPY does."""
    patterns = context_patterns()
    for cmd in stage.all("COPY"):
        if any(f.startswith("--from=") for f in cmd.flags):
            continue
        *sources, target = cmd.value
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"{image.path}: COPY {source}: not in the repository"
            assert not dockerignore_excludes(source, patterns), f"{image.path}: .dockerignore leaves out {source}"
            to = dest / target.lstrip("/")
            if target.endswith("/"):
                to = to / src.name
            if src.is_dir():
                for file in sorted(src.rglob("*")):
                    rel = file.relative_to(ROOT).as_posix()
                    if dockerignore_excludes(rel, patterns) or file.is_dir():
                        continue
                    out = to / file.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    if file.is_symlink():
                        out.symlink_to(os.readlink(file))
                    else:
                        shutil.copy2(file, out)
            else:
                assert not src.is_symlink(), f"{image.path}: COPY {source} copies a symlink"
                to.parent.mkdir(parents=True, exist_ok=True)
                assert not to.is_symlink(), f"{image.path}: COPY {source} lands on a symlink"
                shutil.copy2(src, to)


def test_dockerignore_keeps_the_context_small():
    patterns = context_patterns()
    for heavy in (".venv/bin/python", ".git/HEAD", ".cache/bin/helm", "tests/unit/test_images.py",
                  "testkit/tei.py", "testkit/pyproject.toml"):
        assert dockerignore_excludes(heavy, patterns), heavy
    assert dockerignore_excludes("reranker/__pycache__/x.pyc", patterns)
    assert not dockerignore_excludes("reranker/__init__.py", patterns)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reranker", "operator", "gateway"])
def test_package_installs_from_the_image_build_context(name, tmp_path):
    """The wheel `pip install /src[...]` builds in the image, from exactly what the Dockerfile
    copies; the operator's must carry the variant table as a regular file."""
    image = load(name)
    stage = next(s for s in image.stages if any("/src" in c.value[-1] for c in s.all("COPY")))
    stage_context(image, stage, tmp_path / "root")
    src = tmp_path / "root" / "src"
    links = [p for p in src.rglob("*") if p.is_symlink()]
    assert not links, f"the context would carry symlinks that dangle in the image: {links}"
    out = subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "reranker/__init__.py" in names and "modelservice/__init__.py" in names
        if name == "gateway":
            assert "gateway/kube.py" in names
        if name == "operator":
            table = zf.read("modelservice/variants.yaml")
            assert table == (CHART / "files" / "variants.yaml").read_bytes()
            # The download Job runs `python -m modelservice.cache.download` from this image.
            assert "modelservice/cache/download.py" in names
        # Product code only: no test-support module, nothing that would import one.
        assert not [n for n in names if n.startswith("testkit/")]
        importers = [n for n in names if n.endswith(".py")
                     and re.search(r"^\s*(from|import)\s+testkit\b", zf.read(n).decode(), re.M)]
        assert not importers, f"shipped modules that import the test-support package: {importers}"


def test_fetch_model_without_a_model_bakes_nothing(tmp_path):
    """The reranker image's default (MODEL_ID empty) makes an empty /models and downloads nothing."""
    dest = tmp_path / "models"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([PYTHON, str(IMAGES / "fetch_model.py"), "", "main", str(dest)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert dest.is_dir() and not any(dest.iterdir())
    assert "baking no model" in out.stderr


def load_build_script():
    spec = importlib.util.spec_from_file_location("images_build", IMAGES / "build.py")
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build          # dataclasses look their module up
    spec.loader.exec_module(build)
    return build


def test_build_plan_refuses_a_reranker_tag_shared_by_cpu_and_gpu():
    build = load_build_script()
    table = json.loads(json.dumps(TABLE))
    gpu_row = next(v for v in table["variants"] if v["gpu"])
    gpu_row["rerankerTag"] = next(v for v in table["variants"] if not v["gpu"])["rerankerTag"]
    with pytest.raises(ValueError, match="one tag is one image"):
        build.build_plan(table, registry="r", embedding_model="m/x", operator_tag="1",
                         components=("reranker",))


# --- the CPU embedding image on TEI's router built here (Dockerfile.router) ------------------

def commands(stage: Stage, *names: str) -> list[str]:
    return [c.original for c in stage.commands if not names or c.cmd in names]


def test_router_embedding_image_is_the_embedding_image_on_another_base():
    """A pod spec written for TEI's image runs the router-built one unchanged: the same model
    stage, entrypoint, command, user, port, health check, label names and environment (plus the
    router's PATH and the CA bundle's SSL_CERT_FILE), the same baked-model copies."""
    tei, router = load("embedding"), load("embedding", "Dockerfile.router")
    assert [commands(s) for s in tei.stages[:-1]] == [commands(s) for s in router.stages[:-1]]
    for cmd in ("ENTRYPOINT", "CMD", "USER", "EXPOSE", "HEALTHCHECK"):
        assert commands(tei.final, cmd) == commands(router.final, cmd), cmd
    labels = lambda image: [k for c in image.final.all("LABEL") for k in c.value[::2]]  # noqa: E731
    assert labels(tei) == labels(router)
    env = router.env(router.final)
    assert {k: env[k] for k in tei.env(tei.final)} == tei.env(tei.final)
    assert set(env) - set(tei.env(tei.final)) == {"PATH", "SSL_CERT_FILE"}
    copies = lambda image: [c.original for c in image.final.all("COPY") if "/models" in c.value or "/data" in c.value]  # noqa: E731
    assert copies(tei) == copies(router)
    # The router's folder (build.sh's output) lands first on PATH; no RUN could leave a build mount.
    [router_copy] = [c for c in router.final.all("COPY") if "--from=router" in c.flags]
    assert env["PATH"].split(":")[0] == router_copy.value[-1].rstrip("/")
    assert not router.final.all("RUN")


def test_router_embedding_image_arguments_are_documented_and_its_runtime_is_debian_bases():
    assert documented_args("embedding-router") == load("embedding", "Dockerfile.router").args()
    build = load_build_script()
    default = load("embedding", "Dockerfile.router").global_args["RUNTIME_IMAGE"]
    assert default == build.debian_base.RUNTIME.image, "RUNTIME_IMAGE's default is not the runtime base's name"
    assert default.rsplit(":", 1)[-1] != build.debian_base.PYTHON.key


def test_cpu_embedding_build_falls_back_to_the_router_with_its_folder_as_a_build_context(tmp_path):
    build = load_build_script()
    [tei] = build.build_plan(TABLE, registry="r", embedding_model="sentence-transformers/all-MiniLM-L6-v2",
                             operator_tag="1", components=("embedding",), variants=("cpu",))
    router = build.router_build(tei, router_dir=tmp_path, runtime_image="localhost/runtime:1")
    assert router.tag == tei.tag and router.dockerfile == "images/embedding/Dockerfile.router"
    assert router.build_args == {"MODEL_ID": "sentence-transformers/all-MiniLM-L6-v2",
                                 "RUNTIME_IMAGE": "localhost/runtime:1"}
    cmd = build.podman_command(router, python_image="p:1", mounts=None, torch_index_url="", platform_="",
                               hf_token_file=None)
    assert cmd[cmd.index("--build-context") + 1] == f"router={tmp_path}"
    assert (ROOT / router.dockerfile).is_file()


def test_make_images_passes_hf_endpoint_to_the_embedding_builds_only():
    out = make("images", "DRY_RUN=1", "ONLY=embedding,operator", env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:8900"})
    assert out.returncode == 0, out.stderr
    for b in docker_builds(out.stdout):
        wanted = "http://127.0.0.1:8900" if b["file"] == "images/embedding/Dockerfile" else None
        assert b["build_args"].get("HF_ENDPOINT") == wanted, b
