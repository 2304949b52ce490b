"""Which namespaces the operator refuses to serve, whatever namespaces it watches.

A ModelService becomes a Deployment that may run as any ServiceAccount of its namespace and mount
any of its Secrets. In the Kubernetes system namespaces those are the cluster's own (kube-system
holds controller and add-on credentials), so the operator refuses them even when it watches every
namespace, and says so in the ModelService's status (Ready=False, reason NamespaceRefused) and in
a Warning Event. RBAC cannot say "every namespace but these": this check is what keeps a
cluster-wide operator out of them; the chart's default (only the release namespace) keeps its
ServiceAccount's rights out of them too.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ..placement.plan import PlanError

SYSTEM_NAMESPACES: tuple[str, ...] = ("kube-system", "kube-public", "kube-node-lease")
REFUSED_REASON = "NamespaceRefused"


def parse_namespace_list(text: str) -> tuple[str, ...]:
    """`a,b,c` as given to --refused-namespaces; an empty string is the empty list."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def namespace_refusal(namespace: str, refused: Iterable[str] = SYSTEM_NAMESPACES) -> PlanError | None:
    """Why a ModelService in `namespace` is not served, or None when it is. `refused` holds
    namespace names or glob patterns (fnmatch, e.g. `kube-*`)."""
    for pattern in refused:
        if fnmatch.fnmatchcase(namespace, pattern):
            return PlanError(REFUSED_REASON, (
                f"the operator does not serve ModelServices in namespace {namespace}: it matches "
                f"{pattern!r} of its refused namespaces (--refused-namespaces; chart value "
                "operator.refusedNamespaces); create the ModelService in an application namespace"))
    return None
