"""`helm lint --strict` over the ci/ values matrix, with Helm 4 and Helm 3, and the two Helm
majors render the same objects."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from .conftest import CHART, CI_VALUES, ROOT, helm_template

pytestmark = pytest.mark.helm

CI_IDS = [p.stem for p in CI_VALUES]


def test_ci_matrix_is_not_empty():
    assert len(CI_VALUES) >= 4, f"expected the values matrix in {CHART / 'ci'}"


def _lint(helm, values_file):
    return subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), "-f", str(values_file), "--namespace", "models"],
        capture_output=True, text=True, cwd=ROOT,
    )


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_lint_strict_helm4(helm, values_file):
    proc = _lint(helm, values_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_lint_strict_helm3(helm3, values_file):
    proc = _lint(helm3, values_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_helm3_and_helm4_render_the_same_objects(helm, helm3, values_file):
    outputs = []
    for binary in (helm, helm3):
        proc = helm_template(binary, files=[values_file])
        assert proc.returncode == 0, f"{binary.name}: {proc.stderr}"
        outputs.append([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_helm3_rejects_a_typo_with_the_key_named(helm3):
    proc = helm_template(helm3, sets=["embeding.model=x"])
    assert proc.returncode != 0
    assert "embeding" in proc.stderr
