#!/usr/bin/env bash
# The real node of the local cluster: kubelet, kube-proxy and containerd in a network namespace of
# their own (as a kind node is a container), beside kwok's simulated nodes. Its pods run real
# processes under runc; its Services go through kube-proxy (iptables) and its names through CoreDNS.
#
#   tests/cluster/node.sh install   apt-get the Debian packages it needs when one is missing
#   tests/cluster/node.sh build     kubelet and kube-proxy (cluster.sh build), CoreDNS, the local images
#   tests/cluster/node.sh built     exit 0 when all of those are built and the packages installed
#   tests/cluster/node.sh plan      choose the node's addresses (checked against the host's routes;
#                                   kept while the node runs) and print the kwokctl settings the
#                                   control plane needs for it (cluster.sh up appends them)
#   tests/cluster/node.sh up        start the node in the running control plane, wait for it Ready,
#                                   start CoreDNS on it
#   tests/cluster/node.sh down      stop every process by pid, unmount, delete the namespace, the veth,
#                                   the host's nftables table and restore the sysctls kubelet changed
#   tests/cluster/node.sh import IMAGE...   copy images of podman's store into the node's containerd
#                                   (podman save | ctr images import; pods use them with pull policy
#                                   Never or IfNotPresent); an image the node already holds under
#                                   that name with the same image id is not copied again
#   tests/cluster/node.sh image-id IMAGE   print the image id of the node's IMAGE (nothing when it has none)
#   tests/cluster/node.sh restart-kubelet   stop kubelet and start it again (pods keep running)
#   tests/cluster/node.sh status    exit 0 when the node's kubelet runs
#   tests/cluster/node.sh env       print the node's settings (NODE_NAME=..., one a line)
#
# Network (10.x only, never the machine's own 192.0.2.0/24): a slot s (from the checkout's path,
# moved on when taken) gives the veth 10.213.2s.0/30 (host .1, node .2) and the pod subnet
# 10.213.(2s+1).0/24; Services are the control plane's 10.0.0.0/24 (CoreDNS at 10.0.0.10). The node
# namespace has no default route: pods reach the node, each other, Services and the apiserver, and
# nothing else. The apiserver listens on the host's 127.0.0.1 only: socat in the namespace listens
# on the node's address (the apiserver's --advertise-address) and forwards over a unix socket to a
# socat on the host, which connects to 127.0.0.1. A host nftables table drops anything to or from
# the node's ranges on eth0.
#
# State: .cache/cluster/node (git-ignored): network.env, pids/, logs/, kubelet/, containerd/;
# sockets under /run/embedding-images-node/<slot> (unix socket paths are short).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="$root/.cache/cluster"
node="$state/node"
export PATH="$root/.cache/bin:$PATH"
kubeconfig="$state/kubeconfig"

node_name="real-1"
service_cidr="10.0.0.0/24"     # kwokctl passes no --service-cluster-ip-range: the apiserver's default
dns_ip="10.0.0.10"
kubernetes_ip="10.0.0.1"
taint_key="embedding-images.io/real-node"
packages=(containerd runc containernetworking-plugins socat conntrack iptables nftables podman)
cni_bin="/usr/lib/cni"
images_tag="1"
pause_image="embedding-images.local/pause:$images_tag"
podbin_image="embedding-images.local/podbin:$images_tag"
coredns_image="embedding-images.local/coredns:$images_tag"

say() { echo "node: $*" >&2; }
die() { echo "node: ERROR: $*" >&2; exit 1; }

required() {
  awk -v m="$2" '$1 == "require" && $2 == m { print $3 } $1 == m { print $2 }' \
    "$here/modules/$1/go.mod" | head -1
}
coredns_version="$(required coredns github.com/coredns/coredns)"

cmd_install() {
  local missing_pkgs=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_pkgs+=("$p")
  done
  ((${#missing_pkgs[@]} == 0)) && return 0
  say "installing ${missing_pkgs[*]} from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    "${missing_pkgs[@]}" >"$state/apt-node.log" 2>&1 || {
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >>"$state/apt-node.log" 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        "${missing_pkgs[@]}" >>"$state/apt-node.log" 2>&1
    } || die "apt-get install ${missing_pkgs[*]} failed; see $state/apt-node.log"
}

# ---------------------------------------------------------------------------------------------
# Build: kubelet and kube-proxy come from cluster.sh (same module, same bin folder); CoreDNS from
# modules/coredns; podbin (tests/cluster/node/podbin) and three images made from scratch with
# podman: pause (the sandbox image), podbin (the smoke tests' server and client), coredns.

k8s_bin() { "$here/cluster.sh" bin-dir; }
coredns_bin="$state/bin-coredns-$coredns_version"
images_dir="$state/node-images"

images_key() {  # changes when podbin's source, CoreDNS's version or this script's images change
  cat "$here/node/podbin/"*.go "$here/node/podbin/go.mod" "$here/node/images.Containerfile" \
    <(echo "$coredns_version $images_tag") | sha256sum | cut -c1-16
}

cmd_built() {
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
  "$here/cluster.sh" built && [[ -x "$coredns_bin/coredns" && -f "$images_dir/images-$(images_key).tar" ]]
}

cmd_build() {
  local start=$SECONDS
  mkdir -p "$state"
  cmd_install
  "$here/cluster.sh" build
  # One build at a time (the test session's background build and cluster.sh up may overlap).
  exec 6>"$state/node-build.lock"
  flock -w 3600 6 || die "another node build still holds $state/node-build.lock after an hour"
  if [[ ! -x "$coredns_bin/coredns" ]]; then
    local t=$SECONDS
    rm -rf "$coredns_bin.partial" && mkdir -p "$coredns_bin.partial"
    say "building CoreDNS $coredns_version (log: $state/build-coredns.log)"
    (cd "$here/modules/coredns" && CGO_ENABLED=0 GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOTOOLCHAIN=local \
      nice go build -ldflags "-s -w" -o "$coredns_bin.partial/coredns" .) >"$state/build-coredns.log" 2>&1 \
      || { tail -20 "$state/build-coredns.log" >&2; die "building CoreDNS failed; see $state/build-coredns.log"; }
    echo "$((SECONDS - t))" >"$coredns_bin.partial/.build-seconds"
    rm -rf "$coredns_bin" && mv "$coredns_bin.partial" "$coredns_bin"
    say "built CoreDNS in $((SECONDS - t)) s"
  fi
  local key archive
  key="$(images_key)"
  archive="$images_dir/images-$key.tar"
  if [[ ! -f "$archive" ]]; then
    local t=$SECONDS ctx
    rm -rf "$images_dir" && mkdir -p "$images_dir"
    ctx="$(mktemp -d)"
    (cd "$here/node/podbin" && CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" GOTOOLCHAIN=local \
      go build -ldflags "-s -w" -o "$ctx/podbin" .) || die "building podbin failed"
    cp "$coredns_bin/coredns" "$ctx/coredns"
    local target tag
    for target in pause podbin coredns; do
      case "$target" in
        pause) tag="$pause_image" ;; podbin) tag="$podbin_image" ;; coredns) tag="$coredns_image" ;;
      esac
      podman build -q --target "$target" -t "$tag" -f "$here/node/images.Containerfile" "$ctx" \
        >>"$state/build-node-images.log" 2>&1 || { rm -rf "$ctx"; die "podman build of $tag failed; see $state/build-node-images.log"; }
    done
    rm -rf "$ctx"
    podman save -q -m --format docker-archive -o "$archive.partial" "$pause_image" "$podbin_image" "$coredns_image" \
      || die "podman save of the node images failed"
    mv "$archive.partial" "$archive"
    say "built the node's images in $((SECONDS - t)) s ($(du -h "$archive" | cut -f1))"
  fi
  exec 6>&-
  say "node binaries and images ready in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------------------------
# Network plan

network_env="$node/network.env"

# Chooses a free slot: nothing of the host's routes, addresses or resolvers may overlap it.
cmd_plan() {
  mkdir -p "$node"
  # Chosen again at each start (the host's routes may have changed), kept while the node runs.
  if [[ -f "$network_env" ]] && ! (load_network && alive kubelet); then
    cmd_down_quiet  # whatever a node that stopped uncleanly left, while its plan still names it
    rm -f "$network_env"
  fi
  if [[ ! -f "$network_env" ]]; then
    local first
    first=$(( $(printf '%s' "$root" | cksum | cut -d' ' -f1) % 100 ))
    python3 - "$first" "$service_cidr" >"$network_env.partial" <<'EOF' || die "no free 10.213.x range for the node (see ip route)"
import ipaddress, re, subprocess, sys
first, service = int(sys.argv[1]), ipaddress.ip_network(sys.argv[2])
taken = [service, ipaddress.ip_network("10.244.0.0/16"),       # Services; kwok's simulated pods
         ipaddress.ip_network("192.0.2.0/24")]                   # the machine's own network
for line in subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout.splitlines():
    word = line.split()[0] if line.split() else ""
    if word in ("broadcast", "local", "unreachable", "prohibit", "blackhole") and len(line.split()) > 1:
        word = line.split()[1]
    if word != "default" and re.match(r"^[0-9.]+(/[0-9]+)?$", word):
        taken.append(ipaddress.ip_network(word, strict=False))
for line in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout.splitlines():
    taken.append(ipaddress.ip_interface(line.split()[3]).network)
for line in open("/etc/resolv.conf"):
    if line.split()[:1] == ["nameserver"] and ":" not in line.split()[1]:
        taken.append(ipaddress.ip_network(line.split()[1] + "/32"))
for i in range(100):
    s = (first + i) % 100
    veth, pods = ipaddress.ip_network(f"10.213.{2 * s}.0/30"), ipaddress.ip_network(f"10.213.{2 * s + 1}.0/24")
    if not any(veth.overlaps(t) or pods.overlaps(t) for t in taken):
        hosts = list(veth.hosts())
        print(f"SLOT={s}\nHOST_IP={hosts[0]}\nNODE_IP={hosts[1]}\nVETH_CIDR={veth}\nPOD_CIDR={pods}\n"
              f"POD_GATEWAY={next(pods.hosts())}\nNETNS=ei-node-{s}\nVETH_HOST=ei-node-{s}\n"
              f"RUN=/run/embedding-images-node/{s}\nNFT_TABLE=ei_node_{s}")
        break
else:
    sys.exit(1)
EOF
    mv "$network_env.partial" "$network_env"
  fi
  # shellcheck disable=SC1090
  source "$network_env"
  local cluster_dir
  cluster_dir="$("$here/cluster.sh" cluster-dir)"
  cat <<EOF
  # The real node (tests/cluster/node.sh): the apiserver's certificate names the node's address
  # (where the apiserver is reached from the node) and the kubernetes Service's IP.
  kubeApiserverCertSANs: ["$NODE_IP", "$kubernetes_ip"]
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - key: advertise-address
    value: "$NODE_IP"
  - key: kubelet-preferred-address-types
    value: InternalIP,Hostname
  - key: kubelet-client-certificate
    value: "$cluster_dir/pki/admin.crt"
  - key: kubelet-client-key
    value: "$cluster_dir/pki/admin.key"
- name: kwok-controller
  extraArgs:
  - key: manage-all-nodes
    value: "false"
  - key: manage-nodes-with-annotation-selector
    value: kwok.x-k8s.io/node=fake
EOF
}

load_network() {
  [[ -f "$network_env" ]] || die "no network plan ($network_env): the control plane was not started with the node (cluster.sh up)"
  # shellcheck disable=SC1090
  source "$network_env"
  netns_path="/run/netns/$NETNS"
  cgroup_name="embedding-images-node-$SLOT"
  containerd_sock="$RUN/containerd.sock"
}

# ---------------------------------------------------------------------------------------------
# Processes: each daemon runs under setsid with its pid in $node/pids/NAME.pid, its log in logs/.

pids="$node/pids"
logs="$node/logs"

# start NAME COMMAND...: starts COMMAND in the background (new session), records its pid.
start() {
  local name="$1"
  shift
  mkdir -p "$pids" "$logs"
  setsid "$@" </dev/null >>"$logs/$name.log" 2>&1 6>&- 7>&- 8>&- 9>&- &
  echo "$!" >"$pids/$name.pid"
}

# in_node COMMAND...: COMMAND in the node's network namespace only (nsenter --net keeps the host's
# mount namespace, so containerd sees kubelet's mounts).
in_node() { nsenter --net="$netns_path" -- "$@"; }

alive() { [[ -f "$pids/$1.pid" ]] && ours "$(<"$pids/$1.pid")"; }

# stop_pid PID: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
  local pid="$1"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

# stop_pids PID...: SIGTERM to all, up to 10 s for all, then SIGKILL to those left.
stop_pids() {
  local pid left
  (($# == 0)) && return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 100); do
    left=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}

# ours PID: true while PID runs a program of this node (its command line names the node's folders;
# a pid reused by another process is left alone).
ours() {
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -e "$node/" -e "$RUN/"
}

# daemon_pid NAME: the pid of the node's daemon NAME when it still runs.
daemon_pid() {
  local f="$pids/$1.pid"
  [[ -f "$f" ]] && ours "$(<"$f")" && cat "$f"
}

stop_daemon() {
  local pid
  pid="$(daemon_pid "$1")" && stop_pid "$pid"
  rm -f "$pids/$1.pid"
}

wait_until() {  # wait_until SECONDS WHAT LOG COMMAND...
  local limit="$1" what="$2" log="$3" name
  shift 3
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    for name in containerd kubelet kube-proxy socat-host socat-node; do
      if [[ -f "$pids/$name.pid" ]] && ! alive "$name"; then
        tail -20 "$logs/$name.log" >&2 || true
        die "$name exited while waiting for $what; its log is $logs/$name.log"
      fi
    done
    ((SECONDS < deadline)) || { tail -20 "$log" >&2 || true; die "$what did not happen within $limit s; see $log"; }
    sleep 0.5
  done
}

k() { kubectl --kubeconfig "$kubeconfig" "$@"; }

# ---------------------------------------------------------------------------------------------
# up

saved_sysctls="$node/sysctls.saved"
host_paths="$node/host-paths.created"
kubelet_sysctls=(kernel.panic kernel.panic_on_oops vm.overcommit_memory)

write_configs() {
  local port="$1" dir="$node/config"
  mkdir -p "$dir" "$node/cni/net.d" "$node/cni/ipam" "$node/kubelet" "$node/pods-logs" "$RUN"
  # The node's own kubeconfig: the admin credentials, the server at the node's address (socat).
  sed -e "s#server: https://127.0.0.1:$port#server: https://$NODE_IP:$port#" "$kubeconfig" >"$dir/kubeconfig"
  grep -q "server: https://$NODE_IP:$port" "$dir/kubeconfig" || die "unexpected server in $kubeconfig"
  local ca
  ca="$("$here/cluster.sh" cluster-dir)/pki/ca.crt"
  [[ -f "$ca" ]] || die "the cluster's CA $ca is missing"

  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$RUN/containerd"
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # The VM lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces live in the state folder, not in the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$node/cni/net.d"
EOF

  cat >"$node/cni/net.d/10-embedding-images.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "embedding-images-node",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$node/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine: cgroup v1 (kubelet 1.35 refuses it unless told), no systemd, swap allowed.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_name
failSwapOn: false
containerRuntimeEndpoint: unix://$containerd_sock
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
clusterDomain: cluster.local
clusterDNS: ["$dns_ip"]
# No resolver of the host's reaches a pod (dnsPolicy Default gets an empty resolv.conf).
resolvConf: ""
podLogsDir: $node/pods-logs
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $ca}
authorization: {mode: Webhook}
registerWithTaints:
- {key: $taint_key, value: "true", effect: NoSchedule}
# The disk is shared with image builds (other checkouts' too, gigabytes at a time): never evict pods
# or collect images because of it; 1% (2.5 GB here) was reached, and the node lost its pause image.
evictionHard: {memory.available: "100Mi", nodefs.available: "100Mi", imagefs.available: "100Mi", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF

  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kubeconfig}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Kept off the host's sysctls (nf_conntrack_max is global; route_localnet is not needed).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: true}
EOF
}

# The host side: namespace, veth, routes, the nftables guard, the host's socat.
setup_network() {
  local port="$1"
  ip netns add "$NETNS"
  ip link add "$VETH_HOST" type veth peer name node0 netns "$NETNS"
  ip addr add "$HOST_IP/30" dev "$VETH_HOST"
  ip link set "$VETH_HOST" up
  ip route add "$POD_CIDR" via "$NODE_IP" dev "$VETH_HOST"
  in_node ip link set lo up
  in_node ip addr add "$NODE_IP/30" dev node0
  in_node ip link set node0 up
  # Forwarding and bridged traffic through iptables inside the namespace only (per-namespace sysctls).
  in_node sysctl -q -w net.ipv4.ip_forward=1
  in_node sysctl -q -w net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  nft -f - <<EOF
table inet $NFT_TABLE {
  chain output {
    type filter hook output priority 0; policy accept;
    oifname "eth0" ip daddr { $VETH_CIDR, $POD_CIDR } counter drop
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    oifname "eth0" ip saddr { $VETH_CIDR, $POD_CIDR } counter drop
    iifname "eth0" ip daddr { $VETH_CIDR, $POD_CIDR } counter drop
  }
}
EOF
  start socat-host socat "UNIX-LISTEN:$RUN/apiserver.sock,fork,unlink-early,mode=600" "TCP:127.0.0.1:$port"
  start socat-node nsenter --net="$netns_path" -- \
    socat "TCP-LISTEN:$port,bind=$NODE_IP,fork,reuseaddr" "UNIX-CONNECT:$RUN/apiserver.sock"
}

# kubelet's --cgroup-root must exist in every cgroup v1 hierarchy: one per slot, so that two
# checkouts' kubelets never take each other's pods for orphans.
make_cgroup_root() {
  local h d
  for h in /sys/fs/cgroup/*/; do
    [[ "$(basename "$h")" == unified ]] && continue
    d="$h$cgroup_name"
    mkdir -p "$d"
    if [[ -f "$h/cpuset.cpus" && ! -s "$d/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$h/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}

node_ready() {
  [[ "$(k get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

import_images() {
  local archive
  archive="$(ls "$images_dir"/images-"$(images_key)".tar 2>/dev/null)" || die "the node images are not built (node.sh build)"
  ctr --address "$containerd_sock" -n k8s.io images import "$archive" >>"$logs/images.log" 2>&1 \
    || die "ctr images import failed; see $logs/images.log"
}

start_kubelet() {
  start kubelet nsenter --net="$netns_path" -- "$1/kubelet" \
    --config "$node/config/kubelet.yaml" --kubeconfig "$node/config/kubeconfig" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" \
    --hostname-override "$node_name" --node-ip "$NODE_IP" \
    --node-labels "embedding-images.io/node=real,type=real"
}

# Stops kubelet (SIGTERM) and starts it again as up did; its pods' containers keep running under
# containerd, as on a node whose kubelet restarts. Waits for a node status posted by the new kubelet.
cmd_restart_kubelet() {
  load_network
  alive kubelet || die "the node's kubelet does not run (cluster.sh up)"
  local start_s=$SECONDS before
  before="$(k get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')"
  stop_daemon kubelet
  start_kubelet "$(k8s_bin)"
  wait_until 60 "the restarted kubelet posting the node's status" "$logs/kubelet.log" heartbeat_after "$before"
  wait_until 60 "node $node_name Ready after the kubelet restart" "$logs/kubelet.log" node_ready
  say "kubelet restarted in $((SECONDS - start_s)) s"
}

heartbeat_after() {
  local now
  now="$(k get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}')"
  [[ -n "$now" && "$now" > "$1" ]]
}

cmd_up() {
  local start_s=$SECONDS
  [[ -f "$kubeconfig" ]] && k --request-timeout=5s get --raw /readyz >/dev/null 2>&1 \
    || die "the control plane does not run (cluster.sh up starts it and the node)"
  load_network
  if alive kubelet; then
    say "already running"
    return 0
  fi
  cmd_down_quiet
  cmd_build
  # A start that fails half-way leaves nothing running (the logs stay in $logs).
  trap 'if (($? != 0)); then say "tearing the half-started node down (logs: $logs)"; cmd_down_quiet; fi' EXIT
  local port kbin
  kbin="$(k8s_bin)"
  port="$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  port="${port##*:}"
  k get endpointslice -n default -l kubernetes.io/service-name=kubernetes \
    -o jsonpath='{.items[*].endpoints[*].addresses[*]}' | grep -qw "$NODE_IP" \
    || die "the apiserver does not advertise $NODE_IP: the control plane was started without the node's settings (cluster.sh down; cluster.sh up)"
  rm -rf "$logs"
  mkdir -p "$node" "$logs"
  [[ -f "$saved_sysctls" ]] || sysctl "${kubelet_sysctls[@]}" >"$saved_sysctls"
  # Host paths the node's programs create (ip netns, kubelet, containerd's shims), removed by down
  # when they did not exist before and are empty again.
  if [[ ! -f "$host_paths" ]]; then
    local p
    {
      mountpoint -q /run/netns || echo "mount /run/netns"
      for p in /run/netns /var/log/containers /run/containerd/s /run/containerd; do
        [[ -e "$p" ]] || echo "dir $p"
      done
    } >"$host_paths"
  fi
  write_configs "$port"
  setup_network "$port"
  start containerd nsenter --net="$netns_path" -- containerd --config "$node/config/containerd.toml"
  wait_until 30 "containerd answering" "$logs/containerd.log" ctr --address "$containerd_sock" version
  import_images
  make_cgroup_root
  start_kubelet "$kbin"
  start kube-proxy nsenter --net="$netns_path" -- "$kbin/kube-proxy" --config "$node/config/kube-proxy.yaml"
  local ready_start=$SECONDS
  wait_until 120 "node $node_name becoming Ready" "$logs/kubelet.log" node_ready
  local ready_s=$((SECONDS - ready_start))
  start_coredns
  trap - EXIT
  say "up in $((SECONDS - start_s)) s (node Ready $ready_s s after kubelet started): node $node_name, pods $POD_CIDR, DNS $dns_ip"
}

start_coredns() {
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      nodeSelector: {embedding-images.io/node: real}
      tolerations: [{key: $taint_key, operator: Exists, effect: NoSchedule}]
      containers:
      - name: coredns
        image: $coredns_image
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $dns_ip
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
  wait_until 120 "CoreDNS becoming Ready" "$logs/kubelet.log" \
    k -n kube-system wait --for=condition=Available deployment/coredns --timeout=5s
}

# ---------------------------------------------------------------------------------------------
# down

# Pids of every process in the node's pod cgroups (any v1 hierarchy holds them all).
pod_pids() {
  local f
  for f in /sys/fs/cgroup/pids/"$cgroup_name" /sys/fs/cgroup/memory/"$cgroup_name"; do
    [[ -d "$f" ]] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

# Pids of the runc shims of this node's containerd (they carry its socket path).
shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ -r "$p/cmdline" ]] || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "containerd-shim.*-address $containerd_sock"; then
      basename "$p"
    fi
  done
}

cmd_down_quiet() { (cmd_down) >/dev/null 2>&1 || true; }

cmd_down() {
  [[ -f "$network_env" ]] || { say "no node state"; return 0; }
  load_network
  # Pods first, while containerd still runs: kill their processes, then the shims.
  stop_daemon kubelet
  # The API forgets the node and its pods (a node that comes back registers afresh, its
  # Deployments' pods are made again): nothing stale reads as Ready.
  if [[ -f "$kubeconfig" ]] && k --request-timeout=5s get --raw /readyz >/dev/null 2>&1; then
    k --request-timeout=10s delete pods -A --field-selector "spec.nodeName=$node_name" --force --grace-period=0 \
      --wait=false >/dev/null 2>&1 || true
    k --request-timeout=10s delete node "$node_name" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  # Every task (pod sandboxes and containers) killed and deleted through containerd, so that each
  # shim exits and removes its socket; then what may remain, by pid.
  if alive containerd; then
    local ctr=(ctr --address "$containerd_sock" -n k8s.io) id
    for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
  fi
  local pid
  for pid in $(pod_pids); do kill -9 "$pid" 2>/dev/null || true; done
  stop_pids $(shim_pids)
  stop_pids $(for d in kube-proxy containerd socat-node socat-host; do daemon_pid "$d" || true; done)
  rm -f "$pids"/*.pid
  # Mounts under the node's folders, deepest first (kubelet's volumes, containerd's rootfs and
  # pod network namespaces, shm).
  local m
  for m in $(awk '{ print $5 }' /proc/self/mountinfo | grep -E "^($node|$RUN)/" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  # The node's cgroups, deepest first.
  local d
  for d in $(find /sys/fs/cgroup/*/ -maxdepth 1 -type d -name "$cgroup_name" 2>/dev/null); do
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # kubelet links each container's log into /var/log/containers (a fixed path).
  find /var/log/containers -maxdepth 1 -lname "$node/pods-logs/*" -delete 2>/dev/null || true
  ip netns pids "$NETNS" 2>/dev/null | while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done
  [[ -e "$netns_path" ]] && ip netns delete "$NETNS"
  # Deleting the namespace deletes the veth pair, a moment later.
  for _ in $(seq 50); do
    ip link show "$VETH_HOST" >/dev/null 2>&1 || break
    ip link delete "$VETH_HOST" 2>/dev/null || true
    sleep 0.1
  done
  ! ip link show "$VETH_HOST" >/dev/null 2>&1 || die "could not delete the link $VETH_HOST"
  nft list table inet "$NFT_TABLE" >/dev/null 2>&1 && nft delete table inet "$NFT_TABLE"
  if [[ -f "$saved_sysctls" ]]; then
    local key value
    while IFS=' =' read -r key value; do
      [[ -n "$key" ]] && sysctl -q -w "$key=$value"
    done <"$saved_sysctls"
    rm -f "$saved_sysctls"
  fi
  if [[ -f "$host_paths" ]]; then
    local kind path
    while read -r kind path; do
      case "$kind" in
        dir) rmdir "$path" 2>/dev/null || true ;;
        mount) [[ -z "$(ls -A "$path" 2>/dev/null)" ]] && umount "$path" 2>/dev/null || true ;;
      esac
    done <"$host_paths"
    rm -f "$host_paths"
  fi
  rm -rf "$RUN" "$node/containerd" "$node/kubelet" "$node/cni" "$node/pods-logs" "$pids"
  rmdir "$(dirname "$RUN")" 2>/dev/null || true
  say "down"
}

cmd_import() {
  (($# > 0)) || die "usage: node.sh import IMAGE..."
  load_network
  alive containerd || die "the node does not run (cluster.sh up)"
  local start=$SECONDS ref id wanted=() replaced=()
  for ref in "$@"; do
    id="$(node_image_id "$ref")"
    if [[ -n "$id" && "$id" == "$(podman image inspect --format '{{.Id}}' "$ref" 2>/dev/null)" ]]; then
      say "$ref: the node holds this image already"
    else
      wanted+=("$ref")
      [[ -z "$id" ]] || replaced+=("$ref")
      # The id name too, unless another name holds the same image: removing an id name removes
      # every name of that image.
      [[ -z "$id" ]] || ctr --address "$containerd_sock" -n k8s.io images ls -q \
        | grep -v -x -e "$ref" -e "sha256:$id" | grep -q -x -F -f <(node_names_of "$id") \
        || replaced+=("sha256:$id")
    fi
  done
  ((${#wanted[@]})) || return 0
  # The images replaced go first, by their names and by the id the CRI plugin names each image by
  # too, so that their layers (gigabytes for the reranker) are not kept beside the new ones on a
  # disk that image builds share; a running container keeps what it uses.
  ((${#replaced[@]} == 0)) \
    || ctr --address "$containerd_sock" -n k8s.io images rm "${replaced[@]}" >>"$logs/images.log" 2>&1 || true
  podman save -q -m --format docker-archive -o /dev/stdout "${wanted[@]}" \
    | ctr --address "$containerd_sock" -n k8s.io images import - >>"$logs/images.log" 2>&1 \
    || die "importing ${wanted[*]} into the node's containerd failed; see $logs/images.log"
  say "imported ${wanted[*]} in $((SECONDS - start)) s"
}

# The names of the node's images whose id is $1.
node_names_of() {
  local name
  for name in $(ctr --address "$containerd_sock" -n k8s.io images ls -q); do
    [[ "$(node_image_id "$name")" != "$1" ]] || echo "$name"
  done
}

# The image id (its config's digest, as podman names an image) of the node's image named $1, or nothing.
node_image_id() {
  local manifest
  manifest="$(ctr --address "$containerd_sock" -n k8s.io images ls "name==$1" 2>/dev/null | awk 'NR == 2 { print $3 }')"
  [[ -n "$manifest" ]] || return 0
  ctr --address "$containerd_sock" -n k8s.io content get "$manifest" 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"].removeprefix("sha256:"))' 2>/dev/null || true
}

cmd_status() {
  [[ -f "$network_env" ]] || { say "not running"; return 1; }
  load_network
  if alive kubelet; then
    say "running: node $node_name, pods $POD_CIDR, namespace $NETNS"
  else
    say "not running"
    return 1
  fi
}

cmd_env() {
  load_network
  echo "NODE_NAME=$node_name"
  echo "TAINT_KEY=$taint_key"
  echo "DNS_IP=$dns_ip"
  echo "PODBIN_IMAGE=$podbin_image"
  echo "PAUSE_IMAGE=$pause_image"
  cat "$network_env"
  echo "STATE=$node"
}

main() {
  case "${1:-}" in
    install) mkdir -p "$state"; cmd_install ;;
    build) cmd_build ;;
    built) cmd_built ;;
    plan) cmd_plan ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    import) shift; cmd_import "$@" ;;
    image-id) (($# == 2)) || die "usage: node.sh image-id IMAGE"; load_network; node_image_id "$2" ;;
    restart-kubelet) cmd_restart_kubelet ;;
    *) die "usage: $0 install|build|built|plan|up|down|import|image-id|restart-kubelet|status|env" ;;
  esac
}

main "$@"
