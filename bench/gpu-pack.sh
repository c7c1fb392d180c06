#!/usr/bin/env bash
# Packs what bench/gpu.sh needs into one folder, for a GPU machine that reaches no network:
# llama.cpp's source as the pinned llama-cpp-python sdist vendors it (trimmed of its docs, test
# data and vocabularies), the runtime's Python packages as wheels for that machine's Python,
# and SmolLM2's tokenizer (bench/random_gguf.py builds the model there from it).
#
#   bash bench/gpu-pack.sh [DIR]            # default .gpu; then, there: GPU_PACK=DIR bash bench/gpu.sh
#   PACK_PYTHON=3.12 bash bench/gpu-pack.sh  # the GPU machine's Python (default 3.12)
#
# The packages the GPU machine already has (numpy, jinja2, httpx, prometheus-client, tqdm,
# pyyaml) are not packed; bench/gpu.sh names any that are missing there.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

PACK="${1:-.gpu}"
PACK_PYTHON="${PACK_PYTHON:-3.12}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SMOLLM2="$EXO_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# The runtime's packages that a machine with PyTorch's usual stack lacks (pip adds their needs).
SERVER_PACKAGES=(fastapi uvicorn pydantic diskcache)

mkdir -p "$PACK/wheels"
sdist="$(llama_cpp_sdist "$LLAMA_CPP_PYTHON_VERSION")"

log "trimming llama.cpp's source into $PACK/llama-cpp-python.tar.gz"
top="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
vendor="$top/vendor/llama.cpp"
unpacked="$(mktemp -d)"
trap 'rm -rf "$unpacked"' EXIT
tar -xzf "$sdist" -C "$unpacked"
tar -czf "$PACK/llama-cpp-python.tar.gz" -C "$unpacked" \
  --exclude="$vendor/docs" --exclude="$vendor/models" --exclude="$vendor/media" \
  --exclude="$vendor/benches" --exclude="$vendor/tests" --exclude="$vendor/.github" \
  --exclude="$vendor/examples" --exclude="$vendor/pocs" --exclude="$top/.git" \
  --exclude="$top/examples" --exclude="$top/docs" --exclude="$top/tests" "$top"

log "downloading ${SERVER_PACKAGES[*]} and their needs as wheels for Python $PACK_PYTHON"
python3 -m pip download -q --only-binary=:all: --python-version "$PACK_PYTHON" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$PACK/wheels" "${SERVER_PACKAGES[@]}"

[ -f "$SMOLLM2" ] || die "$SMOLLM2 is missing: \`make venv\` and a runtime test fetch it (tests/fixtures/model.py)"
log "SmolLM2's tokenizer and metadata into $PACK/vocab.gguf"
PYTHONPATH="$REPO_ROOT/bench" .venv/bin/python bench/random_gguf.py --vocab-from "$SMOLLM2" \
  --out "$PACK/vocab.gguf" >/dev/null

log "packed $(du -sh "$PACK" | cut -f1) into $PACK:"
ls -l "$PACK" "$PACK/wheels" >&2
