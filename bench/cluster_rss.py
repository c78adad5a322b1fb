"""Memory of the local cluster: resident set size of each daemon and of the containerd shims.

    .venv/bin/python bench/cluster_rss.py

Reads the PIDs from localenv's PID files (the same ones `python -m localenv status` shows) and
VmRSS from /proc; prints a table and writes bench/results/cluster_rss.json (stamped with date,
commit and load average).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import Run  # noqa: E402
from localenv import cluster, procs, settings  # noqa: E402
from localenv.paths import paths_for  # noqa: E402

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def shims(socket: Path) -> list[int]:
    """PIDs of the runc shims of the cluster's containerd (their command line names its socket)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
            found.append(int(proc.name))
    return found


def main() -> None:
    run = Run("cluster_rss")
    s = settings.load()
    paths = paths_for(s)
    rows = {}
    for name in cluster.DAEMON_NAMES:
        pid = procs.running_pid(paths.run_dir / f"{name}.pid")
        if pid is None:
            raise SystemExit(f"{name} is not running: run `python -m localenv up` first")
        rows[name] = round(rss_mib(pid), 1)
    shim_pids = shims(paths.containerd_socket)
    shim_rss = [rss_mib(p) for p in shim_pids]
    result: dict[str, Any] = {
        "rss_mib": rows,
        "control_plane_total_mib": round(sum(rows[n] for n in CONTROL_PLANE), 1),
        "all_daemons_total_mib": round(sum(rows.values()), 1),
        "shims": {"count": len(shim_pids), "total_mib": round(sum(shim_rss), 1),
                  "per_shim_mib": round(sum(shim_rss) / len(shim_rss), 1) if shim_rss else None},
    }
    print(f"{'process':<26}{'RSS MiB':>10}")
    for name, mib in rows.items():
        print(f"{name:<26}{mib:>10.1f}")
    print(f"{'control plane total':<26}{result['control_plane_total_mib']:>10.1f}")
    print(f"{'all daemons total':<26}{result['all_daemons_total_mib']:>10.1f}")
    print(f"{'shims (' + str(len(shim_pids)) + ')':<26}{result['shims']['total_mib']:>10.1f}")
    run.write(result)


if __name__ == "__main__":
    main()
