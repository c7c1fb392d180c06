# Shared settings and helpers for the project's scripts; sourced, never run.
# shellcheck shell=bash
EXO_CACHE="${EXO_CACHE:-$HOME/.cache/exo-operator}"
WHEELHOUSE="${WHEELHOUSE:-$EXO_CACHE/wheels}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

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

# Debian's docker client, which matches the API of the dockerd that scripts/docker.sh starts (a
# newer client elsewhere on PATH may speak an API version that daemon does not).
docker_cli() { /usr/bin/docker "$@"; }

# Put Debian's docker client first on PATH for tools that run `docker` themselves (kind).
use_debian_docker_on_path() {
	mkdir -p "$EXO_CACHE/docker/bin"
	ln -sf /usr/bin/docker "$EXO_CACHE/docker/bin/docker"
	export PATH="$EXO_CACHE/docker/bin:$PATH"
}
