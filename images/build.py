"""Build every image variant with `docker buildx` (the `make images` target).

The variants come from charts/embedding-images/files/variants.yaml, the table the operator and
the chart read, so an image exists for every tag they can ask for:

- embedding: one image per TEI tag (`BASE_IMAGE=<tei.repository>:<teiTag>`), model baked in,
  tagged `<registry>/embedding:<model>-<teiTag>`;
- reranker: one image per reranker tag, CPU torch for the CPU variant and CUDA torch for the
  GPU variants, tagged `<registry>/reranker:<rerankerTag>` (the table's reranker repository);
- operator: `<registry>/operator:<chart appVersion>`;
- gateway: `<registry>/gateway:<chart appVersion>` (operator_tag is that appVersion).

`--dry-run` prints the commands instead of running them. Without it the script first asks the
Docker engine for its version and stops with a clear message when none answers.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VARIANTS = REPO / "charts" / "embedding-images" / "files" / "variants.yaml"
CHART = REPO / "charts" / "embedding-images" / "Chart.yaml"
DEFAULT_EMBEDDING_MODEL = "BAAI/bge-small-en-v1.5"
COMPONENTS = ("embedding", "reranker", "operator", "gateway")


@dataclass(frozen=True)
class Build:
    """One `docker buildx build`: which image, from which Dockerfile, with which arguments."""

    component: str
    variant: str
    dockerfile: str
    tag: str
    build_args: dict[str, str] = field(default_factory=dict)


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
    for key, value in build.build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if platform:
        cmd += ["--platform", platform]
    if hf_token_secret:
        cmd += ["--secret", "id=hf_token,env=HF_TOKEN"]
    cmd.append("--push" if push else "--load")
    cmd.append(".")
    return cmd


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
    commands = [
        build_command(b, push=args.push, platform=args.platform,
                      hf_token_secret=bool(os.environ.get("HF_TOKEN")))
        for b in plan
    ]

    if args.dry_run:
        for cmd in commands:
            print(shlex.join(cmd))
        return 0
    if error := docker_engine_error():
        print(f"make images needs Docker: {error}.\n"
              "Start a Docker engine, or run `make images DRY_RUN=1` to print the build commands.",
              file=sys.stderr)
        return 2
    for build, cmd in zip(plan, commands):
        print(f"==> {build.component} {build.variant} -> {build.tag}", flush=True)
        print(f"    {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print(f"make images: building {build.tag} failed", file=sys.stderr)
            return 1
    print(f"make images: built {len(plan)} image(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
