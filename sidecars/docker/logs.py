"""Container logs: `kod.wire.LogOptions` (what `kubectl logs` asks a kubelet) to the Docker
engine's log endpoint, and the engine's multiplexed stream back to plain bytes.

Docker's log API frames stdout and stderr of a container without a TTY as
`[stream(1) 0 0 0 size(4, big-endian)] payload`; containers with a TTY send raw bytes. The
kubelet merges both streams in arrival order, and so does this module.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from datetime import datetime, timezone

from kod import wire

_HEADER = struct.Struct(">BxxxL")


def docker_params(opts: wire.LogOptions, now: datetime | None = None) -> dict[str, str]:
    """Query parameters of GET /containers/{id}/logs for `opts`."""
    params = {"stdout": "1", "stderr": "1"}
    if opts.follow:
        params["follow"] = "1"
    if opts.timestamps:
        params["timestamps"] = "1"
    if opts.tailLines is not None:
        params["tail"] = str(opts.tailLines)
    since: float | None = None
    if opts.sinceTime is not None:
        t = opts.sinceTime if opts.sinceTime.tzinfo else opts.sinceTime.replace(tzinfo=timezone.utc)
        since = t.timestamp()
    elif opts.sinceSeconds is not None:
        since = (now or datetime.now(timezone.utc)).timestamp() - opts.sinceSeconds
    if since is not None:
        params["since"] = f"{max(since, 0):.9f}"
    return params


async def demux(chunks: AsyncIterator[bytes], *, tty: bool) -> AsyncIterator[bytes]:
    """The payload bytes of Docker's log stream, stdout and stderr merged in order."""
    if tty:
        async for chunk in chunks:
            if chunk:
                yield chunk
        return
    buf = bytearray()
    async for chunk in chunks:
        buf.extend(chunk)
        out = bytearray()
        while len(buf) >= _HEADER.size:
            _, size = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                break
            out.extend(buf[_HEADER.size : _HEADER.size + size])
            del buf[: _HEADER.size + size]
        if out:
            yield bytes(out)


async def limit(chunks: AsyncIterator[bytes], limit_bytes: int | None) -> AsyncIterator[bytes]:
    """At most `limit_bytes` bytes of the stream (all of it for None)."""
    if limit_bytes is None:
        async for chunk in chunks:
            yield chunk
        return
    left = limit_bytes
    async for chunk in chunks:
        if len(chunk) >= left:
            yield chunk[:left]
            return
        left -= len(chunk)
        yield chunk
