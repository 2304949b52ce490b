"""Build every image variant with `docker buildx` (the `make images` target).

The variants come from charts/embedding-images/files/variants.yaml, the table the operator and
the chart read, so an image exists for every tag they can ask for:

- embedding: one image per TEI tag (`BASE_IMAGE=<tei.repository>:<teiTag>`), model baked in,
  tagged `<registry>/embedding:<model>-<teiTag>`;
- reranker: one image per reranker tag, CPU torch for the CPU variant and CUDA torch for the
  GPU variants, tagged `<registry>/reranker:<rerankerTag>` (the table's reranker repository);
- operator: `<registry>/operator:<chart appVersion>`;
- gateway: `<registry>/gateway:<chart appVersion>` (operator_tag is that appVersion).

`--dry-run` prints the commands instead of running them. Without it the script first picks the
engine (`--engine auto`: Docker when an engine answers, else podman) and stops with a clear message
when there is none.

With podman (no Docker daemon needed) every build runs `podman build --isolation chroot --network
host`, the way it works inside an unprivileged container. The machine's pip settings (index,
trusted hosts) and CA bundle are mounted read-only into the RUN steps of the build only (`-v
file:target:ro`), never copied, so they reach no layer; the mount points buildah leaves behind are
empty files in builder stages, which the final stages never copy. When the public Python base
(`python:*-slim-bookworm`) cannot be pulled, the images are built on a Python base made from
Debian's archive (images/debian_base.py, `make images-base`). The reranker's torch wheels are
downloaded once into a wheelhouse under .cache/images/pip, keyed by torch version, Python version
and index, which the build reads as pip's `find-links`. The TEI base of the embedding images is
pulled first; when it cannot be, the CPU embedding image is built from TEI's router compiled on
this machine (images/tei/build.sh, `make tei`; images/embedding/Dockerfile.router, on the minimal
Debian runtime of images/debian_base.py) and the GPU ones are skipped with a message saying so.
HF_ENDPOINT (`--hf-endpoint`) is the Hub the embedding images' model stage downloads from.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debian_base  # noqa: E402  (images/ is a directory of scripts, not a package)

REPO = Path(__file__).resolve().parent.parent
VARIANTS = REPO / "charts" / "embedding-images" / "files" / "variants.yaml"
CHART = REPO / "charts" / "embedding-images" / "Chart.yaml"
DEFAULT_EMBEDDING_MODEL = "BAAI/bge-small-en-v1.5"
COMPONENTS = ("embedding", "reranker", "operator", "gateway")
ENGINES = ("auto", "docker", "podman")
# Where a podman build sees the machine's pip settings, CA bundle and torch wheelhouse (read-only).
PIP_CONF_TARGET = "/etc/pip.conf"
BUILD_DIR_TARGET = "/etc/embedding-images-build"
CA_TARGET = f"{BUILD_DIR_TARGET}/ca.crt"
WHEELS_TARGET = f"{BUILD_DIR_TARGET}/wheels"
WHEELHOUSE = REPO / ".cache" / "images" / "pip"
# The image format of podman builds: Docker's, because the OCI image config has no health check
# (podman's default, oci, drops every HEALTHCHECK with a warning).
PODMAN_FORMAT = "docker"
# pip settings of the machine that a build inside a container can use as they are; `cert` is
# rewritten to the mounted bundle, host paths (find-links, client-cert) mean nothing inside.
PIP_PASSED_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "retries")


@dataclass(frozen=True)
class Build:
    """One `docker buildx build`: which image, from which Dockerfile, with which arguments."""

    component: str
    variant: str
    dockerfile: str
    tag: str
    build_args: dict[str, str] = field(default_factory=dict)
    # Named build contexts besides the repository (`--build-context name=folder`, `COPY --from=name`).
    contexts: dict[str, str] = field(default_factory=dict)


def load_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def model_slug(model_id: str) -> str:
    """The part of a Hugging Face id that goes into an image tag: `BAAI/bge-m3` -> `bge-m3`."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", model_id.rsplit("/", 1)[-1].lower()).strip(".-")
    if not slug:
        raise ValueError(f"model id {model_id!r} gives no usable image tag")
    return slug


def default_registry(table: dict) -> str:
    """The registry and namespace of the table's reranker repository (ghcr.io/embedding-images)."""
    return table["reranker"]["repository"].rsplit("/", 1)[0]


def build_plan(
    table: dict,
    *,
    registry: str,
    embedding_model: str,
    operator_tag: str,
    components: tuple[str, ...] = COMPONENTS,
    variants: tuple[str, ...] = (),
) -> list[Build]:
    """Every build of `make images`, in order: embedding per TEI tag, reranker per tag, operator,
    gateway.

    `variants` restricts the embedding and reranker builds to the named table rows.
    """
    rows = [v for v in table["variants"] if not variants or v["name"] in variants]
    unknown = set(variants) - {v["name"] for v in table["variants"]}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; the table has "
                         f"{[v['name'] for v in table['variants']]}")
    plan: list[Build] = []
    if "embedding" in components:
        slug = model_slug(embedding_model)
        for row in rows:
            plan.append(Build(
                component="embedding",
                variant=row["name"],
                dockerfile="images/embedding/Dockerfile",
                tag=f"{registry}/embedding:{slug}-{row['teiTag']}",
                build_args={
                    "BASE_IMAGE": f"{table['tei']['repository']}:{row['teiTag']}",
                    "MODEL_ID": embedding_model,
                },
            ))
    if "reranker" in components:
        torch_by_tag: dict[str, tuple[str, str]] = {}
        for row in rows:
            torch = "cuda" if row["gpu"] else "cpu"
            seen = torch_by_tag.setdefault(row["rerankerTag"], (torch, row["name"]))
            if seen[0] != torch:
                raise ValueError(
                    f"rerankerTag {row['rerankerTag']!r} is used by the {seen[0]} variant "
                    f"{seen[1]!r} and the {torch} variant {row['name']!r}; one tag is one image")
        repository = f"{registry}/{table['reranker']['repository'].rsplit('/', 1)[-1]}"
        for tag, (torch, _) in torch_by_tag.items():
            plan.append(Build(
                component="reranker",
                variant=torch,
                dockerfile="images/reranker/Dockerfile",
                tag=f"{repository}:{tag}",
                build_args={"TORCH_VARIANT": torch},
            ))
    if "operator" in components:
        plan.append(Build(
            component="operator",
            variant="",
            dockerfile="images/operator/Dockerfile",
            tag=f"{registry}/operator:{operator_tag}",
        ))
    if "gateway" in components:
        plan.append(Build(
            component="gateway",
            variant="",
            dockerfile="images/gateway/Dockerfile",
            tag=f"{registry}/gateway:{operator_tag}",
        ))
    return plan


def build_command(build: Build, *, push: bool, platform: str, hf_token_secret: bool) -> list[str]:
    """The `docker buildx build` argv for one build; the context is the repository root."""
    cmd = ["docker", "buildx", "build", "--file", build.dockerfile, "--tag", build.tag]
    for name, folder in build.contexts.items():
        cmd += ["--build-context", f"{name}={folder}"]
    for key, value in build.build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if platform:
        cmd += ["--platform", platform]
    if hf_token_secret:
        cmd += ["--secret", "id=hf_token,env=HF_TOKEN"]
    cmd.append("--push" if push else "--load")
    cmd.append(".")
    return cmd


def dockerfile_arg(dockerfile: str, name: str) -> str:
    """The default of `ARG name=...` in a Dockerfile (the one place the value is written)."""
    for line in (REPO / dockerfile).read_text().splitlines():
        if m := re.fullmatch(rf"ARG {name}=(\S*)", line.strip()):
            return m.group(1).strip('"')
    raise ValueError(f"{dockerfile} declares no ARG {name}")


@dataclass(frozen=True)
class BuildMounts:
    """What a podman build mounts read-only for its RUN steps: the pip.conf written for the build,
    the CA bundle pip trusts and the torch wheelhouse (each None when there is none)."""

    pip_conf: Path
    ca_bundle: Path | None
    wheelhouse: Path | None

    def volumes(self, component: str) -> list[str]:
        out = ["-v", f"{self.pip_conf}:{PIP_CONF_TARGET}:ro"]
        if self.ca_bundle:
            out += ["-v", f"{self.ca_bundle}:{CA_TARGET}:ro"]
        if self.wheelhouse and component == "reranker":
            out += ["-v", f"{self.wheelhouse}:{WHEELS_TARGET}:ro"]
        return out


def host_pip_settings(python: str = sys.executable) -> dict[str, str]:
    """`pip config list` of the machine (files and PIP_* variables), later scopes winning."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    settings: dict[str, str] = {}
    for line in out.stdout.splitlines():
        if m := re.fullmatch(r"[^.]*\.([a-z-]+)='(.*)'", line.strip()):
            settings[m.group(1)] = m.group(2)
    return settings


def host_ca_bundle(settings: dict[str, str]) -> Path | None:
    for candidate in (settings.get("cert"), os.environ.get("SSL_CERT_FILE"),
                      os.environ.get("REQUESTS_CA_BUNDLE")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_pip_conf(settings: dict[str, str], *, ca: bool, wheelhouse: bool) -> str:
    """The pip.conf a build's RUN steps read: the machine's index settings, its CA bundle and the
    wheelhouse at their mounted paths."""
    lines = ["[global]"]
    lines += [f"{key} = {settings[key]}" for key in PIP_PASSED_KEYS if settings.get(key)]
    if ca:
        lines.append(f"cert = {CA_TARGET}")
    if wheelhouse:
        lines.append(f"find-links = {WHEELS_TARGET}")
    return "\n".join(lines) + "\n"


def torch_wheelhouse(*, version: str, python_version: str, index_url: str, python: str = sys.executable) -> Path:
    """torch and its dependencies as wheels for the image's Python, downloaded once into
    .cache/images/pip/<torch>-<python>-<machine>-<index hash> and reused by every later build."""
    machine = platform.machine()
    index_key = hashlib.sha256(index_url.encode()).hexdigest()[:8]
    dest = WHEELHOUSE / f"torch-{version}-py{python_version}-{machine}-{index_key}"
    if (dest / ".complete").is_file():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    cmd = [python, "-m", "pip", "download", "-q", "--dest", str(partial), "--only-binary=:all:",
           "--python-version", python_version,
           # pip takes a custom platform literally: every glibc the image's (bookworm: 2.36) runs.
           *[arg for glibc in range(36, 16, -1) for arg in ("--platform", f"manylinux_2_{glibc}_{machine}")],
           "--platform", f"manylinux2014_{machine}", f"torch=={version}"]
    if index_url:
        cmd[4:4] = ["--index-url", index_url]
    print(f"==> torch wheelhouse {dest.relative_to(REPO)}\n    {shlex.join(cmd)}", flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"make images: torch {version} could not be downloaded from "
                         f"{index_url or 'the machine pip index'}; set TORCH_INDEX_URL to an index "
                         "that has it (the CPU index download.pytorch.org/whl/cpu, or the machine's own "
                         "index, whose Linux wheels are CUDA builds)")
    (partial / ".complete").touch()
    partial.replace(dest)
    return dest


def podman_command(build: Build, *, python_image: str, mounts: BuildMounts | None,
                   torch_index_url: str, platform_: str, hf_token_file: Path | None) -> list[str]:
    """The `podman build` argv for one build: chroot isolation and the host network, as an
    unprivileged container allows; the context is the repository root."""
    cmd = ["podman", "build", "--isolation", "chroot", "--network", "host", "--layers",
           "--format", PODMAN_FORMAT, "--file", build.dockerfile, "--tag", build.tag]
    for name, folder in build.contexts.items():
        cmd += ["--build-context", f"{name}={folder}"]
    args = dict(build.build_args)
    if python_image:
        args["PYTHON_IMAGE"] = python_image
    if build.component == "reranker" and torch_index_url:
        args["TORCH_INDEX_URL"] = torch_index_url
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if mounts:
        cmd += mounts.volumes(build.component)
    if platform_:
        cmd += ["--platform", platform_]
    if hf_token_file:
        cmd += ["--secret", f"id=hf_token,src={hf_token_file}"]
    cmd.append(".")
    return cmd


ROUTER_DOCKERFILE = "images/embedding/Dockerfile.router"
TEI_BUILD = REPO / "images" / "tei" / "build.sh"


def tei_router_dir() -> Path:
    """The folder of TEI's router built on this machine, as images/tei/build.sh prints it (a cache
    hit in well under a second; cargo, about 15 minutes on two quiet cores, the first time)."""
    done = subprocess.run([str(TEI_BUILD)], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"make images: {TEI_BUILD.relative_to(REPO)} failed (exit {done.returncode}); "
                         "the CPU embedding image needs TEI's router")
    return Path(done.stdout.strip().splitlines()[-1])


def router_build(build: Build, *, router_dir: Path, runtime_image: str) -> Build:
    """The CPU embedding build on TEI's router built here instead of TEI's image: the same tag,
    model and model stage (Dockerfile.router), the router's folder as the build context `router`."""
    args = {k: v for k, v in build.build_args.items() if k != "BASE_IMAGE"}
    return replace(build, dockerfile=ROUTER_DOCKERFILE, build_args={**args, "RUNTIME_IMAGE": runtime_image},
                   contexts={"router": str(router_dir)})


def qualified(image: str) -> str:
    """A Docker Hub short name spelled out (`python:3.12` -> `docker.io/library/python:3.12`):
    podman resolves no short names without a prompt."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def pull_error(image: str) -> str | None:
    """None when podman has the image or can pull it, else the reason it cannot."""
    if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode == 0:
        return None
    try:
        out = subprocess.run(["podman", "pull", "--quiet", image], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "the pull took more than 10 minutes"
    if out.returncode == 0:
        return None
    return (out.stderr.strip().splitlines() or ["podman pull failed"])[-1]


def podman_python_image() -> tuple[str, str | None]:
    """The Python base for podman builds: the Dockerfiles' public image when it can be pulled,
    else the local Debian base; and the Python version of the base when it is the Debian one."""
    public = qualified(dockerfile_arg("images/operator/Dockerfile", "PYTHON_IMAGE"))
    if (error := pull_error(public)) is None:
        return public, None
    print(f"make images: the public base {public} cannot be pulled ({error}); building on the "
          "local Debian base (make images-base)", flush=True)
    return debian_base.ensure(), debian_base.PYTHON_VERSIONS[debian_base.SUITE]


def engine_error(engine: str) -> tuple[str, str | None]:
    """The engine to build with, or the message that says why there is none."""
    if engine in ("auto", "docker"):
        error = docker_engine_error()
        if error is None:
            return "docker", None
        if engine == "docker" or shutil.which("podman") is None:
            return "docker", f"make images needs Docker: {error}" + (
                "" if engine == "docker" else "; nor is podman installed (apt-get install podman buildah)")
        return "podman", None
    if shutil.which("podman") is None:
        return "podman", "make images ENGINE=podman needs podman: it is not installed (apt-get install podman buildah)"
    return "podman", None


def docker_engine_error() -> str | None:
    """None when a Docker engine answers, else a message that says what is missing."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed (https://docs.docker.com/engine/install/)"
    try:
        probe = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=20,
        )
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker version` within 20 s"
    if probe.returncode != 0 or not probe.stdout.strip():
        detail = (probe.stderr.strip().splitlines() or ["no server version"])[-1]
        return f"no Docker engine answers ({detail})"
    return None


def main(argv: list[str] | None = None) -> int:
    table = load_yaml(VARIANTS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--registry", default="", help="registry/namespace of the image names "
                        f"(default {default_registry(table)})")
    parser.add_argument("--push", action="store_true", help="push instead of loading locally")
    parser.add_argument("--platform", default="", help="target platform, e.g. linux/amd64")
    parser.add_argument("--embedding-model", default="", help="model baked into the embedding "
                        f"images (default {DEFAULT_EMBEDDING_MODEL})")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(COMPONENTS)}")
    parser.add_argument("--variant", action="append", default=[],
                        help="only this variant of the table (repeatable), e.g. cpu")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="auto (default): Docker when an engine answers, else podman")
    parser.add_argument("--python-image", default="", help="Python base of the builds (PYTHON_IMAGE); "
                        "with podman, default: the Dockerfiles' when it can be pulled, else the local Debian base")
    parser.add_argument("--torch-index-url", default="", help="index the reranker's torch comes from "
                        "(TORCH_INDEX_URL), e.g. the machine's own index when the CPU index is out of reach")
    parser.add_argument("--hf-endpoint", default=os.environ.get("HF_ENDPOINT", ""),
                        help="Hub the embedding images' model stage downloads from (default: the "
                        "HF_ENDPOINT variable, else huggingface.co); with podman the build runs on the "
                        "host network, so a mirror on 127.0.0.1 works")
    args = parser.parse_args(argv)

    components = tuple(c for c in args.only.split(",") if c) or COMPONENTS
    if bad := set(components) - set(COMPONENTS):
        parser.error(f"--only: unknown image(s) {sorted(bad)}; choose from {','.join(COMPONENTS)}")
    try:
        plan = build_plan(
            table,
            registry=args.registry or default_registry(table),
            embedding_model=args.embedding_model or DEFAULT_EMBEDDING_MODEL,
            operator_tag=str(load_yaml(CHART)["appVersion"]),
            components=components,
            variants=tuple(args.variant),
        )
    except ValueError as err:
        parser.error(str(err))
    if args.hf_endpoint:
        plan = [replace(b, build_args={**b.build_args, "HF_ENDPOINT": args.hf_endpoint})
                if b.component == "embedding" else b for b in plan]
    if args.dry_run:  # auto prints the Docker commands: a dry run asks no engine
        engine, error = ("podman" if args.engine == "podman" else "docker"), None
    else:
        engine, error = engine_error(args.engine)
    if error:
        print(f"{error}.\nStart a Docker engine or install podman, or run `make images DRY_RUN=1` "
              "to print the build commands.", file=sys.stderr)
        return 2
    if engine == "podman":
        return podman_main(plan, args)

    commands = [
        build_command(b, push=args.push, platform=args.platform,
                      hf_token_secret=bool(os.environ.get("HF_TOKEN")))
        for b in plan
    ]
    if args.torch_index_url or args.python_image:
        extra = {"TORCH_INDEX_URL": args.torch_index_url, "PYTHON_IMAGE": args.python_image}
        for b, cmd in zip(plan, commands):
            for key, value in extra.items():
                if value and (key == "PYTHON_IMAGE" or b.component == "reranker"):
                    cmd[-2:-2] = ["--build-arg", f"{key}={value}"]
    if args.dry_run:
        for cmd in commands:
            print(shlex.join(cmd))
        return 0
    for build, cmd in zip(plan, commands):
        print(f"==> {build.component} {build.variant} -> {build.tag}", flush=True)
        print(f"    {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print(f"make images: building {build.tag} failed", file=sys.stderr)
            return 1
    print(f"make images: built {len(plan)} image(s)")
    return 0


def podman_main(plan: list[Build], args: argparse.Namespace) -> int:
    """`make images` with podman: the same plan, each image built by `podman build`."""
    if args.push:
        print("make images: PUSH=1 is for Docker; with podman, push the built tags with `podman push`",
              file=sys.stderr)
        return 2
    if args.dry_run:
        python_image = args.python_image or debian_base.Base(debian_base.SUITE, debian_base.PACKAGES).image
        mounts = BuildMounts(Path("$BUILD/pip.conf"), Path("$BUILD/ca.crt"), Path("$BUILD/wheels"))
        for b in plan:
            print(shlex.join(podman_command(b, python_image=python_image, mounts=mounts,
                                            torch_index_url=args.torch_index_url, platform_=args.platform,
                                            hf_token_file=None)))
        return 0
    python_image, python_version = ((args.python_image, None) if args.python_image else podman_python_image())
    settings = host_pip_settings()
    ca = host_ca_bundle(settings)
    wheelhouse = None
    if python_version and any(b.component == "reranker" for b in plan):
        wheelhouse = torch_wheelhouse(version=dockerfile_arg("images/reranker/Dockerfile", "TORCH_VERSION"),
                                      python_version=python_version, index_url=args.torch_index_url)
    cpu_variants = {row["name"] for row in load_yaml(VARIANTS)["variants"] if not row["gpu"]}
    built, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="embedding-images-build-") as tmp:
        pip_conf = Path(tmp) / "pip.conf"
        pip_conf.write_text(build_pip_conf(settings, ca=ca is not None, wheelhouse=wheelhouse is not None))
        token_file = None
        if token := os.environ.get("HF_TOKEN"):
            token_file = Path(tmp) / "hf_token"
            token_file.write_text(token)
        mounts = BuildMounts(pip_conf, ca, wheelhouse)
        for build in plan:
            if build.component == "embedding" and (error := pull_error(build.build_args["BASE_IMAGE"])):
                if build.variant not in cpu_variants:
                    print(f"==> embedding {build.variant}: skipped, its base {build.build_args['BASE_IMAGE']} "
                          f"cannot be pulled here ({error}). Its Dockerfile is still checked by "
                          "tests/unit/test_images.py; build it where the registry is reachable.", flush=True)
                    skipped.append(build.tag)
                    continue
                print(f"==> embedding {build.variant}: its base {build.build_args['BASE_IMAGE']} cannot be "
                      f"pulled here ({error}); building it on TEI's router built here "
                      f"({TEI_BUILD.relative_to(REPO)}) and the Debian runtime base", flush=True)
                build = router_build(build, router_dir=tei_router_dir(),
                                     runtime_image=debian_base.ensure(debian_base.RUNTIME))
            cmd = podman_command(build, python_image=python_image, mounts=mounts,
                                 torch_index_url=args.torch_index_url, platform_=args.platform,
                                 hf_token_file=token_file)
            print(f"==> {build.component} {build.variant} -> {build.tag}", flush=True)
            print(f"    {shlex.join(cmd)}", flush=True)
            if subprocess.run(cmd, cwd=REPO).returncode != 0:
                print(f"make images: building {build.tag} failed", file=sys.stderr)
                return 1
            built.append(build.tag)
    print(f"make images: built {len(built)} image(s) with podman"
          + (f"; skipped {len(skipped)} embedding image(s) whose TEI base cannot be pulled" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
