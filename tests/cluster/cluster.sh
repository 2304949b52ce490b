#!/usr/bin/env bash
# The local Kubernetes control plane for the tests: a real kube-apiserver, kube-controller-manager,
# kube-scheduler and etcd, started by kwokctl on loopback, with nodes and pods simulated by kwok.
#
#   tests/cluster/cluster.sh build     build the binaries once (cached by version), print the time
#   tests/cluster/cluster.sh up        build if needed, start the cluster, create the simulated nodes
#                                      and the real node (node.sh; EMBEDDING_IMAGES_NODE=0 leaves it
#                                      out); a second `up` while it runs does nothing
#   tests/cluster/cluster.sh down      stop every process of the cluster (the real node's too) and
#                                      delete its state
#   tests/cluster/cluster.sh restart-apiserver   kill the running cluster's kube-apiserver and start it
#                                      again as it was (same command line, environment, directory):
#                                      an API server restart, nothing else touched
#   tests/cluster/cluster.sh compact-etcd   compact etcd's history up to its current revision, as
#                                      the API server's periodic compaction does: a watch from an
#                                      older resourceVersion can only get 410 Gone, never replay
#   tests/cluster/cluster.sh status    say whether it runs (exit 1 if not) and where its kubeconfig is
#   tests/cluster/cluster.sh built     exit 0 when the binaries of the pinned versions are cached
#   tests/cluster/cluster.sh bin-dir   print the folder of those binaries
#   tests/cluster/cluster.sh cluster-dir   print kwokctl's folder of the cluster (pki/, logs/, pids/)
#   tests/cluster/cluster.sh pin-k8s vX.Y.Z   rewrite modules/k8s/go.mod for another release
#
# Everything lives in .cache/cluster (git-ignored): bin-<versions>/ holds the binaries, kubeconfig
# is the admin kubeconfig, kwok/ is kwokctl's home with the cluster's certificates and logs.
# Versions are pinned in modules/{k8s,etcd,kwok}/go.mod; the binaries are built from the Go module
# proxy with CGO_ENABLED=0. Needs Go (>= the go line of those go.mod files) and flock.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="$root/.cache/cluster"
cluster_name="embedding-images"
kubeconfig="$state/kubeconfig"
export KWOK_WORKDIR="$state/kwok"
export PATH="$root/.cache/bin:$PATH"

say() { echo "cluster: $*" >&2; }
die() { echo "cluster: ERROR: $*" >&2; exit 1; }

# The version a go.mod of modules/ requires of a module, e.g. `required k8s k8s.io/kubernetes`.
required() {
  awk -v m="$2" '$1 == "require" && $2 == m { print $3 } $1 == m { print $2 }' \
    "$here/modules/$1/go.mod" | head -1
}

k8s_version="$(required k8s k8s.io/kubernetes)"
etcd_version="$(required etcd go.etcd.io/etcd/server/v3)"
kwok_version="$(required kwok sigs.k8s.io/kwok)"
bin="$state/bin-k8s-$k8s_version-etcd-$etcd_version-kwok-$kwok_version"
k8s_binaries=(kube-apiserver kube-controller-manager kube-scheduler)
# The real node's binaries (tests/cluster/node.sh), from the same module and version.
node_binaries=(kubelet kube-proxy)

# missing BINARY...: true when one of them is not in $bin yet.
missing() {
  local b
  for b in "$@"; do
    [[ -x "$bin/$b" ]] || return 0
  done
  return 1
}

have_binaries() {
  ! missing "${k8s_binaries[@]}" "${node_binaries[@]}" etcd kwok kwokctl
}

# go_build PIECE LOG ARGS...: one `go build` in modules/PIECE, logged; names the piece on failure.
go_build() {
  local piece="$1" log="$2"
  shift 2
  local start=$SECONDS
  say "building $piece (log: $log)"
  if ! (cd "$here/modules/$piece" && CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false" \
        GOTOOLCHAIN=local nice go build "$@") >"$log" 2>&1; then
    tail -20 "$log" >&2
    die "building $piece failed; the full log is $log"
  fi
  say "built $piece in $((SECONDS - start)) s"
}

build_k8s() {
  local v="k8s.io/component-base/version" c="k8s.io/client-go/pkg/version" major minor ldflags=""
  major="${k8s_version#v}"; major="${major%%.*}"
  minor="${k8s_version#v*.}"; minor="${minor%%.*}"
  local build_date
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for pkg in "$v" "$c"; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done
  # One invocation for every missing command: they share most packages, compiled once.
  local b commands=()
  for b in "${k8s_binaries[@]}" "${node_binaries[@]}"; do
    missing "$b" && commands+=("k8s.io/kubernetes/cmd/$b")
  done
  go_build k8s "$state/build-k8s.log" -ldflags "-s -w$ldflags" -o "$1/" "${commands[@]}"
}

build_etcd() {
  go_build etcd "$state/build-etcd.log" -ldflags "-s -w" -o "$1/etcd" .
}

build_kwok() {
  go_build kwok "$state/build-kwok.log" -ldflags "-s -w" -o "$1/" \
    sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
}

cmd_build() {
  mkdir -p "$state"
  # One build at a time: a second caller (the test fixture, `make cluster-up`) waits for it.
  exec 9>"$state/build.lock"
  flock -w 3600 9 || die "another build still holds $state/build.lock after an hour"
  if ! have_binaries; then
    command -v go >/dev/null \
      || die "Go is not on PATH; the control plane is built with Go >= $(awk '$1 == "go" { print $2 }' "$here/modules/kwok/go.mod")"
    local start=$SECONDS tmp="$bin.partial" b
    rm -rf "$tmp"
    mkdir -p "$tmp" "$bin"
    say "building Kubernetes $k8s_version, etcd $etcd_version, kwok $kwok_version into $bin"
    missing "${k8s_binaries[@]}" "${node_binaries[@]}" && build_k8s "$tmp"
    missing etcd && build_etcd "$tmp"
    missing kwok kwokctl && build_kwok "$tmp"
    for b in "$tmp"/*; do mv "$b" "$bin/"; done
    rmdir "$tmp"
    echo "$((SECONDS - start))" >"$bin/.build-seconds"
    say "cold build (no cached binaries) took $((SECONDS - start)) s"
  fi
  exec 9>&-
}

cluster_dir="$KWOK_WORKDIR/clusters/$cluster_name"
node_sh="$here/node.sh"

# The real node is part of the cluster unless EMBEDDING_IMAGES_NODE=0.
with_node() { [[ "${EMBEDDING_IMAGES_NODE:-1}" != 0 ]]; }
logs="$cluster_dir/logs"

# The apiserver answers /readyz with the admin kubeconfig.
running() {
  [[ -f "$kubeconfig" ]] && kubectl --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# Prints the end of each component's log, so a failure names the piece that failed.
show_logs() {
  local f
  for f in "$state/kwokctl.log" "$logs"/*.log; do
    [[ -f "$f" ]] || continue
    echo "----- $f (last lines)" >&2
    tail -5 "$f" >&2
  done
}

# Fails, naming the component and its log, when one of the cluster's processes has exited.
components_alive() {
  local f name
  for f in "$cluster_dir"/pids/*.pid; do
    [[ -f "$f" ]] || continue
    name="$(basename "$f" .pid)"
    if ! kill -0 "$(<"$f")" 2>/dev/null; then
      show_logs
      cmd_down >/dev/null 2>&1 || true
      die "$name exited; its log is $logs/$name.log"
    fi
  done
}

# wait_until SECONDS WHAT LOG COMMAND...: retries COMMAND while every component runs; on timeout
# fails naming WHAT and LOG.
wait_until() {
  local limit="$1" what="$2" log="$3"
  shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    components_alive
    if ((SECONDS >= deadline)); then
      show_logs
      cmd_down >/dev/null 2>&1 || true
      die "$what did not happen within $limit s; see $log"
    fi
    sleep 0.5
  done
}

# The node lifecycle controller taints a node not-ready until kwok reports it Ready.
nodes_untainted() {
  local keys
  keys="$(kubectl --kubeconfig "$kubeconfig" get nodes -o jsonpath='{.items[*].spec.taints[*].key}')" || return 1
  [[ " $keys " != *" node.kubernetes.io/not-ready "* && " $keys " != *" node.kubernetes.io/unreachable "* ]]
}

# Serializes up and down (a second `up` waits for the first, then finds the cluster running).
lock_cluster() {
  exec 8>"$state/cluster.lock"
  flock -w "$1" 8 || die "another tests/cluster/cluster.sh still holds $state/cluster.lock after $1 s"
}

cmd_up() {
  local start=$SECONDS
  mkdir -p "$state"
  lock_cluster 1800
  "$here/tools.sh"
  if running; then
    if with_node && ! "$node_sh" status >/dev/null 2>&1; then
      "$node_sh" up || die "the real node did not start (tests/cluster/node.sh up); the control plane still runs"
    fi
    say "already running (KUBECONFIG=$kubeconfig)"
    return 0
  fi
  cmd_build
  with_node && "$node_sh" build
  if [[ -d "$cluster_dir" ]]; then
    say "removing the state of a cluster that no longer answers"
    cmd_down
  fi
  rm -f "$kubeconfig"
  # kwokctl picks its ports by scanning for free ones: two clusters of this machine (two
  # checkouts, CI beside a session) created at the same moment pick the same ports and both fail
  # with "bind: address already in use". One creation at a time, machine-wide, until the
  # apiserver answers (its ports are then taken, and the next scan skips them).
  exec 7>"${EMBEDDING_IMAGES_START_LOCK:-/tmp/embedding-images-cluster-start.lock}"
  flock -w 900 7 || die "another local cluster's start still holds ${EMBEDDING_IMAGES_START_LOCK:-/tmp/embedding-images-cluster-start.lock} after 900 s"
  # kwokctl's settings: the file of this folder, plus what the real node needs (its address in
  # the apiserver's certificate and --advertise-address; kwok leaving it alone).
  cp "$here/kwokctl.yaml" "$state/kwokctl.yaml"
  if with_node; then
    "$node_sh" plan >>"$state/kwokctl.yaml" || die "could not plan the real node's network (tests/cluster/node.sh plan)"
  fi
  say "starting kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok (logs: $logs)"
  # kwokctl would download kubectl; the one of tools.sh is used instead. The lock fds are closed
  # for it, or the daemons it starts would hold the locks for as long as they run.
  if ! KWOK_KUBE_VERSION="$k8s_version" KWOK_KUBECTL_BINARY="$(command -v kubectl)" \
      "$bin/kwokctl" --config "$state/kwokctl.yaml" create cluster --name "$cluster_name" --runtime binary \
      --kube-apiserver-binary "$bin/kube-apiserver" \
      --kube-controller-manager-binary "$bin/kube-controller-manager" \
      --kube-scheduler-binary "$bin/kube-scheduler" \
      --kwok-controller-binary "$bin/kwok" \
      --etcd-binary "$bin/etcd" \
      --kubeconfig "$kubeconfig" \
      --wait 90s >"$state/kwokctl.log" 2>&1 7>&- 8>&- 9>&-; then
    show_logs
    cmd_down >/dev/null 2>&1 || true
    die "kwokctl create cluster failed; its log is $state/kwokctl.log, the components' logs are in $logs"
  fi
  wait_until 60 "the apiserver becoming ready" "$logs/kube-apiserver.log" running
  exec 7>&-
  kubectl --kubeconfig "$kubeconfig" apply -f "$here/nodes.yaml" >/dev/null
  wait_until 60 "kwok marking the simulated nodes Ready" "$logs/kwok-controller.log" \
    kubectl --kubeconfig "$kubeconfig" wait --for=condition=Ready node --all --timeout=5s
  wait_until 60 "kube-controller-manager lifting the not-ready taints of the nodes" \
    "$logs/kube-controller-manager.log" nodes_untainted
  wait_until 60 "kube-controller-manager creating the default ServiceAccount" \
    "$logs/kube-controller-manager.log" \
    kubectl --kubeconfig "$kubeconfig" get serviceaccount default -n default
  wait_until 60 "kube-scheduler taking its leader lease" "$logs/kube-scheduler.log" \
    kubectl --kubeconfig "$kubeconfig" get lease kube-scheduler -n kube-system
  components_alive
  if with_node && ! "$node_sh" up 7>&- 8>&- 9>&-; then
    cmd_down >/dev/null 2>&1 || true
    die "the real node did not start; its logs are in $state/node/logs"
  fi
  say "up in $((SECONDS - start)) s: KUBECONFIG=$kubeconfig"
}

# Pids of the cluster's processes, from kwokctl's pid files.
cluster_pids() {
  local f
  for f in "$cluster_dir"/pids/*.pid; do
    [[ -f "$f" ]] && printf '%s\n' "$(<"$f")"  # the files end without a newline
  done
  return 0
}

# ours PID: true while PID runs a program of this cluster's directory.
ours() {
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF "$cluster_dir/"
}

cmd_down() {
  local pids pid
  "$node_sh" down || say "tearing down the real node failed (tests/cluster/node.sh down)"
  pids="$(cluster_pids)"
  if [[ -d "$cluster_dir" ]]; then
    local kwokctl="$bin/kwokctl" other
    for other in "$state"/bin-*/kwokctl; do  # a cluster started before the versions changed
      [[ -x "$kwokctl" ]] || kwokctl="$other"
    done
    if [[ -x "$kwokctl" ]]; then
      "$kwokctl" delete cluster --name "$cluster_name" >>"$state/kwokctl.log" 2>&1 \
        || say "kwokctl delete cluster failed (log: $state/kwokctl.log); stopping the processes by pid"
    fi
  fi
  # Whatever kwokctl did not stop: the pids of its pid files that still run one of this
  # cluster's binaries (a pid reused by another process is left alone).
  for pid in $pids; do
    ours "$pid" && kill "$pid" 2>/dev/null || true
  done
  for pid in $pids; do
    for _ in $(seq 50); do
      ours "$pid" || break
      sleep 0.1
    done
    if ours "$pid"; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$cluster_dir"
  rm -f "$kubeconfig"
  say "down"
}

# Kills kube-apiserver (SIGKILL: a crash, no graceful drain) and starts the same command line again
# with the same environment and working directory, appending to the same log; waits for /readyz.
# The other components keep running and reconnect, as after an API server restart in a real
# cluster. Quick enough (a few seconds) for kube-controller-manager and kube-scheduler to keep
# their leader leases (10 s renew deadline).
cmd_restart_apiserver() {
  local pidfile="$cluster_dir/pids/kube-apiserver.pid" pid cwd start=$SECONDS
  running || die "the cluster is not running"
  pid="$(<"$pidfile")"
  ours "$pid" || die "pid $pid of $pidfile is not this cluster's kube-apiserver"
  local -a args envs
  mapfile -d '' args <"/proc/$pid/cmdline"
  mapfile -d '' envs <"/proc/$pid/environ"
  cwd="$(readlink "/proc/$pid/cwd")"
  kill -9 "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  (cd "$cwd" && exec env -i "${envs[@]}" setsid "${args[@]}" </dev/null >>"$logs/kube-apiserver.log" 2>&1 7>&- 8>&- 9>&-) &
  printf '%s' "$!" >"$pidfile"  # kwokctl's pid files end without a newline
  wait_until 60 "the restarted kube-apiserver becoming ready" "$logs/kube-apiserver.log" running
  say "kube-apiserver restarted in $((SECONDS - start)) s"
}

cmd_compact_etcd() {
  local pid url header revision
  running || die "the cluster is not running"
  pid="$(<"$cluster_dir/pids/kube-apiserver.pid")"
  url="$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 's/^--etcd-servers=//p' | cut -d, -f1)"
  [[ $url == http://127.0.0.1:* ]] || die "kube-apiserver's --etcd-servers is '$url', not etcd on loopback"
  # etcd's gRPC gateway: a range read answers with the store's revision in its header
  header="$(curl -sSf --max-time 10 -X POST "$url/v3/kv/range" -d '{"key":"AA=="}')"
  revision="$(sed -nE 's/.*"revision":"([0-9]+)".*/\1/p' <<<"$header")"
  [[ -n $revision ]] || die "no revision in etcd's answer: $header"
  curl -sSf --max-time 30 -X POST "$url/v3/kv/compaction" \
    -d "{\"revision\":\"$revision\",\"physical\":true}" >/dev/null
  say "etcd compacted to revision $revision"
}

cmd_status() {
  if running; then
    say "running: KUBECONFIG=$kubeconfig"
    kubectl --kubeconfig "$kubeconfig" get nodes >&2
  else
    say "not running"
    return 1
  fi
}

# Rewrites modules/k8s/go.mod for another Kubernetes release: every staging module that release's
# go.mod replaces with a local path is replaced with its published v0.Y.Z, then `go mod tidy`.
cmd_pin_k8s() {
  local version="${1:?usage: cluster.sh pin-k8s vX.Y.Z}" gomod staging
  gomod="$(cd / && GOFLAGS= go mod download -json "k8s.io/kubernetes@$version" \
    | awk -F'"' '$2 == "GoMod" { print $4 }')"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$version from the module proxy"
  staging="v0.${version#v1.}"
  {
    echo "// Builds kube-apiserver, kube-controller-manager and kube-scheduler $version for tests/cluster."
    echo "// k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local"
    echo "// paths; a dependency's replace directives do not apply here, so every staging module is"
    echo "// replaced with its published release ($staging). Regenerate with: tests/cluster/cluster.sh pin-k8s <version>"
    echo "module embedding-images/tests/cluster/modules/k8s"
    echo
    awk '$1 == "go" { print; exit }' "$gomod"
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    echo "tool ("
    printf '\tk8s.io/kubernetes/cmd/%s\n' "${k8s_binaries[@]}" "${node_binaries[@]}"
    echo ")"
    echo
    echo "replace ("
    awk '/^replace \(/ { r = 1; next } r && /^\)/ { r = 0 } r && /=> \.\/staging/ { print $1 }' "$gomod" \
      | while read -r module; do printf '\t%s => %s %s\n' "$module" "$module" "$staging"; done
    echo ")"
  } >"$here/modules/k8s/go.mod"
  rm -f "$here/modules/k8s/go.sum"
  (cd "$here/modules/k8s" && GOFLAGS=-mod=mod go mod tidy)
  say "modules/k8s/go.mod now pins Kubernetes $version; the next build goes into a new bin- folder"
}

main() {
  case "${1:-}" in
    build) cmd_build ;;
    built) have_binaries ;;
    bin-dir) echo "$bin" ;;
    cluster-dir) echo "$cluster_dir" ;;
    up) cmd_up ;;
    down) mkdir -p "$state"; lock_cluster 120; cmd_down ;;
    status) cmd_status ;;
    restart-apiserver) mkdir -p "$state"; lock_cluster 120; cmd_restart_apiserver ;;
    compact-etcd) cmd_compact_etcd ;;
    pin-k8s) cmd_pin_k8s "${2:-}" ;;
    *) die "usage: $0 build|built|bin-dir|cluster-dir|up|down|restart-apiserver|compact-etcd|status|pin-k8s VERSION" ;;
  esac
}

main "$@"; exit
