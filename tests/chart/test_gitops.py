"""GitOps renderers (Argo CD, Flux with post-rendering) run `helm template` without a cluster on
every sync: the output must not change from one render to the next (no random names, no
timestamps, no cluster lookups that a render cannot see), or every sync shows a diff. The
server-side apply of a render, twice, is tests/cluster/test_day_one.py."""
from __future__ import annotations

import pytest

from .conftest import helm_template

pytestmark = pytest.mark.helm

VALUES = {
    "everything-with-the-operator": {
        "commonLabels": {"team": "search"}, "commonAnnotations": {"example.com/owner": "platform"},
        "imagePullSecrets": [{"name": "regcred"}],
        "networkPolicy": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}, "skipCRDCheck": True},
        "embedding": {"modelCache": {"enabled": True, "size": "5Gi"}, "podDisruptionBudget": {"enabled": True},
                      "autoscaling": {"enabled": True}},
    },
    "chart-only-with-a-model-cache": {
        "operator": {"enabled": False},
        "networkPolicy": {"enabled": True},
        "embedding": {"accelerator": "cpu", "modelCache": {"enabled": True, "size": "5Gi"}},
        "reranker": {"accelerator": "cpu"},
    },
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_two_renders_are_the_same(helm, name):
    first, second = (helm_template(helm, values=VALUES[name], extra=["--include-crds"]) for _ in range(2))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
