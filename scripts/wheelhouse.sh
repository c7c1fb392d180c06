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
# libraries next to libllama (llama_cpp/lib; GGML_BACKEND_DL), which the runtime
# loads at start. GGML_RPC builds the RPC backend: the head of a split model
# reaches its workers through it, and `exo-runtime rpc-worker` serves it.
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BACKEND_DL=ON -DGGML_RPC=ON -DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"

# ggml's CPU backend compiled once per CPU generation (the names of ggml's
# GGML_CPU_ALL_VARIANTS list), added to the wheel beside its libggml-cpu.so: ggml's
# loader scores every libggml-cpu-<variant>.so against the CPU it runs on and loads
# the best, so one image uses AVX-512 or AMX where a node has them and never dies
# with SIGILL where it has not (x64 runs anywhere). A subset of ggml's fourteen:
# each costs about a minute on 2 cores; the server generations are here, the
# others fall back to the nearest below them. Empty: the wheel as built.
LLAMA_CPU_VARIANTS="${LLAMA_CPU_VARIANTS-x64 haswell skylakex cascadelake icelake zen4 sapphirerapids}"
# The same llama.cpp the wheel vendors, configured as ggml's own every-variant build (only
# the chosen variants' targets are compiled). RPATH $ORIGIN, and only that: each variant
# finds the wheel's libggml-base beside it.
# shellcheck disable=SC2016 # $ORIGIN is the dynamic linker's, not the shell's
VARIANT_CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON
  -DGGML_CPU_ALL_VARIANTS=ON -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN'
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF)

# The wheels' folders are keyed by the version, the flags and the variants: a
# change builds new ones rather than reusing one built without it.
key() { printf '%s' "$*" | sha256sum | cut -c1-12; }
BASE_WHEEL_DIR="$WHEELHOUSE/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$(key "$LLAMA_CPP_PYTHON_VERSION" "$LLAMA_CMAKE_ARGS")"
LLAMA_WHEEL_DIR="$BASE_WHEEL_DIR"
if [ -n "$LLAMA_CPU_VARIANTS" ]; then
  LLAMA_WHEEL_DIR="$BASE_WHEEL_DIR-cpu-$(key "$LLAMA_CPU_VARIANTS" "${VARIANT_CMAKE_ARGS[@]}")"
fi

if [ "${1:-}" = dir ]; then
  echo "$LLAMA_WHEEL_DIR"
  exit 0
fi

wheel_in() { ls "$1"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl 2>/dev/null; }

mkdir -p "$WHEELHOUSE"
if wheel_in "$LLAMA_WHEEL_DIR" >/dev/null; then
  log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION wheel cached in $LLAMA_WHEEL_DIR"
  exit 0
fi

if ! wheel_in "$BASE_WHEEL_DIR" >/dev/null; then
  log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (about 5 minutes on 2 cores, once)"
  # --no-cache-dir: pip's own wheel cache is keyed by the sdist alone and would hand
  # back a wheel built with other flags.
  # Built into a scratch folder and moved in whole, so an interrupted build never
  # leaves a half-written wheel that a later run would take as cached.
  scratch="$BASE_WHEEL_DIR.partial"
  rm -rf "$scratch"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    python3 -m pip wheel --no-deps --no-binary llama-cpp-python --no-cache-dir -v \
    -w "$scratch" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  mv "$scratch" "$BASE_WHEEL_DIR"
  log "wheel ready in $BASE_WHEEL_DIR"
fi
[ -n "$LLAMA_CPU_VARIANTS" ] || exit 0

# shellcheck disable=SC2206 # a list of names, split on purpose
variants=($LLAMA_CPU_VARIANTS)
log "compiling ggml's CPU backend for ${variants[*]} (about a minute each on 2 cores, once)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -xzf "$(llama_cpp_sdist "$LLAMA_CPP_PYTHON_VERSION")" -C "$work"
cmake -S "$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp" -B "$work/build" \
  "${VARIANT_CMAKE_ARGS[@]}" >"$work/configure.log" || {
  cat "$work/configure.log" >&2
  die "configuring ggml's CPU variants failed"
}
# A misspelt name would otherwise fail later as a missing make target.
offered=$(sed -n 's/.*Adding CPU backend variant ggml-cpu-\([^:]*\):.*/\1/p' "$work/configure.log")
for variant in "${variants[@]}"; do
  grep -qx "$variant" <<<"$offered" ||
    die "LLAMA_CPU_VARIANTS: ggml has no CPU variant '$variant' here; it offers: ${offered//$'\n'/ }"
done
# Logged to a file: GCC's AVX-512 headers warn some hundred thousand lines.
cmake --build "$work/build" --parallel "$(nproc)" --target "${variants[@]/#/ggml-cpu-}" \
  >"$work/build.log" 2>&1 || {
  tail -n 40 "$work/build.log" >&2
  die "compiling ggml's CPU variants failed"
}
scratch="$LLAMA_WHEEL_DIR.partial"
rm -rf "$scratch"
mkdir -p "$scratch"
base_wheel="$(wheel_in "$BASE_WHEEL_DIR")"
libs=()
for variant in "${variants[@]}"; do libs+=("$work/build/bin/libggml-cpu-$variant.so"); done
python3 "$REPO_ROOT/scripts/wheel-add-libs.py" "$base_wheel" "$scratch/$(basename "$base_wheel")" "${libs[@]}"
mv "$scratch" "$LLAMA_WHEEL_DIR"
log "wheel with CPU variants ready in $LLAMA_WHEEL_DIR"
