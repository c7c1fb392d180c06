#!/usr/bin/env bash
# Runs the end-to-end suite (tests/e2e) on a cluster with the chart installed.
#
#   scripts/e2e.sh                        on the project's kind cluster: brings it up, builds the
#                                         images and loads them into it (make e2e)
#   scripts/e2e.sh --kubeconfig PATH      on a cluster of your own (make e2e KUBECONFIG=PATH); it
#                                         must be able to pull EXO_E2E_OPERATOR_IMAGE and
#                                         EXO_E2E_RUNTIME_IMAGE (default exo-operator/*:VERSION)
#
# Extra arguments after `--` go to pytest (e.g. -- -k chat). EXO_E2E_KEEP=1 keeps the release and
# the test namespace after the run, for a look at what failed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kubeconfig="${EXO_E2E_KUBECONFIG:-}"
pytest_args=()
while (($# > 0)); do
  case "$1" in
    --kubeconfig) kubeconfig="${2:?--kubeconfig needs a path}" && shift 2 ;;
    --) shift && pytest_args=("$@") && break ;;
    *) die "unknown argument $1 (usage: $0 [--kubeconfig PATH] [-- PYTEST_ARGS...])" ;;
  esac
done

cd "$REPO_ROOT"
bash scripts/venv.sh
bash scripts/tools.sh # kind, kubectl and helm, built once from pinned sources
require_tools kubectl helm

if [[ -n $kubeconfig ]]; then
  [[ -f $kubeconfig ]] || die "kubeconfig $kubeconfig is not a file"
  kubeconfig="$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")"
  log "end-to-end suite on the cluster of $kubeconfig"
else
  started=$SECONDS
  log "bringing up the kind cluster (scripts/kind.sh up)"
  kubeconfig="$(bash scripts/kind.sh up | sed -n 's/^export KUBECONFIG=//p')"
  [[ -n $kubeconfig ]] || die "scripts/kind.sh up printed no kubeconfig"
  bash scripts/images.sh build
  bash scripts/images.sh load
  log "cluster and images ready in $((SECONDS - started)) s; running the end-to-end suite"
fi

EXO_E2E_KUBECONFIG="$kubeconfig" exec .venv/bin/pytest tests/e2e -m e2e -v -p no:cacheprovider \
  "${pytest_args[@]}"
