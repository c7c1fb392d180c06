#!/usr/bin/env bash
# The project's kind cluster (the e2e cluster).
#   scripts/kind.sh up            build what is missing, create or reuse the cluster; the one
#                                 stdout line is `export KUBECONFIG=<absolute path>`
#   scripts/kind.sh down          delete the cluster and its kubeconfig
#   scripts/kind.sh status        say whether the cluster runs and answers
#   scripts/kind.sh load IMAGE... copy local docker images into the cluster's nodes
# Environment:
#   KIND_CLUSTER          cluster name (default exo)
#   EXO_KIND_NODE_IMAGE   a node image to use instead of the one scripts/node-image.sh builds here,
#                         e.g. kind's stock kindest/node:v1.34.x where a registry is reachable; the
#                         cluster then keeps kind's default CNI (kindnetd)
#   EXO_KIND_NODEPORT     host port on 127.0.0.1 that reaches NodePort 30080 (default 30080)
#   KIND_NODES            how many nodes run pods (default 1). 1: one node, control plane and
#                         worker. N >= 2: the control plane (left schedulable, holding the NodePort
#                         mapping) plus N-1 workers; every node advertises the fake GPUs, pods reach
#                         each other across nodes (the route agent, routeagent/), and the `shared`
#                         storage class is one host folder mounted into every node, so its
#                         ReadWriteMany volumes are shared across nodes too
#   EXO_NODE_IMAGE_TAG    the tag scripts/node-image.sh builds and the cluster runs (default
#                         exo-operator/kind-node:<kubernetes version>)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/scripts/versions.env"

KIND_CLUSTER="${KIND_CLUSTER:-exo}"
NODEPORT_HOST_PORT="${EXO_KIND_NODEPORT:-30080}"
KIND_NODES="${KIND_NODES:-1}"
[[ $KIND_NODES =~ ^[1-9][0-9]*$ ]] || die "KIND_NODES must be a whole number of nodes, 1 or more (got '$KIND_NODES')"
# The cluster belongs to the machine's docker daemon, not to one checkout: so does its kubeconfig.
KUBECONFIG_PATH="$EXO_CACHE/kind/$KIND_CLUSTER.kubeconfig"
NODE_CONTAINER="$KIND_CLUSTER-control-plane"
DEVICE_PLUGIN_IMAGE="exo-operator/fake-gpu-device-plugin:dev"
# The host folder behind the `shared` storage class on a multi-node cluster.
SHARED_VOLUMES_DIR="$EXO_CACHE/kind/$KIND_CLUSTER-shared"

kind() { "$TOOLS_BIN/kind" "$@"; }
kctl() { "$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; }
node_running() { [[ $(docker_cli inspect -f '{{.State.Running}}' "$NODE_CONTAINER" 2>/dev/null) == true ]]; }
api_answers() { [[ -f $KUBECONFIG_PATH ]] && kctl get --raw /readyz --request-timeout=5s >/dev/null 2>&1; }

# On failure: the node's view of what went wrong, then a clean slate for the next try.
report_failure() {
  local what=$1
  if node_running && docker_cli exec "$NODE_CONTAINER" test -f /etc/kubernetes/admin.conf; then
    log "last lines of the kubelet's and containerd's logs on $NODE_CONTAINER:"
    docker_cli exec "$NODE_CONTAINER" journalctl --no-pager -n 25 -u kubelet -u containerd >&2 || true
    log "pods:"
    docker_cli exec "$NODE_CONTAINER" kubectl --kubeconfig /etc/kubernetes/admin.conf \
      get pods -A -o wide >&2 2>&1 || true
  elif docker_cli inspect "$NODE_CONTAINER" >/dev/null 2>&1; then
    log "last lines of the node container's own log (its boot):"
    docker_cli logs --tail 25 "$NODE_CONTAINER" >&2 || true
  fi
  # A cluster found running may be in use by another session: only a half-made one of ours goes.
  if [[ ${CREATED_HERE:-false} == true ]]; then
    log "deleting the half-made cluster so that the next run starts clean"
    kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
    die "$what (logs above); fix the cause and rerun scripts/kind.sh up"
  fi
  die "$what (logs above) on the running cluster '$KIND_CLUSTER'; recreate it with scripts/kind.sh down && scripts/kind.sh up"
}

check_port_free() {
  if port_in_use "$NODEPORT_HOST_PORT"; then
    die "port 127.0.0.1:$NODEPORT_HOST_PORT is in use by another program (see: ss -ltnp | grep :$NODEPORT_HOST_PORT); free it or set EXO_KIND_NODEPORT to a free port"
  fi
}

# A container under the node's name that kind does not list is not ours to delete.
check_name_free() {
  if docker_cli inspect "$NODE_CONTAINER" >/dev/null 2>&1; then
    die "a container named $NODE_CONTAINER exists but is not part of kind cluster '$KIND_CLUSTER'; remove it (docker rm -f $NODE_CONTAINER) or set KIND_CLUSTER to another name"
  fi
}

node_image() {
  if [[ -n ${EXO_KIND_NODE_IMAGE:-} ]]; then
    echo "$EXO_KIND_NODE_IMAGE"
  else
    bash "$REPO_ROOT/scripts/base-image.sh" >&2
    bash "$REPO_ROOT/scripts/node-image.sh" >&2
    echo "${EXO_NODE_IMAGE_TAG:-exo-operator/kind-node:$KUBERNETES_VERSION}"
  fi
}

# cluster_config: hack/kind/cluster.yaml filled in, plus the workers of a multi-node cluster.
cluster_config() {
  local disable_cni=true i
  # kind's stock image brings kindnetd and no preloaded device plugin.
  [[ -n ${EXO_KIND_NODE_IMAGE:-} ]] && disable_cni=false
  sed -e "s/\${NODEPORT_HOST_PORT}/$NODEPORT_HOST_PORT/" -e "s/\${DISABLE_DEFAULT_CNI}/$disable_cni/" \
    "$REPO_ROOT/hack/kind/cluster.yaml"
  ((KIND_NODES > 1)) || return 0
  # Every node mounts the same host folder where the `shared` class keeps its volumes: the
  # provisioner gives those volumes no node affinity, so pods on any node must see one folder.
  local mount="    extraMounts: [{hostPath: $SHARED_VOLUMES_DIR, containerPath: /var/local-path-provisioner-shared}]"
  echo "$mount"
  for ((i = 1; i < KIND_NODES; i++)); do
    printf '  - role: worker\n%s\n' "$mount"
  done
}

create_cluster() {
  local image=$1 config
  config=$(cluster_config)
  if ((KIND_NODES > 1)); then mkdir -p "$SHARED_VOLUMES_DIR"; fi
  log "creating kind cluster '$KIND_CLUSTER' ($KIND_NODES node(s)) from $image"
  CREATED_HERE=true
  mkdir -p "$(dirname "$KUBECONFIG_PATH")"
  echo "$config" | kind create cluster --name "$KIND_CLUSTER" --image "$image" --config - \
    --kubeconfig "$KUBECONFIG_PATH" --retain --wait 0s >&2 ||
    report_failure "kind create cluster failed"
  # kind leaves the control plane schedulable only on a one-node cluster; ours runs pods too.
  if ((KIND_NODES > 1)); then
    kctl taint node "$NODE_CONTAINER" node-role.kubernetes.io/control-plane:NoSchedule- >/dev/null
  fi
  if [[ -n ${EXO_KIND_NODE_IMAGE:-} ]]; then
    bash "$REPO_ROOT/scripts/node-image.sh" device-plugin >&2
    kind load docker-image --name "$KIND_CLUSTER" "$DEVICE_PLUGIN_IMAGE" >&2
  fi
}

# await WHAT SECONDS COMMAND...: wait_for (scripts/lib.sh), reporting the node's state if it fails.
await() {
  local what=$1 seconds=$2
  shift 2
  wait_for "$seconds" "$@" || report_failure "$what did not happen within ${seconds}s"
}

# Every node advertises the fake GPUs.
gpus_advertised() {
  local counts count
  mapfile -t counts < <(kctl get nodes -o jsonpath='{range .items[*]}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}')
  ((${#counts[@]} == KIND_NODES)) || return 1
  for count in "${counts[@]}"; do ((${count:-0} > 0)) || return 1; done
}

nodes_ready() {
  [[ $(kctl get nodes --no-headers 2>/dev/null | wc -l) -eq $KIND_NODES ]] &&
    kctl wait --for=condition=Ready nodes --all --timeout=1s
}

wait_until_usable() {
  log "waiting for the nodes, cluster DNS, storage and the fake GPUs"
  # The route agent writes each node's CNI config: no node turns Ready before it runs.
  [[ -n ${EXO_KIND_NODE_IMAGE:-} ]] || kctl apply -f "$REPO_ROOT/hack/kind/route-agent.yaml" >/dev/null
  # Bounds of wall time, about what the earlier counts of tries a second apart took (each
  # `kctl wait` try spends its own second too).
  await "every node becoming Ready" 240 nodes_ready
  kctl apply -f "$REPO_ROOT/hack/kind/fake-gpu-device-plugin.yaml" >/dev/null
  await "CoreDNS becoming available" 240 \
    kctl -n kube-system wait --for=condition=Available deployment/coredns --timeout=1s
  await "the local-path provisioner becoming available" 240 \
    kctl -n local-path-storage wait --for=condition=Available deployment/local-path-provisioner --timeout=1s
  await "every node advertising nvidia.com/gpu" 90 gpus_advertised
}

up() {
  local started=$SECONDS image
  bash "$REPO_ROOT/scripts/docker.sh" up
  require_tools kind kubectl
  use_debian_docker_on_path
  if cluster_exists; then
    if node_running && api_answers; then
      log "kind cluster '$KIND_CLUSTER' is already running"
      local mapped
      mapped=$(docker_cli port "$NODE_CONTAINER" 30080/tcp 2>/dev/null | head -n1)
      [[ $mapped == "127.0.0.1:$NODEPORT_HOST_PORT" ]] ||
        die "the running cluster maps NodePort 30080 to ${mapped:-nothing}, not 127.0.0.1:$NODEPORT_HOST_PORT; run scripts/kind.sh down first to change EXO_KIND_NODEPORT"
      local nodes
      nodes=$(kind get nodes --name "$KIND_CLUSTER" | wc -l)
      [[ $nodes -eq $KIND_NODES ]] ||
        die "the running cluster has $nodes node(s), not KIND_NODES=$KIND_NODES; run scripts/kind.sh down first to change KIND_NODES"
    else
      log "kind cluster '$KIND_CLUSTER' is left over from an earlier run and does not answer: deleting it"
      kind delete cluster --name "$KIND_CLUSTER" >&2
    fi
  fi
  if ! cluster_exists; then
    check_name_free
    check_port_free
    image=$(node_image)
    create_cluster "$image"
  fi
  wait_until_usable
  log "kind cluster '$KIND_CLUSTER' ($KIND_NODES node(s)) ready in $((SECONDS - started))s (NodePort 30080 on 127.0.0.1:$NODEPORT_HOST_PORT)"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

down() {
  require_tools kind
  use_debian_docker_on_path
  if cluster_exists; then
    log "deleting kind cluster '$KIND_CLUSTER'"
    kind delete cluster --name "$KIND_CLUSTER" >&2
  else
    log "kind cluster '$KIND_CLUSTER' does not exist"
  fi
  rm -f "$KUBECONFIG_PATH"
  rm -rf "$SHARED_VOLUMES_DIR"
}

status() {
  require_tools kind kubectl
  use_debian_docker_on_path
  if ! cluster_exists; then
    echo "kind cluster '$KIND_CLUSTER': absent (start it with scripts/kind.sh up)"
    return 1
  elif node_running && api_answers; then
    echo "kind cluster '$KIND_CLUSTER': running; export KUBECONFIG=$KUBECONFIG_PATH"
  else
    echo "kind cluster '$KIND_CLUSTER': exists but does not answer (scripts/kind.sh up recreates it)"
    return 1
  fi
}

load() {
  (($# > 0)) || die "usage: $0 load IMAGE..."
  require_tools kind
  use_debian_docker_on_path
  cluster_exists || die "kind cluster '$KIND_CLUSTER' does not exist: run scripts/kind.sh up first"
  local image
  for image in "$@"; do
    docker_cli image inspect "$image" >/dev/null 2>&1 || die "no local docker image $image: build it first"
  done
  log "loading $* into kind cluster '$KIND_CLUSTER'"
  kind load docker-image --name "$KIND_CLUSTER" "$@" >&2
  remove_replaced_images "$@"
}

# node_runs_tag NODE IMAGE ID: whether the kubelet's image service on NODE resolves IMAGE to ID.
node_runs_tag() {
  [[ $(docker_cli exec "$1" crictl inspecti -o go-template --template '{{.status.id}}' "$2") == "$3" ]]
}

# kind's load points the tag at the new image and leaves the image it replaced in each node's
# containerd, untagged: every reload of a rebuilt runtime and operator image would keep ~850 MB
# more per node. Those untagged images go, unless a container (even a stopped one) uses them.
remove_replaced_images() {
  local node image id used digest refs
  for node in $(kind get nodes --name "$KIND_CLUSTER"); do
    # The image service learns of the new tags from containerd's events, a moment after the
    # load: until then the replaced image still holds its tag.
    for image in "$@"; do
      id=$(docker_cli image inspect -f '{{.Id}}' "$image")
      wait_for 30 node_runs_tag "$node" "$image" "$id" ||
        die "$node does not list $image as $id 30 s after loading it"
    done
    used=" $(docker_cli exec "$node" crictl ps --all --output json | jq -r '[.containers[].imageRef] | join(" ")') "
    for id in $(docker_cli exec "$node" crictl images --quiet --filter dangling=true); do
      [[ $used != *" $id "* ]] || continue
      # Containerd keeps the image under kind's import name too (import-<date>@<digest>), which
      # `crictl rmi` misses (it looks for docker.io/library/import-...): ctr removes that name,
      # and the image's layers with it. (crictl's list may go on showing the image, without its
      # layers, until containerd restarts: harmless, a later load of it imports it anew.)
      refs=()
      for digest in $(docker_cli exec "$node" crictl inspecti --output json "$id" | jq -r '.status.repoDigests[]'); do
        refs+=("${digest#docker.io/library/}")
      done
      docker_cli exec "$node" crictl rmi "$id" >/dev/null ||
        die "could not remove the replaced image $id from $node (crictl's error above)"
      ((${#refs[@]} == 0)) || docker_cli exec "$node" ctr --namespace k8s.io images rm "${refs[@]}" >/dev/null 2>&1
    done
  done
}

# One `up` or `down` at a time per cluster: a second caller (another test session, say) waits for
# the first, up to 15 minutes (a cold node image build), instead of taking its half-made cluster
# for a leftover.
with_lock() {
  hold_lock "$EXO_CACHE/kind/$KIND_CLUSTER.lock" 900 "another scripts/kind.sh on cluster '$KIND_CLUSTER'"
  "$@"
}

case "${1:-}" in
  up) with_lock up ;;
  down) with_lock down ;;
  status) status ;;
  load) shift && load "$@" ;;
  *) die "usage: $0 up|down|status|load IMAGE..." ;;
esac
