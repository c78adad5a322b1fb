"""Running a command's coroutine with Ctrl-C and SIGTERM turned into a clean cancellation."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Exit code after an interruption (the shell's convention for SIGINT).
EXIT_INTERRUPTED = 130


def run(main: Callable[[], Awaitable[T]], *, interrupted: T, notice: str | None = None) -> T:
    """Run `main()`. The first SIGINT/SIGTERM cancels it (its `finally` blocks clean up); the next
    one only says that cleanup is under way; a third abandons it. Returns `interrupted` after a
    cancellation (for exit codes: 128 + the signal's number, as a shell reports it)."""

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main())
        hits = 0
        first: list[int] = []

        def on_signal(signum: int) -> None:
            nonlocal hits
            hits += 1
            if hits == 1:
                first.append(signum)
                if notice:
                    print(f"\n{notice}", file=sys.stderr, flush=True)
                task.cancel()
            elif hits == 2:
                print("cleaning up; press Ctrl-C once more to leave the rest to `cloudify gc`", file=sys.stderr, flush=True)
            else:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await task
        except asyncio.CancelledError:
            if isinstance(interrupted, int) and interrupted == EXIT_INTERRUPTED and first:
                return 128 + first[0]  # type: ignore[return-value]
            return interrupted
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())
