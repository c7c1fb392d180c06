#!/usr/bin/env bash
# The project's test command (`make test`): builds what the tiers need (cached),
# then runs every tier in one pytest session so that there is one verdict.
#
#   TIERS="unit runtime"  make test     # a subset: lint unit fetch runtime mlx kwok kind e2e
#   PYTEST_ARGS="-x -k chat" make test  # extra pytest arguments
#   EXO_DISK_NEED_GB=N make test        # free GB each written filesystem must have instead of
#                                       # the per-tier estimates (scripts/disk-preflight.py); 0 skips
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ALL_TIERS="lint unit fetch runtime mlx kwok kind e2e"
TIERS="${TIERS:-$ALL_TIERS}"
has_tier() { [[ " $TIERS " == *" $1 "* ]]; }
for t in $TIERS; do
  [[ " $ALL_TIERS " == *" $t "* ]] || die "unknown tier '$t' (known: $ALL_TIERS)"
done

step() { log "[test] $*"; }

# The tests get clusters of their own, so `make demo`'s cluster (kind `exo`, with an operator
# that watches every namespace) neither meets the tests' operator nor loses its model.
export KIND_CLUSTER="${KIND_CLUSTER:-exo-test}" EXO_KIND_NODEPORT="${EXO_KIND_NODEPORT:-30081}"
export KWOK_CLUSTER="${KWOK_CLUSTER:-exo-test}"
# One two-node kind cluster serves the kind and e2e tiers: the multi-node checks and a model split
# over workers on two nodes need the second node, and one cluster costs less than two.
export KIND_NODES="${KIND_NODES:-2}"
export EXO_KIND_MULTINODE_CLUSTER="${EXO_KIND_MULTINODE_CLUSTER:-$KIND_CLUSTER}"
export EXO_KIND_MULTINODE_NODEPORT="${EXO_KIND_MULTINODE_NODEPORT:-$EXO_KIND_NODEPORT}"

# Before anything is built: a run that cannot fit fails now, naming what it needs, rather than
# with ENOSPC an hour in.
step "disk: free space against what tiers $TIERS need"
# shellcheck disable=SC2086  # one argument per tier
EXO_CACHE="$EXO_CACHE" TOOLS_BIN="$TOOLS_BIN" python3 scripts/disk-preflight.py $TIERS ||
  die "not enough free disk for tiers $TIERS (details above)"

step "python environment"
bash scripts/venv.sh

if has_tier lint; then
  step "lint: ruff, shellcheck, shfmt"
  bash scripts/lint.sh
fi

if has_tier kwok || has_tier kind || has_tier e2e; then
  step "Kubernetes tools (built once from pinned sources, then cached)"
  bash scripts/tools.sh
elif has_tier unit; then
  step "helm, which renders the chart in the unit tier (built once from a pinned source, then cached)"
  bash scripts/tools.sh build helm
fi
if has_tier kind || has_tier e2e; then
  step "Docker, the Debian base image and the kind node image"
  bash scripts/docker.sh up
  bash scripts/base-image.sh
  bash scripts/node-image.sh
fi
if has_tier e2e; then
  step "the project's images"
  bash scripts/images.sh build
fi

step "disk after the setup steps"
EXO_CACHE="$EXO_CACHE" python3 scripts/disk-preflight.py --report

# Each pytest tier is the folder of its name: tests/<tier>/ (tests/fixtures/ serves them all).
paths=()
for t in $ALL_TIERS; do
  if [[ $t != lint ]] && has_tier "$t"; then paths+=("tests/$t"); fi
done

if [ ${#paths[@]} -eq 0 ]; then
  log "no pytest tier selected"
  exit 0
fi
step "pytest ${paths[*]}"
# shellcheck disable=SC2086
exec .venv/bin/pytest -ra ${PYTEST_ARGS:-} "${paths[@]}"
