#!/usr/bin/env bash
# `make demo`: the product end to end on the embedded local control plane.
#   1. start the local control plane (etcd, kube-apiserver, controller-manager, scheduler,
#      KWOK GPU/CPU nodes, the real KubeRay operator) unless it is already up;
#   2. install the LLMService CRD and start the operator (`llmservice operator`);
#   3. `kubectl apply -f manifests/examples/tiny.yaml`;
#   4. show what the operator and KubeRay made of it.
# `make demo-down` stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=.cache/cluster
py=.venv/bin/python
kubectl=bin/kubectl
example=${DEMO_EXAMPLE:-manifests/examples/tiny.yaml}
timeout_s=${DEMO_TIMEOUT:-120}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

step "Local control plane"
$py -m tests.cluster.harness up --dir "$dir"
export KUBECONFIG=$PWD/$dir/kubeconfig

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

step "Status"
$kubectl get llmsvc "$name" -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {.message}{"\n"}{end}'
cat <<TXT

The RayService is applied and KubeRay has created the Ray cluster on the simulated nodes.
KWOK pods run no Ray processes, so KubeRay (and thus the LLMService) truthfully reports the
Serve app as not yet serving.

Next:
  export KUBECONFIG=$PWD/$dir/kubeconfig
  $kubectl get llmsvc -w                 # watch status
  $kubectl scale llmsvc/$name --replicas=2
  make demo-down                        # stop the operator and the control plane
TXT
