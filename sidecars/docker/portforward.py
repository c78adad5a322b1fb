"""Port-forward: one TCP connection to a port of a pod, dialled inside the pod's network
namespace, carried over a `kod.streams` channel socket.

    sock = await dial(infra_pid, 8080)        # refusals surface here (before the upgrade)
    await carry(channels, sock)

Why inside the namespace and not to the pod's address on the pods' bridge: a port the pod binds
to 127.0.0.1 (as the app pods' PulseAudio and many dev servers do) is reachable only from within
its namespace, and `kubectl port-forward` reaches it on a real node, because the kubelet's
runtime (containerd, CRI-O) enters the pod's namespace and dials localhost. So does this module:
a thread of its own enters the namespace of the pod's infra container (setns on
/proc/<pid>/ns/net), creates and connects the socket there, and goes back; a socket stays in the
namespace it was created in. No process is started and nothing is given to a shell. The thread
is a fresh one per dial, so that a thread that could not go back is never reused.
The pods' network and its host rules do not see this traffic: it never leaves the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading

from kod import errors, streams
from kod.log import get_logger

log = get_logger(__name__)

CLONE_NEWNET = 0x40000000
#: How long a dial may take (a pod that drops SYNs).
DIAL_TIMEOUT_SECONDS = 10.0
READ_CHUNK = 256 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _dial_in(pid: int, port: int, timeout: float) -> socket.socket:
    """Connect to localhost:`port` in the network namespace of process `pid` (blocking; run
    on a thread of its own): 127.0.0.1 first, then ::1 when the namespace has IPv6. The error
    of 127.0.0.1 is the one reported (a refusal there says more than IPv6's absence)."""
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            first: OSError | None = None
            for family, address in ((socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET6, ("::1", port))):
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                sock.settimeout(timeout)
                try:
                    sock.connect(address)
                except OSError as exc:
                    sock.close()
                    first = first or exc
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            assert first is not None
            raise first
        finally:
            _setns(own)  # raises: the thread ends anyway, and it is never reused
    finally:
        os.close(target)
        os.close(own)


async def dial(pid: int, port: int, *, timeout: float = DIAL_TIMEOUT_SECONDS) -> socket.socket:
    """A connected, non-blocking socket to `port` on the pod's localhost. InvalidInput when
    nothing listens there (the kubelet's answer names the port), Unavailable when the
    namespace cannot be entered (the pod's infra container is gone, or the sidecar lacks
    CAP_SYS_ADMIN)."""
    if pid <= 0:
        raise errors.InvalidInput("the pod's sandbox is not running")
    loop = asyncio.get_running_loop()
    future: asyncio.Future[socket.socket] = loop.create_future()

    def settle(sock: socket.socket | None, exc: BaseException | None) -> None:
        if future.done():
            if sock is not None:
                sock.close()  # the caller gave up
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(sock)  # type: ignore[arg-type]

    def work() -> None:
        try:
            sock = _dial_in(pid, port, timeout)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            loop.call_soon_threadsafe(settle, None, exc)
            return
        loop.call_soon_threadsafe(settle, sock, None)

    threading.Thread(target=work, name=f"netns-dial-{pid}-{port}", daemon=True).start()
    try:
        sock = await future
    except (ConnectionRefusedError, TimeoutError, socket.timeout) as exc:
        # Worded as the kubelet's runtime words it (Go's dial error).
        reason = (exc.strerror or str(exc) or "timed out").lower()
        raise errors.InvalidInput(
            f"failed to connect to localhost:{port} inside the pod's network namespace: "
            f"dial tcp4 127.0.0.1:{port}: connect: {reason}"
        ) from exc
    except FileNotFoundError as exc:
        raise errors.Unavailable("the pod's network namespace is gone (its sandbox stopped)") from exc
    except PermissionError as exc:
        raise errors.Unavailable(
            f"the sidecar cannot enter the pod's network namespace: {exc}",
            hint="run the sidecar as root (localenv does) so that port-forward can enter pods",
        ) from exc
    except OSError as exc:
        raise errors.InvalidInput(f"failed to connect to localhost:{port} inside the pod's network namespace: {exc}") from exc
    sock.setblocking(False)
    return sock


async def carry(channels: streams.Channels, sock: socket.socket) -> None:
    """Both ways until both sides ended (or either went away): DATA in is written to the
    socket, CLOSE [DATA] shuts its write side; what the socket reads goes out as DATA, its EOF
    as CLOSE [DATA]."""
    reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)

    async def outgoing() -> None:
        try:
            while chunk := await reader.read(READ_CHUNK):
                await channels.send(streams.DATA, chunk)
        except ConnectionError:
            pass
        await channels.end(streams.DATA)

    async def incoming() -> None:
        while True:
            message = await channels.receive()
            if message is None:
                return
            channel, payload = message
            if channel == streams.DATA:
                try:
                    writer.write(payload)
                    await writer.drain()
                except ConnectionError:
                    return
            elif channel == streams.CLOSE and payload[:1] == bytes((streams.DATA,)):
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()

    sending = asyncio.create_task(outgoing(), name="portforward-out")
    receiving = asyncio.create_task(incoming(), name="portforward-in")
    try:
        # The pod's EOF ends the pair (the caller ends its side then too); the caller going away
        # ends it as well.
        await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
        if receiving.done() and not sending.done():
            sending.cancel()
    finally:
        for task in (sending, receiving):
            task.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)
        writer.close()
        await channels.close()
