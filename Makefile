# Every target is a thin call to a script in scripts/, so each step also runs on its own.
SHELL := /bin/bash
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

venv: ## create .venv with the project and its test dependencies
	@bash scripts/venv.sh

lint: venv ## ruff on the Python, shellcheck and shfmt on the shell scripts
	@bash scripts/lint.sh

.PHONY: help venv lint

test: ## run every test tier (TIERS="unit runtime" for a subset)
	@bash scripts/test.sh

.PHONY: test

tools: ## build the pinned Kubernetes tools from source into ~/.cache/exo-operator/bin
	@bash scripts/tools.sh

kwok: ## start the kwok control plane with fake GPU nodes (prints export KUBECONFIG=...)
	@bash scripts/kwok.sh up

kwok-down: ## stop the kwok control plane and remove what it left
	@bash scripts/kwok.sh down

.PHONY: tools kwok kwok-down

docker: ## start dockerd (installs Debian's docker.io if missing)
	@bash scripts/docker.sh up

base-image: docker ## build the Debian bookworm base image exo-operator/debian:bookworm
	@bash scripts/base-image.sh

node-image: base-image ## build the kind node image with every image it needs preloaded
	@bash scripts/node-image.sh

# KIND_NODES=3: a control plane and 2 workers (default 1: one node that is both).
KIND_NODES ?= 1
kind: ## start the kind cluster, building what is missing (KIND_NODES=3 for 3 nodes)
	@KIND_NODES=$(KIND_NODES) bash scripts/kind.sh up

kind-down: ## delete the kind cluster
	@bash scripts/kind.sh down

.PHONY: docker base-image node-image kind kind-down

images: docker ## build the runtime and operator images (sizes in .out/image-sizes.txt)
	@bash scripts/images.sh build

demo: ## kind cluster, images, chart, the CPU example served; prints the curl that works
	@bash scripts/demo.sh

# KUBECONFIG given on make's command line runs the suite on that cluster; otherwise on kind.
e2e: ## end-to-end suite on kind (make e2e KUBECONFIG=path: on your own cluster)
	@bash scripts/e2e.sh $(if $(filter command line,$(origin KUBECONFIG)),--kubeconfig "$(KUBECONFIG)")

.PHONY: images demo e2e

bench-serving: venv ## exo-runtime vs llama-server built 2 ways, 3 prompt sizes, 1-16 clients (ARGS=...)
	@.venv/bin/python bench/serving.py $(ARGS)

bench-soak: venv ## 64 streaming clients for 10 min on one exo-runtime, then random hang-ups (ARGS=...)
	@.venv/bin/python bench/soak.py $(ARGS)

bench-mlx: venv ## exo-runtime's MLX engine vs mlx-lm's own generation, 1 and 4 clients (ARGS=...)
	@.venv/bin/python bench/mlx_engines.py $(ARGS)

bench-gpu: ## GPU figures (CPU half without a GPU): exo-runtime vs llama.cpp (CUDA), MLX-CUDA vs mlx-lm
	@bash bench/gpu.sh

bench-prefix: venv ## prefix cache benchmark: TTFT per turn of a 10-turn chat, vs llama-server
	@.venv/bin/python bench/prefix_cache.py

bench-structured: venv ## the cost of one json_schema request to 4 neighbours' tok/s (ARGS=--quick)
	@.venv/bin/python bench/structured_cost.py $(ARGS)

bench-distributed: venv ## one model on 1 process vs split over 2 and 3 RPC workers (QUICK=1: seconds)
	@.venv/bin/python bench/distributed.py $(if $(QUICK),--quick)

.PHONY: bench-serving bench-soak bench-mlx bench-gpu bench-prefix bench-structured bench-distributed

bench-operator: venv tools ## the operator's scale benchmark on kwok (MODELS="100 500", ARGS=...)
	@bash bench/operator_scale.sh

.PHONY: bench-operator
