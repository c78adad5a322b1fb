"""Local listeners that carry TCP connections to a pod's port through the API server, and that only
the session's own viewer may use.

Used for SSH when the desktop cannot reach node addresses (no NodePort), and for VNC/noVNC in
clear mode (--insecure: VNC is never published on a NodePort): cloudify listens on an address the
viewer reaches (127.0.0.1 for a native viewer, the Docker bridge's address for a viewer in a
container, in `forward_ports`) and forwards each accepted connection over its own port-forward
WebSocket, with the user's credentials.

Who may use it (`Guard`): each connection is checked before anything is forwarded, and closed
when it is not the session's viewer's:
- a native viewer: the connecting socket belongs to this user (its owner in /proc/net/tcp), so
  other local users are refused;
- a viewer in a container or a pod: the connection comes from the viewer's own address (the
  container's or the pod's IP, known once it runs). Other containers, pods and local users connect
  from other addresses; forging the viewer's needs its layer-2 segment, which pods cannot reach
  (the Docker sidecar isolates them) and which the TCP handshake would expose anyway.
`UnixRelay` puts the same guard in front of a unix socket of the session's 0700 directory (ssh's
-L for noVNC, which a browser reaches only over TCP).

A connection may arrive before the app pod runs (the viewer starts early and retries): it waits
for the pod, then is forwarded; if the pod's port is not listening yet the API server reports it
on the error channel and the connection is closed, and the viewer's next attempt goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from kod import errors
from kod.kube import KubeClient
from kod.kube_channels import DATA_CHANNEL, ERROR_CHANNEL, portforward
from kod.log import get_logger

log = get_logger(__name__)

CHUNK = 64 * 1024
#: How long a connection waits for the viewer's address to be known (its container or pod runs).
GUARD_WAIT_SECONDS = 120.0

Guard = Callable[[asyncio.StreamWriter], Awaitable[bool]]


def parse_port_range(text: str) -> tuple[int, int]:
    """"39400-39499" -> (39400, 39499); "0" -> (0, 0): any free port."""
    lo, _, hi = text.partition("-")
    first, last = int(lo), int(hi or lo)
    if not (0 <= first <= last <= 65535) or (first == 0 and last != 0):
        raise errors.InvalidInput(f"forward_ports {text!r} must be a port range such as 39400-39499, or 0")
    return first, last


def _hex_endpoint(host: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp writes it: 127.0.0.1:8080 -> 0100007F:1F90."""
    return f"{int.from_bytes(ipaddress.IPv4Address(host).packed, 'little'):08X}:{port:04X}"


def loopback_peer_uid(peer: tuple[str, int], local: tuple[str, int], table: Path = Path("/proc/net/tcp")) -> int | None:
    """The uid owning the socket at `peer` that is connected to `local` (both on this machine),
    from the kernel's TCP table; None when it is not there."""
    want_local, want_remote = _hex_endpoint(*peer), _hex_endpoint(*local)
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
            return int(fields[7])
    return None


def same_user_guard(uid: int | None = None) -> Guard:
    """Accept only connections from sockets of this user (or root: it can do anything anyway)."""
    mine = os.getuid() if uid is None else uid

    async def allow(writer: asyncio.StreamWriter) -> bool:
        peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        if not peer or not local or ":" in str(peer[0]):
            return False
        owner = loopback_peer_uid((peer[0], peer[1]), (local[0], local[1]))
        return owner is not None and owner in (mine, 0)

    return allow


class ViewerAddress:
    """A guard that accepts only the viewer's own address, once known (`set`). Connections that
    come earlier wait for it (up to GUARD_WAIT_SECONDS)."""

    def __init__(self) -> None:
        self.address: str | None = None
        self._known = asyncio.Event()

    def set(self, address: str) -> None:
        self.address = address
        self._known.set()

    async def __call__(self, writer: asyncio.StreamWriter) -> bool:
        peer = writer.get_extra_info("peername")
        try:
            await asyncio.wait_for(self._known.wait(), GUARD_WAIT_SECONDS)
        except TimeoutError:
            return False
        return bool(peer) and peer[0] == self.address


async def _listen(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], None], bind: str,
                  ports: tuple[int, int]) -> asyncio.Server:
    """A server on `bind`, on a free port of `ports` (tried from a random point), or any free port
    for (0, 0)."""
    first, last = ports
    candidates = [0] if first == 0 else list(range(first, last + 1))
    if first:
        start = random.randrange(len(candidates))
        candidates = candidates[start:] + candidates[:start]
    error: OSError | None = None
    for port in candidates:
        try:
            return await asyncio.start_server(handler, bind, port)
        except OSError as exc:
            error = exc
    raise errors.Unavailable(
        f"cannot listen on {bind} for the session's forwarder ({'ports ' + str(first) + '-' + str(last) if first else 'any port'}): {error}",
        hint="free a port in forward_ports, or set forward_ports to another range the Docker sidecar allows",
    )


class _Guarded:
    """A listener whose connections are checked by `guard` before `_forward` gets them."""

    def __init__(self, *, bind: str, guard: Guard | None, ports: tuple[int, int] = (0, 0)) -> None:
        self.bind, self.guard, self.ports = bind, guard, ports
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.local_port = 0
        #: Connections refused because they were not the session's viewer's.
        self.refused = 0

    async def start(self) -> int:
        """Listen on `bind` (a free port of `ports`); returns the port."""
        self._server = await _listen(self._accept, self.bind, self.ports)
        self.local_port = self._server.sockets[0].getsockname()[1]
        return self.local_port

    async def close(self) -> None:
        if self._server:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._checked(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _checked(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.guard is not None and not await self.guard(writer):
            self.refused += 1
            log.warning("refused a connection to the session's forwarder: not the session's viewer",
                        peer=str(writer.get_extra_info("peername")), port=self.local_port)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        await self._forward(reader, writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class UnixRelay(_Guarded):
    """A guarded TCP listener that relays each connection to the unix socket `path`."""

    def __init__(self, path: Path, *, bind: str = "127.0.0.1", guard: Guard | None) -> None:
        super().__init__(bind=bind, guard=guard)
        self.path = path

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.path))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer), return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


class PodForwarder(_Guarded):
    """One local listener for one pod port, open only to the session's viewer (`guard`).
    `set_pod(name)` once the pod exists; `close()` stops the listener and every connection."""

    def __init__(self, kube: KubeClient, namespace: str, port: int, *, bind: str = "127.0.0.1",
                 guard: Guard | None = None, ports: tuple[int, int] = (0, 0)) -> None:
        super().__init__(bind=bind, guard=guard, ports=ports)
        self.kube, self.namespace, self.port = kube, namespace, port
        self._pod: str | None = None
        self._pod_ready = asyncio.Event()

    def set_pod(self, name: str) -> None:
        self._pod = name
        self._pod_ready.set()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            await self._pod_ready.wait()
            assert self._pod is not None
            ws = await portforward(self.kube, self.namespace, self._pod, self.port)
            up = asyncio.create_task(_to_pod(reader, ws))
            down = asyncio.create_task(_from_pod(ws, writer, f"{self._pod}:{self.port}"))
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()
        except (errors.KodError, aiohttp.ClientError, ConnectionError) as exc:
            log.debug("port-forward connection ended", port=self.port, error=str(exc))
        finally:
            if ws is not None:
                await ws.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _to_pod(reader: asyncio.StreamReader, ws: aiohttp.ClientWebSocketResponse) -> None:
    while chunk := await reader.read(CHUNK):
        await ws.send_bytes(bytes([DATA_CHANNEL]) + chunk)


async def _from_pod(ws: aiohttp.ClientWebSocketResponse, writer: asyncio.StreamWriter, what: str) -> None:
    # Each channel's first frame is the port number (2 bytes, little endian), not data.
    headers_left = {DATA_CHANNEL: 2, ERROR_CHANNEL: 2}
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
            continue
        channel, payload = msg.data[0], msg.data[1:]
        skip = headers_left.get(channel, 0)
        if skip:
            headers_left[channel] = max(0, skip - len(payload))
            payload = payload[skip:]
        if not payload:
            continue
        if channel == DATA_CHANNEL:
            writer.write(payload)
            await writer.drain()
        elif channel == ERROR_CHANNEL:
            raise errors.Unavailable(f"port-forward to {what}: {payload.decode(errors='replace').strip()}")
