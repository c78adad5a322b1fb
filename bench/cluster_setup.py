"""Set-up time of the local environment: `python -m localenv up` in the states a user meets.

    .venv/bin/python bench/cluster_setup.py                  # warm: everything already runs (x3)
    .venv/bin/python bench/cluster_setup.py --restart --yes  # after `down`: state kept, daemons stopped
    .venv/bin/python bench/cluster_setup.py --fresh --yes    # after `down --wipe`: new CA, etcd, node

--restart and --fresh stop the cluster that others may be using, hence --yes. A truly cold run
(fresh machine: apt packages, debootstrap, the Go builds) cannot be repeated here without
deleting caches other work relies on; the Go build durations recorded by localenv (build.json
next to the cached binaries) are reported instead. Prints a table; merges its numbers into
bench/results/cluster_setup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localenv import gobuild, settings  # noqa: E402
from localenv.paths import paths_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"


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

    out_file = RESULTS / "cluster_setup.json"
    result = json.loads(out_file.read_text()) if out_file.exists() else {}
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
    result["recorded_go_build_s"] = builds

    print(f"{'case':<40}{'seconds':>10}")
    print(f"{'warm up (median of ' + str(len(warm)) + ')':<40}{result['warm_up_s']['median']:>10.2f}")
    if "restart" in result:
        print(f"{'up after down (state kept)':<40}{result['restart']['up_s']:>10.2f}")
    if "fresh_state" in result:
        print(f"{'up after down --wipe (fresh state)':<40}{result['fresh_state']['up_s']:>10.2f}")
    for name, secs in builds.items():
        print(f"{'go build ' + name + ' (recorded)':<40}{secs if secs is not None else 'n/a':>10}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
