"""The client side of the pushed status: keep one `GET /v1/watch` open forever.

    health = LinkHealth()
    await follow_watch(api, on_event, idle_seconds=30, backoff=(0.2, 0.5, 1, 2, 5), health=health)

vk_bridge follows interlink's stream with it, interlink each sidecar's. It has one job: reconnect
forever (until cancelled). Each connection must open with a SYNC (every pod the peer knows, so
whatever was missed while the stream was down is repaired), then STATUS, DELETED and HEARTBEAT
events follow in order; every event goes to `on_event`, which must not block (it may only update
memory and enqueue). A stream that ends, breaks, sends a malformed event, opens with something
other than SYNC, or stays silent for `idle_seconds` (three missed heartbeats) is dropped and
reopened after the next backoff delay (the last one repeats); a SYNC resets the backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pydantic import ValidationError

from kod import errors
from kod.http import ApiClient
from kod.log import get_logger, new_request_id, request_id_var
from kod.wire import API_PREFIX, WatchEvent

log = get_logger(__name__)

WATCH_PATH = f"{API_PREFIX}/watch"


@dataclass
class LinkHealth:
    """The state of one followed stream, for health answers and logs. `event`, when given, is
    set while the stream is up and cleared while it is down."""

    connected: bool = False
    error: str | None = "not connected yet"
    since: float = field(default_factory=time.monotonic)
    connects: int = 0
    event: asyncio.Event | None = None

    def up(self) -> None:
        self.connected, self.error, self.since = True, None, time.monotonic()
        self.connects += 1
        if self.event is not None:
            self.event.set()

    def down(self, error: str) -> None:
        if self.connected:
            self.since = time.monotonic()
        self.connected, self.error = False, error
        if self.event is not None:
            self.event.clear()


async def follow_watch(
    api: ApiClient,
    on_event: Callable[[WatchEvent], None],
    *,
    idle_seconds: float,
    backoff: Sequence[float],
    health: LinkHealth | None = None,
    logger: Any = None,
) -> NoReturn:
    """Follow the peer's watch stream until cancelled (see the module's docstring). The token is
    read again before every connection (`ApiClient.reload_token`), so a token the peer created
    or rotated meanwhile is picked up. Problems are logged when the stream goes down and then
    every 20th attempt, not at every retry."""
    health = health if health is not None else LinkHealth()
    delays = tuple(backoff) or (1.0,)
    bound = logger if logger is not None else log.bind(peer=api.name or api.url)
    attempt = 0
    while True:
        request_id_var.set(f"watch-{new_request_id()}")
        try:
            api.reload_token()
            async with api.open(WATCH_PATH) as stream:
                began = False
                async for line in stream.lines(idle_seconds=idle_seconds):
                    event = WatchEvent.model_validate_json(line)
                    if event.type == "SYNC":
                        on_event(event)
                        if not health.connected:
                            bound.info("status stream up", pods=len(event.pods or []), attempt=attempt + 1)
                        health.up()
                        attempt, began = 0, True
                    elif not began:
                        raise errors.Unavailable(f"the stream began with {event.type}, not SYNC")
                    else:
                        on_event(event)
            raise errors.Unavailable(f"{api.name or api.url} ended its status stream")
        except ValidationError as exc:
            problem = f"malformed watch event: {str(exc).splitlines()[0]}"
        except errors.KodError as exc:
            problem = str(exc) or type(exc).__name__
        delay = delays[min(attempt, len(delays) - 1)]
        attempt += 1
        if health.connected or attempt == 1 or attempt % 20 == 0:
            bound.warning("status stream down; reconnecting", error=problem, attempt=attempt, retry_in=delay)
        health.down(problem)
        await asyncio.sleep(delay)
