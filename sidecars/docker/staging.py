"""Staging mounts: what Docker binds into a container is exactly the inode the sidecar checked.

    staging = Staging(Path("/run/kod/docker-sidecar/docker"))
    staging.prepare()                                       # once, at start (root only)
    source = staging.stage(pod_uid, "host-x11", opened, read_only=True)
    ...                                                     # hand `source` to Docker as the bind source
    staging.release(pod_uid)                                # once the pod's containers are gone
    staging.collect(keep=uids_of_live_pods)                 # after a restart: what a crash left

Docker's runc cannot bind a `/proc/<pid>/fd/N` magic link (EINVAL: the descriptor's mount belongs
to the sidecar's mount namespace, not the container's), so the sidecar does what the kubelet does
for subPath since CVE-2017-1002101: it binds `/proc/self/fd/N` (an O_PATH descriptor from
`hostfs`) onto a staging path of its own, in a root-only (0700) directory, and gives Docker that
path. Nobody but root can change what is at the staging path, so the container gets the checked
inode even if the original path is swapped for a symlink an instant later.

The staging root is made a private mount of its own (a bind of itself), so the staged binds never
propagate into other mount namespaces; Docker binds them with private propagation. Bind mounts are
remounted nosuid and nodev (devices excepted: Docker maps those with mknod), read-only when asked,
keeping the source's noexec.

Contracts:
- `stage` is idempotent per (pod, key): the same inode staged again is reused, another one
  replaces it (a container created later gets the new one; running ones keep theirs).
- `release` and `collect` only ever unmount and remove the staging entries themselves (never a
  recursive delete: a bind that failed to unmount would otherwise expose the host object); an
  entry that cannot be removed is logged and tried again by the next `collect`.
- Everything here is synchronous and fast (system calls); callers run it in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import stat
import threading
from pathlib import Path

from kod.log import get_logger
from sidecars.docker.hostfs import HostPathError, Opened, open_host_path

log = get_logger(__name__)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class StagingError(Exception):
    """A staging mount could not be made."""


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if _libc.mount(src, target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise StagingError(f"mount of {target} failed: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise StagingError(f"unmount of {target} failed: {os.strerror(err)}")


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field) >= i + 4 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return [_unescape(line.split(" ")[4]) for line in f if line.strip()]


def _engine_mount_namespaces() -> set[str]:
    """The mount namespaces of the dockerd processes this process can see."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", encoding="utf-8") as f:
                if f.read().strip() != "dockerd":
                    continue
            found.add(os.readlink(f"/proc/{entry.name}/ns/mnt"))
        except OSError:
            continue
    return found


def can_mount(docker_url: str) -> tuple[bool, str]:
    """Whether this process can make staging mounts that dockerd sees: root with CAP_SYS_ADMIN,
    talking to a dockerd on this machine that shares its mount namespace (a sidecar in a
    container, or an engine elsewhere, would mount where dockerd never looks). (yes, why not)."""
    if os.geteuid() != 0:
        return False, f"it runs as uid {os.geteuid()}, not root"
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            cap_eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False, "its capabilities cannot be read"
    if not cap_eff & (1 << 21):
        return False, "it lacks CAP_SYS_ADMIN"
    if not docker_url.startswith("unix://"):
        return False, f"the Docker engine ({docker_url}) is not a local unix socket, so it may not see this machine's mounts"
    engines = _engine_mount_namespaces()
    if not engines:
        return False, "no dockerd process is visible to it (it runs in a container or another PID namespace)"
    if os.readlink("/proc/self/ns/mnt") not in engines:
        return False, "dockerd runs in another mount namespace (the sidecar runs in a container)"
    return True, ""


def _key_name(key: str) -> str:
    # Keys are made of pod volume names and subPaths: keep them readable, bounded and flat.
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)[:80]
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class Staging:
    """The staging directory of one sidecar (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Containers of a pod are created concurrently (threads): one change of the mount table
        # at a time keeps "is it mounted, then (un)mount" from racing with itself.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ set-up

    def prepare(self) -> None:
        """Make the root (0700, root-owned, its parents safe) a private mount of its own."""
        self.root.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.root.mkdir(exist_ok=True, mode=0o700)
        try:
            # Every directory on the way root's, none that others may change: nobody else can
            # swap the staging directory (or what is in it) for something of their own.
            with open_host_path(str(self.root), expect="directory", trusted=()) as opened:
                os.chmod(f"/proc/self/fd/{opened.fd}", 0o700)
        except HostPathError as exc:
            raise StagingError(f"the staging directory is not safe: {exc.message}") from exc
        if str(self.root) not in mount_points():
            _mount(str(self.root), str(self.root), MS_BIND)
        _mount(None, str(self.root), MS_PRIVATE)

    def close(self) -> None:
        """Unmount the root when nothing is staged in it any more (pods that keep running keep
        theirs, and the root with them)."""
        prefix = str(self.root) + "/"
        if any(m.startswith(prefix) for m in mount_points()):
            return
        root = str(self.root)
        while root in mount_points():
            try:
                _umount(root)
            except StagingError as exc:
                log.warning("cannot unmount the staging root", error=str(exc))
                return
        try:
            self.root.rmdir()  # only when empty: pod directories left mean pods left
        except OSError:
            pass

    # ------------------------------------------------------------------ staging

    def pod_dir(self, uid: str) -> Path:
        return self.root / uid

    def stage(self, uid: str, key: str, opened: Opened, *, read_only: bool, device: bool = False) -> str:
        """Bind the object `opened` holds onto this pod's staging path for `key`; its path."""
        with self._lock:
            return self._stage(uid, key, opened, read_only=read_only, device=device)

    def _stage(self, uid: str, key: str, opened: Opened, *, read_only: bool, device: bool) -> str:
        pod_dir = self.pod_dir(uid)
        pod_dir.mkdir(exist_ok=True, mode=0o700)
        target = pod_dir / _key_name(key)
        path = str(target)
        if path in mount_points():
            current = os.stat(path)
            if (current.st_dev, current.st_ino) == (opened.st.st_dev, opened.st.st_ino):
                return path
            while path in mount_points():
                _umount(path)
        is_dir = stat.S_ISDIR(opened.st.st_mode)
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode) != is_dir:
            os.rmdir(path) if stat.S_ISDIR(existing.st_mode) else os.unlink(path)
            existing = None
        if existing is None:
            if is_dir:
                os.mkdir(path, 0o700)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        _mount(f"/proc/self/fd/{opened.fd}", path, MS_BIND)
        try:
            flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if device else MS_NODEV)
            flags |= MS_RDONLY if read_only else 0
            if os.fstatvfs(opened.fd).f_flag & os.ST_NOEXEC:
                flags |= MS_NOEXEC
            _mount(None, path, flags)
        except BaseException:
            _umount(path)
            raise
        return path

    # ------------------------------------------------------------------ clean-up

    def release(self, uid: str) -> bool:
        """Unmount and remove a pod's staging entries; True when nothing of it is left."""
        with self._lock:
            return self._release(uid)

    def _release(self, uid: str) -> bool:
        pod_dir = self.pod_dir(uid)
        prefix = str(pod_dir) + "/"
        clean = True
        for point in sorted((m for m in mount_points() if m.startswith(prefix)), key=len, reverse=True):
            try:
                _umount(point)
            except StagingError as exc:
                log.warning("cannot unmount a staging mount", pod_uid=uid, error=str(exc))
                clean = False
        if not pod_dir.exists():
            return clean
        still = set(mount_points())
        for entry in os.scandir(pod_dir):
            if entry.path in still:
                clean = False
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    os.rmdir(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError as exc:
                log.warning("cannot remove a staging entry", pod_uid=uid, path=entry.path, error=str(exc))
                clean = False
        if clean:
            try:
                os.rmdir(pod_dir)
            except OSError as exc:
                log.warning("cannot remove a pod's staging directory", pod_uid=uid, error=str(exc))
                clean = False
        return clean

    def uids(self) -> list[str]:
        """The pods that have a staging directory."""
        if not self.root.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False))

    def collect(self, keep: set[str]) -> list[str]:
        """Release every pod not in `keep` (what a crashed predecessor left); the uids released."""
        gone = [uid for uid in self.uids() if uid not in keep]
        for uid in gone:
            self.release(uid)
        return gone
