"""The viewer interface the session drives, whatever runs the viewer."""

from __future__ import annotations

from typing import Protocol

from cloudify.manifests import Target


class Viewer(Protocol):
    """One session's viewer.

    `start` returns as soon as the viewer was asked to start (it retries the connection by itself
    while the app starts, so it may start before the app runs); `wait_running` returns once its
    process runs; `wait_done` once it ended, with its exit code (0: the user closed the window or
    the app ended). `stop` ends it and removes whatever it created; it may be called more than
    once, and before `start`.
    """

    kind: str

    async def start(self, target: Target) -> None: ...

    async def wait_running(self, timeout: float) -> str:
        """Returns a short description of where it runs (for the progress line)."""
        ...

    async def wait_done(self) -> int: ...

    async def stop(self) -> None: ...
