"""Local listeners that carry TCP connections to a pod's port through the API server.

Used when the desktop cannot reach node addresses (no NodePort): cloudify listens on an address
the viewer reaches (127.0.0.1 for a native viewer, the Docker bridge's address for a viewer in a
container) and forwards each accepted connection over its own port-forward WebSocket.

A connection may arrive before the app pod runs (the viewer starts early and retries): it waits
for the pod, then is forwarded; if the pod's port is not listening yet the API server reports it
on the error channel and the connection is closed, and the viewer's next attempt goes through.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from kod import errors
from kod.log import get_logger

from cloudify.kube import Kube

log = get_logger(__name__)

DATA_CHANNEL, ERROR_CHANNEL = 0, 1
CHUNK = 64 * 1024


class PodForwarder:
    """One local listener for one pod port. `set_pod(name)` once the pod exists; `close()` stops
    the listener and every connection."""

    def __init__(self, kube: Kube, namespace: str, port: int, *, bind: str = "127.0.0.1") -> None:
        self.kube, self.namespace, self.port, self.bind = kube, namespace, port, bind
        self._pod: str | None = None
        self._pod_ready = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.local_port = 0

    async def start(self) -> int:
        """Listen on `bind`, on a free port; returns the port."""
        try:
            self._server = await asyncio.start_server(self._accept, self.bind, 0)
        except OSError as exc:
            raise errors.Unavailable(f"cannot listen on {self.bind} for the port-forward: {exc}") from exc
        self.local_port = self._server.sockets[0].getsockname()[1]
        return self.local_port

    def set_pod(self, name: str) -> None:
        self._pod = name
        self._pod_ready.set()

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
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws: aiohttp.ClientWebSocketResponse | None = None
        try:
            await self._pod_ready.wait()
            assert self._pod is not None
            ws = await self.kube.portforward(self.namespace, self._pod, self.port)
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
