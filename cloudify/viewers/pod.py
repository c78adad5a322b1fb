"""Pod run mode: the viewer is a pod on the user's virtual node.

The virtual kubelet hands it to the Docker sidecar, which runs it next to the user's screen and
speakers. The session learns that it runs, and that it ended, from the pod's phase.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from kod import errors
from kod.kube import KubeClient

from cloudify import manifests
from cloudify.manifests import SessionPlan, Target
from cloudify.podwatch import SessionPods, wait_for
from cloudify.viewers.base import viewer_failure


class PodViewer:
    kind = "pod"

    def __init__(
        self,
        kube: KubeClient,
        plan: SessionPlan,
        pods: SessionPods,
        *,
        owner: dict[str, Any],
        node: str,
        display: str,
        pulse_dir: str | None,
        pulse_socket_name: str,
        with_xauthority: bool,
        groups: list[int],
    ) -> None:
        self.kube, self.plan, self.pods, self.owner = kube, plan, pods, owner
        self.node, self.display = node, display
        self.pulse_dir, self.pulse_socket_name, self.with_xauthority = pulse_dir, pulse_socket_name, with_xauthority
        self.groups = groups
        self._created = False

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.plan.names.namespace}/pods/{self.plan.names.viewer}"

    def manifest(self, target: Target) -> dict[str, Any]:
        return manifests.viewer_pod(
            self.plan, self.owner, target, node=self.node, display=self.display, pulse_dir=self.pulse_dir,
            pulse_socket_name=self.pulse_socket_name, with_xauthority=self.with_xauthority, groups=self.groups,
        )

    async def start(self, target: Target) -> None:
        await self.kube.create(f"/api/v1/namespaces/{self.plan.names.namespace}/pods", self.manifest(target))
        self._created = True

    async def wait_running(self, timeout: float) -> str:
        await wait_for(self.pods.viewer, self.pods.viewer.running, timeout=timeout, what="the viewer pod to run")
        return f"on your virtual node {self.node}"

    async def wait_done(self) -> int:
        state = self.pods.viewer
        await state.finished.wait()
        if state.gone and state.exit_code() is None:
            raise errors.Unavailable(f"the viewer pod was deleted before it ended ({state.describe()})")
        code = state.exit_code()
        if code is None:
            reason = state.pod.get("status", {}) if state.pod else {}
            raise errors.Unavailable(
                f"the viewer pod ended without running its container: {reason.get('reason', '')} {reason.get('message', '')}".strip()
            )
        failure = viewer_failure(code, await self.log_tail() if code else "")
        if failure is not None:
            raise failure
        return code

    async def log_tail(self, lines: int = 15) -> str:
        """The end of the viewer's log (through the virtual kubelet), or "" when unavailable."""
        out: list[str] = []
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                async for line in self.kube.stream_lines(f"{self.path}/log", params={"tailLines": lines}):
                    out.append(line)
        return "\n".join(out)

    async def stop(self) -> None:
        if self._created:
            await self.kube.delete(self.path, grace_seconds=0, missing_ok=True)
