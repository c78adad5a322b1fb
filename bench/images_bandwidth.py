"""Bandwidth from the app to the viewer at three quality levels (and two compression levels), for
the same animation, with the CPU it costs.

    .venv/bin/python bench/images_bandwidth.py [--seconds 10] [--qualities 0,5,9]

Starts its own desktop (localenv's VirtualDesktop), one Firefox container showing
tests/e2e/pages/anim.html (an animation that changes the whole page on every frame: left half
photo-like, right half 8 flat colours; #blocks: all flat colours), and connects one viewer after
the other with different -q/-c settings. Per setting, over the same window of seconds:

- bytes sent by the app container (its eth0 tx counter, i.e. what a network would carry), as Mbit/s;
- CPU of the app container (Xvnc encoding + Firefox drawing) and of the viewer container
  (decoding + drawing), from their cgroups, in % of one core.

Prints a table; writes bench/results/images_bandwidth.json (stamped: date, commit, load average).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kod import apps  # noqa: E402
from bench import lab as support  # noqa: E402
from bench.results import Run  # noqa: E402
from localenv.virtual_desktop import VirtualDesktop, wait_for  # noqa: E402



def cpu_seconds(container: Any) -> float:
    """CPU time the container has used (cgroup v1 cpuacct, or v2 cpu.stat), from the engine's stats."""
    stats = container.stats(stream=False)
    return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def measure(lab: support.Lab, desktop: VirtualDesktop, files: support.SessionFiles, app: Any, quality: int,
            compression: int, seconds: float) -> dict[str, float]:
    viewer = lab.run_viewer(desktop, files, app, sound=False,
                            env={apps.ENV_QUALITY: str(quality), apps.ENV_COMPRESSION: str(compression)})
    window = support.viewer_window(desktop, "firefox")
    support.wait_for_content(desktop, window.box, lambda s: s.distinct_colours() > 8, 120, "the animation")
    tx0, app_cpu0, viewer_cpu0, t0 = lab.tx_bytes(app), cpu_seconds(app), cpu_seconds(viewer), time.monotonic()
    time.sleep(seconds)  # the measurement window
    tx1, app_cpu1, viewer_cpu1, t1 = lab.tx_bytes(app), cpu_seconds(app), cpu_seconds(viewer), time.monotonic()
    viewer.stop(timeout=5)
    wait_for(lambda: desktop.find_window("^firefox - TigerVNC$") is None, 30, "the viewer window to close")
    elapsed = t1 - t0
    return {
        "quality": quality, "compression": compression, "seconds": round(elapsed, 2),
        "mbit_per_s": round((tx1 - tx0) * 8 / elapsed / 1e6, 2),
        "bytes": tx1 - tx0,
        "app_cpu_pct": round((app_cpu1 - app_cpu0) / elapsed * 100, 1),
        "viewer_cpu_pct": round((viewer_cpu1 - viewer_cpu0) / elapsed * 100, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--qualities", default="0,5,9")
    args = parser.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]

    run = Run("images_bandwidth")
    rows: list[dict[str, Any]] = []
    with support.desktop_lab("bench-bandwidth", only=["firefox", "viewer"]) as (desktop, lab, root):
        pages = support.pages_dir(root / "pages", pages=["anim.html"])
        files = support.make_session_files(root / "session")
        for mode, settings in (("mixed", [(q, 2) for q in qualities]), ("blocks", [(5, 0), (5, 9)])):
            app = lab.run_app("firefox", files, pages=pages,
                              env={"KOD_APP_ARGS": f"file://{support.PAGES_MOUNT}/anim.html#{mode}",
                                   apps.ENV_CONNECT_TIMEOUT: "600"})
            for quality, compression in settings:
                row = {"content": mode, **measure(lab, desktop, files, app, quality, compression, args.seconds)}
                print(row, flush=True)
                rows.append(row)
            app.remove(force=True)

    print(f"\n{'content':<8}{'quality':>8}{'compr.':>8}{'Mbit/s':>10}{'app CPU %':>11}{'viewer CPU %':>14}")
    for r in rows:
        print(f"{r['content']:<8}{r['quality']:>8}{r['compression']:>8}{r['mbit_per_s']:>10.1f}"
              f"{r['app_cpu_pct']:>11.0f}{r['viewer_cpu_pct']:>14.0f}")
    print(f"1280x800 display; about {args.seconds:.0f} s per setting (each row: its measured window)")
    run.write({"rows": rows, "seconds": args.seconds, "geometry": "1280x800"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
