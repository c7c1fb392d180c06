#!/usr/bin/env bash
# Creates .venv with the project installed editable and every extra the tests use.
# llama-cpp-python comes from the host wheelhouse (scripts/wheelhouse.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
bash scripts/wheelhouse.sh
llama_wheel_dir="$(bash scripts/wheelhouse.sh dir)"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
# Keyed by the wheel's folder too: a llama.cpp build with other flags reinstalls it.
stamp=.venv/.installed-$( (
  cat pyproject.toml
  echo "$llama_wheel_dir"
) | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing the project and its test dependencies into .venv"
  .venv/bin/pip install -q --find-links "$llama_wheel_dir" -e ".[runtime,operator,mlx,test]"
  # The same version built with other flags counts as installed: replace it by name.
  .venv/bin/pip install -q --no-deps --force-reinstall "$llama_wheel_dir"/llama_cpp_python-*.whl
  rm -f .venv/.installed-*
  touch "$stamp"
fi
