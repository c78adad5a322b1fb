"""The staged sources of a container's host paths and subPaths of writable volumes.

    mounter = Mounter(settings)             # decides staged or off (settings.host_access.mode)
    await mounter.start()                   # prepares the staging directory (staged mode)
    staged = await mounter.sources(pod, container)   # {mount index: staging path}
    await mounter.release(pod.uid)          # once the pod's containers are gone
    await mounter.collect(keep)             # after a (re)connect: what a crash left behind

For every mount that `volumes.needs_staging` marks:
- a host path is opened with `hostfs.open_host_path` (no symlink on the way, type and owner as
  its allow-list entry says, parents nobody else may change) and staged read-only unless the
  entry is writable and the mount asks for it;
- a subPath of an emptyDir or a PersistentVolumeClaim is opened below the volume's own directory
  with `hostfs.open_beneath` (missing directories are made, symlinks refused, as the kubelet
  does), and staged.
The container's bind then uses the staged path: the inode checked is the inode mounted, whatever
a racing container or local user does to the original path meanwhile.

Errors: `MountRefused` (a symlink, a wrong type or owner, an unsafe parent: the container waits
with CreateContainerConfigError and the reason, and is tried again with a back-off, like the
kubelet) and `MountMissing` (the path does not exist yet: CreateContainerError, retried).

In mode off (`no_staging` is the reason) nothing is staged; the policy refuses every pod that
would need it, so `sources` is never asked for one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable

from kod import wire
from kod.log import get_logger
from sidecars.docker import hostfs, volumes
from sidecars.docker.settings import DockerSidecarSettings
from sidecars.docker.staging import Staging, StagingError, can_mount
from sidecars.docker.state import PodState

log = get_logger(__name__)


class MountRefused(Exception):
    """A path that may not be mounted (kubelet: CreateContainerConfigError)."""

    reason = "CreateContainerConfigError"


class MountMissing(Exception):
    """A host path that does not exist (yet) (kubelet: CreateContainerError; retried)."""

    reason = "CreateContainerError"


class Mounter:
    """Stages what containers mount from the host and from writable volumes' subPaths."""

    def __init__(self, settings: DockerSidecarSettings) -> None:
        self.settings = settings
        mode = settings.host_access.mode
        able, why = can_mount(settings.docker_url)
        if mode == "off":
            self.no_staging: str | None = "host_access.mode is off"
        elif able:
            self.no_staging = None
        elif mode == "staged":
            self.no_staging = f"host_access.mode is staged, but {why}"
        else:
            self.no_staging = why
        self.staging = Staging(settings.staging_dir) if self.no_staging is None else None
        self._euid = os.geteuid()

    async def start(self) -> None:
        """Prepare the staging directory; a failure turns staging off (with the reason)."""
        if self.staging is None:
            log.warning(
                "host paths and subPaths of writable volumes are refused: this sidecar cannot stage mounts",
                reason=self.no_staging,
            )
            return
        try:
            await asyncio.to_thread(self.staging.prepare)
        except (OSError, StagingError) as exc:
            self.no_staging = f"its staging directory {self.staging.root} cannot be prepared: {exc}"
            self.staging = None
            log.warning("host paths and subPaths of writable volumes are refused", reason=self.no_staging)

    async def close(self) -> None:
        if self.staging is not None:
            await asyncio.to_thread(self.staging.close)

    async def sources(self, pod: PodState, c: wire.Container) -> dict[int, str]:
        """The staged source of every mount of `c` that needs one (see the module docstring)."""
        wanted = [
            (j, m, pod.planned[m.name])
            for j, m in enumerate(c.volumeMounts)
            if m.name in pod.planned and volumes.needs_staging(m, pod.planned[m.name])
        ]
        if not wanted:
            return {}
        if self.staging is None:
            raise MountRefused(f"this sidecar cannot stage mounts ({self.no_staging})")
        return await asyncio.to_thread(self._stage_all, pod, wanted)

    def _stage_all(self, pod: PodState, wanted: Iterable[tuple[int, wire.VolumeMount, volumes.PlannedVolume]]) -> dict[int, str]:
        assert self.staging is not None
        out: dict[int, str] = {}
        for j, m, pv in wanted:
            read_only = volumes.mount_read_only(m, pv)
            try:
                if pv.kind in ("host", "device"):
                    assert pv.host_path is not None and pv.host_kind is not None
                    opened = hostfs.open_host_path(
                        pv.host_path, expect=pv.host_kind, trusted={self._euid, *pv.host_owners}
                    )
                    key = f"host/{pv.name}/{'ro' if read_only else 'rw'}"
                else:
                    opened = self._open_sub_path(pod, pv, (m.subPath or "").strip("/"))
                    key = f"sub/{pv.name}/{m.subPath}/{'ro' if read_only else 'rw'}"
            except hostfs.HostPathError as exc:
                what = f"host path {pv.host_path}" if pv.host_path else f"subPath {m.subPath!r} of volume {pv.name!r}"
                if exc.missing:
                    raise MountMissing(f"{what}: {exc.message}") from None
                raise MountRefused(f"{what} refused: {exc.message}") from None
            except LookupError as exc:
                raise MountMissing(str(exc)) from None
            try:
                out[j] = self.staging.stage(pod.uid, key, opened, read_only=read_only, device=pv.kind == "device")
            except (OSError, StagingError) as exc:
                raise MountMissing(f"staging {m.name} failed: {exc}") from None
            finally:
                opened.close()
        return out

    def _open_sub_path(self, pod: PodState, pv: volumes.PlannedVolume, sub: str) -> hostfs.Opened:
        # The base is the sidecar's (root-owned, below Docker's root-only directories): checked
        # like a host path. From the volume's own directory down, everything is the pod's: no
        # owner checks there, but no symlink either. Docker's root may itself be a symlink
        # (/var/lib/docker -> /srv/docker): only root can change that, so it is resolved once.
        base, name = volumes.volume_dir(pv, pod.locations)
        root = hostfs.open_host_path(os.path.realpath(base), expect="directory", trusted={self._euid})
        try:
            mode = 0o777 if pv.kind == "pvc" else pv.root_mode
            return hostfs.open_beneath(root, f"{name}/{sub}", create_dirs=True, dir_mode=mode)
        finally:
            root.close()

    async def release(self, uid: str) -> None:
        """Remove a pod's staging mounts (its containers are gone or never start again)."""
        if self.staging is not None:
            await asyncio.to_thread(self.staging.release, uid)

    async def collect(self, keep: set[str]) -> None:
        """Remove the staging mounts of pods not in `keep` (a crashed predecessor's)."""
        if self.staging is None:
            return
        gone = await asyncio.to_thread(self.staging.collect, keep)
        if gone:
            log.info("removed staging mounts of pods that are gone", pods=len(gone))
