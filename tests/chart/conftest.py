"""Fixtures for the chart tests: helm binaries (installed on demand) and a renderer.

`helm` is Helm 4 from tests/cluster/tools.sh; `helm3` is Helm 3 built by tests/chart/helm3.sh
from the Go module proxy. Both are session-scoped, so a fresh machine installs them once.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "embedding-images"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
BIN = ROOT / ".cache" / "bin"


def _install(script: Path, binary: Path) -> Path:
    if not binary.exists():
        subprocess.run([str(script)], check=True, cwd=ROOT)
    assert binary.exists(), f"{script} did not produce {binary}"
    return binary


@pytest.fixture(scope="session")
def helm() -> Path:
    """Helm 4 (v4.1.4), installed into .cache/bin by tests/cluster/tools.sh."""
    return _install(ROOT / "tests" / "cluster" / "tools.sh", BIN / "helm")


@pytest.fixture(scope="session")
def helm3() -> Path:
    """Helm 3, built into .cache/bin/helm3 by tests/chart/helm3.sh (needs Go)."""
    return _install(ROOT / "tests" / "chart" / "helm3.sh", BIN / "helm3")


@dataclass
class Rendered:
    """The objects of one `helm template` run, looked up by kind and name."""

    docs: list[dict]
    notes: str = ""

    def kinds(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [d for d in self.kinds(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {[d['metadata']['name'] for d in self.kinds(kind)]}"
        return found[0]

    def names(self, kind: str) -> list[str]:
        return sorted(d["metadata"]["name"] for d in self.kinds(kind))


def helm_template(
    helm: Path,
    *,
    values: dict | None = None,
    files: list[Path] = (),
    sets: list[str] = (),
    release: str = "rel",
    namespace: str = "models",
    extra: list[str] = (),
) -> subprocess.CompletedProcess:
    cmd = [str(helm), "template", release, str(CHART), "--namespace", namespace]
    for f in files:
        cmd += ["-f", str(f)]
    if values is not None:
        cmd += ["-f", "-"]
    for s in sets:
        cmd += ["--set", s]
    cmd += list(extra)
    return subprocess.run(
        cmd, input=json.dumps(values) if values is not None else None,
        capture_output=True, text=True, cwd=ROOT,
    )


@pytest.fixture(scope="session")
def render(helm):
    """render(values=..., files=..., sets=...) -> Rendered; fails the test if helm fails."""

    def _render(**kwargs) -> Rendered:
        proc = helm_template(helm, **kwargs)
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return Rendered(docs)

    return _render


@pytest.fixture(scope="session")
def render_error(helm):
    """render_error(values=...) -> helm's error text; fails the test if rendering succeeds."""

    def _render_error(**kwargs) -> str:
        proc = helm_template(helm, **kwargs)
        assert proc.returncode != 0, f"helm template accepted the values:\n{proc.stdout[:2000]}"
        return proc.stderr

    return _render_error
