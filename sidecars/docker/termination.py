"""Termination messages: what a container leaves at its terminationMessagePath (or, with
FallbackToLogsOnError, the end of its logs), in its terminated state's `message`.

    volumes.plan(spec, policy)       # plans the `_termination` files when a container has a path
    mount = termination.mount(container, attempt, locations)   # a bind for the container's create
    await termination.reset(engine, pod, slot, attempt)   # an empty file before a run reuses it
    await termination.collect(engine, pod)                # read what finished runs left (on refresh)
    message = termination.budget(pod, message)            # the pod's 12 KiB, shared

As the kubelet (kuberuntime_container.go, status_manager.go's normalizeStatus):
- every container with a terminationMessagePath gets a file of its own bound there, empty and
  writable by any user (0666), whatever the image has at that path (/dev is a tmpfs in a
  container, so the file must come from outside). The files live in the pod's disk volume
  (`_termination/<container>.<attempt % 2>`): the kubelet keeps the message of the latest run
  and of the one before (lastState), and so two files per container are enough; a run that
  reuses a file gets it emptied first;
- once a run finished, at most the last 4096 bytes of the file are its message; with
  FallbackToLogsOnError, a run that failed (exit code not 0, not a failure to start) and left
  no message gets the last 80 lines of its logs, at most their last 2048 bytes;
- the whole pod's messages share 12 KiB: each container's is cut to 12 KiB / containers.
The file is read through the engine (`GET /containers/{id}/archive` of the finished run, which
the engine serves from the run's mounts even when it has stopped), one request per finished run,
the first time the run is seen finished (after a restart of the sidecar: again, once).
"""

from __future__ import annotations

import asyncio
import io
import struct
import tarfile
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from kod import wire
from sidecars.docker import naming
from sidecars.docker.engine import Engine, EngineError

if TYPE_CHECKING:  # volumes.py (which state.py imports) plans the message files with this module
    from sidecars.docker.state import PodState, Run, Slot

#: The kubelet's limits (pkg/kubelet/container/runtime.go).
MAX_POD_MESSAGE = 12 * 1024
MAX_MESSAGE = 4 * 1024
MAX_LOG_MESSAGE = 2 * 1024
MAX_LOG_LINES = 80

#: The pseudo volume (in the pod's disk area) holding the message files; not a DNS label, so no
#: pod volume can have its name.
VOLUME = "_termination"
FALLBACK = "FallbackToLogsOnError"


def wanted(spec: wire.PodSpec) -> bool:
    """Whether the pod needs message files (a container with a terminationMessagePath)."""
    return any(c.terminationMessagePath for c in [*spec.initContainers, *spec.containers])


def file_name(container: str, attempt: int) -> str:
    return f"{container}.{attempt % 2}"


def files(spec: wire.PodSpec) -> list[str]:
    """The message files to create with the pod (both of every container that has a path)."""
    return [
        f"{VOLUME}/{file_name(c.name, n)}"
        for c in [*spec.initContainers, *spec.containers]
        if c.terminationMessagePath
        for n in (0, 1)
    ]


def mount(container: wire.Container, attempt: int, disk_root: str | None) -> dict[str, Any] | None:
    """The bind of run `attempt`'s message file at the container's terminationMessagePath (None:
    it has no path). `disk_root` is the engine's host path of the pod's disk volume."""
    path = container.terminationMessagePath
    if not path:
        return None
    if disk_root is None:
        return None  # a pod set up before message files existed: no message, as before
    return {
        "Type": "bind",
        "Source": f"{disk_root}/{VOLUME}/{file_name(container.name, attempt)}",
        "Target": path,
        "ReadOnly": False,
        # Below the engine's root: it insists on rslave (see volumes._bind).
        "BindOptions": {"Propagation": "rslave"},
    }


def empty_file_tar(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.mode = 0o666
        tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


async def reset(engine: Engine, pod: PodState, slot: Slot, attempt: int) -> None:
    """Empty the message file run `attempt` will use, when an earlier run used it (attempt >= 2)."""
    if attempt < 2 or not slot.spec.terminationMessagePath or pod.infra_id is None:
        return
    name = f"disk/{VOLUME}/{file_name(slot.name, attempt)}"
    await engine.put_archive(pod.infra_id, naming.INFRA_ROOT, empty_file_tar(name))


async def read_file(engine: Engine, ref: str, path: str, limit: int) -> bytes | None:
    """The last `limit` bytes of file `path` in container `ref` (running or not); None when it
    does not exist (or is not a regular file)."""
    # Through the engine's plumbing: the archive endpoint has no wrapper in engine.py yet.
    try:
        _, payload = await engine._call(  # noqa: SLF001
            "GET", f"/containers/{quote(ref, safe='')}/archive", params={"path": path}, raw=True
        )
    except EngineError as exc:
        if exc.not_found:
            return None
        raise
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                return data[-limit:] if len(data) > limit else data
            return None
    return None


def demux(raw: bytes) -> bytes:
    """The payload of Docker's multiplexed log stream (raw when it does not look multiplexed)."""
    out = bytearray()
    pos = 0
    while pos + 8 <= len(raw):
        kind, size = raw[pos], struct.unpack(">I", raw[pos + 4:pos + 8])[0]
        if kind not in (0, 1, 2) or raw[pos + 1:pos + 4] != b"\0\0\0":
            return raw  # a TTY's stream
        out += raw[pos + 8:pos + 8 + size]
        pos += 8 + size
    return bytes(out) if pos == len(raw) else raw


async def log_tail(engine: Engine, ref: str) -> bytes:
    """The last `MAX_LOG_LINES` lines of the container's logs, at most their last 2048 bytes."""
    chunks = bytearray()
    async for chunk in engine.logs(ref, {"stdout": "1", "stderr": "1", "tail": str(MAX_LOG_LINES)}):
        chunks += chunk
    data = demux(bytes(chunks))
    return data[-MAX_LOG_MESSAGE:]


async def message_of(engine: Engine, slot: Slot, run: Run) -> str:
    """The termination message of a finished run, as the kubelet reads it."""
    spec = slot.spec
    fallback = spec.terminationMessagePolicy == FALLBACK and run.exit_code != 0 and not run.start_failed
    data: bytes | None = None
    if spec.terminationMessagePath and not run.start_failed:
        try:
            data = await read_file(engine, run.id, spec.terminationMessagePath, MAX_MESSAGE)
        except EngineError as exc:
            return f"Error on reading termination log {spec.terminationMessagePath}: {exc.message}"
        except tarfile.TarError as exc:
            return f"Error on reading termination log {spec.terminationMessagePath}: {exc}"
    if not data and fallback:
        try:
            data = await log_tail(engine, run.id)
        except EngineError as exc:
            return f"Error on reading termination message from logs: {exc.message}"
    return (data or b"").decode("utf-8", "replace")


async def collect(engine: Engine, pod: PodState) -> None:
    """Read the message of every finished run not read yet (concurrently); forget those of
    runs that are gone. The caller holds the pod's lock."""
    todo: list[tuple[Slot, Run]] = []
    for slot in pod.slots.values():
        ids = {r.id for r in slot.runs.values()}
        for cid in [c for c in slot.messages if c not in ids]:
            del slot.messages[cid]
        todo += [(slot, r) for r in slot.runs.values() if r.finished and r.id not in slot.messages]
    if not todo:
        return
    results = await asyncio.gather(*(message_of(engine, s, r) for s, r in todo), return_exceptions=True)
    for (slot, run), result in zip(todo, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        slot.messages[run.id] = result if isinstance(result, str) else ""


def budget(pod: PodState, message: str | None) -> str | None:
    """`message` cut to the pod's share per container (12 KiB / containers), as the kubelet
    cuts it (by bytes)."""
    if not message:
        return message
    count = len(pod.spec.containers) + len(pod.spec.initContainers)
    share = MAX_POD_MESSAGE // count if count else MAX_POD_MESSAGE
    raw = message.encode()
    if len(raw) <= share:
        return message
    return raw[:share].decode("utf-8", "ignore")
