"""`resolve.References` on the Kubernetes API: Secrets, ConfigMaps, claims, tokens and Services.

Tokens go through a `TokenManager` (vk_bridge/token_manager.py): the same token is answered
until it is due for a refresh, so resolving a running pod's volumes again costs no TokenRequest."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from kod import errors
from kod.kube import KubeClient
from kod.kube_watch import ObjectCache
from vk_bridge.token_manager import Token, TokenKey, TokenManager

#: How long a pod start waits for the first list of Services before going on without them.
SERVICES_WAIT_SECONDS = 10.0


class KubeReferences:
    """Reads what pods reference. Secrets and ConfigMaps are read when a pod starts (and, while
    it runs, from the watches of vk_bridge/live_volumes.py); Services come from a watched cache,
    like the kubelet's service lister; tokens from `tokens` (a default manager when not given)."""

    def __init__(self, kube: KubeClient, services: ObjectCache | None = None, tokens: TokenManager | None = None) -> None:
        self.kube = kube
        self._services = services
        self.tokens = tokens or TokenManager(self.request_token)

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
        key = TokenKey(namespace, service_account, tuple(audiences), expiration_seconds, pod_name, pod_uid)
        return await self.tokens.get(key)

    async def request_token(self, key: TokenKey) -> Token:
        """A new token from the TokenRequest API, bound to the pod, with the lifetime granted."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": list(key.audiences),
                "expirationSeconds": key.expiration_seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": key.pod_name, "uid": key.pod_uid},
            },
        }
        try:
            answer = await self.kube.create(
                f"/api/v1/namespaces/{key.namespace}/serviceaccounts/{key.service_account}/token", body
            )
        except errors.NotFound as exc:
            raise errors.NotFound(f'serviceaccount "{key.service_account}" not found in namespace {key.namespace}') from exc
        status = (answer or {}).get("status") or {}
        token = status.get("token")
        if not token:
            raise errors.Unavailable(f"TokenRequest for {key.namespace}/{key.service_account} returned no token")
        granted = int(((answer or {}).get("spec") or {}).get("expirationSeconds") or key.expiration_seconds)
        try:
            expires = datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            expires = datetime.now().timestamp() + granted
        return Token(token=str(token), expires_at=expires, lifetime_seconds=float(granted))

    async def services(self, namespace: str) -> Sequence[Mapping[str, Any]]:
        if self._services is None:
            return []
        if not self._services.ready.is_set():
            try:
                await asyncio.wait_for(self._services.ready.wait(), SERVICES_WAIT_SECONDS)
            except TimeoutError:
                return []
        return self._services.in_namespaces(namespace, "default")
