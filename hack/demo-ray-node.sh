#!/usr/bin/env bash
# The demo's stand-in for the Ray pods: one real Ray node (head + Serve + vLLM on CPU) in a network
# namespace made here, whose address the KWOK-simulated Ray pods are given. The real KubeRay
# operator then does what it does in a real cluster: submits the rendered serveConfigV2 to this
# node's dashboard (through the API server's proxy), watches the Serve app, and routes the serve
# Service to it. Nothing leaves the machine: the namespace's address sits on a veth pair.
#
#   hack/demo-ray-node.sh up            # netns + Ray head (background); waits for its dashboard
#   hack/demo-ray-node.sh adopt NAME    # keep the pods of LLMService NAME on this node's address
#   hack/demo-ray-node.sh down          # stop Ray, remove the namespace
set -euo pipefail
cd "$(dirname "$0")/.."

NS=llmsvc-demo
HOST_IF=llmsvc-h
NODE_IF=llmsvc-n
HOST_IP=10.250.0.1
NODE_IP=10.250.0.2
dir=$PWD/.cache/demo
kubectl=$PWD/bin/kubectl
die() { echo "demo-ray-node: $*" >&2; exit 1; }

netns_up() {
  [ "$(id -u)" = 0 ] || die "needs root (ip netns, mount): run as root or skip the serving part"
  command -v ip >/dev/null || die "iproute2's 'ip' not found (apt-get install iproute2)"
  ip netns list | grep -qw "$NS" || ip netns add "$NS"
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name "$NODE_IF"
    ip link set "$NODE_IF" netns "$NS"
    ip addr add "$HOST_IP/30" dev "$HOST_IF"
    ip netns exec "$NS" ip addr add "$NODE_IP/30" dev "$NODE_IF"
  fi
  ip link set "$HOST_IF" up
  ip netns exec "$NS" ip link set "$NODE_IF" up
  ip netns exec "$NS" ip link set lo up
}

ray_up() {
  mkdir -p "$dir"
  if [ -f "$dir/ray.pid" ] && kill -0 "$(cat "$dir/ray.pid")" 2>/dev/null; then
    echo "Ray node already running (pid $(cat "$dir/ray.pid"))"; return
  fi
  # The pods mount the model at spec.model.source (/models/tiny-llama); a private mount
  # namespace gives the Ray node the same view of .cache/tiny-model.
  mkdir -p /models/tiny-llama
  cat >"$dir/ray-node.sh" <<SH
#!/usr/bin/env bash
set -e
mount --make-rprivate /
mount --bind "$PWD/.cache/tiny-model" /models/tiny-llama
export PYTHONPATH="$PWD" RAY_AUTH_MODE=disabled VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PWD/.venv/bin/ray" start --head --block --node-ip-address=$NODE_IP --port=6379 \\
  --dashboard-host=0.0.0.0 --dashboard-port=8265 --num-cpus=8 --num-gpus=0 \\
  --disable-usage-stats --temp-dir=/tmp/llmsvc-demo-ray
SH
  chmod +x "$dir/ray-node.sh"
  setsid ip netns exec "$NS" unshare -m "$dir/ray-node.sh" >"$dir/ray-node.log" 2>&1 &
  echo $! >"$dir/ray.pid"
  for _ in $(seq 1 90); do
    curl -s -m 2 --noproxy '*' "http://$NODE_IP:8265/api/version" >/dev/null && { echo "Ray node up at $NODE_IP (log $dir/ray-node.log)"; return; }
    kill -0 "$(cat "$dir/ray.pid")" 2>/dev/null || die "Ray node exited (see $dir/ray-node.log)"
    sleep 2
  done
  die "Ray dashboard not answering at $NODE_IP:8265 within 180s (see $dir/ray-node.log)"
}

adopt() {  # runs until killed: KubeRay may recreate pods, and KWOK gives each a loopback IP
  local name=$1
  while true; do
    $kubectl get pods -l "llmservice.dev/name=$name" \
      -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name} {.status.podIP}{"\n"}{end}' 2>/dev/null |
      while read -r pod ip; do
        [ -n "$pod" ] && [ "$ip" != "$NODE_IP" ] || continue
        $kubectl patch pod "$pod" --subresource=status --type=merge \
          -p "{\"status\":{\"podIP\":\"$NODE_IP\",\"podIPs\":[{\"ip\":\"$NODE_IP\"}]}}" >/dev/null
      done
    sleep 2
  done
}

down() {
  for f in adopt ray; do
    if [ -f "$dir/$f.pid" ]; then
      kill -TERM -- "-$(cat "$dir/$f.pid")" 2>/dev/null || kill "$(cat "$dir/$f.pid")" 2>/dev/null || true
      rm -f "$dir/$f.pid"
    fi
  done
  pkill -f -- "llmsvc-demo-ray" 2>/dev/null || true
  for _ in $(seq 1 10); do pgrep -f -- "llmsvc-demo-ray" >/dev/null || break; sleep 1; done
  pkill -9 -f -- "llmsvc-demo-ray" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  echo "Ray node stopped"
}

case "${1:-}" in
  up) netns_up; ray_up ;;
  adopt) [ -n "${2:-}" ] || die "usage: $0 adopt LLMSERVICE_NAME"; adopt "$2" ;;
  down) down ;;
  *) die "usage: $0 up | adopt NAME | down" ;;
esac
