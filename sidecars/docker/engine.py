"""A small async client of the Docker Engine API (over its unix socket or TCP), with aiohttp.

Why not the `docker` SDK: it is synchronous (requests), so every call would need a worker thread,
and every long-lived stream (the event stream, each `logs -f`) would pin a thread for its whole
life and could not be cancelled. The sidecar needs about twenty endpoints of a stable, versioned
REST API; speaking it directly keeps the whole service on one event loop, makes streams plain
cancellable async iterators, and costs no threads per pod or per stream.

The API version is pinned (`API_VERSION`, Docker 20.10's) so that request and response shapes
are fixed; newer engines serve it unchanged.

Errors: the engine's 4xx/5xx answers raise `EngineError` (with `status` and the engine's
message); a connection failure raises `kod.errors.Unavailable`. They are deliberately not the
`kod.errors` classes, so that an engine's 404 never leaks out as the API's 404 by accident.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from kod import errors
from kod.lines import read_lines

API_VERSION = "v1.41"

#: The frame header of Docker's multiplexed streams (attach, exec and logs without a TTY):
#: stream (1 stdin, 2 stdout... as 0/1/2), three zero bytes, the payload's size (big endian).
_MUX_HEADER = struct.Struct(">BxxxL")


class EngineError(Exception):
    """The Docker engine answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    def as_kod_error(self, doing: str) -> errors.KodError:
        """The error to give the sidecar's own caller: the engine refusing the request (400) is
        the caller's bad input, anything else the engine failing (503, worth a retry)."""
        if self.status == 400:
            return errors.InvalidInput(f"the Docker engine refused {doing}: {self.message}")
        return errors.Unavailable(f"the Docker engine failed {doing}: {self.message}")


def _q(value: str) -> str:
    return quote(value, safe="")


class Engine:
    """The Docker engine at `url` (unix:///var/run/docker.sock, http://host:port, tcp://host:port)."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        connector: aiohttp.BaseConnector
        if url.startswith("unix://"):
            connector = aiohttp.UnixConnector(path=url[len("unix://"):], limit=256)
            base = "http://docker"
        else:
            connector = aiohttp.TCPConnector(limit=256)
            base = "http://" + url.split("://", 1)[1]
        self.url = url
        self._base = f"{base.rstrip('/')}/{API_VERSION}"
        self._timeout = timeout
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        self._api_version: tuple[int, int] | None = None

    async def close(self) -> None:
        await self._session.close()

    # ---------------------------------------------------------------- plumbing

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        try:
            async with self._session.request(
                method,
                self._base + path,
                params=params,
                json=body,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
            ) as resp:
                payload = await resp.read()
                if resp.status >= 400:
                    raise EngineError(resp.status, _message(payload, resp.status))
                if raw:
                    return resp.headers, payload
                if not payload or resp.content_type != "application/json":
                    return None
                return json.loads(payload)
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(
                f"cannot reach the Docker engine at {self.url}: {exc}",
                hint="is dockerd running? (`python -m localenv up` starts it)",
            ) from exc
        except TimeoutError as exc:
            raise errors.Unavailable(f"the Docker engine did not answer {method} {path} in time") from exc

    # ---------------------------------------------------------------- system

    async def version(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/version"))

    async def info(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/info"))

    # ---------------------------------------------------------------- containers

    async def containers(self, label_filters: list[str]) -> list[dict[str, Any]]:
        """All containers (running or not) carrying every label filter ("key=value")."""
        filters = json.dumps({"label": label_filters})
        return list(await self._call("GET", "/containers/json", params={"all": "1", "filters": filters}))

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/containers/{_q(ref)}/json"))

    async def container_stats(self, ref: str) -> dict[str, Any]:
        """One reading of a running container's cgroup figures (one-shot: no second sample)."""
        return dict(await self._call("GET", f"/containers/{_q(ref)}/stats", params={"stream": "false", "one-shot": "true"}))

    async def create_container(self, name: str, body: dict[str, Any]) -> str:
        result = await self._call("POST", "/containers/create", params={"name": name}, body=body)
        return str(result["Id"])

    async def start_container(self, ref: str) -> None:
        try:
            await self._call("POST", f"/containers/{_q(ref)}/start")
        except EngineError as exc:
            if exc.status != 304:  # already started
                raise

    async def stop_container(self, ref: str, grace_seconds: int) -> None:
        """SIGTERM (or the image's STOPSIGNAL), then SIGKILL after `grace_seconds`."""
        try:
            await self._call(
                "POST", f"/containers/{_q(ref)}/stop", params={"t": str(grace_seconds)}, timeout=grace_seconds + 30
            )
        except EngineError as exc:
            if exc.status != 304:  # already stopped
                raise

    async def kill_container(self, ref: str, signal: str = "SIGKILL") -> None:
        try:
            await self._call("POST", f"/containers/{_q(ref)}/kill", params={"signal": signal})
        except EngineError as exc:
            if exc.status != 409:  # not running
                raise

    async def remove_container(self, ref: str) -> None:
        """Force-remove (kills first); a container already gone is fine."""
        try:
            await self._call("DELETE", f"/containers/{_q(ref)}", params={"force": "1"})
        except EngineError as exc:
            if not exc.not_found:
                raise

    async def rename_container(self, ref: str, name: str) -> None:
        await self._call("POST", f"/containers/{_q(ref)}/rename", params={"name": name})

    async def put_archive(self, ref: str, path: str, tar: bytes) -> None:
        """Extract `tar` at `path` inside the container (and the volumes it mounts)."""
        await self._call(
            "PUT",
            f"/containers/{_q(ref)}/archive",
            params={"path": path},
            data=tar,
            headers={"Content-Type": "application/x-tar"},
        )

    async def stat_path(self, ref: str, path: str) -> dict[str, Any] | None:
        """`lstat` of `path` in the container (parents resolved in the container's scope), or
        None when it does not exist. Keys: name, size, mode (Go FileMode bits), linkTarget."""
        try:
            headers, _ = await self._call(
                "HEAD", f"/containers/{_q(ref)}/archive", params={"path": path}, raw=True
            )
        except EngineError as exc:
            if exc.not_found:
                return None
            raise
        raw = headers.get("X-Docker-Container-Path-Stat", "")
        return json.loads(base64.b64decode(raw)) if raw else None

    async def logs(self, ref: str, params: Mapping[str, str]) -> AsyncIterator[bytes]:
        """The container's log stream as the engine sends it (multiplexed unless it has a TTY).
        The first item is an empty chunk, yielded as soon as the engine accepted the request."""
        try:
            async with self._session.get(
                f"{self._base}/containers/{_q(ref)}/logs",
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            ) as resp:
                if resp.status >= 400:
                    raise EngineError(resp.status, _message(await resp.read(), resp.status))
                yield b""  # the stream is open: callers may start answering
                async for chunk in resp.content.iter_any():
                    yield chunk
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(f"log stream from the Docker engine broke: {exc}") from exc

    # ---------------------------------------------------------------- exec and attach

    async def create_exec(
        self, ref: str, cmd: list[str], *, stdin: bool, stdout: bool, stderr: bool, tty: bool
    ) -> str:
        """An exec instance in a running container (not started yet); its id. `cmd` is an argv
        handed to the engine as a list: no shell ever parses it."""
        body = {
            "Cmd": list(cmd), "AttachStdin": stdin, "AttachStdout": stdout, "AttachStderr": stderr, "Tty": tty,
        }
        result = await self._call("POST", f"/containers/{_q(ref)}/exec", body=body)
        return str(result["Id"])

    async def api_version(self) -> tuple[int, int]:
        """The highest API version the engine speaks, (major, minor); asked once."""
        if self._api_version is None:
            text = str((await self.version()).get("ApiVersion") or API_VERSION.lstrip("v"))
            major, _, minor = text.partition(".")
            self._api_version = (int(major), int(minor or 0))
        return self._api_version

    async def start_exec(self, exec_id: str, *, tty: bool, console_size: tuple[int, int] | None = None) -> Hijacked:
        """Start an exec instance on a hijacked connection: the caller writes its stdin and reads
        its output (multiplexed unless `tty`) until the process ends, then closes it.
        `console_size` (width, height) is the terminal's size from the first instant on engines
        of API 1.42 and later (Docker 23); older ones need `resize_exec` once it runs."""
        body: dict[str, Any] = {"Detach": False, "Tty": tty}
        api = API_VERSION
        if tty and console_size is not None and await self.api_version() >= (1, 42):
            body["ConsoleSize"] = [console_size[1], console_size[0]]  # height, width
            api = "v1.42"
        return await self._hijack("POST", f"/exec/{_q(exec_id)}/start", body, api=api)

    async def resize_exec(self, exec_id: str, *, width: int, height: int) -> bool:
        """Set the size of an exec's TTY; False when the engine refused because the process is
        not running (not yet, or not any more)."""
        try:
            await self._call("POST", f"/exec/{_q(exec_id)}/resize", params={"h": str(height), "w": str(width)})
        except EngineError as exc:
            if exc.status not in (404, 409, 500):  # gone, or not running (yet/any more)
                raise
            return False
        return True

    async def inspect_exec(self, exec_id: str) -> dict[str, Any]:
        """An exec instance: Running, ExitCode (None while it runs), Pid."""
        return dict(await self._call("GET", f"/exec/{_q(exec_id)}/json"))

    async def attach(self, ref: str, *, stdin: bool, stdout: bool, stderr: bool) -> Hijacked:
        """Attach to a running container's main process on a hijacked connection (stream only, no
        logs of the past), as `kubectl attach` does."""
        params = {"stream": "1", "stdin": _flag(stdin), "stdout": _flag(stdout), "stderr": _flag(stderr)}
        return await self._hijack("POST", f"/containers/{_q(ref)}/attach?{urlencode(params)}", None)

    async def resize_container(self, ref: str, *, width: int, height: int) -> None:
        """Set the size of a container's TTY (for attach)."""
        try:
            await self._call("POST", f"/containers/{_q(ref)}/resize", params={"h": str(height), "w": str(width)})
        except EngineError as exc:
            if exc.status not in (404, 409, 500):
                raise

    async def exec_run(self, ref: str, cmd: list[str], *, timeout: float) -> tuple[int, bytes]:
        """Run `cmd` (an argv, no shell) in a running container without stdin or TTY and collect
        it: (exit code, stdout and stderr merged in arrival order). A command still running after
        `timeout` seconds raises TimeoutError (the process is left to finish in the container, as
        the kubelet's exec probes leave it); the engine's refusals raise EngineError (409: the
        container is not running; 404: no such container), an engine out of reach
        `kod.errors.Unavailable`.

        Exec probes call this every periodSeconds per pod, so it asks as little as it can: the
        exec is created and started on one connection of its own (two requests, the second one
        hijacked), and its exit code is read once the stream ended."""
        async with asyncio.timeout(timeout):
            reader, writer = await self._open()
            try:
                body = {"Cmd": list(cmd), "AttachStdin": False, "AttachStdout": True, "AttachStderr": True, "Tty": False}
                _, created = await self._exchange(reader, writer, "POST", f"/containers/{_q(ref)}/exec", body, upgrade=False)
                exec_id = str(json.loads(created)["Id"])
                await self._exchange(reader, writer, "POST", f"/exec/{_q(exec_id)}/start", {"Detach": False, "Tty": False}, upgrade=True)
                stream = Hijacked(reader, writer)
                stream.close_write()
                out = bytearray()
                async for _, payload in demux_frames(stream.reader):
                    out += payload
            finally:
                writer.close()
            # The stream ends when the process does; the engine may take a moment to record it.
            while True:
                info = await self.inspect_exec(exec_id)
                if not info.get("Running") and info.get("ExitCode") is not None:
                    return int(info["ExitCode"]), bytes(out)
                await asyncio.sleep(0.01)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection of its own to the engine (for requests whose stream is hijacked)."""
        try:
            async with asyncio.timeout(10):
                if self.url.startswith("unix://"):
                    return await asyncio.open_unix_connection(self.url[len("unix://"):])
                host, _, port = self.url.split("://", 1)[1].rstrip("/").rpartition(":")
                return await asyncio.open_connection(host, int(port))
        except (OSError, TimeoutError) as exc:
            raise errors.Unavailable(f"cannot reach the Docker engine at {self.url}: {exc}") from exc

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, body: Any,
        *, upgrade: bool, api: str = API_VERSION,
    ) -> tuple[int, bytes]:
        """One HTTP/1.1 request on `reader`/`writer`: (status, body). With `upgrade`, the engine
        hands the connection over to the stream (`Upgrade: tcp`, answered 101, or 200 by older
        engines) and the body is left unread: raw bytes both ways from there. Without it, the
        connection stays open for the next request (keep-alive). A refusal raises EngineError
        (the connection is closed), a broken answer Unavailable."""
        payload = json.dumps(body).encode() if body is not None else b""
        connection = "Connection: Upgrade\r\nUpgrade: tcp" if upgrade else "Connection: keep-alive"
        head = (
            f"{method} /{api}{path} HTTP/1.1\r\nHost: docker\r\n{connection}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        try:
            # One deadline for the whole answer: a wait_for per line would be a task per line.
            async with asyncio.timeout(self._timeout):
                writer.write(head.encode() + payload)
                await writer.drain()
                status_line = await reader.readline()
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = line.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                parts = status_line.decode("latin-1").split(" ", 2)
                status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
                answer = b""
                if status >= 400 or status == 0 or not upgrade:
                    answer = await _read_body(reader, headers)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            writer.close()
            raise errors.Unavailable(f"the Docker engine broke off {method} {path}: {exc}") from exc
        if status >= 400 or status == 0:
            writer.close()
            raise EngineError(status or 502, _message(answer, status))
        return status, answer

    async def _hijack(self, method: str, path: str, body: Any, *, api: str = API_VERSION) -> Hijacked:
        """One request on a connection of its own that the engine then hands over to the stream:
        raw bytes both ways from there. aiohttp's client cannot write once the answer came, so
        this speaks HTTP/1.1 itself (`_exchange`)."""
        reader, writer = await self._open()
        await self._exchange(reader, writer, method, path, body, upgrade=True, api=api)
        return Hijacked(reader, writer)

    # ---------------------------------------------------------------- images

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/images/{_q(ref)}/json"))

    # ---------------------------------------------------------------- volumes

    async def create_volume(
        self, name: str, labels: Mapping[str, str], driver_opts: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Create (or, when it exists, return) the local volume `name`."""
        body = {"Name": name, "Driver": "local", "Labels": dict(labels), "DriverOpts": dict(driver_opts or {})}
        return dict(await self._call("POST", "/volumes/create", body=body))

    async def inspect_volume(self, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/volumes/{_q(name)}"))

    async def volumes(self, label_filters: list[str]) -> list[dict[str, Any]]:
        result = await self._call("GET", "/volumes", params={"filters": json.dumps({"label": label_filters})})
        return list(result.get("Volumes") or [])

    async def remove_volume(self, name: str, *, force: bool = True) -> None:
        """Remove a volume; one already gone is fine. Without `force`, a volume a container
        uses is refused (EngineError 409)."""
        try:
            await self._call("DELETE", f"/volumes/{_q(name)}", params={"force": "1" if force else "0"})
        except EngineError as exc:
            if not exc.not_found:
                raise

    # ---------------------------------------------------------------- networks

    async def inspect_network(self, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/networks/{_q(name)}"))

    async def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a network; its inspect afterwards (Conflict, 409, when the name exists)."""
        result = await self._call("POST", "/networks/create", body=body)
        return await self.inspect_network(str(result["Id"]))

    # ---------------------------------------------------------------- events

    async def events(self, filters: Mapping[str, list[str]]) -> AsyncIterator[dict[str, Any]]:
        """The engine's event stream, one decoded event at a time, until the connection ends.
        The first item is yielded only after the engine accepted the subscription: callers may
        resync right after opening and miss nothing."""
        try:
            async with self._session.get(
                f"{self._base}/events",
                params={"filters": json.dumps(dict(filters))},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            ) as resp:
                if resp.status >= 400:
                    raise EngineError(resp.status, _message(await resp.read(), resp.status))
                yield {"Type": "kod.subscribed"}
                # kod.lines, not aiohttp's line iterator: one event with many labels (or a long
                # image name) must not end the stream at 128 KiB.
                async for line in read_lines(resp.content):
                    yield json.loads(line)
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(f"event stream from the Docker engine broke: {exc}") from exc


class Hijacked:
    """A hijacked engine connection: `reader` gives the process's output, `write` feeds its
    stdin, `close_write` ends its stdin (EOF), `close` drops the connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close_write(self) -> None:
        if self.writer.can_write_eof() and not self.writer.is_closing():
            try:
                self.writer.write_eof()
            except OSError:
                pass

    def close(self) -> None:
        self.writer.close()


async def demux_frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """(stream, payload) of Docker's multiplexed stream (1 stdout, 2 stderr) until it ends; an
    end in the middle of a frame ends it too (the process is gone either way)."""
    while True:
        try:
            header = await reader.readexactly(_MUX_HEADER.size)
            kind, size = _MUX_HEADER.unpack(header)
            payload = await reader.readexactly(size) if size else b""
        except asyncio.IncompleteReadError:
            return
        except (ConnectionResetError, BrokenPipeError):
            return
        yield kind, payload


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    """The body of an answer whose headers were read: by Content-Length, or chunked."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()  # the blank line after the last chunk (no trailers from the engine)
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    size = int(headers.get("content-length") or 0)
    return await reader.readexactly(size) if size else b""


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _message(payload: bytes, status: int) -> str:
    try:
        return str(json.loads(payload).get("message") or f"HTTP {status}")
    except (ValueError, AttributeError):
        return payload.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
