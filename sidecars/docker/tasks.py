"""The runtime's background tasks: one-off jobs that outlive the call that started them (a
delete resumed after a restart, the sweep after a delete, removing old runs).

Contract: `spawn` never blocks and never raises; a task's failure is logged with the task's name
(never lost silently, never "exception was never retrieved"); `cancel_all` cancels every task
still running and waits for them, for a clean stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from kod.log import get_logger

log = get_logger(__name__)


class Background:
    """The set of running background tasks."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background (a name says what it does in logs)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), error=repr(task.exception()))

    async def cancel_all(self) -> None:
        """Cancel every running task and wait until they all ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
