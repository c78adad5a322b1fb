"""Which sidecar runs a new pod: the first whose match rule the pod satisfies, in config order."""

from __future__ import annotations

from collections.abc import Sequence

from kod import errors
from kod.wire import Pod

from interlink.settings import MatchRule, SidecarSettings


def matches(rule: MatchRule, pod: Pod) -> bool:
    """True when every criterion of the rule holds for the pod (a rule without any holds always)."""
    if rule.runtime_class is not None and pod.spec.runtimeClassName != rule.runtime_class:
        return False
    labels, annotations = pod.metadata.labels, pod.metadata.annotations
    if any(labels.get(k) != v for k, v in rule.labels.items()):
        return False
    return all(annotations.get(k) == v for k, v in rule.annotations.items())


def choose(sidecars: Sequence[SidecarSettings], pod: Pod) -> SidecarSettings:
    """The sidecar for a new pod. Raises InvalidInput, naming the rules, when none takes it."""
    for sidecar in sidecars:
        if matches(sidecar.match, pod):
            return sidecar
    rules = "; ".join(f"{s.name}: {s.match.model_dump(exclude_defaults=True)}" for s in sidecars)
    raise errors.InvalidInput(
        f"no sidecar takes pod {pod.metadata.namespace}/{pod.metadata.name} "
        f"(runtimeClassName={pod.spec.runtimeClassName!r}); the rules are: {rules}",
        hint="add a sidecar without a match rule as the last one to take every other pod",
    )
