"""Sockets opened inside a pod's network namespace: every connection the sidecar makes for a pod
(httpGet, tcpSocket and grpc probes, httpGet hooks, port-forward) starts there, never in the
desktop's own namespace.

    sandbox = await SANDBOXES.of(engine, pod)            # InvalidInput: no running sandbox
    reader, writer = await sandbox.open_connection("127.0.0.1", 8080, ssl=None)
    sock = await sandbox.connect("10.0.0.5", 8080)       # a connected, non-blocking socket
    SANDBOXES.forget(pod.infra_id)                       # the pod left the table

Why: a probe's or a hook's `host` comes from the pod spec. Dialled from the desktop's namespace,
`host: 127.0.0.1` (or the desktop's LAN address) and the port of a desktop service (interlink,
the sidecar, X11 over TCP, a dev server) would let a pod, or a hostile chart, send requests to
that service and read its answer back in the probe's Unhealthy event (an SSRF; the real kubelet
has it, kod is stricter). Dialled from the pod's own namespace, `host` means what the pod itself
could reach: 127.0.0.1 is the pod's loopback, and the desktop's addresses go through the pods'
network and its host rules, which refuse the desktop's services (docs/security.md).

How: the pod's namespace is that of its infra container. `Sandboxes.of` asks the engine for the
infra container's PID once, opens a pidfd on it, reads the namespace's identity (st_dev, st_ino
of /proc/<pid>/ns/net) and asks the engine again: only when the same container still runs with
the same PID is the identity the pod's (a PID the engine reported can have been reused by the
time it is opened). Each dial then checks the process is alive (pidfd), opens /proc/<pid>/ns/net,
checks the process is still alive (so the file opened was its own, not a reused PID's), compares
the identity with the recorded one and with the sidecar's own namespace, enters it (setns),
creates the socket and goes back; a socket stays in the namespace it was created in, so the
connect itself is an ordinary non-blocking one on the event loop.

The switch happens on the event loop's own thread, synchronously: setns of a network namespace
acts on the calling thread only, and between the two setns calls nothing runs on that thread but
socket(2) (and the interpreter's signal hooks, which in the sidecar only wake the loop), so no
other code of the sidecar ever runs in the pod's namespace. A fresh thread per socket would cost
a thread start and two hops through the loop, about half a millisecond of CPU per probe on a
2-core desktop (bench/probe_idle_cpu.py). If the thread cannot go back, the sidecar exits at once
rather than run on in a pod's namespace (its containers keep running, and a sidecar started
again adopts them). No process is started and nothing is given to a shell. Any doubt is an
Unavailable (a sandbox that does not run, an InvalidInput), never a dial elsewhere.

An address literal in `host` is dialled as it is; a name is resolved by the desktop's resolver
(as the kubelet resolves them on its node), and its addresses are dialled from the pod's
namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import os
import select
import socket
import _socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kod import errors
from kod.log import get_logger
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.state import PodState, parse_docker_time

log = get_logger(__name__)

CLONE_NEWNET = 0x40000000
#: What the sidecar tells a user who runs it without the right to enter namespaces.
NEEDS_ROOT = "run the sidecar as root (localenv does) so that it can dial inside pods' network namespaces"

NsId = tuple[int, int]
#: How probes, hooks and port-forward get a connected socket to (host, port): `Sandbox.connect`.
Dial = Callable[[str, int], Awaitable[socket.socket]]

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _return_home(own: int) -> None:
    """Put the calling thread back into its own namespace (`own`: an fd of it), or end the
    process: a sidecar whose event loop stayed in a pod's namespace would make every later
    connection of the desktop (to the engine, to interlink) from inside that pod."""
    try:
        _setns(own)
    except BaseException as exc:  # noqa: BLE001 - nothing may run on in the pod's namespace
        os.write(2, f"kod sidecar: cannot leave a pod's network namespace ({exc}); exiting\n".encode())
        os._exit(70)


async def _addresses(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, address) to dial for `host`: an address literal as it is (no resolver round
    trip, which asyncio runs on a thread of its pool), a name as the desktop's resolver has it."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        return [(family, address) for family, _, _, _, address in infos]
    if literal.version == 6:
        return [(socket.AF_INET6, (str(literal), port, 0, 0))]
    return [(socket.AF_INET, (str(literal), port))]


def identity(st: os.stat_result) -> NsId:
    """A namespace's identity: the device and inode of its nsfs file."""
    return (st.st_dev, st.st_ino)


def own_namespaces() -> set[NsId]:
    """The desktop's namespaces a pod's dial must never enter: the sidecar's own (its main
    thread's) and, when readable, that of PID 1 (the host's, when the sidecar runs elsewhere)."""
    found = {identity(os.stat("/proc/self/ns/net"))}
    try:
        found.add(identity(os.stat("/proc/1/ns/net")))
    except OSError:
        pass  # not ours to read (another user's PID 1, or a PID namespace without it)
    return found


def _exited(pidfd: int | None) -> bool:
    """True when the process of `pidfd` has ended (a pidfd is readable once it has)."""
    if pidfd is None:
        return False
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _gone() -> errors.Unavailable:
    return errors.Unavailable("the pod's network namespace is gone (its sandbox stopped)")


def _not_running() -> errors.InvalidInput:
    # InvalidInput (400), as the API documents it for port-forward: the pod is there, its sandbox is not.
    return errors.InvalidInput("the pod's sandbox is not running")


@dataclass
class Sandbox:
    """The network namespace of one pod: that of its infra container's process `pid`, whose
    identity was `netns` when the engine confirmed the container ran with that PID."""

    container_id: str
    pid: int
    netns: NsId
    #: A pidfd of `pid` (None where the kernel has none: then the identity check alone holds).
    pidfd: int | None = None
    started_at: datetime | None = None
    #: Set once the process is known to have ended; the registry then drops the sandbox.
    ended: bool = field(default=False, compare=False)

    def alive(self) -> bool:
        if not self.ended and _exited(self.pidfd):
            self.ended = True
        return not self.ended

    def close(self) -> None:
        """Release the pidfd (the sandbox can no longer be dialled into)."""
        self.ended = True
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    # -- the socket ------------------------------------------------------------------------------

    def new_socket(self, family: int) -> socket.socket:
        """A new non-blocking TCP socket of the pod's namespace, made on the calling thread
        (the event loop's), which is back in its own namespace when this returns or raises."""
        if not self.alive():
            raise _gone()
        try:
            target = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise _gone() from None
        try:
            # Alive before and after the open: the file opened was that process's, not a reused PID's.
            if not self.alive():
                raise _gone()
            seen = identity(os.fstat(target))
            if seen != self.netns:
                log.warning("a pod's network namespace changed under its PID; refusing the dial",
                            container=self.container_id[:12], pid=self.pid)
                raise errors.Unavailable("the pod's network namespace changed (its sandbox stopped)")
            if seen in own_namespaces():
                raise errors.Unavailable("refusing to dial a pod's connection in the desktop's own network namespace")
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                try:
                    _setns(target)
                except PermissionError as exc:
                    raise errors.Unavailable(f"the sidecar cannot enter the pod's network namespace: {exc}", hint=NEEDS_ROOT) from exc
                try:
                    # The C socket type: no Python code of socket.py runs in the pod's namespace.
                    raw = _socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                finally:
                    _return_home(own)
            finally:
                os.close(own)
        finally:
            os.close(target)
        sock = socket.socket(family, socket.SOCK_STREAM, fileno=raw.detach())
        sock.setblocking(False)
        return sock

    async def connect(self, host: str, port: int) -> socket.socket:
        """A connected, non-blocking TCP socket from the pod's namespace to `host`:`port`: each
        address of `host` in turn; the first address's error is the one raised (OSError, as a
        dial in the desktop's namespace raises it), or Unavailable when the namespace cannot be
        used. The caller bounds the time (cancellation closes the socket)."""
        loop = asyncio.get_running_loop()
        first: OSError | None = None
        for family, address in await _addresses(host, port):
            sock = self.new_socket(family)
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                first = first or exc
                continue
            except BaseException:
                sock.close()
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise first or OSError(errno.EADDRNOTAVAIL, f"no address for {host}")

    async def open_connection(
        self, host: str, port: int, *, ssl: ssl_module.SSLContext | None = None, limit: int = 2 ** 16
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """`asyncio.open_connection` to `host`:`port` from the pod's namespace (TLS with `ssl`,
        its server name `host`)."""
        sock = await self.connect(host, port)
        try:
            return await asyncio.open_connection(
                sock=sock, ssl=ssl, server_hostname=host if ssl is not None else None, limit=limit
            )
        except BaseException:
            sock.close()
            raise


class Sandboxes:
    """The sandboxes the sidecar has confirmed, by infra container id (one pidfd each)."""

    def __init__(self) -> None:
        self._known: dict[str, Sandbox] = {}

    async def of(self, engine: Engine, pod: PodState) -> Sandbox:
        """The pod's sandbox; InvalidInput when its infra container does not run."""
        infra = pod.infra
        if pod.infra_id is None or infra is None or not infra.running:
            raise _not_running()
        return await self.of_container(engine, pod.infra_id)

    async def of_container(self, engine: Engine, container_id: str) -> Sandbox:
        """The sandbox of infra container `container_id` (confirmed with the engine the first
        time, and again once its process ended); InvalidInput when it does not run, Unavailable
        when its namespace cannot be known for sure or is the desktop's own."""
        known = self._known.get(container_id)
        if known is not None:
            if known.alive():
                return known
            self.forget(container_id)
        sandbox = await confirm(engine, container_id)
        current = self._known.get(container_id)
        if current is not None and current.alive():
            # A concurrent confirmation (two probes of one pod starting together) got there
            # first: keep the one its caller holds, which closing would break mid-dial.
            sandbox.close()
            return current
        self.forget(container_id)
        self._known[container_id] = sandbox
        return sandbox

    def forget(self, container_id: str | None) -> None:
        """Drop (and close) what is known of `container_id`; nothing when unknown."""
        known = self._known.pop(container_id or "", None)
        if known is not None:
            known.close()

    def __len__(self) -> int:
        return len(self._known)


def _running_pid(data: dict[str, Any]) -> tuple[int, str]:
    state = data.get("State") or {}
    pid = int(state.get("Pid") or 0)
    if not state.get("Running") or pid <= 0:
        return 0, ""
    return pid, str(state.get("StartedAt") or "")


async def _inspect(engine: Engine, container_id: str) -> dict[str, Any]:
    try:
        return await engine.inspect_container(container_id)
    except EngineError as exc:
        if exc.not_found:
            raise _not_running() from exc
        raise exc.as_kod_error("inspecting the pod's sandbox") from exc


async def confirm(engine: Engine, container_id: str) -> Sandbox:
    """Learn the namespace of infra container `container_id`: its PID from the engine, a pidfd
    and the namespace's identity, then the engine again (same container, same PID, same start:
    the identity read in between is that container's). Refuses the desktop's own namespace."""
    pid, started = _running_pid(await _inspect(engine, container_id))
    if pid <= 0:
        raise _not_running()
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise _not_running() from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL):
            raise errors.Unavailable(f"cannot follow the pod's sandbox: {exc}") from exc
        pidfd = None  # a kernel without pidfds (< 5.3): the identity check alone holds
    try:
        try:
            netns = identity(os.stat(f"/proc/{pid}/ns/net"))
        except (FileNotFoundError, ProcessLookupError):
            raise _not_running() from None
        except PermissionError as exc:
            raise errors.Unavailable(f"the sidecar cannot read the pod's network namespace: {exc}", hint=NEEDS_ROOT) from exc
        again, started_again = _running_pid(await _inspect(engine, container_id))
        if (again, started_again) != (pid, started) or _exited(pidfd):
            raise errors.Unavailable("the pod's sandbox stopped while it was being looked up")
        if netns in own_namespaces():
            log.warning("a pod's sandbox is in the desktop's own network namespace; refusing to dial in it",
                        container=container_id[:12], pid=pid)
            raise errors.Unavailable("the pod's sandbox shares the desktop's network namespace; refusing to dial in it")
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        raise
    return Sandbox(container_id=container_id, pid=pid, netns=netns, pidfd=pidfd, started_at=parse_docker_time(started))


#: The sidecar's sandboxes. One table per process: it holds kernel handles (pidfds) keyed by
#: container id, which every caller (the prober, hooks, port-forward) shares, whatever object
#: it was reached through.
SANDBOXES = Sandboxes()
