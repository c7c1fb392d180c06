# Images of exo-operator, one target each:
#   runtime       CPU inference: `exo-runtime serve|fetch` with both engines, llama.cpp compiled
#                 for x86-64-v3 and MLX's CPU build (mlx[cpu])
#   runtime-cuda  NVIDIA GPUs: the same runtime with llama.cpp compiled for CUDA and MLX's CUDA
#                 build (mlx[cuda12], which brings NVIDIA's cuBLAS, cuDNN, NCCL... as wheels)
#   operator      the kopf operator and its Kubernetes client, nothing else
#
# scripts/images.sh builds them. It first stages every Python package as a wheel in
# .out/image-wheels (the llama-cpp-python wheel comes from the host wheelhouse that
# scripts/wheelhouse.sh builds), so no stage downloads a Python package and no stage ever sees
# the build machine's CA certificates. Only Debian's (or Ubuntu's) own apt repositories are used.
#
# BASE_IMAGE: the public Debian image by default; CI passes the locally made
# exo-operator/debian:bookworm (scripts/base-image.sh) because it reaches no container registry.
# The Python packages are CPython 3.11 wheels: keep both bases on Python 3.11.
ARG BASE_IMAGE=debian:bookworm-slim
# runtime-cuda only; it needs the NVIDIA images, so it is built where a registry is reachable:
#   DOCKER_BUILDKIT=1 docker build --target runtime-cuda -t exo-operator/runtime-cuda:0.1.0 .
# (after scripts/images.sh stage, which stages the wheels and llama-cpp-python's source).
ARG CUDA_VERSION=12.6.3
ARG CUDA_BUILD_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04
ARG CUDA_RUN_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
# The interpreter every Debian stage shares. ca-certificates is Debian's public bundle, which the
# fetcher needs for https:// model sources; it is not the build machine's CA.
FROM ${BASE_IMAGE} AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# A virtual environment at /opt/exo, filled only from the staged wheels (--no-index). The
# dependencies' wheels (deps/, with the requirement lists images.sh writes) change only with the
# pins; the project's own wheel (project/) changes with every commit, so it goes in last, in a
# layer of a few MB, and a rebuild after a code change reuses the dependencies' layers.
FROM python AS venv-builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && python3 -m venv /opt/exo
COPY .out/image-wheels/deps /wheels

# The extras name the MLX build: mlx (CPU) here, mlx-cuda in runtime-cuda-venv; the rest of the
# line is the same in both (tests/unit/test_dockerfile_targets.py).
FROM venv-builder AS runtime-venv
RUN /opt/exo/bin/pip install --no-cache-dir --no-index --find-links /wheels -r /wheels/requires-runtime-mlx.txt
COPY .out/image-wheels/project /project
# transformers (mlx-lm's tokenizers) ships code for hundreds of model families; the runtime loads
# a tokenizer or two of them, so their byte code goes (55 MB) and only models/auto's stays.
RUN /opt/exo/bin/pip install --no-cache-dir --no-index --find-links /wheels --find-links /project "exo-operator[runtime,mlx]" \
 && /opt/exo/bin/pip uninstall -y pip setuptools \
 && find /opt/exo/lib/python3.11/site-packages/transformers/models -mindepth 2 -type d \
      -name __pycache__ -not -path '*/models/auto/*' -prune -exec rm -rf {} +

FROM venv-builder AS operator-venv
RUN /opt/exo/bin/pip install --no-cache-dir --no-index --find-links /wheels -r /wheels/requires-operator.txt
COPY .out/image-wheels/project /project
RUN /opt/exo/bin/pip install --no-cache-dir --no-index --find-links /wheels --find-links /project "exo-operator[operator]" \
 && /opt/exo/bin/pip uninstall -y pip setuptools

# ---------------------------------------------------------------------------------------------
# runtime (CPU). libgomp1: llama.cpp's CPU backend uses OpenMP threads. MLX's CPU build brings
# its own BLAS and LAPACK in its wheel; without g++ in the image it runs mx.compile'd functions
# uncompiled rather than JIT-building them.
FROM python AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="exo-operator runtime" \
      org.opencontainers.image.description="exo-runtime: llama.cpp and MLX (CPU) behind an OpenAI-compatible API, and the model fetcher" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin exo
COPY --from=runtime-venv /opt/exo /opt/exo
# Numeric USER so that the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
ENV PATH=/opt/exo/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
ENTRYPOINT ["exo-runtime"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# runtime-cuda: the runtime target's twin on NVIDIA's CUDA images. tests/unit/
# test_dockerfile_targets.py keeps the two in step (packages, user, entrypoint, ports, env).
# Ubuntu 22.04 carries Python 3.11 (python3.11 in universe), so the staged cp311 wheels fit.
FROM ${CUDA_BUILD_IMAGE} AS runtime-cuda-venv
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
      build-essential cmake \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/exo
COPY .out/image-wheels/deps /wheels
# Ampere (80, 86), Ada (89) and Hopper (90): the data-centre and workstation GPUs that Kubernetes
# clusters carry. Add an architecture here to serve an older or newer card; each adds build time.
# GGML_NATIVE=OFF: the CPU part must run on every node, not just on the build machine.
# --allow-shlib-undefined: libcuda.so.1 comes from the node's driver at run time, not this image.
ENV CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90 -DGGML_RPC=ON -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"
# The CUDA wheel is built from the staged source of the very llama-cpp-python version the CPU
# wheel has, then installed first, so the install line below (the runtime target's own) keeps it.
RUN LLAMA_CPP_SDIST="$(ls /wheels/llama_cpp_python-*.tar.gz)" \
 && /opt/exo/bin/pip wheel --no-cache-dir --no-index --find-links /wheels --no-deps \
      -w /cuda-wheels "$LLAMA_CPP_SDIST" \
 && /opt/exo/bin/pip install --no-cache-dir --no-index --no-deps /cuda-wheels/llama_cpp_python-*.whl
# mlx-cuda: MLX's CUDA build (mlx-cuda-12, the same version as mlx). Its libmlx.so finds NVIDIA's
# libraries in the venv's nvidia/*/lib by its RPATH, so they come as wheels; CUDA's runtime
# (cudart) is linked into it statically and libcuda.so.1 comes from the node's driver.
RUN /opt/exo/bin/pip install --no-cache-dir --no-index --find-links /wheels -r /wheels/requires-runtime-mlx-cuda.txt
COPY .out/image-wheels/project /project
RUN /opt/exo/bin/pip install --no-cache-dir --no-index --find-links /wheels --find-links /project "exo-operator[runtime,mlx-cuda]" \
 && /opt/exo/bin/pip uninstall -y pip setuptools \
 && find /opt/exo/lib/python3.11/site-packages/transformers/models -mindepth 2 -type d \
      -name __pycache__ -not -path '*/models/auto/*' -prune -exec rm -rf {} +

FROM ${CUDA_RUN_IMAGE} AS runtime-cuda
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="exo-operator runtime (CUDA)" \
      org.opencontainers.image.description="exo-runtime: llama.cpp and MLX (CUDA) behind an OpenAI-compatible API, and the model fetcher" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin exo
COPY --from=runtime-cuda-venv /opt/exo /opt/exo
# Numeric USER so that the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
ENV PATH=/opt/exo/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
ENTRYPOINT ["exo-runtime"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# operator: kopf and the Kubernetes client; no llama.cpp, no compiler.
FROM python AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="exo-operator" \
      org.opencontainers.image.description="The exo-operator Kubernetes operator: serves ExoModel resources" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin exo
COPY --from=operator-venv /opt/exo /opt/exo
USER 10001:10001
WORKDIR /tmp
ENV PATH=/opt/exo/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["exo-operator"]
CMD ["run"]
