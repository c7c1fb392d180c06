#!/usr/bin/env bash
# The lint tier (make lint): ruff on the Python, shellcheck and shfmt on every shell script.
# shfmt takes its options from .editorconfig, shellcheck from .shellcheckrc.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

# The repository's shell scripts, found by name or shebang among the files git tracks or would
# track (not .venv's, nor the caches' under .gitignore'd folders).
mapfile -t scripts < <(git ls-files -z --cached --others --exclude-standard | xargs -0 -r .venv/bin/shfmt -f)
[ "${#scripts[@]}" -gt 0 ] || die "found no shell script to lint (git ls-files needs a git checkout)"

log "ruff check, ruff format --check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
log "shellcheck and shfmt -d on ${#scripts[@]} shell scripts"
.venv/bin/shellcheck "${scripts[@]}"
.venv/bin/shfmt -d "${scripts[@]}" ||
  die "the scripts above are not in shfmt's format (.editorconfig): \`.venv/bin/shfmt -w FILE...\` rewrites them"
