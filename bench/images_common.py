"""What the image benchmarks share: a private test desktop and container lab for the run, and
writing the results.

    with desktop_lab("bench-sound", only=support.TEST_IMAGES) as (desktop, lab, root):
        ...
    write_json("images_sound_latency", {"runs": 7, "results": results})
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localenv import images  # noqa: E402
from localenv.progress import Progress  # noqa: E402
from tests.e2e import images_support as support  # noqa: E402
from tests.fixtures.desktop import Desktop  # noqa: E402

RESULTS = ROOT / "bench" / "results"


@contextmanager
def desktop_lab(name: str, only: Iterable[str]) -> Iterator[tuple[Desktop, support.Lab, Path]]:
    """The images `only` built (cached), a desktop of the run's own (Xvfb + PulseAudio) and a
    container lab labelled `name`, in a temporary directory (the third value); all of it is
    stopped and removed at the end, also after a failure."""
    import docker

    images.build_all(Progress(quiet=True), only=list(only))
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="kod-bench-") as tmp:
        root = Path(tmp)
        (root / "desktop").mkdir()
        desktop = Desktop(root / "desktop")
        desktop.start()
        lab = support.Lab(client, name)
        try:
            yield desktop, lab, root
        finally:
            lab.cleanup()
            desktop.stop()


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>.json with `payload` and the load average now (the machines are
    noisy: a number means little without it); prints where it went."""
    print(f"load average (1, 5 min) now: {os.getloadavg()[0]:.1f}, {os.getloadavg()[1]:.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({**payload, "load_avg": os.getloadavg()}, indent=2))
    print(f"wrote {out}")
    return out
