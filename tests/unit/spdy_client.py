"""A SPDY/3.1 client written from the framing (`kod.spdy`'s frames), as client-go's speaks it:
the tests of the kubelet side drive real servers with it."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from kod import spdy


class Client:
    """The client side, from the framing: upgrade, open streams, read frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.deflate, self.inflate = spdy.HeaderCompressor(), spdy.HeaderDecompressor()
        self.next_id = 1

    @classmethod
    async def connect(cls, port: int, path: str = "/", headers: dict[str, str] | list[tuple[str, str]] | None = None,
                      ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> tuple[Client, int, dict[str, str]]:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        extra = "".join(f"{k}: {v}\r\n" for k, v in pairs)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     f"Content-Length: 0\r\n{extra}\r\n".encode())
        status_line = (await reader.readline()).decode()
        answer: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            answer[key.strip().lower()] = (answer.get(key.strip().lower(), "") + "," + value.strip()).strip(",")
        status = int(status_line.split()[1])
        if status != 101 and "content-length" in answer:
            answer["body"] = (await reader.readexactly(int(answer["content-length"]))).decode()
        return cls(reader, writer), status, answer

    def send(self, frame: spdy.Frame) -> None:
        self.writer.write(spdy.encode(frame, self.deflate))

    def open(self, headers: dict[str, list[str]], *, fin: bool = False) -> int:
        sid, self.next_id = self.next_id, self.next_id + 2
        self.send(spdy.SynStream(sid, headers, flags=spdy.FLAG_FIN if fin else 0))
        return sid

    async def frame(self, timeout: float = 5) -> spdy.Frame | None:
        return await asyncio.wait_for(spdy.read_frame(self.reader, self.inflate), timeout)

    async def frames_until_close(self, timeout: float = 10) -> list[spdy.Frame]:
        out: list[spdy.Frame] = []
        try:
            while True:
                frame = await self.frame(timeout)
                if frame is not None:
                    out.append(frame)
        except asyncio.IncompleteReadError:
            return out

    async def collect(self, timeout: float = 10) -> tuple[dict[int, bytes], set[int], list[spdy.Frame]]:
        """Until the server closes: the DATA of each stream, the streams it ended (FIN or RST),
        and every frame."""
        frames = await self.frames_until_close(timeout)
        data: dict[int, bytes] = {}
        ended: set[int] = set()
        for f in frames:
            if isinstance(f, spdy.DataFrame):
                data[f.stream_id] = data.get(f.stream_id, b"") + f.data
                if f.flags & spdy.FLAG_FIN:
                    ended.add(f.stream_id)
            elif isinstance(f, spdy.RstStream):
                ended.add(f.stream_id)
        return data, ended, frames


def status_of(raw: bytes) -> dict[str, Any]:
    """The v4 error stream's Status."""
    return dict(json.loads(raw))
