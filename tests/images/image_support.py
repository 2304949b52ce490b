"""What the image smoke tests and their fixtures share: the build script, the names, the image
config as `buildah inspect` reads it."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("podman", "buildah", "mmdebstrap", "fuse-overlayfs")
TEST_REGISTRY = "localhost/embedding-images-test"
NAMES = ("reranker", "operator", "gateway")
# The CPU embedding image: built apart from NAMES (on TEI's router built here, with a model baked
# in from the Hub stand-in), by the `embedding_image` fixture.
EMBEDDING = "embedding"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build = _load("images_build", ROOT / "images" / "build.py")
debian_base = sys.modules["debian_base"]


@dataclass(frozen=True)
class BuiltImage:
    name: str
    ref: str
    pip_conf: str        # the pip.conf its build mounted (the test looks for it in the image)
    hf_token: str        # the secret its build mounted


# A fake token the reranker's build mounts as its hf_token secret: it must appear nowhere.
HF_TOKEN_CANARY = "hf_embeddingImagesCanaryNotAToken0123456789"



@dataclass(frozen=True)
class ImageConfig:
    entrypoint: list[str]
    cmd: list[str]
    user: str
    workdir: str
    env: dict[str, str]
    labels: dict[str, str]


def image_config(ref: str) -> ImageConfig:
    out = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True, check=True)
    config = json.loads(out.stdout)["OCIv1"]["config"]
    return ImageConfig(
        entrypoint=config.get("Entrypoint") or [], cmd=config.get("Cmd") or [], user=config.get("User", ""),
        workdir=config.get("WorkingDir") or "/",
        env=dict(e.split("=", 1) for e in config.get("Env") or []), labels=config.get("Labels") or {})


