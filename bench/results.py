"""Writing a benchmark's result: one JSON file per benchmark, stamped, and only with what ran.

    run = Run("virtual_node_pods")          # at the start: notes the time and the load average
    ...
    run.write({"sequential": {...}})        # bench/results/virtual_node_pods.json, replaced whole

Every file carries a `stamp`: the date (UTC), the commit of the checkout that ran and whether
its tracked files had changes, the command line, the machine's CPU count, and the load average
at the start and at the end (these machines are noisy: a number means little without it).

The file is written whole every time. Nothing of an earlier run is carried forward: a part that
did not run in this run is not in the file, so every number in it was measured by the run its
stamp names. Figures quoted from elsewhere (the original project's thesis, a seed) are never put
next to measured ones without saying so: use `quoted()`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def commit() -> dict[str, Any]:
    """The checkout's commit and whether its tracked files differ from it (a run of uncommitted
    code is not a run of that commit)."""
    return {"id": _git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def quoted(source: str, figures: dict[str, Any], what: str) -> dict[str, Any]:
    """Figures taken from `source` (not measured by this run), labelled as such: what they
    measured there, and where to read them."""
    return {"quoted_not_measured": True, "source": source, "what": what, "figures": figures}


class Run:
    """One run of a benchmark: started at construction, written once with `write`."""

    def __init__(self, name: str, *, results_dir: Path | None = None) -> None:
        self.name = name
        self.results_dir = results_dir or RESULTS
        self.started = time.time()
        self.load_start = load_average()
        print(f"{name}: load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in self.load_start)}",
              flush=True)

    @property
    def path(self) -> Path:
        return self.results_dir / f"{self.name}.json"

    def stamp(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "commit": commit(),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_average": {"start": self.load_start, "end": load_average()},
        }

    def write(self, payload: dict[str, Any]) -> Path:
        """bench/results/<name>.json: the stamp and `payload`, replacing what was there."""
        if "stamp" in payload:
            raise ValueError("the payload may not have its own 'stamp'")
        self.results_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.stamp()
        self.path.write_text(json.dumps({"stamp": stamp, **payload}, indent=2) + "\n")
        load = stamp["load_average"]["end"]
        print(f"{self.name}: load average at the end: {', '.join(f'{x:.1f}' for x in load)}; written to {self.path}")
        return self.path
