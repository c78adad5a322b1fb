"""`python -m localenv.supervisor [--name NAME] -- PROGRAM ARGS...`: run a program and start it
again whenever it exits, until told to stop.

What a service manager (systemd's Restart=always, a kubelet's static pod) does for the ends of
the tunnel on a machine that has none: a konnectivity server or agent that crashes or is killed
(-9 included) is back within a second, and the agent reconnects on its own. Restarts back off
from `--min-delay` (doubling, up to `--max-delay`) while the program keeps dying young, and start
over once it has lived `--healthy-after` seconds. SIGTERM or SIGINT stops the program (SIGTERM,
then SIGKILL after `--stop-timeout`) and the supervisor; the program gets SIGKILL if the
supervisor itself dies (PR_SET_PDEATHSIG), so nothing outlives it. The program's output goes
where the supervisor's goes (its daemon log), with a line for each restart.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _say(name: str, text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor[{name}]: {text}", flush=True)


def supervise(argv: Sequence[str], *, name: str, min_delay: float, max_delay: float, healthy_after: float,
              stop_timeout: float, stop: threading.Event) -> int:
    """Run `argv` again and again until `stop` is set; 0 when stopped, 127 when it cannot start."""
    quick_exits = 0  # exits in a row of runs shorter than `healthy_after`
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.is_set():
        started = time.monotonic()
        try:
            child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        except OSError as exc:
            _say(name, f"cannot start {argv[0]}: {exc}")
            return 127
        _say(name, f"started {argv[0]} (pid {child.pid})")
        while child.poll() is None and not stop.is_set():
            stop.wait(0.2)
        if stop.is_set():
            break
        lived = time.monotonic() - started
        quick_exits = 0 if lived >= healthy_after else quick_exits + 1
        delay = min(max_delay, min_delay * 2 ** max(0, quick_exits - 1))
        _say(name, f"{argv[0]} (pid {child.pid}) exited with {child.returncode} after {lived:.1f} s; "
                   f"starting it again in {delay:.1f} s")
        if stop.wait(delay):
            break
    if child is not None and child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    _say(name, "stopped")
    return 0


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localenv.supervisor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="", help="name in the log lines (default: the program's)")
    parser.add_argument("--min-delay", type=float, default=0.2, help="seconds before the first restart")
    parser.add_argument("--max-delay", type=float, default=5.0, help="longest delay between restarts")
    parser.add_argument("--healthy-after", type=float, default=10.0, help="a run this long resets the delay")
    parser.add_argument("--stop-timeout", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    ns = parser.parse_args(args)
    argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
    if not argv:
        parser.error("no program given (after --)")
    return supervise(argv, name=ns.name or argv[0].rsplit("/", 1)[-1], min_delay=ns.min_delay,
                     max_delay=ns.max_delay, healthy_after=ns.healthy_after, stop_timeout=ns.stop_timeout,
                     stop=threading.Event())


if __name__ == "__main__":
    sys.exit(main())
