#!/usr/bin/env bash
# Runs bench/operator_scale.py on a kwok cluster of its own, sized for 500 one-GPU models.
#   MODELS="100 500" bash bench/operator_scale.sh
#   UNRELATED_PODS=20000 MODELS=100 bash bench/operator_scale.sh   # again beside others' pods
#   PROFILE=1 MODELS=500 bash bench/operator_scale.sh               # py-spy profile per run
#   KWOK_GPUS_PER_NODE=32 MODELS=2000 ARGS="--timeout 2400 --without-anchor" bash bench/operator_scale.sh
# ARGS go to bench/operator_scale.py as they are (its --help lists them).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

MODELS="${MODELS:-100 500}"
UNRELATED_PODS="${UNRELATED_PODS:-0}"
PROFILE="${PROFILE:-0}"
[[ "$UNRELATED_PODS" =~ ^[0-9]+$ ]] || die "UNRELATED_PODS='$UNRELATED_PODS' must be a whole number"
[[ "$PROFILE" =~ ^[01]$ ]] || die "PROFILE='$PROFILE' must be 0 or 1"
export KWOK_CLUSTER="${KWOK_CLUSTER:-exo-bench}" KWOK_NODES="${KWOK_NODES:-64}"
export KWOK_GPUS_PER_NODE="${KWOK_GPUS_PER_NODE:-8}" KWOK_CPU_NODES="${KWOK_CPU_NODES:-5}"
# The controller-manager's 20 requests a second would pace the Jobs and ReplicaSets of hundreds
# of models, hiding what the operator itself takes.
export KWOK_NO_QPS_LIMITS="${KWOK_NO_QPS_LIMITS:-1}"
[ -x .venv/bin/python ] || die ".venv is missing: run \`make venv\` first"
[ -x "$TOOLS_BIN/kubectl" ] || die "kubectl is missing from $TOOLS_BIN: run \`make tools\` first"

log "kwok cluster '$KWOK_CLUSTER': $KWOK_NODES nodes with $KWOK_GPUS_PER_NODE GPUs, $KWOK_CPU_NODES CPU nodes, no QPS limits: $KWOK_NO_QPS_LIMITS"
eval "$(bash scripts/kwok.sh up)"
trap 'bash scripts/kwok.sh down >/dev/null 2>&1 || true' EXIT
export PATH="$TOOLS_BIN:$PATH"
args=(--unrelated-pods "$UNRELATED_PODS")
for n in $MODELS; do args+=(--models "$n"); done
[ "$PROFILE" = 0 ] || args+=(--profile)
# shellcheck disable=SC2206 # ARGS is a list of options, split on purpose
args+=(${ARGS:-})
.venv/bin/python bench/operator_scale.py "${args[@]}"
