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
if [[ -x "$bin/helm3" ]]; then
  exit 0
fi
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "helm3: building helm.sh/helm/v3/cmd/helm@$version" >&2
GOBIN="$work" GOFLAGS=-trimpath CGO_ENABLED=0 nice go install "helm.sh/helm/v3/cmd/helm@$version"
install -m 0755 "$work/helm" "$bin/helm3"
"$bin/helm3" version --short >&2
