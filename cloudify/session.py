"""One session, from `cloudify firefox` to the last object deleted.

    prepare      desktop checks; keys (in parallel); the cluster measured (its first answer
                 within 2 s, the link's round trip and, off a LAN, throughput: else the app runs
                 locally when installed; the picture's quality and compression fitted to the
                 link unless the user chose them); nodes, image and virtual node checked;
                 how the viewer reaches the app decided; the session recorded locally; then the
                 Job, Secret, Service (PVC) created and the viewer started at once: it retries
                 while the app starts
    app running  the app pod's phase, from the session's watch (honours -t)
    viewer       the viewer pod's phase / container / process (honours -t)
    first frame  the app pod's log: a viewer connected and the app's window is shown
    end          the viewer ends (window closed, or the app ended: "End of stream"), or the app
                 ends, or Ctrl-C / SIGTERM / `cloudify stop`
    cleanup      everything deleted, waited for until the session's pods are gone

Nothing is created before every check passed; from the first object on, the local record (and
the Job's ownership of the rest, and its deadline) make sure nothing outlives the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kod import apps, errors
from kod.kube import KubeClient
from kod.kube_channels import exec_lines
from kod.log import get_logger

from cloudify import credentials, desktop, fallback, link, preflight
from cloudify import names as n
from cloudify.cluster import ClusterSide, wait_gone
from cloudify.context import Context
from cloudify.manifests import SessionPlan, Target
from cloudify.options import SessionOptions
from cloudify.podwatch import SessionPods, wait_for
from cloudify.portforward import PodForwarder, ViewerAddress, parse_port_range, same_user_guard
from cloudify.progress import Timeline
from cloudify.state import HeldRecord, SessionRecord
from cloudify.viewers.base import Viewer

log = get_logger(__name__)

#: Seconds the viewer gets to notice that the app ended before it is stopped.
VIEWER_AFTER_APP_SECONDS = 5.0
#: Seconds cleanup waits for the session's pods to be gone.
CLEANUP_WAIT_SECONDS = 20.0
#: Log lines of the app entrypoint (images/base/entrypoint.py) that mark the first frame.
#: Xvnc logs it when it sends ServerInit: a viewer logged in (a bare TCP probe does not count).
VIEWER_CONNECTED_MARK = "Server default pixel format"
APP_WINDOW_MARK = "kod: app window shown"
#: Run in the app container when its log does not say when the window is shown: waits until the
#: display has a visible, named window (the app's: openbox shows none of its own); ~4 ms of CPU
#: per look, ten looks a second while the app starts.
WINDOW_PROBE = "until xdotool search --onlyvisible --name . >/dev/null 2>&1; do sleep 0.1; done; echo shown"
APP_NO_VIEWER = apps.APP_EXIT_NO_VIEWER


@dataclass(frozen=True)
class DesktopIO:
    """The desktop's screen and speakers, as this session's viewer will use them."""

    display: desktop.Display | None
    xauthority: bytes | None
    pulse: Path | None
    #: The group a viewer joins to reach the PulseAudio socket (None: it needs none).
    pulse_gid: int | None

    @property
    def pulse_dir(self) -> str | None:
        return str(self.pulse.parent) if self.pulse else None

    @property
    def pulse_name(self) -> str:
        return self.pulse.name if self.pulse else "native"


class SessionRunner:
    def __init__(self, ctx: Context, options: SessionOptions, timeline: Timeline) -> None:
        self.ctx, self.opts, self.tl = ctx, options, timeline
        self.settings = ctx.settings
        self.names = n.SessionNames(
            session=n.new_session_id(), app=options.app, user=ctx.user, namespace=self.settings.namespace
        )
        self.kube: KubeClient | None = None
        self.cluster: ClusterSide | None = None
        self.pods: SessionPods | None = None
        self.viewer: Viewer | None = None
        self.forwarders: list[PodForwarder] = []
        #: Who may use the session's forwarders when the viewer runs in a container or a pod.
        self._viewer_guard = ViewerAddress()
        self.record: HeldRecord | None = None
        self.docker: Any = None
        self._log_task: asyncio.Task[None] | None = None
        self._frame_task: asyncio.Task[None] | None = None
        self._gc_task: asyncio.Task[None] | None = None
        #: Where cloudify's port-forward listens (None: the viewer uses a NodePort).
        self._bind: str | None = None
        self._fallback_reason = ""
        #: The probe for a NodePort, started as soon as the nodes are known (beside the link's
        #: measurement: on a slow link each waits on round trips, so they wait at the same time).
        self._reach_task: asyncio.Task[str | None] | None = None
        self.first_frame = asyncio.Event()

    # ------------------------------------------------------------------ the whole session

    async def run(self) -> int:
        """Run the session; its exit code. Raises the vocabulary's errors for what went wrong,
        after cleaning up."""
        try:
            return await self._run()
        finally:
            await asyncio.shield(self._cleanup())

    async def _run(self) -> int:
        opts, settings = self.opts, self.settings
        if not opts.secure:
            self._warn_clear()
        io = await self._desktop_io()
        local = fallback.local_command(opts.app, settings) if settings.fallback else None
        creds_task = asyncio.create_task(credentials.generate(self.names.session))
        docker_task = asyncio.create_task(asyncio.to_thread(self._docker_ready)) if opts.run_mode == "docker" else None
        try:
            pre = await self._measure(local)
            self._step("cluster measured")
            if pre is None:
                creds_task.cancel()
                if self._reach_task is not None:
                    self._reach_task.cancel()
                return await self._run_locally(local)
            opts = self.opts  # the picture fitted to the link
            preflight.check(pre, opts, settings, self.names.user, app_image=settings.image(opts.app.image),
                            hostname=self.ctx.hostname)
            if docker_task is not None:
                await docker_task
                self._step("docker ready")
            creds = await creds_task
            self._step("keys made")
            address = await self._decide_reach()
            # Without a node address the viewer goes through cloudify's port-forward: where it
            # listens must be known before anything is created.
            self._bind = None if address is not None else self._forward_address()
            self._step("reach decided", address=address, forward=self._bind)
        except BaseException:
            creds_task.cancel()
            if docker_task is not None:
                docker_task.cancel()
            if self._reach_task is not None:
                self._reach_task.cancel()
            raise
        plan = SessionPlan(
            names=self.names, options=opts, settings=settings, credentials=creds,
            now=datetime.now(UTC), desktop_host=self.ctx.hostname,
        )
        assert self.kube is not None
        self._hold_record()
        self.cluster = ClusterSide(
            self.kube, plan, node_port=address is not None,
            xauthority=io.xauthority if opts.run_mode == "pod" else None,
        )
        self.pods = SessionPods(self.kube, self.names.namespace, self.names.session)
        await self.cluster.create()
        self._step("objects created")
        self.pods.start()
        self._log_task = asyncio.create_task(self._follow_app_log())
        target = await self._target(address)
        self.viewer = self._make_viewer(plan, pre, io)
        await self.viewer.start(target)
        self._step("viewer started")
        if self.forwarders and opts.run_mode == "docker":
            from cloudify.viewers.docker import DockerViewer

            assert isinstance(self.viewer, DockerViewer)
            self._viewer_guard.set(await self.viewer.address())
        where = f"via NodePort {target.host}" if address else "via the API server's port-forward"
        self.tl.mark("prepare", f"session {self.names.session}: {opts.app.name}, viewer {opts.run_mode}, {where}")
        await self._wait_started()
        # Leftovers of earlier sessions whose cloudify died (kill -9, crash): collected now that
        # this one is up, off its start-up path.
        self._gc_task = asyncio.create_task(self._collect_leftovers())
        return await self._wait_end()

    def _step(self, what: str, **kw: Any) -> None:
        log.debug(what, at=round(self.tl.now(), 3), session=self.names.session, **kw)

    # ------------------------------------------------------------------ prepare

    async def _desktop_io(self) -> DesktopIO:
        """Check the desktop side before anything else (no cluster object is created)."""
        opts, settings, host = self.opts, self.settings, self.ctx.host
        if opts.run_mode == "native":
            from cloudify.viewers.native import NativeViewer

            NativeViewer.check_tools(settings.ssh, settings.vncviewer, opts.protocol)
            # ssh runs as the user: the session's own socket accepts it as well as the kod one.
            pulse = desktop.kod_pulse(settings, host) or desktop.session_pulse(settings, host)
            if pulse is None:
                self.tl.say("  ! no PulseAudio answers in this session: the app will have no sound")
            return DesktopIO(display=None, xauthority=None, pulse=pulse, pulse_gid=None)
        display = desktop.parse_display(settings.display or host.display)
        if not display.socket.exists():
            raise errors.InvalidInput(
                f"display {display.name}: no X socket at {display.socket}", hint="is the X server running?"
            )
        cookie = desktop.wild_cookie(desktop.xauthority_path(settings, host), display)
        pulse, note = await desktop.ensure_kod_pulse(settings, host)
        if note:
            self.tl.say(f"  {'! ' if pulse is None else ''}{note}")
        gid = desktop.socket_group(pulse) if pulse else None
        return DesktopIO(display=display, xauthority=cookie, pulse=pulse, pulse_gid=gid)

    def _docker_ready(self) -> None:
        from cloudify.viewers.docker import docker_client

        self.docker = docker_client(self.settings.docker_url or self.ctx.host.docker_host)
        image = self.settings.image("viewer")
        import docker.errors

        try:
            self.docker.images.get(image)
        except docker.errors.ImageNotFound as exc:
            raise errors.NotFound(
                f"the viewer image {image} is not in the local Docker engine",
                hint="build it with `python -m localenv images`",
            ) from exc

    async def _measure(self, local: list[str] | None) -> preflight.Preflight | None:
        """Time the cluster's answer. None: run locally instead (it is away or slow, and the app
        is installed here)."""
        threshold = self.settings.slow_threshold
        try:
            self.kube = self.ctx.connect(timeout=max(self.opts.timeout, threshold))
            latency, nodes = await preflight.measure(self.kube, timeout=threshold if local else self.opts.timeout)
        except errors.Unavailable as exc:
            if local:
                self._fallback_reason = f"the cluster did not answer within {threshold:g} s ({exc.message})"
                return None
            raise errors.Unavailable(
                f"cannot reach the cluster, and {self.opts.app.name} is not installed here to run locally: {exc.message}",
                hint=exc.hint or "check the cluster (`python -m localenv status` for the local one)",
            ) from exc
        if latency > threshold:
            if local:
                self._fallback_reason = f"the cluster answered in {latency:.2f} s, over the {threshold:g} s threshold"
                return None
            self.tl.say(f"  ! the cluster is slow (answered in {latency:.2f} s); going on since "
                        f"{self.opts.app.name} is not installed here")
        self._probe_reach(nodes)
        try:
            measured = await link.measure(self.kube, answer=latency, settings=self.settings, local_app=local is not None)
        except errors.Unavailable as exc:
            if local:
                self._fallback_reason = f"the cluster stopped answering within {threshold:g} s ({exc.message})"
                return None
            raise
        verdict = fallback.judge(measured, self.settings, local_app=local is not None)
        if verdict.local:
            self._fallback_reason = verdict.reason
            return None
        chosen = link.picture(measured, self.settings)
        self.opts = dataclasses.replace(self.opts, quality=chosen.quality, compression=chosen.compression,
                                        frame_rate=chosen.frame_rate)
        self.tl.say(f"  link to the cluster: {verdict.reason}")
        self.tl.say(f"  picture: {chosen.why}")
        return preflight.Preflight(latency=latency, nodes=nodes)

    async def _run_locally(self, argv: list[str] | None) -> int:
        assert argv is not None
        self.tl.say(f"cloudify: running {self.opts.app.name} locally ({' '.join(argv)}): {self._fallback_reason}")
        return await fallback.run_locally(argv, self.ctx.host.environ)

    def _probe_reach(self, nodes: list[preflight.NodeView]) -> None:
        """Start looking for a node address that gives NodePorts (unless reach = port-forward)."""
        if self.settings.reach == "port-forward":
            return
        app_nodes = preflight.eligible_app_nodes(nodes, self.settings)
        self._reach_task = asyncio.create_task(
            preflight.pick_node_address(app_nodes, from_container=self.opts.run_mode != "native"))

    async def _decide_reach(self) -> str | None:
        """The node address for a NodePort, or None for the API server's port-forward."""
        if self._reach_task is None:  # reach = port-forward
            return None
        address = await self._reach_task
        if address is None and self.settings.reach == "nodeport":
            raise errors.Unavailable(
                "reach = nodeport, but no node address answers from this desktop",
                hint="set reach = \"auto\" (or \"port-forward\") in the config file",
            )
        return address

    def _hold_record(self) -> None:
        opts = self.opts
        self.record = self.ctx.registry.hold(SessionRecord(
            session=self.names.session, app=opts.app.name, user=self.names.user, namespace=self.names.namespace,
            run_mode=opts.run_mode, protocol=opts.protocol, secure=opts.secure, persist=opts.persist,
            started=n.rfc3339(datetime.now(UTC)), pid=os.getpid(), context=self.settings.context,
        ))

    def _remember(self, *, container: str | None = None, path: str | None = None) -> None:
        if self.record is None:
            return
        if container:
            self.record.record.containers.append(container)
        if path:
            self.record.record.paths.append(path)
        self.record.save()

    async def _target(self, address: str | None) -> Target:
        """Where the viewer finds the app: SSH at the NodePort (or through cloudify's port-forward
        when no node address answers), and in clear mode VNC/noVNC through the port-forward."""
        assert self.cluster is not None
        opts = self.opts
        if address is not None:
            target = Target(host=address, ssh_port=self.cluster.node_ports()["ssh"])
        else:
            target = Target(host=self._bind or self._forward_address(), ssh_port=await self._forwarder(apps.SSH_PORT))
        if opts.forwards_vnc or opts.forwards_novnc:
            bind = self._bind or self._forward_address()
            port = await self._forwarder(apps.VNC_PORT if opts.forwards_vnc else apps.NOVNC_PORT)
            if opts.forwards_vnc:
                target = replace(target, vnc_host=bind, vnc_port=port)
            else:
                target = replace(target, vnc_host=bind, novnc_port=port)
        return target

    async def _forwarder(self, port: int) -> int:
        """A port-forward listener for the app pod's `port`, open only to this session's viewer:
        its own user's sockets (native), else its container's or pod's address."""
        assert self.kube is not None
        bind = self._bind or self._forward_address()
        native = self.opts.run_mode == "native"
        guard = same_user_guard() if native else self._viewer_guard
        ports = (0, 0) if native else parse_port_range(self.settings.forward_ports)
        fwd = PodForwarder(self.kube, self.names.namespace, port, bind=bind, guard=guard, ports=ports)
        local = await fwd.start()
        self.forwarders.append(fwd)
        return local

    def _warn_clear(self) -> None:
        """Clear mode is the user's explicit choice: say what it gives away, here and in the log."""
        what = "VNC" if self.opts.protocol == "vnc" else "noVNC"
        self.tl.say(
            f"cloudify: WARNING: --insecure: {what} is not carried inside SSH in this session. The viewer cannot "
            "check that it talks to the session's app, and only the one-time VNC password (8 characters, "
            "DES challenge-response) guards the screen and keyboard. It goes through the API server's "
            "port-forward (never a NodePort). Leave out --insecure to encrypt it (the default)."
        )
        log.warning("session not encrypted (--insecure): VNC without SSH, through the API server's port-forward",
                    session=self.names.session, app=self.opts.app.name, protocol=self.opts.protocol)

    def _forward_address(self) -> str:
        if self.settings.forward_address:
            return self.settings.forward_address
        if self.opts.run_mode == "native":
            return "127.0.0.1"
        from cloudify.viewers.docker import docker_client, docker_gateway

        client = self.docker or docker_client(self.settings.docker_url or self.ctx.host.docker_host)
        gateway = docker_gateway(client)
        if not gateway:
            raise errors.Unavailable(
                "the viewer cannot reach node addresses, and Docker's bridge address is unknown for a port-forward",
                hint="set forward_address in the config file to an address of this host that containers reach",
            )
        return gateway

    def _make_viewer(self, plan: SessionPlan, pre: preflight.Preflight, io: DesktopIO) -> Viewer:
        assert self.kube is not None and self.pods is not None and self.cluster is not None
        mode = self.opts.run_mode
        if mode == "pod":
            from cloudify.viewers.pod import PodViewer

            assert pre.virtual_node is not None and io.display is not None and self.cluster.owner is not None
            return PodViewer(
                self.kube, plan, self.pods, owner=self.cluster.owner, node=pre.virtual_node.name,
                display=io.display.local_name, pulse_dir=io.pulse_dir, pulse_socket_name=io.pulse_name,
                with_xauthority=io.xauthority is not None, groups=[io.pulse_gid] if io.pulse_gid else [],
            )
        if mode == "docker":
            from cloudify.viewers.docker import DockerViewer

            assert io.display is not None
            return DockerViewer(
                self.docker, plan, display=io.display.local_name, pulse_dir=io.pulse_dir,
                pulse_socket_name=io.pulse_name, xauthority=io.xauthority,
                groups=[io.pulse_gid] if io.pulse_gid else [],
                on_container=lambda name: self._remember(container=name),
            )
        from cloudify.viewers.native import NativeViewer

        host = self.ctx.host
        return NativeViewer(
            plan, ssh=self.settings.ssh, vncviewer=self.settings.vncviewer, browser=self.settings.browser,
            pulse_socket=io.pulse, runtime_dir=host.xdg_runtime_dir, display=self.settings.display or host.display,
            timeout=self.opts.timeout, env=host.environ, on_path=lambda p: self._remember(path=p),
            print_line=lambda line: print(line, file=self.ctx.out, flush=True),
        )

    # ------------------------------------------------------------------ start-up and end

    async def _wait_started(self) -> None:
        assert self.pods is not None and self.viewer is not None
        timeout = self.opts.timeout
        app = self.pods.app

        async def app_running() -> None:
            await wait_for(app, app.running, timeout=timeout, what="the app pod to run")
            for fwd in self.forwarders:
                fwd.set_pod(app.name or "")
            self.tl.mark("app pod running", f"on node {app.node}")

        async def viewer_running() -> None:
            where = await self.viewer.wait_running(timeout)  # type: ignore[union-attr]
            if self.opts.run_mode == "pod" and self.pods is not None and self.pods.viewer.pod_ip:
                self._viewer_guard.set(self.pods.viewer.pod_ip)  # the pod's address: its forwarders' only client
            self.tl.mark("viewer running", where)

        async def first_frame() -> None:
            await self.first_frame.wait()
            self.tl.mark("first frame", "the app is on your screen")

        # The first frame needs both others: no timeout of its own; an image that does not log
        # the marks just leaves the phase out.
        frame = asyncio.create_task(first_frame())
        try:
            await asyncio.gather(app_running(), viewer_running())
        except BaseException:
            frame.cancel()
            raise
        self._frame_task = frame
        how = "close its window" if self.opts.protocol == "vnc" else "quit the app"
        self.tl.say(f"{self.opts.app.name} is running: {how} to end the session (or press Ctrl-C)")

    async def _wait_end(self) -> int:
        assert self.pods is not None and self.viewer is not None
        viewer_done = asyncio.ensure_future(self.viewer.wait_done())
        app_done = asyncio.ensure_future(self.pods.app.finished.wait())
        watch_failed = asyncio.ensure_future(self.pods.app.failed.wait())
        try:
            await asyncio.wait({viewer_done, app_done, watch_failed}, return_when=asyncio.FIRST_COMPLETED)
            if watch_failed.done() and self.pods.app.failure is not None and not app_done.done():
                raise self.pods.app.failure
            if not viewer_done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(viewer_done), VIEWER_AFTER_APP_SECONDS)
                except TimeoutError:
                    pass
        finally:
            app_done.cancel()
            watch_failed.cancel()
            if not viewer_done.done():
                viewer_done.cancel()
        app_code = self.pods.app.exit_code()
        if app_code == APP_NO_VIEWER:
            raise errors.Unavailable(
                f"the app gave up: no viewer connected within {self.opts.timeout:g} s",
                hint="raise -t, or look at the viewer's log",
            )
        viewer_code = viewer_done.result() if viewer_done.done() and not viewer_done.cancelled() else 0
        if app_code not in (None, 0):
            self.tl.say(f"{self.opts.app.name} ended with exit code {app_code}")
            return app_code
        return viewer_code

    async def _follow_app_log(self) -> None:
        """Mark the first frame: a viewer is connected (the app's log says so: Xvnc's
        "Connections: accepted") and the app's window is shown on its display (the app's log, or,
        for images that do not log it, a probe run in the app container). Either source failing
        (no exec permission, an old image) only leaves the phase out."""
        assert self.pods is not None and self.kube is not None
        await self.pods.app.running.wait()
        name = self.pods.app.name or ""
        connected, shown = asyncio.Event(), asyncio.Event()

        async def log() -> None:
            path = f"/api/v1/namespaces/{self.names.namespace}/pods/{name}/log"
            async for line in self.kube.stream_lines(path, params={"follow": True, "container": "app"}):  # type: ignore[union-attr]
                if VIEWER_CONNECTED_MARK in line:
                    connected.set()
                if line.startswith(APP_WINDOW_MARK):
                    shown.set()
                if connected.is_set() and shown.is_set():
                    return

        async def probe() -> None:
            async for line in exec_lines(self.kube, self.names.namespace, name, "app", ["sh", "-c", WINDOW_PROBE]):  # type: ignore[arg-type]
                if line.strip() == "shown":
                    shown.set()
                    return

        tasks = [asyncio.create_task(log()), asyncio.create_task(probe())]
        try:
            await asyncio.gather(connected.wait(), shown.wait())
            self.first_frame.set()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect_leftovers(self) -> None:
        from cloudify import sessions

        assert self.kube is not None
        for record, alive in list(self.ctx.registry.records()):
            if alive or record.session == self.names.session:
                continue
            try:
                with self.ctx.registry.claim(record.session) as claimed:
                    if claimed is None:
                        continue
                    await sessions.collect(self.kube, claimed.namespace, claimed.session,
                                           docker_url=self.settings.docker_url or self.ctx.host.docker_host,
                                           record=claimed)
                self.tl.say(f"  removed the leftovers of session {record.session} ({record.app}): its cloudify was gone")
            except Exception as exc:  # noqa: BLE001 - best effort; `cloudify gc` does it too
                log.warning("could not collect an old session", old_session=record.session, error=str(exc))

    # ------------------------------------------------------------------ cleanup

    async def _cleanup(self) -> None:
        """Remove everything the session made; each step runs even when another failed."""
        for task in (self._log_task, self._frame_task):
            if task is not None:
                task.cancel()
        gc_task = self._gc_task
        if gc_task is not None and not gc_task.done():
            # Let a collection under way finish (bounded): a half-collected session stays recorded anyway.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(gc_task), 20)
        ok = True
        if self.viewer is not None:
            ok &= await self._attempt(self.viewer.stop(), "remove the viewer")
        for fwd in self.forwarders:
            await self._attempt(fwd.close(), "close the port-forward")
        if self.pods is not None:
            await self._attempt(self.pods.close(), "stop watching")
        if self.cluster is not None and self.kube is not None:
            ok &= await self._attempt(self.cluster.delete(), "delete the session's objects")
            gone = await wait_gone(self.kube, self.names.namespace, self.names.session, timeout=CLEANUP_WAIT_SECONDS)
            if not gone:
                ok = False
                self.tl.say(f"  ! the session's pods were still there after {CLEANUP_WAIT_SECONDS:g} s")
        if self.kube is not None:
            await self._attempt(self.kube.close(), "close the connection")
        if self.record is not None:
            # A session that could not be cleaned keeps its record: `cloudify gc` finishes it.
            self.record.release(remove=ok)
            if not ok:
                self.tl.say(f"  run `cloudify gc` to remove what is left of session {self.names.session}")

    async def _attempt(self, step: Any, what: str) -> bool:
        """Await one cleanup step; report a failure and go on. A cancellation of this task (the
        user insists on leaving) goes through; one of a child it awaited (a viewer future
        cancelled with the session) does not stop the cleanup."""
        try:
            await step
            return True
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return True
        except Exception as exc:  # noqa: BLE001 - report, and go on cleaning
            self.tl.say(f"  ! could not {what}: {exc}")
            return False
