"""`resolve.References` on the Kubernetes API: Secrets, ConfigMaps, claims, tokens and Services."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from kod import errors
from kod.kube import KubeClient
from kod.kube_watch import ObjectCache

#: How long a pod start waits for the first list of Services before going on without them.
SERVICES_WAIT_SECONDS = 10.0


class KubeReferences:
    """Reads what pods reference. Secrets and ConfigMaps are read when a pod starts (a pod is
    resolved once); Services come from a watched cache, like the kubelet's service lister."""

    def __init__(self, kube: KubeClient, services: ObjectCache | None = None) -> None:
        self.kube = kube
        self._services = services

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] | None = await self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return found

    async def config_map(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] | None = await self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return found

    async def persistent_volume_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        # The Node authorizer lets a node read the claims of pods bound to it (and no others).
        found: Mapping[str, Any] | None = await self.kube.get_or_none(
            f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"
        )
        return found

    async def service_account_token(
        self, namespace: str, service_account: str, *, audiences: list[str], expiration_seconds: int,
        pod_name: str, pod_uid: str,
    ) -> str:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid},
            },
        }
        try:
            answer = await self.kube.create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", body
            )
        except errors.NotFound as exc:
            raise errors.NotFound(f'serviceaccount "{service_account}" not found in namespace {namespace}') from exc
        token = ((answer or {}).get("status") or {}).get("token")
        if not token:
            raise errors.Unavailable(f"TokenRequest for {namespace}/{service_account} returned no token")
        return str(token)

    async def services(self, namespace: str) -> Sequence[Mapping[str, Any]]:
        if self._services is None:
            return []
        if not self._services.ready.is_set():
            try:
                await asyncio.wait_for(self._services.ready.wait(), SERVICES_WAIT_SECONDS)
            except TimeoutError:
                return []
        return self._services.in_namespaces(namespace, "default")
