"""The cluster side of a session: create its objects with as few round trips as possible, and
delete them all at the end.

Creation order: the Job first (the others need its uid as their owner) together with the PVC
(-v); then the two Secrets (the app's, the viewer's) and the Service at once. Three round trips of ~10 ms; meanwhile the Job
controller is already making the app pod, and the kubelet finds the Secret in place when it
mounts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from kod import errors, labels
from kod.kube import KubeClient

from cloudify import manifests
from cloudify.manifests import SessionPlan


class ClusterSide:
    def __init__(self, kube: KubeClient, plan: SessionPlan, *, node_port: bool, xauthority: bytes | None) -> None:
        self.kube, self.plan, self.node_port, self.xauthority = kube, plan, node_port, xauthority
        self.job: dict[str, Any] | None = None
        self.service: dict[str, Any] | None = None
        self.owner: dict[str, Any] | None = None

    @property
    def ns(self) -> str:
        return self.plan.names.namespace

    def _path(self, api: str, kind: str, name: str | None = None) -> str:
        base = f"{api}/namespaces/{self.ns}/{kind}"
        return f"{base}/{name}" if name else base

    async def ensure_namespace(self) -> None:
        """Create the sessions' namespace when it is missing, when the credentials may (an
        admin's); a user's may not: then say who must make it."""
        try:
            await self.kube.create("/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": self.ns, "labels": {labels.MANAGED_BY: labels.MANAGED_BY_CLOUDIFY}},
            })
        except errors.Conflict:
            pass
        except errors.Forbidden as exc:
            raise errors.NotFound(
                f"your namespace {self.ns} does not exist, and your credentials may not create it",
                hint=f"ask the cluster's admin for namespace {self.ns} with cloudify's role for you in it "
                "(docs/cloudify.md, \"Your namespace\"); the local cluster makes it with `python -m localenv up --demo`",
            ) from exc

    async def create(self) -> None:
        """Create the Job (and PVC), then the Secret and Service owned by the Job."""
        job_manifest = manifests.app_job(self.plan)
        try:
            self.job = await self._create_job_and_claim(job_manifest)
        except errors.NotFound as exc:
            if "namespace" not in str(exc):
                raise
            await self.ensure_namespace()
            self.job = await self._create_job_and_claim(job_manifest)
        except errors.Forbidden as exc:
            # RBAC answers before the namespace is looked up: a missing namespace, or one that is
            # not yours, looks the same.
            raise errors.Forbidden(
                f"you may not start sessions in namespace {self.ns}: {exc.message}",
                hint=f"your sessions go to your own namespace ({self.ns} unless `namespace` is set); ask the "
                "cluster's admin for it with cloudify's role for you in it (docs/cloudify.md, \"Your namespace\")",
            ) from exc
        self.owner = manifests.owner_reference(self.job)
        app_secret = manifests.app_secret(self.plan, self.owner)
        viewer_secret = manifests.viewer_secret(self.plan, self.owner, xauthority=self.xauthority)
        service = manifests.app_service(self.plan, self.owner, node_port=self.node_port)
        _, _, self.service = await asyncio.gather(
            self.kube.create(self._path("/api/v1", "secrets"), app_secret),
            self.kube.create(self._path("/api/v1", "secrets"), viewer_secret),
            self.kube.create(self._path("/api/v1", "services"), service),
        )

    async def _create_job_and_claim(self, job: dict[str, Any]) -> dict[str, Any]:
        jobs = self.kube.create(self._path("/apis/batch/v1", "jobs"), job)
        if not self.plan.options.persist:
            return await jobs
        created, _ = await asyncio.gather(jobs, self._ensure_claim())
        return dict(created)

    async def _ensure_claim(self) -> None:
        try:
            await self.kube.create(self._path("/api/v1", "persistentvolumeclaims"), manifests.data_claim(self.plan))
        except errors.Conflict:
            pass  # the user's volume from an earlier session: reused

    def node_ports(self) -> dict[str, int]:
        """Port name -> node port of the Service (NodePort type only)."""
        ports = (self.service or {}).get("spec", {}).get("ports", [])
        return {p["name"]: int(p["nodePort"]) for p in ports if p.get("nodePort")}

    async def delete(self) -> None:
        """Delete everything of the session but the PVC; each delete may find it gone already.
        The Job's dependents would go with it anyway; deleting them explicitly makes it quick."""
        names = self.plan.names
        await asyncio.gather(
            self.kube.delete(self._path("/apis/batch/v1", "jobs", names.base), missing_ok=True),
            self.kube.delete(self._path("/api/v1", "secrets", names.app_secret), missing_ok=True),
            self.kube.delete(self._path("/api/v1", "secrets", names.viewer_secret), missing_ok=True),
            self.kube.delete(self._path("/api/v1", "services", names.base), missing_ok=True),
            self.kube.delete(self._path("/api/v1", "pods", names.viewer), grace_seconds=0, missing_ok=True),
            return_exceptions=True,
        )
        await delete_session_pods(self.kube, self.ns, names.session)


async def delete_session_pods(kube: KubeClient, namespace: str, session: str) -> None:
    """Delete the session's pods right away (the garbage collector would take a moment longer).
    The app keeps its grace period, to save its settings."""
    with contextlib.suppress(errors.KodError):
        pods = await kube.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": f"{labels.SESSION}={session}"})
        await asyncio.gather(*(
            kube.delete(f"/api/v1/namespaces/{namespace}/pods/{p['metadata']['name']}",
                        grace_seconds=0 if p["metadata"].get("labels", {}).get(labels.ROLE) == "viewer" else None,
                        missing_ok=True)
            for p in pods.get("items", [])
        ), return_exceptions=True)


async def wait_gone(kube: KubeClient, namespace: str, session: str, *, timeout: float) -> bool:
    """Wait until no pod of the session is left (their containers are gone then, on the node and
    on the desktop); False when `timeout` passes first."""
    path = f"/api/v1/namespaces/{namespace}/pods"
    sel = f"{labels.SESSION}={session}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            listing = await kube.get(path, params={"labelSelector": sel})
        except errors.KodError:
            return False
        remaining = {p["metadata"]["uid"] for p in listing.get("items", [])}
        if not remaining:
            return True
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                params = {"labelSelector": sel, "resourceVersion": listing["metadata"].get("resourceVersion")}
                async for event in kube.watch_stream(path, params=params):
                    if event.get("type") == "DELETED":
                        remaining.discard(event["object"]["metadata"]["uid"])
                        if not remaining:
                            return True
        except TimeoutError:
            return False
        except errors.KodError:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.1)
