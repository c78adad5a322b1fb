"""Fan-out of watch events to every open `/v1/watch` stream.

Publishing never blocks: each subscriber has a bounded queue, and one that falls behind is cut
off (its stream ends, the client reconnects and gets a fresh SYNC), so a slow client can neither
stall the sidecar nor make it buffer without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from kod import wire


class Subscriber:
    """One open watch stream. `None` in the queue means: end the stream."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[wire.WatchEvent | None] = asyncio.Queue(maxsize=size)
        self.overflowed = False

    def offer(self, event: wire.WatchEvent | None) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            # Make room for the end marker so the stream notices at once.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class Hub:
    """The set of open watch streams."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscriber] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        sub = Subscriber(self._queue_size)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    def publish(self, event: wire.WatchEvent) -> None:
        for sub in list(self._subscribers):
            sub.offer(event)

    def close(self) -> None:
        """End every stream (shutdown)."""
        for sub in list(self._subscribers):
            sub.offer(None)
