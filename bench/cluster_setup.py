"""Set-up time of the local environment: `python -m localenv up` in the states a user meets.

    .venv/bin/python bench/cluster_setup.py                  # warm: everything already runs (x3)
    .venv/bin/python bench/cluster_setup.py --restart --yes  # after `down`: state kept, daemons stopped
    .venv/bin/python bench/cluster_setup.py --fresh --yes    # after `down --wipe`: new CA, etcd, node

--restart and --fresh stop the cluster that others may be using, hence --yes. A truly cold run
(fresh machine: apt packages, debootstrap, the Go builds) cannot be repeated here without
deleting caches other work relies on; the Go build durations recorded by localenv (build.json
next to the cached binaries) are reported instead, labelled as recorded by localenv, not measured
by this run. Prints a table; writes bench/results/cluster_setup.json with only the cases this run
timed (stamped with date, commit and load average; nothing carried over from earlier runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import Run  # noqa: E402
from localenv import gobuild, settings  # noqa: E402
from localenv.paths import paths_for  # noqa: E402


def localenv(*args: str) -> float:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "localenv", "-q", *args], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"`localenv {' '.join(args)}` failed:\n{proc.stdout}{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs")
    parser.add_argument("--restart", action="store_true", help="also time `down` then `up`")
    parser.add_argument("--fresh", action="store_true", help="also time `down --wipe` then `up`")
    parser.add_argument("--yes", action="store_true", help="confirm stopping the running cluster")
    args = parser.parse_args()
    if (args.restart or args.fresh) and not args.yes:
        raise SystemExit("--restart/--fresh stop the running cluster; add --yes")

    run = Run("cluster_setup")
    result: dict[str, Any] = {}
    localenv("up")  # make sure it runs before timing the warm case
    warm = [localenv("up") for _ in range(args.runs)]
    result["warm_up_s"] = {"runs": [round(w, 2) for w in warm], "median": round(statistics.median(warm), 2)}
    if args.restart:
        down = localenv("down")
        result["restart"] = {"down_s": round(down, 2), "up_s": round(localenv("up"), 2)}
    if args.fresh:
        down = localenv("down", "--wipe")
        result["fresh_state"] = {"down_wipe_s": round(down, 2), "up_s": round(localenv("up"), 2)}
    paths = paths_for(settings.load())
    builds = {}
    for b in (gobuild.kubernetes_build(paths), gobuild.etcd_build(paths)):
        try:
            builds[b.name] = json.loads(b.stamp.read_text()).get("seconds")
        except (OSError, ValueError):
            builds[b.name] = None
    # Not timed by this run: the durations localenv wrote when it built the binaries.
    result["go_build_s_recorded_by_localenv"] = builds

    print(f"{'case':<40}{'seconds':>10}")
    print(f"{'warm up (median of ' + str(len(warm)) + ')':<40}{statistics.median(warm):>10.2f}")
    if args.restart:
        print(f"{'up after down (state kept)':<40}{result['restart']['up_s']:>10.2f}")
    if args.fresh:
        print(f"{'up after down --wipe (fresh state)':<40}{result['fresh_state']['up_s']:>10.2f}")
    for name, secs in builds.items():
        print(f"{'go build ' + name + ' (recorded earlier)':<40}{secs if secs is not None else 'n/a':>10}")
    run.write(result)


if __name__ == "__main__":
    main()
