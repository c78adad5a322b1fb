"""Port-forward: one TCP connection to a port of a pod, dialled inside the pod's network
namespace, carried over a `kod.streams` channel socket.

    sandbox = await SANDBOXES.of(engine, pod)  # sidecars/docker/netns.py
    sock = await dial(sandbox, 8080)           # refusals surface here (before the upgrade)
    await carry(channels, sock)

Why inside the namespace and not to the pod's address on the pods' bridge: a port the pod binds
to 127.0.0.1 (as the app pods' PulseAudio and many dev servers do) is reachable only from within
its namespace, and `kubectl port-forward` reaches it on a real node, because the kubelet's
runtime (containerd, CRI-O) enters the pod's namespace and dials localhost. So does this module,
through `netns.Sandbox`: the socket is made inside the namespace of the pod's infra container,
checked to be that container's and never the desktop's own (a stale or reused PID is refused),
and connected there. No process is started and nothing is given to a shell.
The pods' network and its host rules do not see this traffic: it never leaves the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from kod import errors, streams
from kod.log import get_logger
from sidecars.docker.netns import Sandbox

log = get_logger(__name__)

#: How long a dial may take (a pod that drops SYNs).
DIAL_TIMEOUT_SECONDS = 10.0
READ_CHUNK = 256 * 1024


async def dial(sandbox: Sandbox, port: int, *, timeout: float = DIAL_TIMEOUT_SECONDS) -> socket.socket:
    """A connected, non-blocking socket to `port` on the pod's localhost: 127.0.0.1 first, then
    ::1 when the namespace has IPv6 (the error of 127.0.0.1 is the one reported: a refusal there
    says more than IPv6's absence). InvalidInput when nothing listens there (the kubelet's
    answer names the port), Unavailable when the namespace cannot be used (the pod's infra
    container is gone, its PID is not its own any more, or the sidecar lacks CAP_SYS_ADMIN)."""
    first: OSError | None = None
    try:
        async with asyncio.timeout(timeout):
            for host in ("127.0.0.1", "::1"):
                try:
                    return await sandbox.connect(host, port)
                except OSError as exc:
                    first = first or exc
    except TimeoutError as exc:
        first = first or exc
    assert first is not None
    if isinstance(first, (ConnectionRefusedError, TimeoutError)):
        # Worded as the kubelet's runtime words it (Go's dial error).
        # From the errno: asyncio's strerror is "Connect call failed (address)", not the reason.
        code = getattr(first, "errno", None)
        reason = (os.strerror(code) if code else str(first) or "timed out").lower()
        raise errors.InvalidInput(
            f"failed to connect to localhost:{port} inside the pod's network namespace: "
            f"dial tcp4 127.0.0.1:{port}: connect: {reason}"
        ) from first
    raise errors.InvalidInput(f"failed to connect to localhost:{port} inside the pod's network namespace: {first}") from first


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
