"""The local test ground, by concern (KubeRay's ray-operator/test/support style).

- `errors`: ClusterError, PortInUseError.
- `processes`: spawning components, their pids, ports, log tails, waits (wait_for).
- `probes`: loopback HTTP(S) health probes that ignore proxy settings.
- `network`: the service and pod address ranges.
- `pki`: the CA and certs, made with openssl, and the admin kubeconfig.
- `nodes`: KWOK node pools (GPU and CPU) and their Node manifests.
- `components`: each component's command line (and the Ports they listen on).
- `kuberay`: KubeRay's CRDs.
- `cluster`: LocalCluster, which starts and stops them all in order.
- `cli`: `python -m tests.cluster.harness up|down`.

`tests.cluster.harness` re-exports the public names; import from there.
"""
