"""Output for a person that can never fail: a terminal or pipe that went away costs the messages,
never the program's work.

    from kod import console
    console.install()                   # in main(), before anything is printed or logged
    print("progress", file=sys.stderr)  # fine even after `| tee log`'s tee died on Ctrl-C

Why: `cmd 2>&1 | tee log`, then Ctrl-C. The terminal sends SIGINT to the whole pipeline, tee
dies, and from then on every write to stdout/stderr raises BrokenPipeError (Python ignores
SIGPIPE). A command that prints while it cleans up (a progress line, a log line, the "stopping"
notice) would then fail in the middle of its cleanup, and the interpreter's last flush would turn
the exit code into 120. A `Tolerant` stream swallows such errors: the first one points the
file descriptor at /dev/null (so that the final flush, and the children started later, write
nowhere instead of into a broken pipe) and every later write is dropped.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

#: The errors a write to a terminal or pipe gives when its reader is gone (EPIPE), the terminal
#: hung up (EIO), the disk of a redirect is full (ENOSPC), or the stream was closed (ValueError).
OUTPUT_ERRORS = (OSError, ValueError)


class Tolerant:
    """A text stream around `stream` whose `write`/`flush` never raise. Everything else
    (`isatty`, `fileno`, `encoding`, ...) is the wrapped stream's. `broken` tells whether output
    has been lost."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    @property
    def wrapped(self) -> TextIO:
        return self._stream

    def write(self, text: str) -> int:
        if self.broken:
            return len(text)
        try:
            return self._stream.write(text)
        except OUTPUT_ERRORS:
            self._lose()
            return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.broken:
            return
        try:
            self._stream.flush()
        except OUTPUT_ERRORS:
            self._lose()

    def _lose(self) -> None:
        """Output is gone for good: point the descriptor at /dev/null, so that what is still
        buffered, the interpreter's last flush and child processes write nowhere."""
        self.broken = True
        try:
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)
        except OUTPUT_ERRORS:
            return
        try:
            self._stream.flush()  # what the buffer still holds now goes to /dev/null
        except OUTPUT_ERRORS:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def tolerant(stream: TextIO) -> TextIO:
    """`stream` wrapped in `Tolerant` (once: an already tolerant stream is returned as it is)."""
    if isinstance(stream, Tolerant):
        return stream  # type: ignore[return-value]
    return Tolerant(stream)  # type: ignore[return-value]


def install() -> None:
    """Make sys.stdout and sys.stderr tolerant. Call it first thing in a command's `main`, before
    logging is configured (the loggers keep the stream they were given)."""
    if sys.stdout is not None:
        sys.stdout = tolerant(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = tolerant(sys.stderr)
