"""One long-lived watch stream per sidecar, feeding the pod store. Nothing polls per pod.

`follow_sidecar` has one job: keep `GET /v1/watch` open to one sidecar forever. Each connection
starts with the sidecar's SYNC (which replaces everything known about it), then applies STATUS
and DELETED events as they come. A stream that ends, breaks, sends garbage or stays silent for
`settings.sidecar_idle_seconds` is dropped and reopened after a backoff delay; the next SYNC repairs whatever was
missed meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from pydantic import ValidationError

from kod import errors
from kod.log import get_logger, new_request_id, request_id_var
from kod.wire import WatchEvent

from interlink.settings import WatchSettings
from interlink.sidecar import SidecarClient
from interlink.store import PodStore

log = get_logger(__name__)

#: A line longer than this is refused (a SYNC of thousands of pods stays far below).
MAX_LINE_BYTES = 64 * 2**20


@dataclass
class LinkHealth:
    """The state of the watch stream to one sidecar, for ping and the logs."""

    connected: bool = False
    error: str | None = "not connected yet"
    since: float = field(default_factory=time.monotonic)
    connects: int = 0

    def up(self) -> None:
        self.connected, self.error, self.since = True, None, time.monotonic()
        self.connects += 1

    def down(self, error: str) -> None:
        if self.connected:
            self.since = time.monotonic()
        self.connected, self.error = False, error


async def ndjson_lines(content: aiohttp.StreamReader, idle_seconds: float) -> AsyncIterator[bytes]:
    """The non-empty lines of a stream. Raises TimeoutError when nothing arrives for
    `idle_seconds`. (aiohttp's own line reader refuses lines over 128 KiB; a SYNC can be larger.)"""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await asyncio.wait_for(content.readany(), idle_seconds)
        if not chunk:
            return
        while chunk:
            cut = chunk.find(b"\n")
            if cut < 0:
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_LINE_BYTES:
                    raise errors.InvalidInput(f"a watch line exceeds {MAX_LINE_BYTES} bytes")
                break
            parts.append(chunk[:cut])
            line = b"".join(parts)
            parts, size = [], 0
            chunk = chunk[cut + 1:]
            if line.strip():
                yield line


async def follow_sidecar(
    client: SidecarClient,
    store: PodStore,
    settings: WatchSettings,
    health: LinkHealth,
) -> None:
    """Keep the sidecar's watch stream open forever (until cancelled)."""
    idle_seconds = settings.sidecar_idle_seconds
    attempt = 0
    bound = log.bind(sidecar=client.name)
    while True:
        request_id_var.set(f"watch-{new_request_id()}")
        try:
            client.reload_token()
            async with client.open("/v1/watch") as resp:
                began = False
                async for line in ndjson_lines(resp.content, idle_seconds):
                    event = WatchEvent.model_validate_json(line)
                    if event.type == "SYNC":
                        store.apply_sync(client.name, event.pods or [])
                        if not health.connected:
                            bound.info("status stream up", pods=store.count(client.name), attempt=attempt + 1)
                        health.up()
                        attempt, began = 0, True
                    elif not began:
                        raise errors.Unavailable(f"the stream began with {event.type}, not SYNC")
                    elif event.type == "STATUS" and event.pod is not None:
                        store.apply_status(client.name, event.pod)
                    elif event.type == "DELETED" and event.pod is not None:
                        store.apply_deleted(client.name, event.pod)
            raise errors.Unavailable("the sidecar ended its status stream")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            problem = f"status stream silent for {idle_seconds:g} s"
        except ValidationError as exc:
            problem = f"malformed watch event: {str(exc).splitlines()[0]}"
        except (errors.KodError, aiohttp.ClientError, OSError) as exc:
            problem = str(exc) or type(exc).__name__
        delay = settings.backoff_seconds[min(attempt, len(settings.backoff_seconds) - 1)]
        attempt += 1
        if health.connected or attempt == 1 or attempt % 20 == 0:
            bound.warning("status stream down; reconnecting", error=problem, attempt=attempt, retry_in=delay)
        health.down(problem)
        await asyncio.sleep(delay)
