"""A pod's exec and port-forward through the API server: the WebSocket channel protocol
(`v4.channel.k8s.io`), on `KubeClient.websocket`.

Every binary frame is one channel byte and a payload. exec: 0 stdin, 1 stdout, 2 stderr,
3 the final status (JSON). port-forward, one port: 0 data, 1 errors, each opening with the port
number (2 bytes, little endian) before any payload.

    async for line in exec_lines(kube, "ns", "pod", "app", ["sh", "-c", "echo hi"]):
        ...
    ws = await portforward(kube, "ns", "pod", 5900)   # the caller pumps DATA_CHANNEL frames
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from kod.kube import KubeClient
from kod.lines import split_lines

STDIN_CHANNEL, STDOUT_CHANNEL, STDERR_CHANNEL, STATUS_CHANNEL = 0, 1, 2, 3
#: port-forward's channels for its (one) port.
DATA_CHANNEL, ERROR_CHANNEL = 0, 1


async def exec_lines(kube: KubeClient, namespace: str, pod: str, container: str, command: list[str]) -> AsyncIterator[str]:
    """Run `command` in a container (no stdin, no tty) and yield its stdout line by line (no
    line-size limit; a last line without a newline included) until it ends. Its stderr and exit
    status are not asked for: a caller that wants to know success prints it on stdout. Refusals
    (403: no exec permission) raise the vocabulary's errors before the first line."""
    params = [("container", container), ("stdout", "1"), ("stderr", "0"), ("stdin", "0"), ("tty", "0")]
    params += [("command", part) for part in command]
    ws = await kube.websocket(f"/api/v1/namespaces/{namespace}/pods/{pod}/exec", params=params)
    try:
        async for line in split_lines(channel(ws, STDOUT_CHANNEL), keep_empty=True, final=True):
            yield line.decode("utf-8", "replace")
    finally:
        await ws.close()


async def channel(ws: aiohttp.ClientWebSocketResponse, number: int) -> AsyncIterator[bytes]:
    """The payloads of one channel of a channel WebSocket, until it closes."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY and msg.data and msg.data[0] == number:
            yield msg.data[1:]


async def portforward(kube: KubeClient, namespace: str, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
    """Open the API server's port-forward to one port of a pod; the caller sends and reads
    `DATA_CHANNEL` frames (skipping each channel's 2-byte port header), reads failures on
    `ERROR_CHANNEL`, and closes the WebSocket."""
    return await kube.websocket(f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward", params={"ports": port})
