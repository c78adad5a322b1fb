"""Fan-out of watch events to every client of interlink's own `GET /v1/watch`.

Each event is serialised once, to its NDJSON line, and queued for every subscriber. Queues are
bounded: a subscriber that falls behind by more than its queue is dropped at once (its
connection is closed, so it reconnects and gets a fresh SYNC) and never slows the others, and
publishing never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kod.log import get_logger
from kod.wire import WatchEvent

log = get_logger(__name__)


def event_line(event: WatchEvent) -> bytes:
    """The NDJSON line of one event."""
    return event.model_dump_json(exclude_none=True).encode() + b"\n"


class Subscription:
    """One watch client. `get()` returns the next line, or None once the subscription ended
    (interlink shuts down, or the client fell behind)."""

    def __init__(self, size: int, on_drop: Callable[[], None] | None) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self._on_drop = on_drop
        self.ended = False
        self.dropped = False

    async def get(self) -> bytes | None:
        if self.ended and self._queue.empty():
            return None
        return await self._queue.get()

    def _offer(self, line: bytes | None) -> bool:
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
            # The queue is full, so no end marker fits; closing the connection wakes the writer
            # that is stuck on a client which does not read.
            self._queue = asyncio.Queue(maxsize=1)
            self._queue.put_nowait(None)
            if self._on_drop is not None:
                self._on_drop()
        elif not self._offer(None):
            self._queue = asyncio.Queue(maxsize=1)
            self._queue.put_nowait(None)


class Hub:
    """The set of watch subscribers."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subs: set[Subscription] = set()
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self, on_drop: Callable[[], None] | None = None) -> Subscription:
        """A new subscriber; it receives every event published from now on."""
        sub = Subscription(self._queue_size, on_drop)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, event: WatchEvent) -> None:
        """Queue an event for every subscriber; never blocks."""
        if not self._subs:
            return
        line = event_line(event)
        for sub in list(self._subs):
            if not sub._offer(line):
                self._subs.discard(sub)
                self.dropped_total += 1
                log.warning("dropping a watch client that fell behind; it will resync", queue=self._queue_size)
                sub._end(dropped=True)

    def close_all(self) -> None:
        """End every subscription (shutdown): their streams finish after what is queued."""
        for sub in list(self._subs):
            sub._end(dropped=False)
        self._subs.clear()
