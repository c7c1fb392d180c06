#!/usr/bin/env bash
# Builds the pinned Kubernetes tools from source (the Go module proxy is the only source
# reachable here) into $EXO_CACHE/tools/<name>-<version>/ and links every binary into
# $TOOLS_BIN. A component whose stamp matches its version and go.sum is skipped.
#
#   scripts/tools.sh          build what is missing (make tools)
#   scripts/tools.sh build helm   only the components named (the unit tier needs helm alone)
#   scripts/tools.sh pin      rewrite tools/*/go.mod and go.sum from scripts/versions.env
#
# Each component is a small Go module under tools/<name>/ whose go.sum is the integrity
# pin; `go build` runs inside it, so builds are reproducible and need no git checkout.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$REPO_ROOT/scripts/versions.env"

TOOLS_DIR="$EXO_CACHE/tools"
LOG_DIR="$TOOLS_DIR/logs"
# Static, reproducible binaries with the machine's own Go: etcd's go.mod names a newer
# toolchain than the one installed, and GOTOOLCHAIN=local builds it without downloading one.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false -trimpath"
# Go's build and module caches of their own, not the user's ~/.cache/go-build and ~/go: a cold
# build of every component fills them with about 10 GB that no later step reads, so they go once
# every requested component is built (remove_go_caches). A failed build keeps them: the rerun
# resumes where it stopped.
GO_CACHES="$TOOLS_DIR/go"
export GOCACHE="$GO_CACHES/build" GOMODCACHE="$GO_CACHES/mod"

# The component table, in build order: the Kubernetes binaries first (the kind node image and
# the kwok control plane both wait on them), then etcd, kind, kwok, helm, crictl. Columns:
#   pin       the scripts/versions.env variable that holds its version
#   module    the upstream module whose release it builds (tools/<name>/go.mod requires it)
#   main      where its main packages are: `cmd` is <module>/cmd/<binary> for each binary,
#             `root` the module's own package, which builds the one binary
#   cold      rough cold build time on 2 idle cores, for the progress line (measured 1.5-5x
#             longer while other builds shared the cores)
#   binaries  what it builds, each linked into $TOOLS_BIN
# Its link flags (ldflags_of) and files beyond the binaries (install_extras) follow below.
COMPONENT_TABLE='
# name      pin                 module                     main  cold   binaries
kubernetes  KUBERNETES_VERSION  k8s.io/kubernetes          cmd   5 min  kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl
etcd        ETCD_VERSION        go.etcd.io/etcd/server/v3  root  35 s   etcd
kind        KIND_VERSION        sigs.k8s.io/kind           root  45 s   kind
kwok        KWOK_VERSION        sigs.k8s.io/kwok           cmd   3 min  kwok kwokctl
helm        HELM_VERSION        helm.sh/helm/v3            cmd   90 s   helm
crictl      CRICTL_VERSION      sigs.k8s.io/cri-tools      cmd   40 s   crictl
'
COMPONENTS=()
declare -A VERSION MODULE MAIN COLD BINARIES
read_component_table() {
  local name pin module main cold unit binaries
  while read -r name pin module main cold unit binaries; do
    [[ -n $name && $name != "#"* ]] || continue
    COMPONENTS+=("$name")
    VERSION[$name]=${!pin}
    MODULE[$name]=$module
    MAIN[$name]=$main
    COLD[$name]="$cold $unit"
    BINARIES[$name]=$binaries
  done <<<"$COMPONENT_TABLE"
}
read_component_table

version_of() { echo "${VERSION[$1]}"; }
module_of() { echo "${MODULE[$1]}"; }
binaries_of() { tr -s ' ' '\n' <<<"${BINARIES[$1]}"; }

packages_of() {
  case "${MAIN[$1]}" in
    root) module_of "$1" ;;
    cmd) binaries_of "$1" | sed "s|^|${MODULE[$1]}/cmd/|" ;;
  esac
}

# The version a module requires, as resolved in tools/<component>/go.mod.
module_version() {
  (cd "$REPO_ROOT/tools/$1" && go list -m -f '{{.Version}}' "$2")
}

# Release time of a module version from the proxy's metadata: a build date that does not
# change from one build to the next.
module_time() {
  (cd "$REPO_ROOT/tools/$1" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' "$2")
}

ldflags_of() {
  local flags="-s -w -buildid="
  case "$1" in
    kubernetes)
      # Unstamped binaries say v0.0.0-master, which breaks kubeadm's, helm's and kwok's
      # version checks; Kubernetes' own build stamps both version packages.
      local v="${KUBERNETES_VERSION#v}" date pkg
      date="$(module_time kubernetes k8s.io/kubernetes)"
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=${v%%.*}"
        flags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$v") -X $pkg.gitTreeState=clean"
        flags+=" -X $pkg.buildDate=$date"
      done
      ;;
    kwok)
      # kwokctl's default --kube-version for the clusters it makes.
      flags+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
      flags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"
      ;;
    helm)
      # As helm's Makefile does: the Kubernetes version that `helm template` and `helm lint`
      # assume without a cluster comes from the client-go it is built with.
      local kv major minor
      kv="$(module_version helm k8s.io/client-go)"
      kv="${kv#v}"
      major=$((${kv%%.*} + 1))
      minor="$(cut -d. -f2 <<<"$kv")"
      flags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$major"
      flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
      flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$major"
      flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
      ;;
    crictl) flags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}" ;;
  esac
  echo "$flags"
}

# kwok's stages (the state machines of fake nodes, pods and volumes) ship as YAML in its
# module, beside the source the binaries come from; scripts/kwok.sh hands them to kwokctl.
KWOK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-complete.yaml
  pod/fast/pod-delete.yaml
  volume/fast/storage-class.yaml
  volume/fast/pvc-provision.yaml
  volume/fast/pv-bind.yaml
  volume/fast/pvc-delete.yaml
  volume/fast/pv-delete.yaml
)

# Files a component needs beyond its binaries, copied into its folder $2.
install_extras() {
  local name="$1" dest="$2" source stage
  [ "$name" = kwok ] || return 0
  source="$(cd "$REPO_ROOT/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
  mkdir -p "$dest/stages"
  for stage in "${KWOK_STAGES[@]}"; do
    cp "$source/$stage" "$dest/stages/"
  done
  chmod -R u+w "$dest/stages"
}

# What a build depends on: a change of version, pins or flags rebuilds the component.
stamp_of() {
  local name="$1"
  printf '%s %s\n' "$(version_of "$name")" \
    "$(cat "$REPO_ROOT/tools/$name/go.mod" "$REPO_ROOT/tools/$name/go.sum" <(ldflags_of "$name") \
      <(go version) <([ "$name" != kwok ] || echo "${KWOK_STAGES[*]}") | sha256sum | cut -c1-16)"
}

link_binaries() {
  local name="$1" dir="$2" bin
  mkdir -p "$TOOLS_BIN"
  for bin in $(binaries_of "$name"); do
    ln -sfn "$dir/$bin" "$TOOLS_BIN/$bin"
  done
}

build_component() {
  local index="$1" name="$2" version dir stamp partial log started
  version="$(version_of "$name")"
  dir="$TOOLS_DIR/$name-$version"
  # A version bumped in versions.env but not in tools/<name>/go.mod would build the old
  # release under the new name.
  local pinned
  pinned="$(module_version "$name" "$(module_of "$name")")" ||
    die "cannot read the pin of $name in tools/$name/go.mod (output above); run \`scripts/tools.sh pin $name\`"
  [ "$pinned" = "$version" ] ||
    die "tools/$name/go.mod pins $(module_of "$name") $pinned but scripts/versions.env says $version: run \`scripts/tools.sh pin $name\` and commit tools/$name"
  stamp="$(stamp_of "$name")"
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
    log "[$index/${#COMPONENTS[@]}] $name $version cached in $dir"
    link_binaries "$name" "$dir"
    return
  fi
  log "[$index/${#COMPONENTS[@]}] building $name $version: $(binaries_of "$name" | xargs) (about ${COLD[$name]} cold on 2 idle cores, longer on a busy machine; seconds once cached)"
  # Build beside the final folder and rename it into place, so a killed build leaves no
  # half-written component behind; Go's caches (kept until every component is built) make the
  # retry resume where it was.
  partial="$dir.partial"
  log="$LOG_DIR/$name-$version.log"
  rm -rf "$partial"
  mkdir -p "$partial" "$LOG_DIR"
  started=$SECONDS
  local -a packages
  mapfile -t packages < <(packages_of "$name")
  # One `go build` for all of a component's binaries, so their shared packages compile once.
  local output="$partial/"
  [ "${#packages[@]}" -gt 1 ] || output="$partial/$(binaries_of "$name")"
  if ! (cd "$REPO_ROOT/tools/$name" &&
    nice -n 10 go build -ldflags "$(ldflags_of "$name")" -o "$output" "${packages[@]}") >"$log" 2>&1 9>&-; then
    tail -n 30 "$log" >&2
    die "building $name $version failed (full log: $log). Fix the cause above and rerun \`make tools\`: finished components are kept and Go's build cache resumes the rest."
  fi
  install_extras "$name" "$partial"
  echo "$stamp" >"$partial/.stamp"
  rm -rf "$dir"
  mv "$partial" "$dir"
  link_binaries "$name" "$dir"
  log "[$index/${#COMPONENTS[@]}] $name $version built in $((SECONDS - started)) s"
}

# The module cache is read-only (Go's own protection of module sources): `go clean -modcache`
# empties it; then the rest can go.
remove_go_caches() {
  [ -d "$GO_CACHES" ] || return 0
  local size
  size="$(du -sh "$GO_CACHES" 2>/dev/null | cut -f1)"
  [ ! -d "$GOMODCACHE" ] || go clean -modcache
  rm -rf "$GO_CACHES"
  log "removed Go's build and module caches ($size in ${GO_CACHES/#"$HOME"/\~}): the binaries are all that later steps read"
}

# pin: rewrite tools/<component>/go.mod and go.sum for the versions in scripts/versions.env.
pin_component() {
  local name="$1" version dir pkg
  version="$(version_of "$name")"
  dir="$REPO_ROOT/tools/$name"
  mkdir -p "$dir"
  log "pinning $name $version in tools/$name"
  rm -f "$dir/go.mod" "$dir/go.sum"
  {
    echo "// Builds $name $version (scripts/versions.env); written by \`scripts/tools.sh pin\`."
    echo "module exo-operator/tools/$name"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$/.0/')"
  } >"$dir/go.mod"
  if [ "$name" = kubernetes ]; then
    # k8s.io/kubernetes finds its staging modules (k8s.io/api, client-go, ...) through
    # replace directives to ./staging that a dependent module does not see: replace each
    # with the published module of the same release.
    local gomod
    gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
      echo
      echo "replace ("
      grep -oE '^\s+k8s.io/[a-z0-9-]+ => ./staging' "$gomod" |
        awk -v v="$KUBERNETES_STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } >>"$dir/go.mod"
  fi
  local -a tools=()
  for pkg in $(packages_of "$name"); do tools+=("$pkg@$version"); done
  (cd "$dir" && go get -tool "${tools[@]}" && go mod tidy)
}

main() {
  command -v go >/dev/null || die "go is not on PATH: install Go ($(grep -m1 '^go ' "$REPO_ROOT/tools/kubernetes/go.mod") or newer) and rerun"
  local name index=0 started=$SECONDS
  case "${1:-build}" in
    build)
      for name in "${@:2}"; do [[ -v VERSION[$name] ]] || die "unknown component '$name' (known: ${COMPONENTS[*]})"; done
      # Two builds at once would write the same folders: the second waits for the first.
      hold_lock "$TOOLS_DIR/.lock" 0 "another \`make tools\`"
      for name in "${COMPONENTS[@]}"; do
        index=$((index + 1))
        [[ $# -le 1 || " ${*:2} " == *" $name "* ]] || continue
        build_component "$index" "$name"
      done
      remove_go_caches
      log "tools ready in $TOOLS_BIN ($((SECONDS - started)) s)"
      ;;
    pin)
      for name in "${@:2}"; do [[ -v VERSION[$name] ]] || die "unknown component '$name' (known: ${COMPONENTS[*]})"; done
      for name in "${@:2}"; do pin_component "$name"; done
      [ $# -gt 1 ] || for name in "${COMPONENTS[@]}"; do pin_component "$name"; done
      remove_go_caches
      ;;
    *) die "usage: $0 [build [component...]|pin [component...]]" ;;
  esac
}

main "$@"
