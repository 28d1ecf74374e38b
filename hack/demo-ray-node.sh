#!/usr/bin/env bash
# The demo's Ray pods, run for real: tests/support/raypods.py gives every KubeRay pod of the
# LLMService (the head, and each worker, which joins that head) its own real Ray node in its own
# network namespace, with its own address on a host bridge (llmsvc-br0, 10.250.0.0/16) written
# into the pod's status.podIP. The real KubeRay operator then does what it does in a real cluster:
# submits the rendered serveConfigV2 to the head's dashboard (through the API server's proxy),
# watches the Serve app, and routes the serve Service to the pods. Nothing leaves the machine:
# the addresses sit on veth pairs behind the bridge.
#
#   hack/demo-ray-node.sh up NAME   # the runner, in the background, for LLMService NAME's pods
#                                   # (needs KUBECONFIG); returns once it watches them
#   hack/demo-ray-node.sh logs      # the ends of the runner's and the Ray nodes' logs
#   hack/demo-ray-node.sh down      # stop the runner: its Ray nodes, namespaces and the bridge
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$PWD/.cache/demo
log_dir=$PWD/.cache/raypods
py=$PWD/.venv/bin/python
namespace=${DEMO_NAMESPACE:-default}
# The pods mount the model at spec.model.source; each Ray node gets the same view of it.
model_mount=${DEMO_MODEL_MOUNT:-$PWD/.cache/tiny-model:/models/tiny-llama}
die() { echo "demo-ray-node: $*" >&2; exit 1; }

runner_alive() { [ -f "$dir/raypods.pid" ] && kill -0 "$(cat "$dir/raypods.pid")" 2>/dev/null; }

up() {
  local name=$1
  [ "$(id -u)" = 0 ] || die "needs root (ip netns, bridge, mount): run as root or skip the serving part"
  command -v ip >/dev/null || die "iproute2's 'ip' not found (apt-get install iproute2)"
  [ -n "${KUBECONFIG:-}" ] || die "KUBECONFIG is not set (the local cluster's kubeconfig)"
  mkdir -p "$dir"
  if runner_alive; then
    echo "Ray pod runner already running (pid $(cat "$dir/raypods.pid"))"; return
  fi
  rm -f "$dir/raypods.ready"
  setsid "$py" -m tests.support.raypods run --kubeconfig "$KUBECONFIG" --namespace "$namespace" \
    --selector "llmservice.dev/name=$name" --mount "$model_mount" --log-dir "$log_dir" \
    --ready-file "$dir/raypods.ready" >"$dir/raypods.log" 2>&1 &
  echo $! >"$dir/raypods.pid"
  for _ in $(seq 1 120); do
    [ -f "$dir/raypods.ready" ] && {
      echo "Ray pod runner up (pid $(cat "$dir/raypods.pid"), log $dir/raypods.log, node logs $log_dir/)"
      return
    }
    runner_alive || die "Ray pod runner exited: $(tail -n 5 "$dir/raypods.log")"
    sleep 0.5
  done
  die "Ray pod runner not ready within 60s (see $dir/raypods.log)"
}

down() {
  if [ -f "$dir/raypods.pid" ]; then
    local pid
    pid=$(cat "$dir/raypods.pid")
    # SIGTERM: the runner stops its Ray nodes (workers, then heads) and removes the bridge.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 240); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/raypods.pid" "$dir/raypods.ready"
  fi
  # Whatever a killed runner left behind (its namespaces, their processes, the bridge).
  if [ "$(id -u)" = 0 ] && [ -x "$py" ]; then "$py" -m tests.support.raypods cleanup; fi
  # The earlier single-node stand-in's veth and namespace, should an old demo still be up.
  if ip netns list 2>/dev/null | grep -qw llmsvc-demo; then
    ip netns pids llmsvc-demo | xargs -r kill -KILL 2>/dev/null || true
    ip netns del llmsvc-demo 2>/dev/null || true
  fi
  ip link del llmsvc-h 2>/dev/null || true
  echo "Ray pods stopped"
}

logs() {
  tail -n 20 "$dir/raypods.log" 2>/dev/null || true
  for f in "$log_dir"/*.log; do [ -f "$f" ] && { echo "----- $f"; tail -n 20 "$f"; }; done
}

case "${1:-}" in
  up) [ -n "${2:-}" ] || die "usage: $0 up LLMSERVICE_NAME"; up "$2" ;;
  logs) logs ;;
  down) down ;;
  *) die "usage: $0 up NAME | logs | down" ;;
esac
