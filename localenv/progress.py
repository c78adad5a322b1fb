"""Progress output: one line when a step starts, one when it ends, with its duration.

    progress = Progress()
    with progress.step("etcd") as step:
        ...
        step.done("started, pid 1234")      # the end line's text (default: "ok")
        step.info("still building: 120 packages")   # an intermediate line

Output goes to a text stream (stdout by default) and is flushed at once, so it shows up live in
`make` and in CI logs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Step:
    """One running step; `done()` sets the text of its end line, `info()` prints a line now."""

    def __init__(self, progress: Progress, title: str) -> None:
        self._progress = progress
        self.title = title
        self.result = "ok"
        self.started = time.monotonic()

    def done(self, result: str) -> None:
        self.result = result

    def info(self, message: str) -> None:
        self._progress.line(f"      {message}")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Progress:
    """Prints steps and their durations; `quiet=True` prints only failures."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._stream = stream or sys.stdout
        self.quiet = quiet
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self._stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[Step]:
        step = Step(self, title)
        self.line(f"==> {title}")
        try:
            yield step
        except BaseException:
            print(f"    {title}: FAILED after {step.elapsed:.1f} s", file=self._stream, flush=True)
            raise
        self.line(f"    {step.result} ({step.elapsed:.1f} s)")

    def total(self, what: str) -> None:
        self.line(f"==> {what} in {time.monotonic() - self.started:.1f} s")
