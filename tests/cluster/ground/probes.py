"""Loopback HTTP(S) probes of the components' health endpoints."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request


def no_proxy_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    # An http(s)_proxy in the environment must not swallow loopback health probes.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def http_get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """(status, body) of a GET; HTTP error statuses are returned, not raised."""
    try:
        with no_proxy_opener(context).open(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def insecure_tls() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a
    # self-signed cert they make at startup; there is nothing to verify against.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
