#!/usr/bin/env bash
# Build the kind node image with no registry: exo-operator/kind-node:<kubernetes version>.
#
# `kind build node-image` pulls etcd, pause, CoreDNS and kind's add-ons from registries, so this
# script does the same job from local sources instead:
#   1. the small images kubeadm and kind's manifests name (registry.k8s.io/kube-apiserver, ...,
#      etcd, pause, coredns, the local-path provisioner and its helper) plus the fake GPU device
#      plugin, each a static binary on scratch, tagged under exactly the names the manifests use,
#      and the route agent (routeagent/: the pod network across nodes);
#   2. the node root file system (images/node/Dockerfile): Debian's systemd, containerd, runc and
#      CNI plugins, kind's entrypoint and units from kind's pinned module source, the Kubernetes
#      binaries from scripts/tools.sh;
#   3. those images imported into the node's containerd and pinned, then committed.
# A label on the image holds a hash of every input; an unchanged input set skips the build.
# `scripts/node-image.sh device-plugin` builds only the fake GPU device plugin's image.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$REPO_ROOT/scripts/versions.env"

NODE_IMAGE="${EXO_NODE_IMAGE_TAG:-exo-operator/kind-node:$KUBERNETES_VERSION}"
DEVICE_PLUGIN_IMAGE="exo-operator/fake-gpu-device-plugin:dev"
ROUTE_AGENT_IMAGE="exo-operator/route-agent:dev"
IMAGES_CACHE="$EXO_CACHE/images"
ADDON_BIN="$IMAGES_CACHE/bin"
K8S_BINARIES=(kubelet kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd)
export DOCKER_BUILDKIT=1 # no `# syntax=` line in the Dockerfiles: that would pull a frontend image

# go_install NAME MODULE@VERSION: build a static Go binary from the module proxy into $ADDON_BIN.
go_install() {
  [[ -x $ADDON_BIN/$1 ]] && return 0
  command -v go >/dev/null || die "go is missing: install Go (1.24 or newer) to build $2"
  log "building $1 from $2 (a few minutes on 2 cores)"
  CGO_ENABLED=0 GOBIN="$ADDON_BIN" GOFLAGS=-buildvcs=false nice -n 10 \
    go install -trimpath -ldflags='-s -w' "$2" || die "go install $2 failed (output above)"
}

build_addon_binaries() {
  mkdir -p "$ADDON_BIN"
  go_install coredns "github.com/coredns/coredns@$COREDNS_VERSION"
  go_install local-path-provisioner "github.com/rancher/local-path-provisioner@$LOCAL_PATH_PROVISIONER_VERSION"
  # The device plugin is the project's own module; rebuild whenever its sources are newer.
  if [[ ! -x $ADDON_BIN/fake-gpu-device-plugin ]] ||
    [[ -n $(find "$REPO_ROOT/deviceplugin" -newer "$ADDON_BIN/fake-gpu-device-plugin" -type f) ]]; then
    log "building the fake GPU device plugin"
    (cd "$REPO_ROOT/deviceplugin" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' \
      -o "$ADDON_BIN/fake-gpu-device-plugin" .) || die "building deviceplugin/ failed (output above)"
  fi
  if [[ ! -x $ADDON_BIN/route-agent ]] ||
    [[ -n $(find "$REPO_ROOT/routeagent" -newer "$ADDON_BIN/route-agent" -type f) ]]; then
    log "building the route agent"
    (cd "$REPO_ROOT/routeagent" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' \
      -o "$ADDON_BIN/route-agent" .) || die "building routeagent/ failed (output above)"
  fi
  # pause is C: Kubernetes' own pause.c from the pinned module source, linked statically.
  if [[ ! -x $ADDON_BIN/pause ]]; then
    local src
    src="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBERNETES_VERSION/build/pause/linux/pause.c"
    [[ -f $src ]] || GOFLAGS=-mod=mod go mod download "k8s.io/kubernetes@$KUBERNETES_VERSION"
    command -v gcc >/dev/null || die "gcc is missing: apt-get install gcc libc6-dev (to build pause)"
    log "building pause from $src"
    gcc -Os -static -DVERSION="$PAUSE_VERSION" -o "$ADDON_BIN/pause" "$src" && strip "$ADDON_BIN/pause"
  fi
}

kind_module_dir() {
  local dir
  dir="$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION"
  if [[ ! -d $dir ]]; then
    log "downloading kind $KIND_VERSION's module source (for its node entrypoint and units)"
    GOFLAGS=-mod=mod go mod download "sigs.k8s.io/kind@$KIND_VERSION" >&2 ||
      die "go mod download sigs.k8s.io/kind@$KIND_VERSION failed"
  fi
  echo "$dir"
}

# inputs_hash: one hash over everything the node image is made of.
inputs_hash() {
  {
    cat "$REPO_ROOT/scripts/versions.env" "$REPO_ROOT/scripts/node-image.sh"
    find "$REPO_ROOT/images" -type f ! -name '*.md' -print0 | sort -z | xargs -0 cat
    for name in "${K8S_BINARIES[@]}"; do sha256sum "$TOOLS_BIN/$name"; done
    sha256sum "$ADDON_BIN"/*
    docker_cli image inspect -f '{{.Id}}' "$BASE_IMAGE"
    cat "$KIND_DIR/images/base/files/usr/local/bin/entrypoint"
  } | sha256sum | cut -c1-16
}

# static_image TAG ENTRYPOINT_JSON SRC:DEST...: an image holding only the given files (and /tmp).
static_image() {
  local tag=$1 entrypoint=$2 root pair
  shift 2
  root=$(mktemp -d "$WORK/rootfs.XXXXXX")
  mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
  for pair in "$@"; do
    install -D -m 0755 "${pair%%:*}" "$root${pair#*:}"
  done
  tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
    docker_cli import --change "ENTRYPOINT $entrypoint" \
      --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$tag" >/dev/null
}

build_component_images() {
  local k8s="registry.k8s.io" v=$KUBERNETES_VERSION name
  log "building the component images (static binaries on scratch)"
  for name in kube-apiserver kube-controller-manager kube-scheduler; do
    static_image "$k8s/$name:$v" "[\"/usr/local/bin/$name\"]" "$TOOLS_BIN/$name:/usr/local/bin/$name"
  done
  static_image "$k8s/etcd:$KUBEADM_ETCD_IMAGE_TAG" '["/usr/local/bin/etcd"]' "$TOOLS_BIN/etcd:/usr/local/bin/etcd"
  static_image "$k8s/pause:$PAUSE_VERSION" '["/pause"]' "$ADDON_BIN/pause:/pause"
  static_image "$k8s/coredns/coredns:$COREDNS_VERSION" '["/coredns"]' "$ADDON_BIN/coredns:/coredns"
  static_image "$KIND_LOCAL_PATH_PROVISIONER_IMAGE" '["/usr/local/bin/local-path-provisioner"]' \
    "$ADDON_BIN/local-path-provisioner:/usr/local/bin/local-path-provisioner"
  static_image "$DEVICE_PLUGIN_IMAGE" '["/usr/local/bin/fake-gpu-device-plugin"]' \
    "$ADDON_BIN/fake-gpu-device-plugin:/usr/local/bin/fake-gpu-device-plugin"

  log "building kube-proxy (with iptables) and the local-path helper (busybox)"
  mkdir -p "$WORK/kube-proxy"
  cp "$REPO_ROOT/images/kube-proxy/Dockerfile" "$REPO_ROOT/images/stage-binaries.sh" "$WORK/kube-proxy/"
  cp "$TOOLS_BIN/kube-proxy" "$WORK/kube-proxy/"
  docker_cli build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$k8s/kube-proxy:$v" "$WORK/kube-proxy" >/dev/null ||
    die "building the kube-proxy image failed (rerun: DOCKER_BUILDKIT=1 docker build images/kube-proxy)"
  docker_cli build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$KIND_LOCAL_PATH_HELPER_IMAGE" \
    "$REPO_ROOT/images/local-path-helper" >/dev/null || die "building the local-path helper image failed"
  mkdir -p "$WORK/route-agent"
  cp "$REPO_ROOT/images/route-agent/Dockerfile" "$ADDON_BIN/route-agent" "$WORK/route-agent/"
  docker_cli build -q --build-arg "KUBE_PROXY_IMAGE=$k8s/kube-proxy:$v" -t "$ROUTE_AGENT_IMAGE" \
    "$WORK/route-agent" >/dev/null || die "building the route agent image failed"

  PRELOAD_IMAGES=(
    "$k8s/kube-apiserver:$v" "$k8s/kube-controller-manager:$v" "$k8s/kube-scheduler:$v"
    "$k8s/kube-proxy:$v" "$k8s/etcd:$KUBEADM_ETCD_IMAGE_TAG" "$k8s/pause:$PAUSE_VERSION"
    "$k8s/coredns/coredns:$COREDNS_VERSION" "$KIND_LOCAL_PATH_PROVISIONER_IMAGE"
    "$KIND_LOCAL_PATH_HELPER_IMAGE" "$DEVICE_PLUGIN_IMAGE" "$ROUTE_AGENT_IMAGE"
  )
  log "saving the component images to $IMAGES_CACHE/node-preload.tar"
  docker_cli save -o "$IMAGES_CACHE/node-preload.tar" "${PRELOAD_IMAGES[@]}"
}

stage_node_context() {
  local ctx="$WORK/node" name
  mkdir -p "$ctx/kind-base" "$ctx/bin"
  cp -r "$REPO_ROOT/images/node/." "$ctx/"
  # kind's entrypoint, helper scripts and units, from the pinned module (read-only in the cache).
  cp -r "$KIND_DIR/images/base/files/usr" "$KIND_DIR/images/base/files/kind" \
    "$KIND_DIR/images/base/files/etc" "$ctx/kind-base/"
  chmod -R u+w "$ctx/kind-base"
  rm -f "$ctx/kind-base/etc/systemd/system/containerd-fuse-overlayfs.service" \
    "$ctx/kind-base/etc/containerd/config.toml" "$ctx/kind-base/kind/README.txt"
  for name in kubelet kubeadm kubectl; do cp "$TOOLS_BIN/$name" "$ctx/bin/"; done
  [[ -x $TOOLS_BIN/crictl ]] && cp "$TOOLS_BIN/crictl" "$ctx/bin/"
  echo "$ctx"
}

# Import the component images into the node's containerd, pinned, and check that every image
# kubeadm names is there; then commit the result as the node image.
preload_and_commit() {
  local stage_image=$1 hash=$2 container missing
  # --init reaps the containerd that is stopped below (sleep as pid 1 would leave a zombie)
  container=$(docker_cli run -d --init --entrypoint sleep "$stage_image" infinity)
  # shellcheck disable=SC2064 # expand now: the container id is local
  trap "docker_cli rm -f -v $container >/dev/null 2>&1 || true; rm -rf '$WORK'" EXIT
  # shellcheck disable=SC2016 # these scripts run inside the container
  docker_cli exec "$container" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &
		for i in $(seq 50); do ctr version >/dev/null 2>&1 && exit 0; sleep 0.2; done
		cat /tmp/containerd.log; exit 1' || die "containerd did not start in the node build container"
  docker_cli exec -i "$container" ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - \
    <"$IMAGES_CACHE/node-preload.tar" >/dev/null || die "importing the component images failed"
  # shellcheck disable=SC2016
  missing=$(docker_cli exec "$container" bash -c '
		comm -23 <(kubeadm config images list --kubernetes-version "$(cat /kind/version)" 2>/dev/null | sort) \
			<(ctr --namespace=k8s.io images list -q | sort)')
  [[ -z $missing ]] || die "the node image lacks images kubeadm needs: $missing"
  docker_cli exec "$container" bash -c 'pkill containerd; while pgrep -x containerd >/dev/null; do sleep 0.2; done
		rm -f /tmp/containerd.log'
  docker_cli commit \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    --change 'CMD []' \
    --change "LABEL dev.exo.inputs=$hash" \
    "$container" "$NODE_IMAGE" >/dev/null
  docker_cli rm -f -v "$container" >/dev/null
}

main() {
  docker_cli info >/dev/null 2>&1 || die "the docker daemon does not answer: run scripts/docker.sh up"
  BASE_IMAGE="${BASE_IMAGE:-exo-operator/debian:bookworm}"
  docker_cli image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "$BASE_IMAGE is missing: run scripts/base-image.sh"
  require_tools "${K8S_BINARIES[@]}"
  build_addon_binaries
  KIND_DIR=$(kind_module_dir)
  local hash
  hash=$(inputs_hash)
  if [[ $(docker_cli image inspect -f '{{index .Config.Labels "dev.exo.inputs"}}' "$NODE_IMAGE" 2>/dev/null) == "$hash" ]]; then
    log "$NODE_IMAGE is up to date"
    return 0
  fi
  mkdir -p "$IMAGES_CACHE"
  WORK=$(mktemp -d "$IMAGES_CACHE/node-build.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  local previous
  previous=$(docker_cli image ls -q --filter "reference=registry.k8s.io/*" --filter "reference=registry.k8s.io/*/*" \
    --filter "reference=kindest/*" --filter "reference=exo-operator/kind-node" \
    --filter "reference=exo-operator/fake-gpu-device-plugin" --filter "reference=exo-operator/route-agent" | sort -u)
  build_component_images
  local ctx
  ctx=$(stage_node_context)
  log "building the node root file system (apt inside the build: a minute or two)"
  docker_cli build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "KUBERNETES_VERSION=$KUBERNETES_VERSION" \
    -t exo-operator/kind-node-stage:latest "$ctx" >/dev/null ||
    die "building images/node/Dockerfile failed (rerun without -q to see the step that failed)"
  log "preloading the component images into the node's containerd"
  preload_and_commit exo-operator/kind-node-stage:latest "$hash"
  docker_cli rmi exo-operator/kind-node-stage:latest >/dev/null 2>&1 || true
  # The images this build replaced are left untagged: drop those (one still in use stays).
  local replaced
  replaced=$(comm -12 <(echo "$previous") <(docker_cli image ls -q --filter dangling=true | sort -u))
  # shellcheck disable=SC2086
  [[ -z $replaced ]] || docker_cli rmi $replaced >/dev/null 2>&1 || true
  log "built $NODE_IMAGE ($(docker_cli image inspect -f '{{.Size}}' "$NODE_IMAGE" | numfmt --to=iec))"
}

# Only the device plugin's image, for clusters on kind's stock node image (scripts/kind.sh loads it).
device_plugin_image() {
  docker_cli info >/dev/null 2>&1 || die "the docker daemon does not answer: run scripts/docker.sh up"
  build_addon_binaries
  mkdir -p "$IMAGES_CACHE"
  WORK=$(mktemp -d "$IMAGES_CACHE/node-build.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  local previous
  previous=$(docker_cli image ls -q "$DEVICE_PLUGIN_IMAGE")
  static_image "$DEVICE_PLUGIN_IMAGE" '["/usr/local/bin/fake-gpu-device-plugin"]' \
    "$ADDON_BIN/fake-gpu-device-plugin:/usr/local/bin/fake-gpu-device-plugin"
  [[ -z $previous ]] || docker_cli rmi "$previous" >/dev/null 2>&1 || true
}

case "${1:-}" in
  "") main ;;
  device-plugin) device_plugin_image ;;
  *) die "usage: $0 [device-plugin]" ;;
esac
