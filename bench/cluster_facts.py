"""Settings of the running cluster that a measured number depends on, read from the cluster itself.

    nm = node_monitor(cluster)      # a localenv.handle.ClusterHandle
    nm.grace_seconds, nm.period_seconds, nm.source
    nm.not_ready_bound()               # the latest a dead kubelet's node turns NotReady

How soon a node whose kubelet died turns NotReady is the node lifecycle controller's decision: it
marks the node NotReady once its Lease has not been renewed for the controller-manager's
--node-monitor-grace-period, checking every --node-monitor-period. localenv's cluster shortens
the grace period (localenv/k8s/controller_manager.py); a reused cluster may not. So tests and
benchmarks read the flags of the controller-manager that runs, instead of assuming localenv's:

- the local cluster: the command line localenv recorded for its kube-controller-manager (its PID
  file), checked against /proc, i.e. what the running process was given;
- another cluster (KUBECONFIG): the command of a kube-controller-manager static pod in
  kube-system (kubeadm and most installers run it so);
- when neither shows the flag: Kubernetes' defaults, and `source` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: kube-controller-manager's defaults (Kubernetes >= 1.32: the grace period was 40 s before).
DEFAULT_GRACE_SECONDS = 50.0
DEFAULT_PERIOD_SECONDS = 5.0
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_duration(text: str) -> float:
    """Seconds of a Go duration ("30s", "1m30s", "500ms"); ValueError when it is not one."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Go duration")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def flag(argv: list[str] | tuple[str, ...], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


@dataclass(frozen=True)
class NodeMonitor:
    """The node lifecycle controller's timing, and where it was read."""

    grace_seconds: float
    period_seconds: float
    source: str

    def not_ready_bound(self, slack_seconds: float = 5.0) -> float:
        """The latest a node can turn NotReady after its kubelet dies: the grace period, counted
        from the kubelet's last renewal (which came before the death, so it only makes NotReady
        come sooner), plus one monitor period for the controller to look, plus `slack_seconds`
        for the observer's polling and a loaded machine."""
        return self.grace_seconds + self.period_seconds + slack_seconds


def from_argv(argv: list[str] | tuple[str, ...], source: str) -> NodeMonitor:
    grace, period = flag(argv, "node-monitor-grace-period"), flag(argv, "node-monitor-period")
    return NodeMonitor(
        grace_seconds=go_duration(grace) if grace else DEFAULT_GRACE_SECONDS,
        period_seconds=go_duration(period) if period else DEFAULT_PERIOD_SECONDS,
        source=source + ("" if grace else " (no --node-monitor-grace-period: Kubernetes' default)"),
    )


def _local_argv(cluster: Any) -> tuple[str, ...] | None:
    from localenv import procs, settings
    from localenv.paths import paths_for

    paths = paths_for(cluster.settings or settings.load())
    record = procs.read_record(paths.run_dir / "kube-controller-manager.pid")
    return record.argv if record is not None and procs.is_alive(record) else None


def _static_pod_argv(cluster: Any) -> list[str] | None:
    proc = cluster.kubectl("get", "pods", "-n", "kube-system", "-l", "component=kube-controller-manager",
                           "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    import json

    for pod in json.loads(proc.stdout).get("items", []):
        for c in pod.get("spec", {}).get("containers", []):
            argv = [*c.get("command", []), *c.get("args", [])]
            if argv:
                return argv
    return None


def node_monitor(cluster: Any) -> NodeMonitor:
    """The running cluster's node monitor timing (see the module docstring)."""
    if not getattr(cluster, "reused", False):
        argv = _local_argv(cluster)
        if argv is not None:
            return from_argv(argv, "the local cluster's running kube-controller-manager")
    argv = _static_pod_argv(cluster)
    if argv is not None:
        return from_argv(argv, "the kube-controller-manager pod in kube-system")
    return NodeMonitor(DEFAULT_GRACE_SECONDS, DEFAULT_PERIOD_SECONDS,
                       "Kubernetes' defaults (the controller-manager's flags are not visible)")
