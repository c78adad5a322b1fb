"""The differences between the real node and the virtual node that are accepted, each with why.

Each entry matches differences by shell patterns (fnmatch) on the case name, the view's path and,
optionally, the two values. An entry that matches no difference of a full run is stale and fails
the test too, so that this list stays true: when the virtual node is fixed, its entry goes.
docs/virtual-node.md ("Differences from the real kubelet") says the same in prose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from tests.differential.compare import Difference


@dataclass(frozen=True)
class Known:
    """An accepted difference."""

    #: The cases it concerns (a pattern on the case name).
    case: str
    #: The view's path (a pattern).
    path: str
    #: Why the virtual node differs here, and why that is accepted.
    reason: str
    #: Patterns on the real and the virtual node's value (None: any value; "<absent>": absent).
    real: str | None = None
    virtual: str | None = None
    #: It depends on timing or on the cluster and need not occur in every run (exempt from the
    #: stale check).
    flaky: bool = False

    def matches(self, case: str, difference: Difference) -> bool:
        return (fnmatchcase(case, self.case) and fnmatchcase(difference.path, self.path)
                and _value_matches(self.real, difference.real) and _value_matches(self.virtual, difference.virtual))


def _value_matches(pattern: str | None, value: str | None) -> bool:
    if pattern is None:
        return True
    return fnmatchcase("<absent>" if value is None else value, pattern)


_LIFECYCLE_EVENTS = (
    "the virtual node posts the events of its own decisions (refusals, FailedMount, probe and hook "
    "failures with Unhealthy/Killing/FailedPostStartHook) but not the kubelet's per-container "
    "lifecycle events (Pulled, Created, Started, Killing on stop, BackOff, Failed): the pod's "
    "status says the same, and `kubectl describe pod` on the desktop's pods shows fewer events"
)

KNOWN: tuple[Known, ...] = (
    *(Known("*", f"event.{reason}", _LIFECYCLE_EVENTS, real="yes", virtual="<absent>")
      for reason in ("Pulled", "Created", "Started", "Killing", "BackOff", "Failed")),
    Known("*", "event.MissingClusterDNS",
          "the local cluster runs no cluster DNS, so its kubelet warns on every ClusterFirst pod; the "
          "virtual node's pods use the desktop's resolver and there is nothing to warn about (a "
          "cluster with DNS shows no such event)",
          real="yes", virtual="<absent>", flaky=True),
    Known("*", "container.*.message",
          "a container that cannot start: the runtime's own words, containerd's ('failed to create "
          "containerd task: failed to create shim task: OCI runtime create failed: ...') on the "
          "real node, Docker's (the same from 'failed to create shim task' on) on the desktop; the "
          "reason (StartError) and exit code (128) are the same",
          real="failed to create containerd task: failed to create shim task: *",
          virtual="failed to create shim task: *"),
    Known("env-missing-*", "condition.PodReadyToStartContainers",
          "a missing ConfigMap, Secret or key of an env var: the kubelet finds out after it made the "
          "pod's sandbox (True); vk_bridge resolves env before anything of the pod exists in Docker "
          "and waits there, so no sandbox exists yet and False is what is true on the desktop",
          real="True", virtual="False"),
    Known("oom", "container.main.state",
          "the runtime learns of an OOM kill from the cgroup's OOM event, which can come after the "
          "exit is reported: under load the container reads Error (137) instead of OOMKilled "
          "(137), on either node (Docker's State.OOMKilled on the desktop; containerd's on "
          "kod-worker: seen both ways)",
          real="terminated:[EO]*:137", virtual="terminated:[EO]*:137", flaky=True),
    Known("oom-child", "container.main.state",
          "a container whose child was OOM-killed but which itself exits 0: whether it reads "
          "OOMKilled or Completed depends, on both nodes, on whether the runtime has the cgroup's "
          "OOM event when the exit is reported (seen both ways on kod-worker too)",
          real="terminated:*:0", virtual="terminated:*:0", flaky=True),
)


def check(differences: Mapping[str, Sequence[Difference]], known: Iterable[Known] = KNOWN,
          cases: Iterable[str] | None = None) -> tuple[list[tuple[str, Difference]], list[Known]]:
    """The differences no entry accepts, and the entries that accepted none (stale). With `cases`
    (the cases that ran), only entries concerning one of them can be stale."""
    known = list(known)
    used: set[Known] = set()
    unexpected: list[tuple[str, Difference]] = []
    for case, diffs in differences.items():
        for d in diffs:
            hits = [k for k in known if k.matches(case, d)]
            used.update(hits)
            if not hits:
                unexpected.append((case, d))
    ran = list(differences) if cases is None else list(cases)
    stale = [k for k in known if k not in used and not k.flaky and any(fnmatchcase(c, k.case) for c in ran)]
    return unexpected, stale
