#!/usr/bin/env bash
# Creates .venv with the project installed editable and every extra the tests use.
# llama-cpp-python comes from the host wheelhouse (scripts/wheelhouse.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
bash scripts/wheelhouse.sh
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing the project and its test dependencies into .venv"
  .venv/bin/pip install -q --find-links "$WHEELHOUSE" -e ".[runtime,operator,mlx,test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
