"""The sidecar's dials for a pod (probes, httpGet hooks, port-forward) start inside the pod's own
network namespace and nowhere else (sidecars/docker/netns.py).

A "pod" here is a child process in a network namespace of its own (unshare, as root) that
answers on its loopback; the "desktop" is a listener on the test's own 127.0.0.1 with the same
port that answers a secret. A dial for the pod reaches the pod and never the desktop; a sandbox
whose namespace is the desktop's own, whose PID is not its process's any more, whose process
ended, or that the engine reports differently mid-lookup is refused at once with a kod error,
and the desktop's listener sees no connection."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from kod import errors, wire
from sidecars.docker import hooks, netns, portforward, probes
from sidecars.docker.netns import Sandbox, Sandboxes
from sidecars.docker.record import PodRecord
from sidecars.docker.state import PodState, Run, Slot
from tests.fixtures.listeners import answering

pytestmark = pytest.mark.timeout(30)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs CAP_SYS_ADMIN")

#: The pod: a network namespace of its own, loopback up, a server on 127.0.0.1:<argv[1]>.
POD = r"""
import ctypes, fcntl, socket, struct, sys
if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:
    print("unshare failed", flush=True); sys.exit(1)
s = socket.socket()
flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, struct.pack("16sH14s", b"lo", 0, b"")))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))  # SIOCSIFFLAGS: lo up
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(b"inside the pod\n")
    conn.close()
"""


@dataclass
class Desktop:
    """A listener of the desktop on 127.0.0.1 that answers a secret and counts who came."""

    server: socket.socket
    connections: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.getsockname()[1])


@pytest.fixture
def desktop() -> Iterator[Desktop]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    found = Desktop(server)
    with answering(server, b"desktop secret\n", found.connections, poll=0.05):
        yield found


@pytest.fixture
def pod(desktop: Desktop) -> Iterator[subprocess.Popen[str]]:
    """The pod's process, listening on the desktop listener's port number in its own namespace."""
    proc = subprocess.Popen([sys.executable, "-c", POD, str(desktop.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait(5)


class Engine:
    """What `netns.confirm` asks of the engine: one container's State, answer after answer."""

    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        return {"Id": ref, "State": answer}


def running(pid: int, started: str = "2026-01-01T00:00:00.000000001Z") -> dict[str, Any]:
    return {"Status": "running", "Running": True, "Pid": pid, "StartedAt": started}


async def read_line(sandbox: Sandbox, port: int) -> bytes:
    reader, writer = await sandbox.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.readline(), 2)
    finally:
        writer.close()


def own_identity() -> netns.NsId:
    return netns.identity(os.stat("/proc/self/ns/net"))


# ------------------------------------------------------------------------------ the pod's namespace


@needs_root
async def test_a_dial_for_the_pod_reaches_the_pods_loopback_never_the_desktops(
    desktop: Desktop, pod: subprocess.Popen[str]
) -> None:
    sandboxes = Sandboxes()
    sandbox = await sandboxes.of_container(Engine(running(pod.pid)), "infra")  # type: ignore[arg-type]
    try:
        assert await read_line(sandbox, desktop.port) == b"inside the pod\n"
        # A probe and port-forward with host 127.0.0.1 get the pod's answer too.
        result, _ = await probes.tcp_check("127.0.0.1", desktop.port, 1.0, dial=sandbox.connect)
        assert result is probes.Result.SUCCESS
        sock = await portforward.dial(sandbox, desktop.port)
        reader, writer = await asyncio.open_connection(sock=sock)
        assert await asyncio.wait_for(reader.readline(), 2) == b"inside the pod\n"
        writer.close()
        # Nothing listens on the pod's 127.0.0.1:1: refused, worded as the kubelet's runtime.
        with pytest.raises(errors.InvalidInput, match=r"localhost:1 inside the pod.s network namespace: dial tcp4 127.0.0.1:1: connect: connection refused$"):
            await portforward.dial(sandbox, 1)
        # An httpGet against a server that is not HTTP fails with its first bytes in the message:
        # they are the pod's, never the desktop's secret.
        result, message = await probes.http_check({"path": "/"}, "127.0.0.1", desktop.port, 1.0, dial=sandbox.connect)
        assert result is probes.Result.FAILURE and "inside the pod" in message and "secret" not in message
    finally:
        sandboxes.forget("infra")
    assert desktop.connections == []
    assert len(sandboxes) == 0 and sandbox.pidfd is None  # forget released the pidfd


@needs_root
async def test_after_a_dial_the_loop_thread_is_back_in_the_desktops_namespace(
    desktop: Desktop, pod: subprocess.Popen[str]
) -> None:
    # The socket is made on the event loop's own thread: once it is made, that thread's own
    # connections (to the engine, to interlink) go to the desktop again, not into the pod.
    before = netns.identity(os.stat("/proc/thread-self/ns/net"))
    sandboxes = Sandboxes()
    sandbox = await sandboxes.of_container(Engine(running(pod.pid)), "infra")  # type: ignore[arg-type]
    try:
        for _ in range(3):
            assert await read_line(sandbox, desktop.port) == b"inside the pod\n"
        assert netns.identity(os.stat("/proc/thread-self/ns/net")) == before
        reader, writer = await asyncio.open_connection("127.0.0.1", desktop.port)
        assert await asyncio.wait_for(reader.readline(), 2) == b"desktop secret\n"
        writer.close()
    finally:
        sandboxes.forget("infra")


#: A sidecar whose thread cannot leave the pod's namespace: entering works, going back fails.
STUCK = r"""
import asyncio, errno, os, sys
from sidecars.docker import netns
pid = int(sys.argv[1])
calls = []
real = netns._setns
def setns(fd):
    calls.append(fd)
    if len(calls) > 1:
        raise OSError(errno.EPERM, "refused by the test")
    real(fd)
netns._setns = setns
sandbox = netns.Sandbox(container_id="infra", pid=pid, netns=netns.identity(os.stat(f"/proc/{pid}/ns/net")))
sock = sandbox.new_socket(2)
print("still running, socket made", flush=True)
"""


@needs_root
def test_a_sidecar_that_cannot_leave_a_pods_namespace_exits_instead_of_running_on(
    pod: subprocess.Popen[str],
) -> None:
    done = subprocess.run([sys.executable, "-c", STUCK, str(pod.pid)], capture_output=True, text=True, timeout=20,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 70, done
    assert "still running" not in done.stdout
    assert "cannot leave a pod's network namespace" in done.stderr


@needs_root
async def test_two_probes_starting_together_share_one_sandbox_and_both_dial(
    desktop: Desktop, pod: subprocess.Popen[str]
) -> None:
    # Two confirmations at once (a pod's readiness and liveness probes starting together): the
    # second must not close the sandbox the first one's caller is dialling with.
    class Slow(Engine):
        async def inspect_container(self, ref: str) -> dict[str, Any]:
            await asyncio.sleep(0.01)  # as a real engine's answer: the other confirmation runs meanwhile
            return await super().inspect_container(ref)

    sandboxes = Sandboxes()
    first, second = await asyncio.gather(
        sandboxes.of_container(Slow(running(pod.pid)), "infra"),  # type: ignore[arg-type]
        sandboxes.of_container(Slow(running(pod.pid)), "infra"),  # type: ignore[arg-type]
    )
    try:
        assert first is second and len(sandboxes) == 1
        assert await read_line(first, desktop.port) == b"inside the pod\n"
    finally:
        sandboxes.forget("infra")


@needs_root
async def test_a_sandbox_whose_process_ended_is_refused_at_once(desktop: Desktop, pod: subprocess.Popen[str]) -> None:
    sandboxes = Sandboxes()
    engine = Engine(running(pod.pid))
    sandbox = await sandboxes.of_container(engine, "infra")  # type: ignore[arg-type]
    pod.kill()
    pod.wait(5)
    begun = time.monotonic()
    with pytest.raises(errors.Unavailable, match="network namespace is gone"):
        await sandbox.connect("127.0.0.1", desktop.port)
    # The engine still says it runs with that PID (its event not seen yet): the registry asks
    # again, finds no such process, and refuses.
    with pytest.raises(errors.InvalidInput, match="sandbox is not running"):
        await sandboxes.of_container(engine, "infra")  # type: ignore[arg-type]
    assert time.monotonic() - begun < 1.0
    assert desktop.connections == [] and len(sandboxes) == 0


# ------------------------------------------------------------------------------ refusals


async def test_a_sandbox_in_the_desktops_own_namespace_is_refused(desktop: Desktop) -> None:
    # The infra container's PID is a desktop process (the PID was reused, or the container runs
    # with the host's network): the lookup refuses it.
    sandboxes = Sandboxes()
    with pytest.raises(errors.Unavailable, match="desktop's network namespace"):
        await sandboxes.of_container(Engine(running(os.getpid())), "infra")  # type: ignore[arg-type]
    assert len(sandboxes) == 0
    # And a sandbox that somehow records the desktop's own namespace is refused at the dial.
    sandbox = Sandbox(container_id="infra", pid=os.getpid(), netns=own_identity())
    with pytest.raises(errors.Unavailable, match="desktop's own network namespace"):
        await sandbox.connect("127.0.0.1", desktop.port)
    assert desktop.connections == []


async def test_a_pid_whose_namespace_is_not_the_recorded_one_is_refused(desktop: Desktop) -> None:
    # The pod's namespace was (dev, ino) when its infra container started; its PID now belongs
    # to a desktop process (this one) whose namespace differs: refused, never dialled there.
    recorded = (own_identity()[0], own_identity()[1] + 1)
    sandbox = Sandbox(container_id="infra", pid=os.getpid(), netns=recorded)
    with pytest.raises(errors.Unavailable, match="namespace changed"):
        await sandbox.connect("127.0.0.1", desktop.port)
    # The same through each caller: a probe errors (not counted), a hook fails, port-forward refuses.
    with pytest.raises(errors.Unavailable):
        await probes.tcp_check("127.0.0.1", desktop.port, 1.0, dial=sandbox.connect)
    with pytest.raises(errors.Unavailable):
        await portforward.dial(sandbox, desktop.port)
    assert desktop.connections == []


@needs_root
async def test_a_reused_pid_in_another_namespace_is_refused(desktop: Desktop, pod: subprocess.Popen[str]) -> None:
    # Recorded: the pod's namespace under the pod's PID. Now that PID is "reused" by this test's
    # process, in the desktop's namespace: the identity no longer matches.
    real = await Sandboxes().of_container(Engine(running(pod.pid)), "infra")  # type: ignore[arg-type]
    try:
        reused = Sandbox(container_id="infra", pid=os.getpid(), netns=real.netns)
        with pytest.raises(errors.Unavailable, match="namespace changed"):
            await reused.connect("127.0.0.1", desktop.port)
    finally:
        real.close()
    assert desktop.connections == []


async def test_the_engine_changing_its_answer_during_the_lookup_is_refused() -> None:
    me = os.getpid()
    # Another PID on the second look (the container restarted), or no longer running.
    for second in (running(me + 1), {"Status": "exited", "Running": False, "Pid": 0}, running(me, "2026-02-02T00:00:00Z")):
        with pytest.raises(errors.Unavailable, match="stopped while it was being looked up"):
            await netns.confirm(Engine(running(me), second), "infra")  # type: ignore[arg-type]


async def test_a_container_that_does_not_run_has_no_sandbox() -> None:
    for state in ({"Status": "exited", "Running": False, "Pid": 0}, {"Status": "running", "Running": True, "Pid": 0}):
        with pytest.raises(errors.InvalidInput, match="sandbox is not running"):
            await Sandboxes().of_container(Engine(state), "infra")  # type: ignore[arg-type]


def hook_pod(handler: dict[str, Any], infra: Run | None) -> tuple[PodState, Slot]:
    """A pod whose container has `handler` as its postStart hook, with `infra` as its sandbox."""
    request = wire.PodCreateRequest.model_validate({"pod": {
        "metadata": {"name": "web", "namespace": "ns", "uid": "u-1"},
        "spec": {"containers": [{"name": "main", "image": "img", "lifecycle": {"postStart": handler}}]}}})
    pod = PodState.new(PodRecord.from_request(request), datetime.now(timezone.utc), {})
    if infra is not None:
        pod.infra_id, pod.infra = infra.id, infra
    return pod, pod.slots["main"]


async def run_post_start(engine: Any, pod: PodState, slot: Slot) -> str | None:
    assert slot.spec.lifecycle is not None and slot.spec.lifecycle.postStart is not None
    return await hooks.run_hook(engine, pod, slot, Run(id="c1", attempt=0, state="running"),
                                slot.spec.lifecycle.postStart, timeout=1)


@needs_root
async def test_an_http_hook_for_127_0_0_1_reaches_the_pods_loopback_never_the_desktops(
    desktop: Desktop, pod: subprocess.Popen[str]
) -> None:
    infra = Run(id=f"infra-{pod.pid}", attempt=0, state="running")
    state, slot = hook_pod({"httpGet": {"host": "127.0.0.1", "port": desktop.port, "path": "/"}}, infra)
    try:
        error = await run_post_start(Engine(running(pod.pid)), state, slot)
    finally:
        netns.SANDBOXES.forget(infra.id)
    # The pod's server is not HTTP: the hook fails with its first bytes, the pod's, not the desktop's.
    assert error is not None and "inside the pod" in error and "secret" not in error
    assert desktop.connections == []


async def test_a_hook_whose_sandbox_does_not_run_fails_with_a_message_and_dials_nothing(desktop: Desktop) -> None:
    state, slot = hook_pod({"httpGet": {"host": "127.0.0.1", "port": desktop.port, "path": "/"}}, None)
    error = await run_post_start(Engine(), state, slot)
    assert error is not None and "sandbox is not running" in error
    assert desktop.connections == []
