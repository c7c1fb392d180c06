#!/usr/bin/env bash
# Builds the wheels that take minutes to compile (llama-cpp-python) once into a
# host-side wheelhouse. The venv and the Docker builds install from it, so no
# container build needs to reach a registry or trust this machine's egress CA.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# x86-64-v3 (AVX2/FMA/F16C, every server CPU since 2013) rather than the build
# machine's own CPU: the same wheel goes into the runtime image, and a wheel
# built with GGML_NATIVE=ON dies with SIGILL on an older node.
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"

mkdir -p "$WHEELHOUSE"
if ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
  log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION wheel cached in $WHEELHOUSE"
  exit 0
fi
log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (about 4 minutes on 2 cores, once)"
CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  python3 -m pip wheel --no-deps --no-binary llama-cpp-python \
  -w "$WHEELHOUSE" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
log "wheel ready in $WHEELHOUSE"
