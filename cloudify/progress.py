"""What the user sees while a session starts: one line per phase, and with --timings a table of
when each phase was reached, counted from the moment the cloudify process started (the Python
interpreter's own start-up included, read from /proc)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

PHASES = ("prepare", "app pod running", "viewer running", "first frame")


def process_age() -> float:
    """Seconds since this process was exec'd (0 when /proc cannot tell)."""
    try:
        stat = open("/proc/self/stat").read()  # noqa: SIM115 - tiny read
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])  # noqa: SIM115
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Timeline:
    """Phase marks, in seconds since `t0` (a time.monotonic() value)."""

    t0: float
    out: TextIO = field(default_factory=lambda: sys.stderr)
    timings: bool = False
    quiet: bool = False
    marks: dict[str, float] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_process_start(cls, **kwargs: object) -> Timeline:
        return cls(t0=time.monotonic() - process_age(), **kwargs)  # type: ignore[arg-type]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, phase: str, detail: str = "") -> None:
        """Phase reached: remember when, and print a progress line."""
        self.marks[phase] = self.now()
        self.details[phase] = detail
        if not self.quiet:
            at = f"{self.marks[phase]:6.2f} s" if self.timings else ""
            print(f"  ✓ {phase:<16}{at}  {detail}".rstrip(), file=self.out, flush=True)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def table(self) -> str:
        """The phases with when each was reached and how long it took."""
        lines = [f"{'phase':<18}{'at':>8}{'after':>8}"]
        prev = 0.0
        for phase in sorted(self.marks, key=self.marks.__getitem__):
            at = self.marks[phase]
            lines.append(f"{phase:<18}{at:>7.2f}s{at - prev:>7.2f}s")
            prev = at
        lines += [f"{phase:<18}{'-':>8}{'-':>8}" for phase in PHASES if phase not in self.marks]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, float]:
        return {p: round(self.marks[p], 3) for p in PHASES if p in self.marks}
