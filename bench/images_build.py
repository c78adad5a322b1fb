"""Image sizes, and cold and warm build times of every kod image (localenv.images.build_all).

    .venv/bin/python bench/images_build.py [--skip-cold] [--only NAME ...]

Three passes over the same images, in this order:

- cold: `build_all(no_cache=True)`: no Docker layer cache, every Debian package downloaded again
  (the base image debian:bookworm-slim is not remade: localenv's own benchmark times debootstrap);
- warm (cache): `build_all(force=True)`: every image built again from Docker's layer cache, as after
  a change that leaves the layers' inputs alone;
- warm (up to date): `build_all()`: what `make images` costs when nothing changed (input hashes
  match, nothing is sent to Docker).

Sizes are the engine's (uncompressed, layers shared between images counted once per image).
Prints a table; writes bench/results/images_build.json (stamped with date, commit and load
average; the CPU is shared, so each pass also records the load at its start).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import Run  # noqa: E402
from localenv import images  # noqa: E402
from localenv.progress import Progress  # noqa: E402


def timed_pass(label: str, only: list[str] | None, **kwargs: bool) -> dict[str, object]:
    print(f"--- {label} ---", flush=True)
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    results = images.build_all(Progress(quiet=True), only=only, **kwargs)
    total = time.monotonic() - t0
    return {
        "label": label,
        "total_s": round(total, 1),
        "load_avg_1m_at_start": round(load, 1),
        "images": {r.name: {"seconds": round(r.seconds, 1), "action": r.action, "size_mb": round(r.size_bytes / 1e6)}
                   for r in results},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-cold", action="store_true", help="skip the pass without Docker's cache (minutes)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these images (and their parents)")
    args = parser.parse_args()
    run = Run("images_build")

    passes = []
    if not args.skip_cold:
        passes.append(timed_pass("cold (no layer cache)", args.only, no_cache=True))
    passes.append(timed_pass("warm (layer cache)", args.only, force=True))
    passes.append(timed_pass("warm (up to date)", args.only))

    names = list(passes[-1]["images"])  # type: ignore[call-overload]
    header = f"{'image':<16}{'size MB':>9}" + "".join(f"{p['label']:>26}" for p in passes)
    print("\n" + header)
    for name in names:
        row = f"{name:<16}{passes[-1]['images'][name]['size_mb']:>9}"  # type: ignore[index]
        for p in passes:
            row += f"{p['images'][name]['seconds']:>25.1f}s"  # type: ignore[index]
        print(row)
    print(f"{'total':<25}" + "".join(f"{p['total_s']:>25.1f}s" for p in passes))
    print("load average (1 min) at each pass's start: " + ", ".join(str(p["load_avg_1m_at_start"]) for p in passes))

    run.write({"passes": passes, "only": args.only})
    return 0


if __name__ == "__main__":
    sys.exit(main())
