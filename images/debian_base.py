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

`ensure(RUNTIME)` makes the other base, the runtime of the embedding image built from TEI's router
(images/embedding/Dockerfile.router): no Python, no apt, no perl; mmdebstrap's `custom` variant
with the shell and tools dpkg and the image's health check use, and the libraries `ldd` lists
for `text-embeddings-router` and `libonnxruntime.so` (libc6, libgcc-s1, libstdc++6, libssl3),
without documentation, manual pages or translations (about 40 MB).
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
# What dpkg needs to install packages (it checks for diff, find, grep, sed, tar, ...) and the shell
# and coreutils of the health check, then what `ldd text-embeddings-router` names.
RUNTIME_PACKAGES = ("base-files", "base-passwd", "bash", "coreutils", "dash", "diffutils", "dpkg",
                    "findutils", "grep", "gzip", "sed", "tar", "libc-bin",
                    "libc6", "libgcc-s1", "libstdc++6", "libssl3")
RUNTIME_REPOSITORY = "localhost/embedding-images/runtime-base"
# Paths a runtime image never reads (dpkg leaves them out as it installs).
RUNTIME_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


@dataclass(frozen=True)
class Base:
    """Where the base of one suite and package list lives: its tarball and its image name."""

    suite: str
    packages: tuple[str, ...]
    # mmdebstrap's variant (minbase: apt and the required packages; custom: `packages` only), the
    # paths dpkg leaves out, the repository of the image and its default command.
    variant: str = "minbase"
    excludes: tuple[str, ...] = ()
    repository: str = REPOSITORY
    cmd: str = "python3"

    @property
    def key(self) -> str:
        # The Python base's key covers the suite and the packages only (what it always covered),
        # so the tarballs and images made before the runtime base existed keep their names.
        parts = [self.suite, *sorted(self.packages)]
        if (self.variant, self.excludes) != ("minbase", ()):
            parts += [f"variant={self.variant}", *[f"exclude={e}" for e in self.excludes]]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return f"{self.suite}-{digest[:12]}"

    @property
    def tarball(self) -> Path:
        return CACHE / f"debian-{self.key}.tar"

    @property
    def image(self) -> str:
        return f"{self.repository}:{self.key}"


PYTHON = Base(SUITE, PACKAGES)
RUNTIME = Base(SUITE, RUNTIME_PACKAGES, variant="custom", excludes=RUNTIME_EXCLUDES,
               repository=RUNTIME_REPOSITORY, cmd="bash")


def log(message: str) -> None:
    print(f"images-base: {message}", file=sys.stderr, flush=True)


def make_tarball(base: Base) -> None:
    """mmdebstrap's minbase with the packages, PEP 668 marker removed, written atomically."""
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("images-base: mmdebstrap is not installed (apt-get install mmdebstrap)")
    base.tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = base.tarball.with_suffix(".partial.tar")
    cmd = ["mmdebstrap", f"--variant={base.variant}", f"--include={','.join(base.packages)}",
           *[f"--dpkgopt=path-exclude={path}" for path in base.excludes],
           "--customize-hook=rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
           # apt's package lists are 40 MB the images never use.
           "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*",
           base.suite, str(partial)]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    partial.replace(base.tarball)


def image_exists(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "exists", image], capture_output=True).returncode == 0


def ensure(base: Base = PYTHON, engine: str = "podman") -> str:
    """The base image's name, building the tarball and importing it when missing."""
    if image_exists(engine, base.image):
        return base.image
    if not base.tarball.is_file():
        make_tarball(base)
    log(f"importing {base.tarball.relative_to(REPO)} as {base.image}")
    subprocess.run([engine, "import", "--quiet", "--change", f"CMD [\"{base.cmd}\"]", str(base.tarball), base.image],
                   check=True, stdout=subprocess.DEVNULL)
    return base.image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=SUITE, help=f"Debian suite (default {SUITE})")
    parser.add_argument("--engine", default=os.environ.get("ENGINE") or "podman",
                        help="podman (default) or buildah; docker works too")
    parser.add_argument("--runtime", action="store_true",
                        help="the runtime base of the embedding image built from TEI's router, not the Python base")
    args = parser.parse_args(argv)
    base = RUNTIME if args.runtime else PYTHON
    print(ensure(Base(args.suite, base.packages, base.variant, base.excludes, base.repository, base.cmd), args.engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
