"""A Python base image made from Debian's own archive, for machines that cannot pull python:*.

`make images-base` (and `make images` with podman) calls `ensure()`: mmdebstrap writes a minimal
Debian root filesystem with Debian's python3, venv and pip into a tarball cached under
.cache/images/base/, named after the suite and a hash of the package list, and `podman import`
turns it into `localhost/embedding-images/python-base:<suite>-<hash>`. The tarball is made once;
the import is redone only when the local image store lacks the image (a fresh CI machine with a
restored .cache).

Debian marks its python3 externally managed (PEP 668): pip refuses to install outside a virtual
environment, which the model stages of the Dockerfiles do (`pip install huggingface_hub`). The
official python images carry no such marker, so the tarball's hook removes it and the
Dockerfiles run unchanged on either base.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "images" / "base"
SUITE = "bookworm"
# What the Dockerfiles' stages use from the official python images: python and python3, the venv
# module, pip, and the CA bundle for HTTPS downloads.
PACKAGES = ("ca-certificates", "python-is-python3", "python3", "python3-pip", "python3-venv")
REPOSITORY = "localhost/embedding-images/python-base"
# The python3 of each suite, for wheels downloaded ahead of a build (images/build.py).
PYTHON_VERSIONS = {"bookworm": "3.11", "trixie": "3.13"}


@dataclass(frozen=True)
class Base:
    """Where the base of one suite and package list lives: its tarball and its image name."""

    suite: str
    packages: tuple[str, ...]

    @property
    def key(self) -> str:
        digest = hashlib.sha256("\n".join([self.suite, *sorted(self.packages)]).encode()).hexdigest()
        return f"{self.suite}-{digest[:12]}"

    @property
    def tarball(self) -> Path:
        return CACHE / f"debian-{self.key}.tar"

    @property
    def image(self) -> str:
        return f"{REPOSITORY}:{self.key}"


def log(message: str) -> None:
    print(f"images-base: {message}", file=sys.stderr, flush=True)


def make_tarball(base: Base) -> None:
    """mmdebstrap's minbase with the packages, PEP 668 marker removed, written atomically."""
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("images-base: mmdebstrap is not installed (apt-get install mmdebstrap)")
    base.tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = base.tarball.with_suffix(".partial.tar")
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(base.packages)}",
           "--customize-hook=rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
           # apt's package lists are 40 MB the images never use.
           "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*",
           base.suite, str(partial)]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    partial.replace(base.tarball)


def image_exists(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "exists", image], capture_output=True).returncode == 0


def ensure(base: Base = Base(SUITE, PACKAGES), engine: str = "podman") -> str:
    """The base image's name, building the tarball and importing it when missing."""
    if image_exists(engine, base.image):
        return base.image
    if not base.tarball.is_file():
        make_tarball(base)
    log(f"importing {base.tarball.relative_to(REPO)} as {base.image}")
    subprocess.run([engine, "import", "--quiet", "--change", "CMD [\"python3\"]", str(base.tarball), base.image],
                   check=True, stdout=subprocess.DEVNULL)
    return base.image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=SUITE, help=f"Debian suite (default {SUITE})")
    parser.add_argument("--engine", default=os.environ.get("ENGINE") or "podman",
                        help="podman (default) or buildah; docker works too")
    args = parser.parse_args(argv)
    print(ensure(Base(args.suite, PACKAGES), args.engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
