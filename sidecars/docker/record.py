"""The pod record: what the sidecar keeps about a pod in Docker itself.

It is the create request without the volume contents (Secret and ConfigMap bytes are never stored
outside the pod's tmpfs), serialised into a label of the pod's infra container. From it and the
labelled containers, a restarted sidecar rebuilds everything it knew.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kod import wire


class PodRecord(BaseModel):
    """The pod and its resolved containers (env, command, args)."""

    model_config = ConfigDict(extra="forbid")

    pod: wire.Pod
    containers: list[wire.ResolvedContainer] = Field(default_factory=list)
    #: The claims the virtual kubelet confirmed (name and uid): which claim volume is the pod's.
    claims: list[wire.ClaimRef] = Field(default_factory=list)

    @classmethod
    def from_request(cls, request: wire.PodCreateRequest) -> PodRecord:
        return cls(pod=request.pod, containers=request.containers, claims=request.claims)

    def claim_uid(self, name: str) -> str | None:
        """The uid of claim `name` as the virtual kubelet confirmed it (None: not confirmed)."""
        return next((c.uid for c in self.claims if c.name == name), None)

    def resolved(self, name: str) -> wire.ResolvedContainer | None:
        """The resolved env/command/args of container `name` (None: the pod gave none)."""
        for c in self.containers:
            if c.name == name:
                return c
        return None

    def dump(self) -> str:
        return self.model_dump_json(exclude_none=True, by_alias=True)

    @classmethod
    def load(cls, raw: str) -> PodRecord:
        return cls.model_validate_json(raw)
