#!/usr/bin/env bash
# Builds the wheels that take minutes to compile (llama-cpp-python) once into a
# host-side wheelhouse. The venv and the Docker builds install from it, so no
# container build needs to reach a registry or trust this machine's egress CA.
#   scripts/wheelhouse.sh          build the wheel unless it is cached
#   scripts/wheelhouse.sh dir      print the folder that holds (or will hold) the wheel
set -euo pipefail
source "$(dirname "$0")/lib.sh"

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
# x86-64-v3 (AVX2/FMA/F16C, every server CPU since 2013) rather than the build
# machine's own CPU: the same wheel goes into the runtime image, and a wheel built
# with GGML_NATIVE=ON dies with SIGILL on an older node. The backends are dynamic
# libraries next to libllama (llama_cpp/lib), so a build with every CPU variant
# (GGML_CPU_ALL_VARIANTS=ON through LLAMA_CMAKE_ARGS: ggml then loads the best one
# the node supports) drops in; it is not the default because it compiles the CPU
# backend once per CPU generation, which adds about half an hour to a cold build.
# GGML_RPC builds the RPC backend: the head of a split model reaches its
# workers through it, and `exo-runtime rpc-worker` serves it.
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BACKEND_DL=ON -DGGML_RPC=ON -DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"

# The wheel's folder is keyed by the version and the flags: a flag change
# builds a new wheel rather than reusing one built without it.
build_key=$(printf '%s %s' "$LLAMA_CPP_PYTHON_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
LLAMA_WHEEL_DIR="$WHEELHOUSE/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$build_key"

if [ "${1:-}" = dir ]; then
  echo "$LLAMA_WHEEL_DIR"
  exit 0
fi

mkdir -p "$WHEELHOUSE"
if ls "$LLAMA_WHEEL_DIR"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
  log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION wheel cached in $LLAMA_WHEEL_DIR"
  exit 0
fi
log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (about 5 minutes on 2 cores, once)"
# --no-cache-dir: pip's own wheel cache is keyed by the sdist alone and would hand
# back a wheel built with other flags.
# Built into a scratch folder and moved in whole, so an interrupted build never
# leaves a half-written wheel that a later run would take as cached.
scratch="$LLAMA_WHEEL_DIR.partial"
rm -rf "$scratch"
CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  python3 -m pip wheel --no-deps --no-binary llama-cpp-python --no-cache-dir -v \
  -w "$scratch" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
mv "$scratch" "$LLAMA_WHEEL_DIR"
log "wheel ready in $LLAMA_WHEEL_DIR"
