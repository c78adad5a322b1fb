"""The app's sound on the desktop: how late it arrives, and what it costs on the wire.

    .venv/bin/python bench/images_sound_latency.py [--runs 7]

Starts its own desktop (localenv's VirtualDesktop: Xvfb with a cookie, PulseAudio with a null sink),
an app container (kod/firefox on about:blank) and a viewer container, as cloudify's docker mode
does, sound on: the app plays into its own PulseAudio, the viewer fetches the stream with `ssh -L`
and plays it with pacat into the desktop's kod socket.

- delay: a short 440 Hz tone is played with paplay; its onset is found in a recording of the
  desktop's speakers (the null sink's monitor, parec with a 10 ms buffer) and compared with the
  moment paplay was started (`date` just before it, in the same shell: host and containers share
  the clock). The same is measured for paplay on the desktop itself: the difference is what the
  kod path adds (pacat's buffer is KOD_AUDIO_LATENCY_MS, 60 ms by default).
- bytes: what the app container sends on its interface in 5 s of silence and in 5 s of a tone
  (raw 16-bit stereo at 48 kHz is 1.536 Mbit/s; silence is not sent).

Prints the numbers; writes bench/results/images_sound_latency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import array
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import lab as support  # noqa: E402
from bench.results import Run  # noqa: E402
from localenv.virtual_desktop import VirtualDesktop, wait_for  # noqa: E402

RATE = 44100
#: A sample above this (of 32767; the tone is at half of full scale) is the tone's onset.
ONSET_LEVEL = 3000


def onset(raw: bytes) -> float | None:
    """Seconds from the recording's start to the first loud sample."""
    samples = array.array("h", raw[:len(raw) - len(raw) % 2])
    return next((i / RATE for i, x in enumerate(samples) if abs(x) > ONSET_LEVEL), None)


def delay(desktop: VirtualDesktop, root: Path, play: Callable[[], float], *,
          enter: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext, listen: float = 1.2) -> float:
    """Seconds from play() starting the tone to its onset in the desktop's speakers. The recorder
    starts inside `enter()` (the desktop's host, for a desktop in a network namespace) and listens
    `listen` s after play() returned."""
    out = root / f"rec-{time.monotonic_ns()}.raw"
    with open(out, "wb") as sink:
        with enter():
            rec = subprocess.Popen(["parec", "--raw", f"--device={desktop.null_sink}.monitor", "--format=s16le",
                                    f"--rate={RATE}", "--channels=1", "--latency-msec=10"],
                                   env=desktop.env(), stdout=sink)
        try:
            wait_for(lambda: out.stat().st_size > RATE, 10, "the recording to run")
            # The recording's time 0: now, minus what it holds so far.
            t_zero = time.time() - out.stat().st_size / 2 / RATE
            t_play = play()
            time.sleep(listen)
        finally:
            rec.terminate()
            rec.wait()
    found = onset(out.read_bytes())
    out.unlink()
    if found is None:
        raise RuntimeError("the tone did not arrive")
    return t_zero + found - t_play


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    run = Run("images_sound_latency")
    with support.desktop_lab("bench-sound", only=support.TEST_IMAGES) as (desktop, lab, root):
        pages = support.pages_dir(root / "pages", pages=[], tones={"short.wav": (440, 0.3), "long.wav": (440, 6.0)})
        files = support.make_session_files(root / "session")
        app = lab.run_app("firefox", files, pages=pages, env={"KOD_APP_ARGS": "about:blank"})
        lab.run_viewer(desktop, files, app)
        support.viewer_window(desktop, "firefox")
        wait_for(lambda: "a viewer takes the sound stream" in lab.logs(app), 60, "the viewer on the sound stream")

        def on_desktop() -> float:
            t = time.time()
            subprocess.run(["paplay", str(pages / "short.wav")], env=desktop.env(), check=True)
            return t

        def in_app() -> float:
            out = app.exec_run(["sh", "-c", f"date +%s.%N && paplay {support.PAGES_MOUNT}/short.wav"])
            return float(out.output.decode().split()[0])

        results: dict[str, Any] = {}
        for name, play in (("desktop_paplay_s", on_desktop), ("app_paplay_s", in_app)):
            values = [delay(desktop, root, play) for _ in range(args.runs)]
            results[name] = stats(values) | {"runs": [round(v, 4) for v in values]}
            print(f"{name}: median {statistics.median(values) * 1000:.0f} ms "
                  f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f} ms)", flush=True)
        results["added_by_kod_s"] = round(results["app_paplay_s"]["median"] - results["desktop_paplay_s"]["median"], 4)

        before = lab.tx_bytes(app)
        time.sleep(5)
        silent = lab.tx_bytes(app) - before
        before = lab.tx_bytes(app)
        app.exec_run(["paplay", f"{support.PAGES_MOUNT}/long.wav"], detach=True)
        time.sleep(5)
        playing = lab.tx_bytes(app) - before
        results["mbit_s_silent"] = round(silent * 8 / 5 / 1e6, 3)
        results["mbit_s_playing"] = round(playing * 8 / 5 / 1e6, 3)

    print(f"\nthe kod path adds {results['added_by_kod_s'] * 1000:.0f} ms (median) to a tone's start")
    print(f"app container sends {results['mbit_s_silent']:.3f} Mbit/s while silent, "
          f"{results['mbit_s_playing']:.3f} Mbit/s while playing (VNC of a static page included)")
    run.write({"runs": args.runs, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
