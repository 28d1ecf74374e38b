#!/usr/bin/env bash
# `make demo`: the product end to end on the embedded local control plane.
#   1. start the local control plane (etcd, kube-apiserver, controller-manager, scheduler,
#      KWOK GPU/CPU nodes, the real KubeRay operator) unless it is already up;
#   2. install the LLMService CRD and start the operator (`llmservice operator`);
#   3. give every Ray pod of the LLMService a real Ray node in its own network namespace
#      (hack/demo-ray-node.sh: KWOK pods run nothing; the head pod's node runs the GCS and the
#      dashboard, the worker pod's node joins it and runs the Serve replica with vLLM);
#   4. `kubectl apply -f manifests/examples/tiny-fast-path.yaml`: the operator renders and applies
#      the RayService, KubeRay creates the RayCluster and submits the serve config to its head;
#   5. wait until the LLMService is Ready, then ask it something through the Kubernetes
#      service proxy with the openai client, and show that HAProxy answered it (Ray Serve's
#      fast path: HAProxy on port 8000, the model's replica the ingress; DEMO_EXAMPLE=
#      manifests/examples/tiny.yaml shows the proxy + router path instead).
# `make demo-down` stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${DEMO_CLUSTER_DIR:-.cache/cluster}
case $dir in /*) ;; *) dir=$PWD/$dir ;; esac  # absolute: KUBECONFIG and the hints below use it
py=.venv/bin/python
kubectl=bin/kubectl
example=${DEMO_EXAMPLE:-manifests/examples/tiny-fast-path.yaml}
timeout_s=${DEMO_TIMEOUT:-120}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

step "Local control plane"
$py -m tests.cluster.harness up --dir "$dir"
export KUBECONFIG=$dir/kubeconfig

step "LLMService CRD (generated from the API models)"
$kubectl apply --server-side --field-manager=llmservice-demo -f manifests/crd/llmservices.llmservice.dev.yaml
$kubectl wait --for=condition=Established --timeout=30s crd/llmservices.llmservice.dev

step "Operator"
pidfile=$dir/operator.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$pidfile"))"
else
  nohup .venv/bin/llmservice operator --standalone --metrics-port 0 --liveness "" \
    --timer-interval 10 >"$dir/operator.log" 2>&1 &
  echo $! >"$pidfile"
  echo "operator started (pid $!, log $dir/operator.log)"
fi

name=$($py -c "import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))['metadata']['name'])" "$example")
step "Real Ray nodes for the Ray pods (one network namespace and address per pod)"
bash hack/demo-ray-node.sh up "$name"

step "kubectl apply -f $example"
$kubectl apply -f "$example"

step "Waiting for the operator's RayService and KubeRay's RayCluster and pods"
deadline=$(( $(date +%s) + timeout_s ))
until $kubectl get rayservice "$name" >/dev/null 2>&1 \
  && [ -n "$($kubectl get raycluster -l ray.io/originated-from-cr-name="$name" -o name 2>/dev/null)" ] \
  && [ "$($kubectl get pods -l ray.io/cluster --field-selector=status.phase=Running -o name | wc -l)" -ge 2 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "not reconciled within ${timeout_s}s (see $dir/operator.log and $dir/logs/)"
  sleep 2
done

step "What the operator rendered (llmservice render gives the same offline)"
$kubectl get rayservice "$name" -o jsonpath='{.spec.serveConfigV2}'
echo
$kubectl get llmsvc,rayservice,raycluster
$kubectl get pods -o wide
$kubectl get events --field-selector involvedObject.kind=LLMService

step "Waiting for the LLMService to be Ready (KubeRay deploys the Serve app; vLLM loads the model)"
$kubectl wait --for=condition=Ready --timeout="${DEMO_SERVE_TIMEOUT:-900}s" "llmsvc/$name" \
  || { bash hack/demo-ray-node.sh logs >&2; die "not Ready in time: see $dir/operator.log, .cache/raypods/, $dir/logs/kuberay-operator.log"; }
$kubectl get llmsvc "$name" -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {.message}{"\n"}{end}'

step "A chat completion through the Kubernetes service proxy (kubectl proxy -> kube-apiserver -> $name-serve-svc -> Ray Serve -> vLLM)"
port=$($py -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
$kubectl proxy --port="$port" >"$dir/kubectl-proxy.log" 2>&1 &
proxy_pid=$!
trap 'kill $proxy_pid 2>/dev/null || true' EXIT
sleep 2
model=$($kubectl get rayservice "$name" -o jsonpath='{.spec.serveConfigV2}' | $py -c "import sys,yaml; print(yaml.safe_load(sys.stdin)['applications'][0]['args']['model_id'])")
NO_PROXY='*' $py - "http://127.0.0.1:$port/api/v1/namespaces/default/services/$name-serve-svc:serve/proxy/v1" "$model" <<'PY'
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", timeout=120)
print("models:", [m.id for m in client.models.list()])
resp = client.chat.completions.create(
    model=sys.argv[2], messages=[{"role": "user", "content": "Hello! Who are you?"}], max_tokens=24
)
print("assistant:", repr(resp.choices[0].message.content), "(random weights: any text is a success)")
print("usage:", resp.usage)
PY

if $py -c "import sys,yaml; env=yaml.safe_load(open(sys.argv[1]))['spec'].get('env', []); sys.exit(not any(e.get('name') == 'RAY_SERVE_ENABLE_HA_PROXY' and e.get('value') == '1' for e in env))" "$example"; then
  step "Who answered: HAProxy's own counters (its Prometheus exporter, port 9101 of the Ray pods)"
  answered=0
  for pod in $($kubectl get pods -l "llmservice.dev/name=$name" -o jsonpath='{.items[*].metadata.name}'); do
    n=$($kubectl get --raw "/api/v1/namespaces/default/pods/$pod:9101/proxy/metrics" \
      | $py -c "import sys; from tests.support.haproxy import app_responses_2xx; print(app_responses_2xx(sys.stdin.read()))")
    echo "$pod: $n answers from the Serve app's HAProxy backend"
    answered=$((answered + n))
  done
  [ "$answered" -ge 1 ] || die "HAProxy counted no answer: the request did not go through it"
  echo "HAProxy answered $answered request(s): the fast path served them"
fi

step "kubectl get llmsvc"
$kubectl get llmsvc
cat <<TXT

The whole path is real: the operator rendered and applied the RayService, KubeRay built the Ray
cluster and submitted the serve config, Ray Serve runs serve_app with vLLM (CPU), and the answer
came back through the serve Service. Only the nodes and pods are simulated (KWOK); each Ray pod's
work is done by its own Ray node in its own network namespace (hack/demo-ray-node.sh).

Next:
  export KUBECONFIG=$dir/kubeconfig
  $kubectl get llmsvc -w                 # watch status
  $kubectl scale llmsvc/$name --replicas=2
  make demo-down                        # stop the Ray nodes, the operator and the control plane
TXT
