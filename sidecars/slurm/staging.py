"""The job's directory, made before sbatch: `<work_dir>/jobs/<pod uid>/`, owned by the job's
uid, 0700 (the pod's volumes hold its secrets).

    stage(job_dir, request, plan, images)    # blocking: run it in a thread

    state/ logs/              the script's records and the containers' output (see jobscript)
    volumes/<name>/           Secret, ConfigMap, projected and downwardAPI contents (files 0600,
                              or 0700 when the pod gives an executable mode; directories 0700)
                              and emptyDirs (0700), all owned by the job's uid and gid
    rootfs/<image>/           the pod's tree of each image: hard links into the shared image tree
                              (bound read-only, so the shared tree cannot be changed through
                              it), plus the mount points its volumes need
    job.sh                    the script as submitted (for people reading along)

Mount points are made without following symlinks: a mount path that crosses a symlink of the
image is refused, so an image cannot point a bind at a host path.

The job's user must not be able to steer what root writes here: the directory is made afresh
(what an earlier try left is removed first, never built upon), is root's (0700) while it is
filled, so nobody else can plant a symlink or a FIFO in it meanwhile, and is handed to the
job's user only at the end (`hand_over`: lchown bottom-up, the job's directory itself last).
Removal (`remove`) is shutil.rmtree's descriptor-based walk, which never follows a symlink out
of the tree; the image trees under rootfs/ are hard links, unlinked, never chowned.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

from kod import errors, wire
from sidecars.slurm.jobscript import ImageConfig, JobPlan, Mount, rootfs_dir, volume_dir


def _private_dir(path: Path) -> None:
    """A 0700 directory of the job's directory (root's until `hand_over`). An existing one that is
    not a directory (a symlink) is refused: chmod would follow it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise errors.InvalidInput(f"{path} is not a directory")
    os.chmod(path, 0o700)


def hand_over(job_dir: Path, uid: int, gid: int) -> None:
    """Give the job's directory to the job's user: every entry but the image trees (rootfs/, hard
    links shared with every pod of the image), deepest first and never through a symlink, the
    directory itself last: until then it is root's 0700 and nobody else can change what is below."""
    entries: list[str] = []
    for top, dirs, files in os.walk(job_dir, followlinks=False):
        if top == str(job_dir):
            dirs[:] = [d for d in dirs if d != "rootfs"]
            files = [f for f in files if f != "rootfs"]
        entries += [os.path.join(top, n) for n in (*dirs, *files)]
    for path in reversed(entries):  # a directory is listed before what it holds
        os.chown(path, uid, gid, follow_symlinks=False)
    os.chown(job_dir, uid, gid, follow_symlinks=False)


def _file_mode(mode: int) -> int:
    return 0o700 if mode & 0o111 else 0o600


def write_volume(root: Path, volume: wire.ResolvedVolume) -> None:
    """The volume's files (in the job's directory while it is still root's; `hand_over` gives
    them to the job's user)."""
    _private_dir(root)
    for item in volume.files:
        parts = item.path.split("/")
        if item.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise errors.InvalidInput(f"volume {volume.name}: path {item.path!r} must be relative, without '..'")
        target = root / item.path
        for parent in reversed(target.relative_to(root).parents):
            if str(parent) != ".":
                d = root / parent
                if d.is_symlink():
                    raise errors.InvalidInput(f"volume {volume.name}: {item.path} crosses a symlink")
                _private_dir(d)
        mode = _file_mode(item.mode if item.mode is not None else volume.defaultMode)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(base64.b64decode(item.data))


#: What bubblewrap mounts as tmpfs in every container (jobscript.bwrap_argv): mount points there
#: are made by bubblewrap itself, inside the tmpfs.
TMPFS = ("/tmp", "/run", "/var/tmp")


def resolve_in_tree(root: Path, target: str, *, max_links: int = 40) -> str:
    """`target` with the image's symlinks resolved as they would be inside the container (an
    absolute link starts again at the tree's root, '..' stops at it): never a path outside."""
    todo = [p for p in target.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        path = root.joinpath(*done, part)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                raise errors.InvalidInput(f"mountPath {target}: too many symlinks in the image")
            link = os.readlink(path)
            if link.startswith("/"):
                done = []
            todo = [p for p in link.split("/") if p] + todo
            continue
        done.append(part)
    return "/" + "/".join(done)


def make_mount_point(root: Path, mount: Mount) -> None:
    """Make `mount.target` (resolved: `resolve_in_tree`) inside the tree `root`: a directory, or
    an empty file when the source is a file. Under the containers' tmpfs bubblewrap makes it."""
    if any(mount.target == t or mount.target.startswith(t + "/") for t in TMPFS):
        return
    parts = [p for p in mount.target.split("/") if p]
    current = root
    for i, part in enumerate(parts):
        current = current / part
        last = i == len(parts) - 1
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if last and mount.source.is_file():
                current.touch(mode=0o644)
            else:
                current.mkdir(mode=0o755)
            continue
        if stat.S_ISLNK(st.st_mode):  # resolved targets have none: the tree changed under us
            raise errors.InvalidInput(f"mountPath {mount.target}: /{'/'.join(parts[:i + 1])} is a symlink in the image")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise errors.InvalidInput(f"mountPath {mount.target}: /{'/'.join(parts[:i + 1])} is not a directory")
        if last and stat.S_ISREG(st.st_mode) and mount.source.is_dir():
            raise errors.InvalidInput(f"mountPath {mount.target}: a file in the image, the volume is a directory")


def stage(job_dir: Path, request: wire.PodCreateRequest, plan: JobPlan, images: dict[str, ImageConfig]) -> None:
    """Everything the job needs, before it is submitted (see the module's docstring)."""
    pod = request.pod
    uid, gid = plan.uid, plan.gid
    job_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    remove(job_dir)  # what an earlier try of this uid left is never built upon
    job_dir.mkdir(mode=0o700)
    for sub in ("state", "logs", "volumes"):
        _private_dir(job_dir / sub)
    resolved = {v.name: v for v in request.volumes}
    for v in pod.spec.volumes:
        root = volume_dir(job_dir, v.name)
        if v.emptyDir is not None:
            _private_dir(root)
        else:
            write_volume(root, resolved.get(v.name) or wire.ResolvedVolume(name=v.name))
    (job_dir / "rootfs").mkdir(mode=0o755, exist_ok=True)
    for c in (*pod.spec.initContainers, *pod.spec.containers):
        tree = rootfs_dir(job_dir, c.image)
        if not tree.exists():
            subprocess.run(["cp", "-al", str(images[c.image].rootfs), str(tree)], check=True, capture_output=True)
        for m in plan.mounts.get(c.name, ()):
            if m.source.is_relative_to(job_dir / "volumes") and not m.source.exists():
                _private_dir(m.source)  # a subPath that is not there yet, as the kubelet makes it
            make_mount_point(tree, m)
    (job_dir / "job.sh").write_text(plan.script)
    os.chmod(job_dir / "job.sh", 0o600)
    hand_over(job_dir, uid, gid)


def remove(job_dir: Path) -> None:
    shutil.rmtree(job_dir, ignore_errors=True)
