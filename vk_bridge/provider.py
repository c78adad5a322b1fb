"""The provider: where vk_bridge runs pods. The real one is InterLink over REST.

The surface is split by caller, like virtual-kubelet's: the pod sync loop creates, deletes and
lists; the node heartbeat pings; the kubelet API streams logs; and one task consumes pushed status
changes (`watch`) instead of polling pods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import ValidationError

from kod import errors, wire
from kod.http import ApiClient
from kod.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

#: A stream that stays silent this long (three missed heartbeats) is dead: reconnect.
WATCH_INACTIVITY_SECONDS = 3 * wire.WATCH_HEARTBEAT_SECONDS
#: Longest watch line accepted (a SYNC of every pod); beyond it the stream is dropped.
MAX_LINE_BYTES = 64 * 1024 * 1024


@runtime_checkable
class Provider(Protocol):
    """What vk_bridge needs from the runtime. All methods are coroutines unless noted; errors are
    `kod.errors` exceptions (`Unavailable` is worth retrying, the others are not). Returned
    objects are read-only: callers must not modify them."""

    async def create_pod(self, request: wire.PodCreateRequest) -> wire.PodStatus:
        """Start the pod. Idempotent by uid: creating a uid that already exists returns its
        current status and starts nothing. A pod the runtime's policy refuses raises `Forbidden`
        (or comes back Failed, with the reason in the status); nothing is started then."""
        ...

    async def delete_pod(self, namespace: str, name: str, uid: str, *, grace_period_seconds: int | None) -> wire.PodStatus | None:
        """Stop the pod's containers (SIGTERM, then SIGKILL after the grace period) and remove
        them; returns the final status, or None when the pod was not there. May be called more
        than once for the same pod; only the given uid is touched."""
        ...

    async def get_pod_status(self, namespace: str, name: str) -> wire.PodStatus:
        """The pod's current status; `NotFound` when the runtime does not know it."""
        ...

    async def list_pods(self) -> Sequence[wire.PodStatus]:
        """Every pod the runtime knows, running or finished."""
        ...

    def logs(self, namespace: str, name: str, container: str, options: wire.LogOptions) -> AsyncIterator[bytes]:
        """A container's log as chunks of bytes; follows (until cancelled or the container stops)
        when `options.follow`. Raises `NotFound` before the first chunk for an unknown container.
        (Not a coroutine: an async generator.)"""
        ...

    async def ping(self) -> wire.NodeInfo:
        """Health and capacity of the runtime; raises `Unavailable` when it cannot answer."""
        ...

    async def watch(self, notify: Callable[[wire.WatchEvent], None], *, connected: asyncio.Event | None = None) -> None:
        """Deliver pushed status changes until cancelled, reconnecting forever. Every (re)connection
        starts with a SYNC event carrying every pod, so nothing missed is lost for good; then
        STATUS and DELETED events in order. `notify` must not block (it may only enqueue);
        `connected` is set while a stream is open and cleared when it breaks."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class InterLinkProvider:
    """`Provider` on the InterLink REST API (`kod.wire`), with retries for `Unavailable`."""

    def __init__(
        self, url: str, token: str | None, *, timeout: float = 30.0, backoff: Sequence[float] = (0.1, 0.5, 1.0, 2.0)
    ) -> None:
        self.url = url
        self._api = ApiClient(url, token, timeout=timeout)
        self._timeout = timeout
        self._backoff = tuple(backoff)

    async def close(self) -> None:
        await self._api.close()

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        attempts = len(self._backoff) + 1
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except errors.Unavailable as exc:
                if attempt == attempts:
                    raise
                delay = self._backoff[attempt - 1]
                log.warning("InterLink call failed, retrying", call=what, attempt=f"{attempt}/{attempts}", delay=delay, error=str(exc))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def create_pod(self, request: wire.PodCreateRequest) -> wire.PodStatus:
        result: wire.PodStatus = await self._retrying(
            "create", lambda: self._api.request("POST", f"{wire.API_PREFIX}/pods", body=request, model=wire.PodStatus)
        )
        return result

    async def delete_pod(self, namespace: str, name: str, uid: str, *, grace_period_seconds: int | None) -> wire.PodStatus | None:
        params = wire.DeleteOptions(uid=uid, gracePeriodSeconds=grace_period_seconds).model_dump(exclude_none=True)
        # The call lasts as long as the grace period: give it that much on top of the usual timeout.
        timeout = self._timeout + (grace_period_seconds or 30)
        try:
            result: wire.PodStatus = await self._retrying(
                "delete",
                lambda: self._api.request(
                    "DELETE", f"{wire.API_PREFIX}/pods/{namespace}/{name}", params=params, model=wire.PodStatus, timeout=timeout
                ),
            )
        except errors.NotFound:
            return None
        return result

    async def get_pod_status(self, namespace: str, name: str) -> wire.PodStatus:
        result: wire.PodStatus = await self._retrying(
            "status", lambda: self._api.request("GET", f"{wire.API_PREFIX}/pods/{namespace}/{name}", model=wire.PodStatus)
        )
        return result

    async def list_pods(self) -> Sequence[wire.PodStatus]:
        result: wire.PodStatusList = await self._retrying(
            "list", lambda: self._api.request("GET", f"{wire.API_PREFIX}/pods", model=wire.PodStatusList)
        )
        return result.items

    async def logs(self, namespace: str, name: str, container: str, options: wire.LogOptions) -> AsyncIterator[bytes]:
        params = options.model_dump(exclude_none=True, mode="json")
        params = {k: v for k, v in params.items() if v is not False}
        async for chunk in self._api.stream(
            "GET", f"{wire.API_PREFIX}/pods/{namespace}/{name}/containers/{container}/logs", params=params
        ):
            yield chunk

    async def ping(self) -> wire.NodeInfo:
        result: wire.NodeInfo = await self._api.request("GET", f"{wire.API_PREFIX}/ping", model=wire.NodeInfo, timeout=10.0)
        return result

    async def watch(self, notify: Callable[[wire.WatchEvent], None], *, connected: asyncio.Event | None = None) -> None:
        failures = 0
        while True:
            try:
                async for line in self._watch_lines():
                    event = wire.WatchEvent.model_validate_json(line)
                    if event.type == "SYNC":
                        failures = 0
                        if connected is not None:
                            connected.set()
                    notify(event)
                raise errors.Unavailable("InterLink closed the watch stream")
            except (errors.KodError, ValidationError, TimeoutError) as exc:
                if connected is not None:
                    connected.clear()
                delay = self._backoff[min(failures, len(self._backoff) - 1)] if self._backoff else 1.0
                failures += 1
                log.warning("InterLink watch interrupted, reconnecting", attempt=failures, delay=delay, error=str(exc))
                await asyncio.sleep(delay)

    async def _watch_lines(self) -> AsyncIterator[bytes]:
        """The NDJSON stream as lines, with an inactivity timeout: a stream that misses three
        heartbeats is treated as broken. Lines are split here because aiohttp's line reader
        refuses lines over 128 KiB, and a SYNC of a few hundred pods is larger."""
        chunks = self._api.stream("GET", f"{wire.API_PREFIX}/watch").__aiter__()
        pending = b""
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), WATCH_INACTIVITY_SECONDS)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise errors.Unavailable(f"no heartbeat from InterLink for {WATCH_INACTIVITY_SECONDS:.0f}s") from exc
                pending += chunk
                if len(pending) > MAX_LINE_BYTES:
                    raise errors.Unavailable(f"a watch line from InterLink exceeds {MAX_LINE_BYTES} bytes")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
