# Shared settings and helpers for the project's scripts; sourced, never run.
# shellcheck shell=bash
EXO_CACHE="${EXO_CACHE:-$HOME/.cache/exo-operator}"
WHEELHOUSE="${WHEELHOUSE:-$EXO_CACHE/wheels}"
# shellcheck disable=SC2034  # read by the scripts that source this file, not here
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() {
  printf '\033[1;31merror:\033[0m %s\n' "$*" >&2
  exit 1
}

# llama_cpp_sdist VERSION: prints the path of the llama-cpp-python sdist, downloaded into the
# cache once. Its vendored llama.cpp is what the wheel, the benchmarks and the GPU builds compile.
llama_cpp_sdist() {
  local version=$1 dir="$EXO_CACHE/llama-server"
  local sdist="$dir/llama_cpp_python-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    log "downloading the llama-cpp-python $version sdist"
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps --no-binary :all: -d "$dir" \
      "llama-cpp-python==$version" >&2
  fi
  echo "$sdist"
}

# Binaries built by scripts/tools.sh from the pins in scripts/versions.env.
TOOLS_BIN="${TOOLS_BIN:-$EXO_CACHE/bin}"

# require_tools NAME...: fails unless every named binary is in $TOOLS_BIN.
require_tools() {
  local name missing=()
  for name in "$@"; do
    [ -x "$TOOLS_BIN/$name" ] || missing+=("$name")
  done
  [ "${#missing[@]}" -eq 0 ] || die "missing in $TOOLS_BIN: ${missing[*]}; run \`make tools\` to build them"
}

# hold_lock FILE SECONDS HOLDER: takes an exclusive lock on FILE for the rest of the script, so
# that one run at a time goes on (parallel test sessions share clusters and caches). When HOLDER
# ("another scripts/kind.sh on cluster 'exo'") has it, says so and waits up to SECONDS (0: as long
# as it takes). The lock lives on descriptor 9: whatever may outlive the script must start through
# without_inherited_fds or start_daemon below, or it keeps the lock for as long as it lives. The
# empty file stays: removing it while another run waits on it would let two runs in at once.
hold_lock() {
  local file=$1 seconds=$2 holder=$3 waited
  mkdir -p "$(dirname "$file")"
  exec 9>"$file"
  flock -n 9 && return 0
  log "$holder holds $file: waiting for it"
  if [ "$seconds" -eq 0 ]; then
    flock 9
    return
  fi
  waited="$seconds s"
  ((seconds % 60)) || waited="$((seconds / 60)) min"
  flock -w "$seconds" 9 ||
    die "waited $waited for $holder to release $file; if none is running, remove the file and retry"
}

# port_in_use PORT: whether something accepts connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS COMMAND...: runs COMMAND, its output discarded, every half second until it
# succeeds (status 0) or SECONDS have passed (status 1); the caller says what failed.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# Debian's docker client, which matches the API of the dockerd that scripts/docker.sh starts (a
# newer client elsewhere on PATH may speak an API version that daemon does not).
docker_cli() { /usr/bin/docker "$@"; }

# Put Debian's docker client first on PATH for tools that run `docker` themselves (kind).
use_debian_docker_on_path() {
  mkdir -p "$EXO_CACHE/docker/bin"
  ln -sf /usr/bin/docker "$EXO_CACHE/docker/bin/docker"
  export PATH="$EXO_CACHE/docker/bin:$PATH"
}

# A process started by a script inherits every descriptor the script holds: a lock's (flock), a
# pipe to the script's caller, a make jobserver's. A daemon that keeps a lock's descriptor holds
# the lock for as long as it lives (a later run waits on it for good), and one that keeps a pipe
# open leaves the pipe's reader waiting for an end that never comes. So whatever may outlive
# the script starts through one of the two helpers below.

# close_inherited_fds: closes every descriptor above 2 of the current shell; run it in the
# subshell that goes on to start the long-lived process.
close_inherited_fds() {
  local path fd
  for path in /proc/"$BASHPID"/fd/*; do
    fd=${path##*/}
    ((fd > 2)) && exec {fd}>&-
  done
  return 0
}

# without_inherited_fds COMMAND...: runs COMMAND in the foreground with no descriptor of the
# script's above 2, for a command that leaves processes running (kwokctl's control plane).
without_inherited_fds() { (close_inherited_fds && "$@"); }

# start_daemon LOG COMMAND...: starts COMMAND in the background, in a session of its own, with
# stdin from /dev/null, stdout and stderr appended to LOG and no other descriptor of the
# script's. $! is its pid afterwards.
start_daemon() {
  local log=$1
  shift
  (close_inherited_fds && exec setsid "$@" </dev/null >>"$log" 2>&1) &
}
