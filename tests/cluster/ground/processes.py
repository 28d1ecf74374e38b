"""Component processes: spawning, finding them again, stopping them, their logs and ports,
and waiting on them with a deadline."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.cluster.ground.errors import ClusterError, PortInUseError

T = TypeVar("T")


@dataclass
class Process:
    """One running component: what was started and how to find it again."""

    name: str
    log: Path
    pid: int
    # Kernel start time of `pid` (/proc/<pid>/stat field 22): `down` runs in a
    # later Python process and must not signal an unrelated process that
    # reused the pid.
    start_ticks: int
    popen: subprocess.Popen[bytes] | None = None


def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports.

    All sockets stay bound until every port is known, so the kernel cannot hand
    out one port twice; a process racing us for a port between close() and the
    component's bind shows up as an 'address already in use' exit.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file (reads at most its last 64 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


def proc_start_ticks(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _die_with_parent() -> None:
    """Child-side hook: have the kernel SIGKILL the child if the test run dies.

    Without it a killed pytest leaves etcd, the apiserver, ... running forever.
    """
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    detached: bool = False,
) -> Process:
    """Start `argv` with stdout and stderr appended to `log` (after a `$ argv` line).

    Detached processes outlive this Python process (`harness up`); attached
    ones are killed by the kernel if it dies.
    """
    with log.open("ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            # Own session: a Ctrl-C in the terminal of `harness up` does
            # not reach the detached cluster, and stop() can signal the group.
            start_new_session=True,
            preexec_fn=None if detached else _die_with_parent,
        )
    return Process(name, log, popen.pid, proc_start_ticks(popen.pid) or 0, popen)


def alive(proc: Process) -> bool:
    return proc_start_ticks(proc.pid) == proc.start_ticks


def raise_if_exited(proc: Process) -> None:
    """ClusterError (PortInUseError for a taken port) if a started component has exited."""
    code = proc.popen.poll() if proc.popen is not None else None
    if code is None:
        return
    tail = log_tail(proc.log)
    in_use = next((ln for ln in tail.splitlines() if "address already in use" in ln), None)
    if in_use is not None:
        raise PortInUseError(
            f"{proc.name} exited (code {code}): a port it needs is already in use"
            f" (log: {proc.log})",
            tail,
        )
    raise ClusterError(
        f"{proc.name} exited with code {code} during startup (log: {proc.log})", tail
    )


def terminate(proc: Process, timeout: float) -> None:
    """SIGTERM the component's process group, SIGKILL it if still there after `timeout`."""
    if proc.popen is None and not alive(proc):
        return  # re-attached (`down`) and already gone, or the pid now belongs to someone else
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if _wait_exit(proc, timeout):
            return


def _wait_exit(proc: Process, timeout: float) -> bool:
    if proc.popen is not None:
        try:
            proc.popen.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(proc):
            return True
        time.sleep(0.1)
    return False


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """Poll `check` every half second until it returns something truthy, and return that.

    Raises TimeoutError("<what> within <timeout>s ...") quoting the last value or
    error, so a test never sleeps without a deadline.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as e:  # e.g. 404 until the object exists: keep polling
            last = one_line(e)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout:.0f}s (last seen: {last!r:.300})")
        time.sleep(0.5)


def wait_ready(
    proc: Process,
    failure: str,
    timeout: float,
    ready: Callable[[], bool],
    *,
    phrase_is_complete: bool = False,
) -> None:
    """Poll `ready` until true; fail fast if `proc` exits, or after `timeout` seconds.

    Errors raised by `ready` count as "not yet" (the component is still
    coming up); the last one is quoted if time runs out. The ClusterError says
    "<proc.name> <failure>", or just `failure` with `phrase_is_complete`.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        raise_if_exited(proc)
        try:
            if ready():
                return
        # Anything: connection refused, TLS not up yet, 503 from the
        # apiserver, urllib3/http.client errors (which share no base class).
        except Exception as e:
            last_error = one_line(e)
        if time.monotonic() >= deadline:
            what = failure if phrase_is_complete else f"{proc.name} {failure}"
            hint = f"; last error: {last_error}" if last_error else ""
            raise ClusterError(
                f"{what} within {timeout:.0f}s (log: {proc.log}{hint})", log_tail(proc.log)
            )
        time.sleep(0.25)
