"""Errors of the local test ground."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The control plane failed to start or stop.

    `cause` is one line naming the component, what went wrong and its log;
    str(error) adds the tail of that log below it.
    """

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}\n{detail}" if detail else cause)
        self.cause = cause


class PortInUseError(ClusterError):
    """A component could not bind the port chosen for it."""
