#!/usr/bin/env bash
# A kwok control plane from the binaries that `make tools` built: etcd, kube-apiserver (RBAC
# on), kube-controller-manager, kube-scheduler and the kwok controller, supervised by
# kwokctl's binary runtime, with fake GPU nodes that kwok keeps Ready.
#
#   scripts/kwok.sh up       start (or reuse) the cluster; prints `export KUBECONFIG=...` on stdout
#   scripts/kwok.sh down     stop it and remove its processes, ports and files
#   scripts/kwok.sh status   say whether it answers (exit 0) or not (exit 1)
#
# Settings (environment): KWOK_CLUSTER (exo), KWOK_NODES (4 GPU nodes), KWOK_GPUS_PER_NODE (1),
# KWOK_CPU_NODES (1 node without GPUs or taint, where pods that need no GPU run, as in a real
# cluster's CPU pool), KWOK_NODE_CPU (8), KWOK_NODE_MEMORY (32Gi), KWOK_APISERVER_PORT (a
# free port when unset), KWOK_NO_QPS_LIMITS (0; 1 lifts the controller-manager's, scheduler's
# and kwok's client rate limits, 20 requests a second for the controller-manager, which would
# pace a benchmark of hundreds of models instead of what it measures).
# kwok's stages (from its module, copied by `make tools`) keep nodes Ready with leases, move
# pods bound to its nodes to Running and Ready, Jobs' pods to Succeeded, finish deleting
# pods, and bind PersistentVolumeClaims of the default StorageClass `kwok-volume` at once.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CLUSTER="${KWOK_CLUSTER:-exo}"
NODES="${KWOK_NODES:-4}"
GPUS_PER_NODE="${KWOK_GPUS_PER_NODE:-1}"
CPU_NODES="${KWOK_CPU_NODES:-1}"
NODE_CPU="${KWOK_NODE_CPU:-8}"
NODE_MEMORY="${KWOK_NODE_MEMORY:-32Gi}"
APISERVER_PORT="${KWOK_APISERVER_PORT:-}"
NO_QPS_LIMITS="${KWOK_NO_QPS_LIMITS:-0}"

# kwokctl keeps each cluster's files (pki, etcd data, logs, pids) under its work dir;
# one under the project's cache keeps ~/.kwok and ~/.kube/config untouched.
export KWOK_WORKDIR="$EXO_CACHE/kwok"
CLUSTER_DIR="$KWOK_WORKDIR/clusters/$CLUSTER"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig.yaml"
# kwokctl's options with kwok's stages appended, assembled at each start.
CONFIG_PATH="$KWOK_WORKDIR/$CLUSTER.kwokctl.yaml"
source "$REPO_ROOT/scripts/versions.env"
STAGES_DIR="$EXO_CACHE/tools/kwok-$KWOK_VERSION/stages"
# kwokctl runs `kubectl` for some steps: the pinned one comes first.
export PATH="$TOOLS_BIN:$PATH"

# -v WARN: the script reports progress itself; kwokctl still prints its warnings and errors.
kwokctl() { command "$TOOLS_BIN/kwokctl" -v WARN --name "$CLUSTER" "$@"; }
kubectl() { command "$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

validate_settings() {
  [[ "$NO_QPS_LIMITS" =~ ^[01]$ ]] || die "KWOK_NO_QPS_LIMITS='$NO_QPS_LIMITS' must be 0 or 1"
  [[ "$CLUSTER" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] ||
    die "KWOK_CLUSTER='$CLUSTER' is not a valid name: use lower-case letters, digits and '-'"
  local var
  for var in NODES GPUS_PER_NODE CPU_NODES NODE_CPU; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || die "KWOK_$var='${!var}' must be a whole number"
  done
  [ "$((NODES + CPU_NODES))" -ge 1 ] || die "KWOK_NODES and KWOK_CPU_NODES are both 0: the cluster needs a node"
  [[ "$NODE_MEMORY" =~ ^[0-9]+(Ki|Mi|Gi|Ti)?$ ]] ||
    die "KWOK_NODE_MEMORY='$NODE_MEMORY' must be a quantity such as 32Gi"
  [ -z "$APISERVER_PORT" ] || [[ "$APISERVER_PORT" =~ ^[0-9]+$ ]] ||
    die "KWOK_APISERVER_PORT='$APISERVER_PORT' must be a port number"
}

# One `up` or `down` at a time per cluster: parallel test sessions share it. Every command
# that may start a long-lived process runs through without_inherited_fds (scripts/lib.sh).
lock_cluster() {
  hold_lock "$KWOK_WORKDIR/locks/$CLUSTER" 300 "another scripts/kwok.sh on cluster '$CLUSTER'"
}

answers() {
  [ -f "$KUBECONFIG_PATH" ] && kubectl get --raw /readyz --request-timeout=3s >/dev/null 2>&1
}

# The cluster's components, found by the path kwokctl runs them from (its bin/ folder links
# to the cache); they outlive a killed run and must go before the cluster's files do.
cluster_pids() {
  pgrep -f -- "^$CLUSTER_DIR/bin/" || true
}

# Each component as PID:START (its start time, field 22 of /proc/PID/stat): a pid that another
# process has taken since is then neither waited on nor killed.
component_ids() {
  local pid stat fields
  for pid in $(cluster_pids); do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    read -r -a fields <<<"${stat##*) }"
    echo "$pid:${fields[19]}"
  done
}

# still_holding PID:START...: prints those that still hold their files, and so their ports.
# An exiting process drops the command line cluster_pids matches before it closes its files,
# and its main thread turns zombie (Z) while its other threads still hold them: a process has
# let go only once it is a zombie with that one thread left (fields 3 and 20 of its stat).
still_holding() {
  local id stat fields
  for id in "$@"; do
    stat="$(cat "/proc/${id%:*}/stat" 2>/dev/null)" || continue
    read -r -a fields <<<"${stat##*) }"
    [ "${fields[19]}" = "${id#*:}" ] || continue # the pid is another process's now
    if [ "${fields[0]}" != Z ] || [ "${fields[17]}" != 1 ]; then echo "$id"; fi
  done
}
none_holding() { [ -z "$(still_holding "$@")" ]; }

stop_cluster() {
  local ids leftover left
  # Listed before kwokctl signals them (see still_holding).
  ids="$(component_ids)"
  if [ -d "$CLUSTER_DIR" ]; then
    without_inherited_fds kwokctl delete cluster >&2 2>&1 || log "kwokctl could not delete '$CLUSTER' cleanly; removing what is left"
  fi
  leftover="$(component_ids)"
  if [ -n "$leftover" ]; then
    log "stopping leftover processes of '$CLUSTER': $(echo "$leftover" | cut -d: -f1 | xargs)"
    # shellcheck disable=SC2046
    kill $(echo "$leftover" | cut -d: -f1) 2>/dev/null || true
  fi
  # Signalled is not gone: the files and ports go only when each process has exited.
  # shellcheck disable=SC2086
  if ! wait_for 10 none_holding $ids $leftover; then
    # shellcheck disable=SC2086
    left="$(still_holding $ids $leftover | sort -u)"
    log "killing processes of '$CLUSTER' still running after 10 s: $(echo "$left" | cut -d: -f1 | xargs)"
    # shellcheck disable=SC2046
    kill -9 $(echo "$left" | cut -d: -f1) 2>/dev/null || true
    # shellcheck disable=SC2086
    wait_for 10 none_holding $left || log "processes of '$CLUSTER' outlived SIGKILL: $(echo "$left" | cut -d: -f1 | xargs)"
  fi
  rm -rf "$CLUSTER_DIR" "$CONFIG_PATH"
}

# Prints the tail of every component's log, for a start that failed.
show_logs() {
  local file
  for file in "$CLUSTER_DIR"/logs/*.log; do
    [ -f "$file" ] || continue
    printf '\n--- %s (last 20 lines) ---\n' "$file" >&2
    tail -n 20 "$file" >&2
  done
}

# kwokctl's options, then every Stage: given any stage, kwokctl adds none of its defaults.
write_config() {
  local stage
  cat >"$CONFIG_PATH" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  disableQPSLimits: $([ "$NO_QPS_LIMITS" = 1 ] && echo true || echo false)
  # Every binary from the project's cache: kwokctl would download any it is not given.
  etcdBinary: $TOOLS_BIN/etcd
  kubeApiserverBinary: $TOOLS_BIN/kube-apiserver
  kubeControllerManagerBinary: $TOOLS_BIN/kube-controller-manager
  kubeSchedulerBinary: $TOOLS_BIN/kube-scheduler
  kwokControllerBinary: $TOOLS_BIN/kwok
  kubectlBinary: $TOOLS_BIN/kubectl
  # Every component listens on loopback only (kwokctl's default is all addresses).
  bindAddress: 127.0.0.1
  # HTTPS with client certificates, so that RBAC has identities to authorize.
  securePort: true
  kubeAuthorization: true
  kubeAdmission: true
  # kwok's default of 0 manages no node leases; 40 s is the kubelet's default, so the
  # node lifecycle controller sees fake nodes renew their leases like real ones.
  nodeLeaseDurationSeconds: 40
  # No Prometheus or Jaeger: they would be downloaded, and nothing here is.
  prometheusPort: 0
  jaegerPort: 0
  quietPull: true
# The apiserver's default Service range (10.0.0.0/24) holds about 250 Services: too few for
# the operator's scale benchmark, where every ExoModel has one.
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - key: service-cluster-ip-range
    value: 10.96.0.0/16
EOF
  for stage in "$STAGES_DIR"/*.yaml; do
    [ "$(basename "$stage")" != storage-class.yaml ] || continue
    printf -- '---\n' >>"$CONFIG_PATH"
    cat "$stage" >>"$CONFIG_PATH"
  done
}

create_cluster() {
  # --kubeconfig "": leave ~/.kube/config alone; the cluster's own kubeconfig is enough.
  local -a args=(--config "$CONFIG_PATH" --kubeconfig "" --wait 60s)
  if [ -n "$APISERVER_PORT" ]; then
    ! port_in_use "$APISERVER_PORT" ||
      die "port $APISERVER_PORT (KWOK_APISERVER_PORT) is in use: stop what listens there (\`ss -ltnp 'sport = :$APISERVER_PORT'\`) or pick another port"
    args+=(--kube-apiserver-port "$APISERVER_PORT")
  fi
  write_config
  log "starting kwok control plane '$CLUSTER' (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
  if ! without_inherited_fds kwokctl create cluster "${args[@]}" >&2 2>&1; then
    show_logs
    stop_cluster
    die "the kwok control plane '$CLUSTER' failed to start (component logs above); rerun \`make kwok\` once the cause is fixed"
  fi
}

# Fake GPU nodes shaped like a cloud's: nvidia.com/gpu capacity, the GPU labels NVIDIA's
# feature discovery sets, and the NoSchedule taint GKE and AKS put on GPU node pools, so
# that only pods tolerating it land there. Beside them, a CPU pool: where Jobs and pods that
# need no GPU are scheduled. One line per node: NAME GPUS.
desired_nodes() {
  local i
  for ((i = 0; i < NODES; i++)); do echo "kwok-gpu-$i $GPUS_PER_NODE"; done
  for ((i = 0; i < CPU_NODES; i++)); do echo "kwok-cpu-$i 0"; done
}

# A node's shape (resources, labels, taints) as a label value: an update cannot change a
# node's status, so a node made with other settings is replaced rather than updated.
node_shape() {
  printf '%s\n' "$1" "$NODE_CPU" "$NODE_MEMORY" | sha256sum | cut -c1-16
}

# node_manifest NAME GPUS: a fake node; one with GPUs is labelled and tainted like a GPU node.
node_manifest() {
  local name="$1" gpus="$2" gpu_labels="" gpu_taint="" gpu_resource=""
  if [ "$gpus" -gt 0 ]; then
    gpu_labels=$'\n    nvidia.com/gpu.present: "true"\n    nvidia.com/gpu.count: "'"$gpus"'"'
    gpu_taint=$'\nspec:\n  taints:\n  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}'
    gpu_resource=$'\n    nvidia.com/gpu: "'"$gpus"'"'
  fi
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    exo.dev/kwok-node: "true"
    exo.dev/kwok-shape: "$(node_shape "$gpus")"
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    node-role.kubernetes.io/agent: ""$gpu_labels$gpu_taint
status:
  allocatable: &resources
    cpu: "$NODE_CPU"
    memory: $NODE_MEMORY
    pods: "110"
    ephemeral-storage: 100Gi$gpu_resource
  capacity: *resources
EOF
}

ensure_nodes() {
  log "ensuring $NODES GPU node(s) with $GPUS_PER_NODE nvidia.com/gpu each and $CPU_NODES CPU node(s)"
  local wanted name gpus shape
  wanted="$(desired_nodes | while read -r name gpus; do echo "$name $(node_shape "$gpus")"; done)"
  # Nodes left by an earlier run with more nodes or other settings.
  kubectl get nodes -l exo.dev/kwok-node=true \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.labels.exo\.dev/kwok-shape}{"\n"}{end}' |
    while read -r name shape; do
      grep -qx "$name $shape" <<<"$wanted" || kubectl delete node "$name" >&2
    done
  desired_nodes | while read -r name gpus; do node_manifest "$name" "$gpus"; done |
    kubectl apply -f - >&2
  kubectl wait --for=condition=Ready nodes -l exo.dev/kwok-node=true --timeout=60s >&2 ||
    {
      show_logs
      die "the fake nodes did not become Ready in 60 s (kwok's log above)"
    }
}

# The controller-manager creates each namespace's default ServiceAccount a moment after
# start; pods are refused until it exists.
wait_for_default_service_account() {
  wait_for 60 kubectl get serviceaccount default -n default && return
  show_logs
  die "the default ServiceAccount did not appear in 60 s: kube-controller-manager is not working (logs above)"
}

up() {
  validate_settings
  require_tools etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl
  [ -f "$STAGES_DIR/pod-ready.yaml" ] || die "kwok's stages are missing from $STAGES_DIR: run \`make tools\`"
  lock_cluster
  local started=$SECONDS
  if answers; then
    log "kwok cluster '$CLUSTER' is already up"
  else
    if [ -d "$CLUSTER_DIR" ] || [ -n "$(cluster_pids)" ]; then
      log "found a leftover of kwok cluster '$CLUSTER' that does not answer (a killed run?): removing it"
      stop_cluster
    fi
    create_cluster
  fi
  wait_for_default_service_account
  kubectl apply -f "$STAGES_DIR/storage-class.yaml" >&2
  ensure_nodes
  log "kwok cluster '$CLUSTER' ready in $((SECONDS - started)) s"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

down() {
  validate_settings
  lock_cluster
  if [ ! -d "$CLUSTER_DIR" ] && [ -z "$(cluster_pids)" ]; then
    log "kwok cluster '$CLUSTER' is not running"
  else
    [ -x "$TOOLS_BIN/kwokctl" ] || log "kwokctl is missing; stopping the processes directly"
    log "stopping kwok cluster '$CLUSTER'"
    stop_cluster
  fi
}

status() {
  if answers; then
    log "kwok cluster '$CLUSTER' is up; KUBECONFIG=$KUBECONFIG_PATH"
    kubectl get nodes >&2
  else
    log "kwok cluster '$CLUSTER' is not up"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
