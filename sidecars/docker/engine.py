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

import base64
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from kod import errors
from kod.lines import read_lines

API_VERSION = "v1.41"


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


def _message(payload: bytes, status: int) -> str:
    try:
        return str(json.loads(payload).get("message") or f"HTTP {status}")
    except (ValueError, AttributeError):
        return payload.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
