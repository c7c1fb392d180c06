#!/usr/bin/env bash
# Start or stop a Docker daemon for kind and image builds on a machine without systemd.
#   scripts/docker.sh up      install Debian's docker.io if missing, start dockerd, wait for it
#   scripts/docker.sh down    stop the dockerd this script started
#   scripts/docker.sh status  say whether the daemon answers
# Scripts that need Docker source scripts/lib.sh and call `docker_cli`, which talks to this daemon
# with a client of the same API version.
# Environment: DOCKERD, the daemon to start (default Debian's /usr/sbin/dockerd; a test gives a
# wrapper that runs a second dockerd on a socket and data root of its own, named by DOCKER_HOST).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKER_STATE="$EXO_CACHE/docker"
DOCKERD_LOG="$DOCKER_STATE/dockerd.log"
DOCKERD_PID="$DOCKER_STATE/dockerd.pid"
DOCKERD_CONFIG="$DOCKER_STATE/daemon.json"
RUNC_WRAPPER=/usr/local/libexec/exo-operator/runc-without-sys-resource
DOCKERD="${DOCKERD:-/usr/sbin/dockerd}"

# Packages the docker daemon, the image builds and the kind node image build need on the host.
HOST_PACKAGES=(docker.io debootstrap containernetworking-plugins iptables jq)

install_packages() {
  local missing=() pkg
  for pkg in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]} with apt"
  [[ $EUID -eq 0 ]] || die "installing ${missing[*]} needs root: run as root or install them with apt"
  apt-get update -qq || die "apt-get update failed: check the machine's Debian sources"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install ${missing[*]} failed"
}

# True when this machine's capability bounding set lacks CAP_SYS_RESOURCE (bit 24). Such a
# sandbox refuses `docker run --privileged` (which kind uses) with "unable to apply caps:
# operation not permitted", because runc asks for every capability. A normal machine has it.
lacks_sys_resource() {
  local bnd
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (((16#$bnd >> 24 & 1) == 0))
}

# A runc that drops only CAP_SYS_RESOURCE from the OCI spec (container create/run) and from the
# process spec (exec), then runs the real runc. Installed only where lacks_sys_resource holds.
install_runc_wrapper() {
  mkdir -p "$(dirname "$RUNC_WRAPPER")"
  local tmp
  tmp=$(mktemp)
  cat >"$tmp" <<'EOF'
#!/bin/bash
# Installed by exo-operator's scripts/docker.sh: this machine's capability bounding set lacks
# CAP_SYS_RESOURCE, so runc must not ask for it (privileged containers would fail to start).
set -euo pipefail
drop_cap() { # $1: a JSON file; $2: jq path of its capabilities object
  [[ -f $1 ]] || return 0
  local out="$1.exo-tmp"
  jq "if $2 then $2 |= with_entries(.value |= (. // [] | map(select(. != \"CAP_SYS_RESOURCE\")))) else . end" \
    "$1" >"$out" && mv "$out" "$1"
}
command=""
bundle="."
process=""
prev=""
for arg in "$@"; do
  case "$prev" in
    --bundle | -b) bundle="$arg" ;;
    --process | -p) process="$arg" ;;
  esac
  case "$arg" in
    --bundle=*) bundle="${arg#--bundle=}" ;;
    --process=*) process="${arg#--process=}" ;;
    create | run | exec) [[ -z $command ]] && command="$arg" ;;
  esac
  prev="$arg"
done
case "$command" in
  create | run) drop_cap "$bundle/config.json" .process.capabilities ;;
  exec) [[ -n $process ]] && drop_cap "$process" .capabilities ;;
esac
exec /usr/sbin/runc "$@"
EOF
  install -m 0755 "$tmp" "$RUNC_WRAPPER"
  rm -f "$tmp"
}

write_daemon_config() {
  mkdir -p "$DOCKER_STATE"
  if lacks_sys_resource; then
    install_runc_wrapper
    log "CAP_SYS_RESOURCE is missing from the bounding set: dockerd runs containers through $RUNC_WRAPPER"
    jq -n --arg path "$RUNC_WRAPPER" \
      '{"runtimes": {"exo-runc": {"path": $path}}, "default-runtime": "exo-runc"}'
  else
    echo '{}'
  fi | jq '. + {"storage-driver": "overlay2", "log-driver": "json-file",
                "log-opts": {"max-size": "10m", "max-file": "2"}}' >"$DOCKERD_CONFIG"
}

daemon_answers() { docker_cli info >/dev/null 2>&1; }
exited() { ! kill -0 "$1" 2>/dev/null; }
answers_or_exited() { daemon_answers || exited "$1"; }

up() {
  install_packages
  if daemon_answers; then
    log "docker daemon already running"
    return 0
  fi
  write_daemon_config
  # A dockerd killed without cleanup leaves its pid files behind and refuses to start.
  if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  if [[ -f /run/docker/containerd/containerd.pid ]] &&
    ! kill -0 "$(cat /run/docker/containerd/containerd.pid)" 2>/dev/null; then
    rm -f /run/docker/containerd/containerd.pid
  fi
  log "starting dockerd (log: $DOCKERD_LOG)"
  # dockerd, and every containerd, shim and docker-proxy after it, would otherwise keep the
  # descriptors of whoever ran this script: scripts/kind.sh's cluster lock among them.
  start_daemon "$DOCKERD_LOG" "$DOCKERD" --config-file "$DOCKERD_CONFIG"
  echo $! >"$DOCKERD_PID"
  # A dockerd that exits at start (a bad flag, a port taken) ends the wait at once.
  if wait_for 60 answers_or_exited "$!" && daemon_answers; then
    log "docker daemon ready ($(docker_cli version -f '{{.Server.Version}}'))"
    return 0
  fi
  tail -n 30 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not become ready; its log is above (full log: $DOCKERD_LOG)"
}

down() {
  local pid
  if [[ -f $DOCKERD_PID ]] && pid=$(cat "$DOCKERD_PID") && kill -0 "$pid" 2>/dev/null; then
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    wait_for 30 exited "$pid" || die "dockerd (pid $pid) did not stop within 30 s"
    rm -f "$DOCKERD_PID"
  elif daemon_answers; then
    die "a docker daemon runs that this script did not start; stop it the way it was started"
  else
    log "docker daemon not running"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status)
    if daemon_answers; then
      echo "docker: running"
    else
      echo "docker: not running (start it with scripts/docker.sh up)"
      exit 1
    fi
    ;;
  *) die "usage: $0 up|down|status" ;;
esac
