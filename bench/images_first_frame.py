"""From `docker run` of an app container to its first frame drawn on the desktop; and from the
user closing the app to both containers gone.

    .venv/bin/python bench/images_first_frame.py [--runs 5] [--apps firefox,libreoffice,blender,firefox-encrypted]

Starts its own desktop (localenv's VirtualDesktop: Xvfb with a cookie, PulseAudio with a null sink)
and, per run, does what cloudify's docker mode does: starts the app container (the session's keys
and password mounted, as a Secret would be), then at once the viewer container (which waits for
the app's ports by itself), sound on. Measured with time.monotonic():

- first frame: t0 just before the app container is created; the first frame is the start of the
  first capture (one every few tens of ms) of the viewer window in which the app has drawn its
  first screen (the test page's green for Firefox, the Start Center for LibreOffice, Blender's
  dark interface with its panels): `bench.lab.DRAWN`, the very checks tests/e2e/test_images_display.py
  waits on;
- close: Alt+F4 typed into the viewer window (the window manager closes the app's window); from
  the keys to the moment the engine reports each container's end (exit codes must be 0).

Prints a table (median, min, max of the runs); writes bench/results/images_first_frame.json
(bench.results: stamped with date, commit and load average).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import lab as support  # noqa: E402
from bench.results import Run  # noqa: E402
from localenv.virtual_desktop import VirtualDesktop, capture_x  # noqa: E402


def one_run(lab: support.Lab, desktop: VirtualDesktop, app: str, encrypt: bool, root: Path, pages: Path) -> dict[str, float]:
    files = support.make_session_files(root / f"s-{time.monotonic_ns()}")
    env = {"KOD_APP_ARGS": support.APP_ARGS[app]} if support.APP_ARGS[app] else {}
    drawn = support.DRAWN[app]
    t0 = time.monotonic()
    container = lab.run_app(app, files, encrypt=encrypt, env=env, pages=pages)
    viewer = lab.run_viewer(desktop, files, container, encrypt=encrypt)
    window = None
    first = None
    while time.monotonic() - t0 < 180:
        t = time.monotonic()
        if window is None:
            window = desktop.find_window(f"^{app} - TigerVNC$")
            continue
        if drawn(support.sample(capture_x(desktop.display, desktop.cookie, window.box))):
            first = t - t0
            break
    if first is None or window is None:
        raise RuntimeError(f"{app}: no first frame within 180 s; app log:\n{lab.logs(container)[-2000:]}")
    sent = support.close_through_viewer(desktop, window)
    (app_code, app_end), (viewer_code, viewer_end) = support.wait_exits(container, viewer, timeout=60)
    if (app_code, viewer_code) != (0, 0):
        raise RuntimeError(f"{app}: exit codes app {app_code}, viewer {viewer_code}")
    lab.cleanup()
    lab.containers.clear()
    return {"first_frame_s": first, "close_app_s": app_end - sent, "close_viewer_s": viewer_end - sent,
            "close_both_s": max(app_end, viewer_end) - sent}


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--apps", default="firefox,libreoffice,blender,firefox-encrypted")
    args = parser.parse_args()
    cases = args.apps.split(",")

    run = Run("images_first_frame")
    results: dict[str, Any] = {}
    with support.desktop_lab("bench-first-frame", only=support.TEST_IMAGES) as (desktop, lab, root):
        pages = support.pages_dir(root / "pages", tones={"tone440.wav": (440, 1.0)})
        for case in cases:
            app, _, variant = case.partition("-")
            runs = []
            for i in range(args.runs):
                r = one_run(lab, desktop, app, variant == "encrypted", root, pages)
                print(f"{case} run {i + 1}: first frame {r['first_frame_s']:.2f} s, "
                      f"closed: app {r['close_app_s']:.2f} s, viewer {r['close_viewer_s']:.2f} s", flush=True)
                runs.append(r)
            results[case] = {key: stats([r[key] for r in runs]) for key in runs[0]} | {"runs": runs}

    print(f"\n{'app':<20}{'first frame (median, min-max)':>34}{'close -> both gone (median, max)':>36}")
    for case, r in results.items():
        ff, cb = r["first_frame_s"], r["close_both_s"]
        print(f"{case:<20}{ff['median']:>14.2f} s ({ff['min']:.2f}-{ff['max']:.2f} s){'':>5}"
              f"{cb['median']:>16.2f} s (max {cb['max']:.2f} s)")
    run.write({"runs_per_app": args.runs, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
