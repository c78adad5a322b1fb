"""Live updates of a running pod's content volumes (PUT /v1/pods/{ns}/{name}/volumes).

    updater = VolumeUpdater(table, mounter)
    result = await updater.update(namespace, name, wire.VolumeUpdate(uid=..., volumes=[...]))

The virtual kubelet sends the new contents of a Secret, ConfigMap, projected or downwardAPI
volume when what it resolves from changes (vk_bridge/live_volumes.py); each one is swapped in
as a whole by `atomic_writer` (the kubelet's AtomicWriter), in the pod's tmpfs, under the pod's
lock (never during its set-up or deletion). Containers see the new files through their mounts of
the volume; a subPath mount keeps the file it was given (as on a kubelet).

The volume's directory is opened as the mounter opens a subPath's (`hostfs`: no symlink on the
way, parents only root may change), so this needs what staging needs: a sidecar that sees the
engine's host paths (root, in dockerd's mount namespace). Without it every update is refused
with the reason (InvalidInput): the pods keep the contents they started with.

Errors: NotFound (no such pod, or another uid), InvalidInput (a volume that is not one of the
pod's content volumes, updates not possible here), Unavailable (the pod is not set up, or is
being deleted: try again later, or not at all).
"""

from __future__ import annotations

import asyncio
import os

from kod import errors, wire
from kod.log import get_logger, pod_context
from sidecars.docker import atomic_writer, hostfs, volumes
from sidecars.docker.mounter import Mounter
from sidecars.docker.state import PodState
from sidecars.docker.table import PodTable
from sidecars.docker.validation import content_kind

log = get_logger(__name__)


class VolumeUpdater:
    """Writes new contents into running pods' content volumes."""

    def __init__(self, table: PodTable, mounter: Mounter) -> None:
        self.table = table
        self.mounter = mounter
        self._euid = os.geteuid()

    async def update(self, namespace: str, name: str, update: wire.VolumeUpdate) -> wire.VolumeUpdateResult:
        """Replace each named volume's files; see the module docstring for the errors."""
        if self.mounter.no_staging is not None:
            raise errors.InvalidInput(f"this sidecar cannot update volumes in place ({self.mounter.no_staging})")
        pod = self.table.lookup(namespace, name, update.uid)
        kinds = {v.name: content_kind(v) for v in pod.spec.volumes}
        for rv in update.volumes:
            if kinds.get(rv.name) is None or rv.name not in pod.planned or not pod.planned[rv.name].has_contents:
                raise errors.InvalidInput(f"volume {rv.name!r} is not a Secret, ConfigMap, projected or downwardAPI "
                                          f"volume of pod {namespace}/{name}")
        result = wire.VolumeUpdateResult()
        async with pod.lock:
            if pod.deleting or not pod.set_up or pod.infra is None or pod.infra.state != "running":
                raise errors.Unavailable(f"the volumes of pod {namespace}/{name} are not set up")
            for rv in update.volumes:
                changed = await asyncio.to_thread(self._write, pod, rv)
                (result.updated if changed else result.unchanged).append(rv.name)
        if result.updated:
            log.info("volumes updated", volumes=result.updated, **pod_context(namespace, name, pod.uid))
        return result

    def _write(self, pod: PodState, rv: wire.ResolvedVolume) -> bool:
        pv = pod.planned[rv.name]
        fs_group = pod.spec.securityContext.fsGroup if pod.spec.securityContext else None
        files = volumes.payload(rv, fs_group=fs_group)
        try:
            base, dir_name = volumes.volume_dir(pv, pod.locations)
            # Docker's root may be a symlink only root can change (as mounter.py says).
            with hostfs.open_host_path(os.path.realpath(base), expect="directory", trusted={self._euid}) as root:
                with hostfs.open_beneath(root, dir_name, expect="directory") as opened:
                    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=opened.fd)
                    try:
                        return atomic_writer.write_atomically(
                            fd, files, gid=fs_group or 0, dir_mode=0o755 | (0o2550 if fs_group else 0)
                        )
                    finally:
                        os.close(fd)
        except (LookupError, hostfs.HostPathError) as exc:
            raise errors.Unavailable(f"volume {rv.name!r} cannot be opened: {exc}") from None
        except atomic_writer.WriteRefused as exc:
            raise errors.InvalidInput(f"volume {rv.name!r} was not updated: {exc}") from None
        except OSError as exc:
            # ENOSPC: new contents more than twice the size the pod started with (its tmpfs).
            raise errors.Unavailable(f"volume {rv.name!r} was not updated: {exc.strerror}") from None
