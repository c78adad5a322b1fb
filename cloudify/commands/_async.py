"""Running a command's coroutine with Ctrl-C and SIGTERM turned into a clean cancellation.

The signal handler only counts the signal and cancels; what the user is told about it is printed
by a task of its own, through an output that cannot fail (`say`). A handler that printed would
fail on a broken stderr (`cloudify ... 2>&1 | tee log`: Ctrl-C kills tee first) before it
cancelled anything, and the Ctrl-C would be lost.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from kod import console

T = TypeVar("T")

#: Exit code after an interruption (the shell's convention for SIGINT).
EXIT_INTERRUPTED = 130
#: What the second signal says (the first says the command's `notice`).
CLEANING_UP = "cleaning up; press Ctrl-C once more to leave the rest to `cloudify gc`"


@dataclass
class Interruptions:
    """The signals received so far (the handler's only state) and how many the user was told of."""

    notice: str | None = None
    signals: list[int] = field(default_factory=list)
    told: int = 0
    #: Set by the handler when there is something new to tell the user.
    news: asyncio.Event = field(default_factory=asyncio.Event)

    def on_signal(self, signum: int, task: asyncio.Future[object]) -> None:
        """The signal handler: the first signal cancels `task` (its `finally` blocks clean up),
        the second changes nothing, a third cancels again (abandoning the cleanup). Never prints,
        never raises."""
        self.signals.append(signum)
        if len(self.signals) != 2:
            task.cancel()
        self.news.set()

    def tell(self) -> None:
        """Say what the signals not yet told of did (outside the handler; never raises)."""
        for n in range(self.told, len(self.signals)):
            if n == 0 and self.notice:
                say(f"\n{self.notice}")
            elif n == 1:
                say(CLEANING_UP)
        self.told = len(self.signals)

    async def announce(self) -> None:
        """Tells the user what each signal did, soon after the handler ran."""
        while True:
            await self.news.wait()
            self.news.clear()
            self.tell()


def say(text: str, err: TextIO | None = None) -> None:
    """A line on stderr that never raises (the reader of a pipe may be gone)."""
    print(text, file=console.tolerant(err or sys.stderr), flush=True)


def run(main: Callable[[], Awaitable[T]], *, interrupted: T, notice: str | None = None) -> T:
    """Run `main()`. The first SIGINT/SIGTERM cancels it (its `finally` blocks clean up); the next
    one only says that cleanup is under way; a third abandons it. Returns `interrupted` after a
    cancellation (for exit codes: 128 + the signal's number, as a shell reports it)."""

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main())
        state = Interruptions(notice=notice)
        announcer = asyncio.create_task(state.announce())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, state.on_signal, sig, task)
        try:
            return await task
        except asyncio.CancelledError:
            if isinstance(interrupted, int) and interrupted == EXIT_INTERRUPTED and state.signals:
                return 128 + state.signals[0]  # type: ignore[return-value]
            return interrupted
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            announcer.cancel()
            state.tell()  # a signal the announcer had no time for (the cleanup was quick)

    return asyncio.run(runner())
