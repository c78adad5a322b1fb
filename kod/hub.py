"""Fan-out of watch events to every open `GET /v1/watch` stream (interlink's and each sidecar's).

    hub = Hub(queue_size=1024)
    hub.publish(WatchEvent(type="STATUS", pod=status))    # never blocks
    with hub.subscribe(on_drop=close_connection) as sub:  # kod.watch_serve does this
        line = await sub.get()                            # an NDJSON line, or None at the end

Each event is serialised once, to its NDJSON line, and queued for every subscriber. Queues are
bounded: a subscriber that falls more than its queue behind is dropped at once (its `on_drop`
closes its connection, which also wakes a writer stuck on a client that does not read; the
client reconnects and gets a fresh SYNC), so a slow client neither slows the others nor makes
the service buffer without bound. Publishing never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kod.log import get_logger
from kod.wire import WatchEvent

log = get_logger(__name__)


def event_line(event: WatchEvent) -> bytes:
    """The NDJSON line of one event (the same bytes on every hop)."""
    return event.model_dump_json(exclude_none=True, by_alias=True).encode() + b"\n"


class Subscription:
    """One watch stream. `get()` returns the next line, or None once the subscription ended (the
    service shuts down, or the subscriber fell behind: then `dropped` is true)."""

    def __init__(self, size: int, on_drop: Callable[[], None] | None) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self._on_drop = on_drop
        self.ended = False
        self.dropped = False

    async def get(self) -> bytes | None:
        if self.ended and self._queue.empty():
            return None
        return await self._queue.get()

    def _offer(self, line: bytes) -> bool:
        try:
            self._queue.put_nowait(line)
            return True
        except asyncio.QueueFull:
            return False

    def _end(self, *, dropped: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self.dropped = dropped
        if dropped:
            # What is queued is no use any more (the client resyncs): only the end marker stays.
            self._queue = asyncio.Queue(maxsize=1)
            self._queue.put_nowait(None)
            if self._on_drop is not None:
                self._on_drop()
            return
        try:
            self._queue.put_nowait(None)  # after what is queued: a clean end
        except asyncio.QueueFull:
            self._queue = asyncio.Queue(maxsize=1)
            self._queue.put_nowait(None)


class Hub:
    """The set of watch subscribers. All methods are synchronous and never block."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subs: set[Subscription] = set()
        #: Subscribers dropped because they fell behind, since the start.
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._subs)

    @contextmanager
    def subscribe(self, on_drop: Callable[[], None] | None = None) -> Iterator[Subscription]:
        """A new subscriber for the block; it receives every event published from now on.
        `on_drop` is called (once) when it is dropped for falling behind."""
        sub = Subscription(self._queue_size, on_drop)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def publish(self, event: WatchEvent) -> None:
        """Queue an event for every subscriber; drop those whose queue is full."""
        if not self._subs:
            return
        line = event_line(event)
        for sub in list(self._subs):
            if not sub._offer(line):
                self._subs.discard(sub)
                self.dropped_total += 1
                log.warning("dropping a watch client that fell behind; it will resync", queue=self._queue_size)
                sub._end(dropped=True)

    def close(self) -> None:
        """End every subscription (shutdown): each stream ends after what is queued for it."""
        for sub in list(self._subs):
            sub._end(dropped=False)
        self._subs.clear()
