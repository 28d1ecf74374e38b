"""Address ranges of the local control plane."""

from __future__ import annotations

SERVICE_CIDR = "10.96.0.0/16"
# The apiserver puts the `kubernetes` Service on the first IP of SERVICE_CIDR;
# in-cluster clients verify the serving cert against it.
KUBERNETES_SERVICE_IP = "10.96.0.1"
# Pod IPs that KWOK hands out: loopback, so that anything reaching for a pod (KubeRay's
# dashboard client through the API server's proxy) never leaves this machine. The API server
# refuses to proxy to loopback ("address not allowed"), which fails fast and sends nothing.
POD_CIDR = "127.77.0.0/16"
