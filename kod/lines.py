"""Newline-delimited streams (NDJSON watch events, Kubernetes watches, followed logs), read
line by line with no fixed line-size limit.

aiohttp's own line iterator (`async for line in resp.content`) refuses lines over 128 KiB, and
one event can be larger (a SYNC of a few hundred pods, a Kubernetes watch event of a big object).
`read_lines` splits the chunks itself; its only bound is `max_line_bytes`, a guard against a peer
that never sends a newline, which the caller chooses (default 64 MiB).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from kod import errors

#: Default guard against a peer that streams without newlines.
MAX_LINE_BYTES = 64 * 2**20


class LineTooLong(errors.Unavailable):
    """The peer sent more than `max_line_bytes` without a newline: the stream is dropped."""


async def split_lines(
    chunks: AsyncIterator[bytes], *, max_line_bytes: int = MAX_LINE_BYTES, keep_empty: bool = False,
    final: bool = False,
) -> AsyncIterator[bytes]:
    """The lines of a chunked byte stream, without their '\\n'. Empty (whitespace-only) lines are
    skipped unless `keep_empty`. A last line without a newline is yielded only when `final`
    (a log's last line), not for NDJSON, where it means the stream was cut mid-event."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        while chunk:
            cut = chunk.find(b"\n")
            if cut < 0:
                parts.append(chunk)
                size += len(chunk)
                if size > max_line_bytes:
                    raise LineTooLong(f"a line of the stream exceeds {max_line_bytes} bytes")
                break
            parts.append(chunk[:cut])
            line = b"".join(parts)
            parts, size = [], 0
            chunk = chunk[cut + 1:]
            if keep_empty or line.strip():
                yield line
    if final and parts:
        line = b"".join(parts)
        if keep_empty or line.strip():
            yield line


async def read_chunks(content: asyncio.StreamReader | object, idle_seconds: float | None = None) -> AsyncIterator[bytes]:
    """The chunks of an aiohttp `StreamReader` (anything with `readany()`) until its end. With
    `idle_seconds`, raises TimeoutError when nothing arrives for that long."""
    readany = content.readany  # type: ignore[attr-defined]
    while True:
        chunk = await (asyncio.wait_for(readany(), idle_seconds) if idle_seconds else readany())
        if not chunk:
            return
        yield chunk


def read_lines(
    content: object, *, idle_seconds: float | None = None, max_line_bytes: int = MAX_LINE_BYTES,
) -> AsyncIterator[bytes]:
    """The non-empty lines of an aiohttp response body (`resp.content`); see `split_lines`."""
    return split_lines(read_chunks(content, idle_seconds), max_line_bytes=max_line_bytes)
