#!/usr/bin/env bash
# Builds a Helm 3 binary into .cache/bin/helm3 (git-ignored) with `go install` from the Go
# module proxy, so the chart tests can lint and render with Helm 3 as well as Helm 4.
# Idempotent: does nothing when .cache/bin/helm3 exists. Needs Go (>= 1.24) on PATH.
# The build takes several minutes on a 2-core machine the first time (Go's module and build
# caches make later builds quick).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/.cache/bin"
version="${HELM3_VERSION:-v3.22.0}"
# Helm's release builds stamp its version and the Kubernetes version it assumes offline
# (`helm template`, `helm lint`); without these it would claim Kubernetes v1.20.
k8s_minor=35
ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
if [[ -x "$bin/helm3" ]]; then
  exit 0
fi
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "helm3: building helm.sh/helm/v3/cmd/helm@$version" >&2
GOBIN="$work" GOFLAGS=-trimpath CGO_ENABLED=0 nice go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version"
install -m 0755 "$work/helm" "$bin/helm3"
"$bin/helm3" version --short >&2
