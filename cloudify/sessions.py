"""Sessions as a whole: list them, stop one, collect leftovers, remove a user's volumes.

What counts as a leftover (`gc`):
- a session recorded on this desktop whose cloudify is gone (its lock is free: killed, crashed);
- a session in the cluster that says it was started from this desktop, with no cloudify here;
- a session whose expiry time (kod.io/expires-at) has passed, wherever it was started;
- a finished Job (the cluster would delete it after its TTL anyway);
- a local viewer container (-r docker) or private directory (-r native) of such a session.
A session that runs, here or on another desktop of the same user, is never touched by `gc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kod import errors, labels
from kod.kube import KubeClient

from cloudify import names as n
from cloudify.cluster import delete_session_pods, wait_gone
from cloudify.state import Registry, SessionRecord

#: Seconds `stop` waits for a running cloudify to clean up after SIGTERM.
STOP_WAIT_SECONDS = 30.0


@dataclass
class SessionInfo:
    """One session, as `cloudify sessions` shows it."""

    session: str
    app: str
    user: str
    namespace: str
    run_mode: str = "?"
    protocol: str = "?"
    secure: bool = False
    persist: str | None = None
    started: str | None = None
    app_phase: str | None = None
    app_node: str | None = None
    viewer_phase: str | None = None
    desktop_host: str | None = None
    expires: str | None = None
    job_finished: bool = False
    #: Recorded on this desktop, and whether the cloudify running it is alive.
    recorded_here: bool = False
    cli_alive: bool = False
    pid: int | None = None
    containers: list[str] = field(default_factory=list)

    def state(self) -> str:
        if self.job_finished:
            return "finished"
        if self.recorded_here and not self.cli_alive:
            return "orphaned"
        if self.app_phase is None and self.recorded_here:
            return "starting"
        return (self.app_phase or "gone").lower()

    def expired(self, now: datetime) -> bool:
        if not self.expires:
            return False
        try:
            return datetime.strptime(self.expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) < now
        except ValueError:
            return False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state()
        return out


def _info_from_job(job: dict[str, Any]) -> SessionInfo:
    meta = job["metadata"]
    lbl, ann = meta.get("labels", {}), meta.get("annotations", {})
    conditions = {c.get("type"): c.get("status") for c in job.get("status", {}).get("conditions", [])}
    return SessionInfo(
        session=lbl.get(labels.SESSION, "?"),
        app=lbl.get(labels.APP, "?"),
        user=lbl.get(labels.USER, "?"),
        namespace=meta.get("namespace", "?"),
        run_mode=ann.get(n.A_RUN_MODE, "?"),
        protocol=ann.get(n.A_PROTOCOL, "?"),
        secure=ann.get(n.A_SECURE) == "true",
        persist=ann.get(n.A_PERSIST),
        started=meta.get("creationTimestamp"),
        desktop_host=ann.get(n.A_DESKTOP_HOST),
        expires=ann.get(labels.EXPIRES_AT),
        job_finished=conditions.get("Complete") == "True" or conditions.get("Failed") == "True",
    )


async def list_sessions(kube: KubeClient | None, namespace: str, user: str, registry: Registry) -> list[SessionInfo]:
    """The user's sessions in the cluster, joined with this desktop's records (a session being
    created or one the cluster lost shows from its record alone). `kube=None`: records only."""
    found: dict[str, SessionInfo] = {}
    if kube is not None:
        sel = n.user_selector(user)
        jobs, pods = await asyncio.gather(
            kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs", params={"labelSelector": sel}),
            kube.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": sel}),
        )
        for job in jobs.get("items", []):
            info = _info_from_job(job)
            found[info.session] = info
        for pod in pods.get("items", []):
            lbl = pod["metadata"].get("labels") or {}
            owner = found.get(lbl.get(labels.SESSION, ""))
            if owner is None:
                continue
            if lbl.get(labels.ROLE) == n.ROLE_APP:
                owner.app_phase = (pod.get("status") or {}).get("phase")
                owner.app_node = (pod.get("spec") or {}).get("nodeName")
            elif lbl.get(labels.ROLE) == n.ROLE_VIEWER:
                owner.viewer_phase = (pod.get("status") or {}).get("phase")
    for record, alive in registry.records():
        if record.user != user or record.namespace != namespace:
            continue
        here = found.get(record.session)
        if here is None:
            here = found[record.session] = SessionInfo(
                session=record.session, app=record.app, user=record.user, namespace=record.namespace,
                run_mode=record.run_mode, protocol=record.protocol, secure=record.secure,
                persist=n.pvc_name(record.user, record.app) if record.persist else None, started=record.started,
            )
        here.recorded_here, here.cli_alive, here.pid = True, alive, record.pid
        here.containers = list(record.containers)
    return sorted(found.values(), key=lambda i: i.started or "")


async def collect(kube: KubeClient | None, namespace: str, session: str, *, docker_url: str | None,
                  record: SessionRecord | None = None) -> None:
    """Delete everything of one session: its objects in the cluster (by label, whatever their
    names), its local viewer containers and private files. The PVC stays."""
    if kube is not None:
        sel = f"{labels.SESSION}={session}"
        for api, kind in (("/apis/batch/v1", "jobs"), ("/api/v1", "services"), ("/api/v1", "secrets")):
            listing = await kube.get(f"{api}/namespaces/{namespace}/{kind}", params={"labelSelector": sel})
            await asyncio.gather(*(
                kube.delete(f"{api}/namespaces/{namespace}/{kind}/{o['metadata']['name']}", missing_ok=True)
                for o in listing.get("items", [])
            ))
        await delete_session_pods(kube, namespace, session)
    await asyncio.to_thread(remove_local_containers, docker_url, session)
    for path in (record.paths if record else []):
        shutil.rmtree(path, ignore_errors=True)
    if kube is not None:
        await wait_gone(kube, namespace, session, timeout=20.0)


def remove_local_containers(docker_url: str | None, session: str | None, *, user: str | None = None) -> list[str]:
    """Remove cloudify's viewer containers of a session (or, with session=None, all of a user's);
    their names. A desktop without Docker has none: that is not an error."""
    try:
        import docker

        client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
        filters = {"label": [f"{labels.D_MANAGED_BY}={n.D_MANAGED_BY_CLOUDIFY}"]}
        if session:
            filters["label"].append(f"{labels.D_SESSION}={session}")
        if user:
            filters["label"].append(f"{labels.DOCKER_PREFIX}.user={user}")
        containers = client.containers.list(all=True, ignore_removed=True, filters=filters)
    except Exception:  # noqa: BLE001 - no engine, no containers
        return []
    removed = []
    for c in containers:
        with contextlib.suppress(Exception):
            c.remove(force=True)
            removed.append(c.name)
    return removed


def local_container_sessions(docker_url: str | None, user: str) -> set[str]:
    """Session ids of the user's cloudify viewer containers on this desktop."""
    try:
        import docker

        client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
        containers = client.containers.list(all=True, ignore_removed=True, filters={"label": [
            f"{labels.D_MANAGED_BY}={n.D_MANAGED_BY_CLOUDIFY}", f"{labels.DOCKER_PREFIX}.user={user}",
        ]})
    except Exception:  # noqa: BLE001
        return set()
    return {c.labels.get(labels.D_SESSION, "") for c in containers} - {""}


async def stop(kube: KubeClient | None, namespace: str, user: str, registry: Registry, session: str, *,
               docker_url: str | None) -> str:
    """Stop one of the user's sessions. One that a cloudify on this desktop runs is asked to end
    (SIGTERM: it cleans up itself, as after Ctrl-C); any other is collected directly. Returns
    what was done."""
    sessions = {s.session: s for s in await list_sessions(kube, namespace, user, registry)}
    info = sessions.get(session)
    if info is None:
        raise errors.NotFound(f"no session {session!r} of user {user}", hint="`cloudify sessions` lists them")
    if info.recorded_here and info.cli_alive and info.pid:
        if await end_process(info.pid, timeout=STOP_WAIT_SECONDS):
            return f"session {session} ({info.app}) ended by its cloudify (pid {info.pid})"
        raise errors.Unavailable(
            f"the cloudify running session {session} (pid {info.pid}) did not end within {STOP_WAIT_SECONDS:g} s",
            hint=f"kill it (kill {info.pid}) and run `cloudify gc`",
        )
    with registry.claim(session) as record:
        await collect(kube, namespace, session, docker_url=docker_url, record=record)
    return f"session {session} ({info.app}) removed"


async def end_process(pid: int, *, timeout: float) -> bool:
    """SIGTERM a process and wait until it has exited (a pidfd becomes readable then: no
    polling, and no risk of signalling a recycled pid). False when `timeout` passes first."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    try:
        loop.add_reader(pidfd, exited.set)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            return True
        try:
            await asyncio.wait_for(exited.wait(), timeout)
            return True
        except TimeoutError:
            return False
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


@dataclass
class GcReport:
    collected: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    kept_running: list[str] = field(default_factory=list)


async def gc(kube: KubeClient | None, namespace: str, user: str, registry: Registry, *, hostname: str,
             docker_url: str | None, now: datetime | None = None) -> GcReport:
    """Collect every leftover (see the module docstring); sessions that run are kept."""
    now = now or datetime.now(UTC)
    report = GcReport()
    sessions = await list_sessions(kube, namespace, user, registry)
    for info in sessions:
        orphan_here = (info.recorded_here and not info.cli_alive) or (
            info.desktop_host == hostname and not info.cli_alive
        )
        if orphan_here or info.job_finished or info.expired(now):
            with registry.claim(info.session) as record:
                if info.recorded_here and record is None:
                    continue  # its cloudify came back to life, or another gc has it
                await collect(kube, namespace, info.session, docker_url=docker_url, record=record)
            report.collected.append(f"{info.session} ({info.app})")
        else:
            report.kept_running.append(f"{info.session} ({info.app})")
    live = {i.session for i in sessions if i.session not in {c.split(" ")[0] for c in report.collected}}
    for sid in local_container_sessions(docker_url, user) - live:
        if not registry.is_running_here(sid):
            report.containers += await asyncio.to_thread(remove_local_containers, docker_url, sid)
    return report


async def user_volumes(kube: KubeClient, namespace: str, user: str) -> list[dict[str, Any]]:
    """The user's persistent volumes (one per app used with -v)."""
    sel = f"{labels.MANAGED_BY}={labels.MANAGED_BY_CLOUDIFY},{labels.USER}={user},{labels.ROLE}={n.ROLE_DATA}"
    listing = await kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", params={"labelSelector": sel})
    return list(listing.get("items", []))


async def delete_volumes(kube: KubeClient, namespace: str, claims: list[dict[str, Any]]) -> None:
    await asyncio.gather(*(
        kube.delete(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{c['metadata']['name']}", missing_ok=True)
        for c in claims
    ))
