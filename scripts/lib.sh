# Shared settings and helpers for the project's scripts; sourced, never run.
# shellcheck shell=bash
EXO_CACHE="${EXO_CACHE:-$HOME/.cache/exo-operator}"
WHEELHOUSE="${WHEELHOUSE:-$EXO_CACHE/wheels}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
