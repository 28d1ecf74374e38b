"""Certificates (made with openssl) and the admin kubeconfig that embeds them."""

from __future__ import annotations

import base64
import secrets
import shutil
import ssl
import subprocess
from pathlib import Path

import yaml

from tests.cluster.ground.errors import ClusterError
from tests.cluster.ground.network import KUBERNETES_SERVICE_IP


class Pki:
    """CA, apiserver serving cert, admin client cert and service-account keys, via openssl."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_crt = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.apiserver_crt = directory / "apiserver.crt"
        self.apiserver_key = directory / "apiserver.key"
        self.admin_crt = directory / "admin.crt"
        self.admin_key = directory / "admin.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"

    def create(self) -> None:
        if shutil.which("openssl") is None:
            raise ClusterError("openssl not found on PATH: the harness makes its certs with it")
        self.dir.mkdir(parents=True, exist_ok=True)
        cnf = self.dir / "openssl.cnf"
        # Our own minimal config, so the system openssl.cnf cannot add or clash
        # with extensions.
        cnf.write_text(
            "[req]\ndistinguished_name = dn\n[dn]\n"
            "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
            "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
            "subjectKeyIdentifier = hash\n"
        )
        self._ec_key(self.ca_key)
        _openssl(
            "req", "-x509", "-new", "-key", self.ca_key, "-sha256", "-days", "3650",
            "-subj", "/CN=llmservice-test-ca", "-config", cnf, "-extensions", "v3_ca",
            "-out", self.ca_crt,
        )  # fmt: skip
        sans = [
            "IP:127.0.0.1",
            f"IP:{KUBERNETES_SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
        self._leaf(self.apiserver_key, self.apiserver_crt, "/CN=kube-apiserver", "serverAuth", sans)
        # system:masters is bound to cluster-admin by the apiserver's bootstrap RBAC.
        self._leaf(self.admin_key, self.admin_crt, "/O=system:masters/CN=admin", "clientAuth", [])
        # Service-account tokens are signed with RSA (RS256), what every client expects.
        _openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.sa_key
        )
        _openssl("pkey", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    @staticmethod
    def _ec_key(path: Path) -> None:
        # P-256 keys: generated instantly, accepted by Go and Python TLS alike.
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)

    def _leaf(self, key: Path, crt: Path, subject: str, usage: str, sans: list[str]) -> None:
        self._ec_key(key)
        csr = crt.with_suffix(".csr")
        ext = crt.with_suffix(".ext")
        lines = [
            "basicConstraints = critical,CA:FALSE",
            "keyUsage = critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage = {usage}",
        ]
        if sans:
            lines.append("subjectAltName = " + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        cnf = self.dir / "openssl.cnf"
        _openssl("req", "-new", "-key", key, "-subj", subject, "-config", cnf, "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
            "-set_serial", "0x" + secrets.token_hex(16), "-days", "3650", "-sha256",
            "-extfile", ext, "-out", crt,
        )  # fmt: skip

    def client_tls(self) -> ssl.SSLContext:
        """TLS context that trusts our CA and presents the admin cert."""
        ctx = ssl.create_default_context(cafile=str(self.ca_crt))
        ctx.load_cert_chain(str(self.admin_crt), str(self.admin_key))
        return ctx


def _openssl(*args: str | Path) -> None:
    argv = ["openssl", *map(str, args)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"openssl {args[0]} failed: {last}", result.stderr)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    """An admin kubeconfig for `server`; certs are embedded, so the file keeps working when
    copied elsewhere."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "llmservice-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(pki.ca_crt),
                },
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": _b64(pki.admin_crt),
                    "client-key-data": _b64(pki.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "llmservice-local",
                "context": {"cluster": "llmservice-local", "user": "admin"},
            }
        ],
        "current-context": "llmservice-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
