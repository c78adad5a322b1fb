"""Probes as the kubelet runs them: the timing and threshold logic of one probe worker with a fake
clock (`Tracker`), then whole pods in the runtime against the in-memory engine with the same fake
clock driving the probe ticks (readiness in the status, Unhealthy and Killing events, a liveness
kill and the restart it causes, a pod without probes costing nothing), and the probe actions
against real local servers (httpGet, tcpSocket, grpc health over HTTP/2)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web

from kod import wire
from sidecars.docker import grpc_health, probes
from sidecars.docker.probes import Decision, ProbeSpec, Prober, Result, Tracker
from sidecars.docker.runtime import Runtime
from sidecars.docker.state import PodState, Run
from tests.unit.docker_sidecar_fake_engine import FakeEngine
from tests.unit.docker_sidecar_runtime_support import started, within

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def running(cid: str = "c1", since: float = 0.0) -> Run:
    return Run(id=cid, attempt=0, state="running", started_at=at(since))


def spec(kind: probes.Kind = "readiness", **fields: Any) -> ProbeSpec:
    probe = wire.Probe.model_validate({"exec": {"command": ["true"]}, **fields})
    found = ProbeSpec.of(kind, probe)
    assert found is not None
    return found


def decide(t: Tracker, run: Run | None, now: float, *, is_started: bool = True, deleting: bool = False,
           never: bool = False) -> Decision:
    return t.decide(run, is_started=is_started, deleting=deleting, restart_never=never, now=at(now))


# ------------------------------------------------------------------------------ the pure worker

def test_the_kubelet_defaults_apply_and_liveness_success_threshold_is_always_1() -> None:
    s = spec("liveness", successThreshold=5)
    assert (s.period, s.timeout, s.failure_threshold, s.success_threshold, s.initial_delay) == (10, 1, 3, 1, 0)
    assert spec("readiness", successThreshold=2).success_threshold == 2
    assert ProbeSpec.of("readiness", wire.Probe()) is None  # no handler: no probe


def test_readiness_is_false_until_the_first_success_and_needs_failure_threshold_failures_to_drop() -> None:
    t = Tracker(spec("readiness", failureThreshold=2))
    run = running()
    assert decide(t, run, 0) is Decision.PROBE
    assert t.result is Result.FAILURE  # readiness starts as failure
    assert t.observe(Result.SUCCESS) and t.result is Result.SUCCESS
    assert not t.observe(Result.FAILURE) and t.result is Result.SUCCESS  # 1 of 2
    assert t.observe(Result.FAILURE) and t.result is Result.FAILURE
    assert t.observe(Result.SUCCESS) and t.result is Result.SUCCESS
    assert not t.on_hold  # readiness never holds


def test_success_threshold_counts_successes_in_a_row() -> None:
    t = Tracker(spec("readiness", successThreshold=3))
    decide(t, running(), 0)
    assert not t.observe(Result.SUCCESS) and not t.observe(Result.SUCCESS)
    assert not t.observe(Result.FAILURE)  # the run starts over
    assert not t.observe(Result.SUCCESS) and not t.observe(Result.SUCCESS)
    assert t.observe(Result.SUCCESS) and t.result is Result.SUCCESS


def test_an_errored_probe_is_not_counted() -> None:
    t = Tracker(spec("liveness", failureThreshold=1))
    decide(t, running(), 0)
    assert not t.observe(Result.ERROR)
    assert t.result is Result.SUCCESS and not t.on_hold and t.probes == 0


def test_initial_delay_seconds_counts_from_the_container_start_in_whole_seconds() -> None:
    t = Tracker(spec("readiness", initialDelaySeconds=5))
    run = running(since=100)
    assert decide(t, run, 104.9) is Decision.SKIP
    assert decide(t, run, 105.0) is Decision.PROBE


def test_the_startup_probe_gates_the_others_and_is_not_run_once_the_container_started() -> None:
    run = running()
    liveness, readiness, startup = Tracker(spec("liveness")), Tracker(spec("readiness")), Tracker(spec("startup"))
    for t in (liveness, readiness):
        assert decide(t, run, 50, is_started=False) is Decision.SKIP
    assert decide(startup, run, 50, is_started=False) is Decision.PROBE
    assert startup.result is Result.UNKNOWN
    assert decide(startup, run, 60, is_started=True) is Decision.SKIP
    for t in (liveness, readiness):
        assert decide(t, run, 60, is_started=True) is Decision.PROBE


def test_a_liveness_failure_holds_the_worker_until_a_new_container_which_starts_healthy() -> None:
    t = Tracker(spec("liveness", failureThreshold=3))
    first = running("c1")
    decide(t, first, 0)
    assert t.result is Result.SUCCESS  # liveness starts as success
    assert not t.observe(Result.FAILURE) and not t.observe(Result.FAILURE)
    assert t.observe(Result.FAILURE) and t.result is Result.FAILURE and t.on_hold
    assert decide(t, first, 30) is Decision.SKIP  # on hold: no exec into a container being killed
    second = running("c2", since=40)
    assert decide(t, second, 40) is Decision.PROBE
    assert t.result is Result.SUCCESS and not t.on_hold
    assert not t.observe(Result.FAILURE)  # the count starts again for the new container


def test_a_worker_stops_for_a_container_that_will_not_run_again_and_liveness_stops_on_delete() -> None:
    t = Tracker(spec("readiness"))
    done = Run(id="c1", attempt=0, state="exited", exit_code=0, started_at=at(0), finished_at=at(5))
    assert decide(t, done, 10, never=False) is Decision.SKIP  # it will be restarted
    assert t.result is Result.FAILURE
    assert decide(t, done, 10, never=True) is Decision.STOP
    live = Tracker(spec("liveness"))
    assert decide(live, running(), 0, deleting=True) is Decision.STOP
    assert live.result is Result.SUCCESS
    assert decide(Tracker(spec("readiness")), running(), 0, deleting=True) is Decision.PROBE  # readiness goes on


def test_ticks_keep_the_phase_of_the_worker_start() -> None:
    t = Tracker(spec("readiness", periodSeconds=10))
    assert t.next_tick(100.0, 100.0) == 110.0
    assert t.next_tick(100.0, 109.9) == 110.0
    assert t.next_tick(100.0, 110.0) == 120.0
    assert t.next_tick(100.0, 135.5) == 140.0


def test_exec_commands_expand_the_containers_env_as_the_kubelet_does() -> None:
    assert probes.expand(["sh", "-c", "test $(A) = x$$y $(MISSING)"], {"A": "1"}) == ["sh", "-c", "test 1 = x$y $(MISSING)"]


# ------------------------------------------------------------------------------ pods in the runtime


class FakeClock:
    """Probe time that moves only when the test says: `advance` wakes every tick that is due."""

    def __init__(self) -> None:
        self.t = 0.0
        self.base = datetime.now(timezone.utc)
        self._moved = asyncio.Event()

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.base + timedelta(seconds=self.t)

    async def sleep_until(self, when: float) -> None:
        while self.t < when:
            self._moved.clear()
            await self._moved.wait()

    async def advance(self, seconds: float, pod: PodState) -> None:
        """Move on one second at a time, letting every probe and round due meanwhile finish."""
        for _ in range(int(seconds)):
            self.t += 1.0
            self._moved.set()
            await settle(pod)


async def settle(pod: PodState) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await within(5, lambda: pod.task is None or pod.task.done())
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(engine: FakeEngine, clock: FakeClock) -> AsyncIterator[Runtime]:
    runtime = await started(engine)
    runtime.worker.prober = Prober(
        engine, kick=runtime.worker.kick, alive=runtime.table.is_current,  # type: ignore[arg-type]
        clock=clock.now, monotonic=clock.monotonic, sleep_until=clock.sleep_until,
    )
    yield runtime
    await runtime.stop()


def pod_request(container: dict[str, Any], restart: str = "Always") -> wire.PodCreateRequest:
    spec = {"containers": [{"name": "main", "image": "img", **container}], "restartPolicy": restart,
            "terminationGracePeriodSeconds": 7}
    return wire.PodCreateRequest.model_validate({"pod": {"metadata": {"name": "web", "namespace": "ns", "uid": "u-1"}, "spec": spec}})


async def create(rt: Runtime, container: dict[str, Any], restart: str = "Always") -> PodState:
    await rt.create(pod_request(container, restart))
    pod = rt.table.get("u-1")
    assert pod is not None
    await settle(pod)
    return pod


def main_status(rt: Runtime, pod: PodState) -> wire.ContainerStatus:
    return rt.worker.status_of(pod).containerStatuses[0]


def events(rt: Runtime, pod: PodState) -> dict[tuple[str, str], int]:
    return {(e.reason, e.message): e.count for e in rt.worker.status_of(pod).events}


class Healthy:
    """The exec answers of a container: `ok` decides the exit code of the probe command."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok

    def __call__(self, cid: str, cmd: list[str]) -> tuple[int, bytes]:
        return (0, b"") if self.ok else (1, b"cat: /tmp/ready: No such file or directory\n")


async def test_readiness_follows_the_probe_into_the_status_with_unhealthy_events(
    rt: Runtime, engine: FakeEngine, clock: FakeClock
) -> None:
    health = Healthy(ok=False)
    engine.exec_handler = health
    pod = await create(rt, {"readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 5, "failureThreshold": 2}})
    st = main_status(rt, pod)
    assert st.state.running is not None and st.started and not st.ready  # false until the first success
    failed = ("Unhealthy", "Readiness probe failed: cat: /tmp/ready: No such file or directory\n")
    assert events(rt, pod) == {failed: 1}  # probed at once (the kubelet triggers readiness of a new container)
    health.ok = True
    await clock.advance(5, pod)
    assert main_status(rt, pod).ready
    health.ok = False
    await clock.advance(5, pod)
    assert main_status(rt, pod).ready  # 1 failure of 2
    await clock.advance(5, pod)
    assert not main_status(rt, pod).ready
    assert events(rt, pod) == {failed: 3}  # one series, counted, as the kubelet's correlator does
    assert not any(c.startswith("stop") or c.startswith("kill") for c in engine.calls)  # readiness never kills


async def test_a_failing_liveness_probe_kills_with_the_grace_period_and_the_container_restarts(
    rt: Runtime, engine: FakeEngine, clock: FakeClock
) -> None:
    health = Healthy(ok=True)
    engine.exec_handler = health
    pod = await create(rt, {"livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 2, "failureThreshold": 2}})
    (first,) = [r.id for r in pod.runs()]
    health.ok = False
    await clock.advance(4, pod)
    assert f"stop {first} 7" in engine.calls  # the pod's terminationGracePeriodSeconds
    await within(5, lambda: len(list(pod.runs())) == 2)  # the die event kicks the pod; here the stop marked it
    await settle(pod)
    st = main_status(rt, pod)
    assert st.restartCount == 1 and st.state.running is not None
    assert st.lastState.terminated is not None and st.lastState.terminated.exitCode == 143
    assert events(rt, pod)[("Killing", "Container main failed liveness probe, will be restarted")] == 1
    assert events(rt, pod)[("Unhealthy", "Liveness probe failed: cat: /tmp/ready: No such file or directory\n")] == 2
    # The new container is probed afresh: healthy now, it is not killed.
    health.ok = True
    engine.calls.clear()
    await clock.advance(6, pod)
    assert not any(c.startswith("stop") for c in engine.calls) and main_status(rt, pod).restartCount == 1


async def test_a_startup_probe_holds_liveness_and_readiness_until_it_succeeds(
    rt: Runtime, engine: FakeEngine, clock: FakeClock
) -> None:
    started_yet = Healthy(ok=False)
    probed: list[str] = []

    def handler(cid: str, cmd: list[str]) -> tuple[int, bytes]:
        probed.append(cmd[-1])
        return started_yet(cid, cmd) if cmd[-1] == "startup" else (0, b"")

    engine.exec_handler = handler
    pod = await create(rt, {
        "startupProbe": {"exec": {"command": ["check", "startup"]}, "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {"exec": {"command": ["check", "liveness"]}, "periodSeconds": 1},
        "readinessProbe": {"exec": {"command": ["check", "readiness"]}, "periodSeconds": 1},
    })
    await clock.advance(5, pod)
    assert set(probed) == {"startup"}
    st = main_status(rt, pod)
    assert st.started is False and not st.ready
    started_yet.ok = True
    await clock.advance(1, pod)
    st = main_status(rt, pod)
    assert st.started and st.ready  # readiness is probed at once once the container started
    probed.clear()
    await clock.advance(3, pod)
    assert "startup" not in probed and {"liveness", "readiness"} <= set(probed)


async def test_a_failing_startup_probe_kills_the_container(rt: Runtime, engine: FakeEngine, clock: FakeClock) -> None:
    engine.exec_handler = Healthy(ok=False)
    pod = await create(rt, {"startupProbe": {"exec": {"command": ["cat", "/x"]}, "periodSeconds": 1, "failureThreshold": 3,
                                             "terminationGracePeriodSeconds": 2}})
    (first,) = [r.id for r in pod.runs()]
    await clock.advance(3, pod)
    assert f"stop {first} 2" in engine.calls  # the probe's own grace period
    assert ("Killing", "Container main failed startup probe, will be restarted") in events(rt, pod)


async def test_a_pod_without_probes_has_no_probe_worker_and_no_timer(rt: Runtime, engine: FakeEngine) -> None:
    pod = await create(rt, {})
    assert rt.worker.prober.workers(pod) == 0 and pod.timer is None
    assert not any(c.startswith("exec") for c in engine.calls)


async def test_probe_workers_end_with_the_pod(rt: Runtime, engine: FakeEngine, clock: FakeClock) -> None:
    pod = await create(rt, {"readinessProbe": {"exec": {"command": ["true"]}}, "livenessProbe": {"exec": {"command": ["true"]}}})
    assert rt.worker.prober.workers(pod) == 2
    await rt.delete("ns", "web", uid="u-1", grace=0)
    await within(5, lambda: rt.worker.prober.workers(pod) == 0)


async def test_a_never_restarted_container_that_ended_stops_its_workers(rt: Runtime, engine: FakeEngine, clock: FakeClock) -> None:
    pod = await create(rt, {"readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}, restart="Never")
    (cid,) = [r.id for r in pod.runs()]
    engine.exit(cid, 0)
    pod.stale.add(cid)
    rt.worker.kick(pod)
    await settle(pod)
    await clock.advance(2, pod)
    assert rt.worker.prober.workers(pod) == 0
    assert not main_status(rt, pod).ready


# ------------------------------------------------------------------------------ the actions


async def direct(host: str, port: int) -> socket.socket:
    """A dialler from the test's own namespace (the sidecar's is `netns.Sandbox.connect`, whose
    refusals tests/unit/test_docker_sidecar_netns.py attacks): the actions' wording is tested here."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.fixture
async def web_server(aiohttp_server: Any) -> Any:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        code = int(request.query.get("code", "200"))
        if request.path == "/moved":
            raise web.HTTPFound("/?code=204")
        if request.path == "/slow":
            await asyncio.sleep(2)
        return web.Response(status=code, text="fine")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    server.seen = seen
    return server


async def http(server: Any, path: str, timeout: float = 1.0, **action: Any) -> tuple[Result, str]:
    return await probes.http_check({"path": path, "port": server.port, **action}, "127.0.0.1", server.port, timeout, dial=direct)


@pytest.mark.parametrize(("path", "result", "message"), [
    ("/?code=200", Result.SUCCESS, "fine"),
    ("/?code=399", Result.SUCCESS, "fine"),
    ("/moved", Result.SUCCESS, ""),
    ("/?code=400", Result.FAILURE, "HTTP probe failed with statuscode: 400"),
    ("/?code=503", Result.FAILURE, "HTTP probe failed with statuscode: 503"),
])
async def test_http_get_succeeds_for_200_to_399_after_redirects(web_server: Any, path: str, result: Result, message: str) -> None:
    assert await http(web_server, path) == (result, message)


async def test_http_get_sends_the_kubelets_headers_and_the_probes_own(web_server: Any) -> None:
    await http(web_server, "/", httpHeaders=[{"name": "X-Probe", "value": "yes"}])
    headers = web_server.seen[-1]
    assert headers["User-Agent"].startswith("kube-probe/") and headers["Accept"] == "*/*" and headers["X-Probe"] == "yes"


async def test_http_get_times_out_with_the_kubelets_message(web_server: Any) -> None:
    result, message = await http(web_server, "/slow", timeout=0.2)
    assert result is Result.FAILURE
    assert message == f'Get "http://127.0.0.1:{web_server.port}/slow": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'


async def free_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


async def test_tcp_socket_succeeds_when_a_connection_opens_and_says_refused_when_not(web_server: Any) -> None:
    assert await probes.tcp_check("127.0.0.1", web_server.port, 1.0, dial=direct) == (Result.SUCCESS, "")
    port = await free_port()
    assert await probes.tcp_check("127.0.0.1", port, 1.0, dial=direct) == (
        Result.FAILURE, f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    )
    result, message = await probes.http_check({"path": "/"}, "127.0.0.1", port, 1.0, dial=direct)
    assert (result, message) == (Result.FAILURE, f'Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: connect: connection refused')


def test_named_ports_resolve_against_the_containers_ports() -> None:
    c = wire.Container.model_validate({"name": "m", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]})
    assert probes.resolve_port("http", c) == 8080 and probes.resolve_port(81, c) == 81 and probes.resolve_port("nope", c) is None


# ------------------------------------------------------------------------------ grpc health


def test_huffman_and_the_dynamic_table_decode_rfc_7541s_examples() -> None:
    assert grpc_health.huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"
    assert grpc_health.huffman_decode(bytes.fromhex("25a849e95bb8e8b4bf")) == b"custom-value"
    decoder = grpc_health.Decoder()
    assert decoder.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))[-1] == (":authority", "www.example.com")
    # The second request of C.4 refers to the first one's entry in the dynamic table (index 62).
    assert decoder.decode(bytes.fromhex("828684be5886a8eb10649cbf"))[-2:] == [
        (":authority", "www.example.com"), ("cache-control", "no-cache")]


def grpc_server_reply(trailers: list[tuple[str, str]], serving: int | None) -> bytes:
    f = grpc_health.frame
    out = f(grpc_health.SETTINGS, 0, 0)
    if serving is None:  # trailers-only
        return out + f(grpc_health.HEADERS, grpc_health.END_HEADERS | grpc_health.END_STREAM, 1,
                       grpc_health.encode_headers([(":status", "200"), *trailers]))
    out += f(grpc_health.HEADERS, grpc_health.END_HEADERS, 1,
             grpc_health.encode_headers([(":status", "200"), ("content-type", "application/grpc")]))
    body = b"\x08" + bytes([serving])
    out += f(grpc_health.DATA, 0, 1, b"\x00" + struct.pack(">I", len(body)) + body)
    return out + f(grpc_health.HEADERS, grpc_health.END_HEADERS | grpc_health.END_STREAM, 1, grpc_health.encode_headers(trailers))


async def grpc_server(reply: bytes, received: list[bytes], *, port: int = 0) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(len(grpc_health.PREFACE))
        while True:  # until the request's DATA frame with END_STREAM
            head = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
            data += head + payload
            if head[3] == grpc_health.DATA and head[4] & grpc_health.END_STREAM:
                break
        received.append(data)
        writer.write(reply)
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.mark.parametrize(("trailers", "serving", "ok", "message"), [
    ([("grpc-status", "0")], 1, True, "service is healthy"),
    ([("grpc-status", "0")], 2, False, 'service unhealthy (responded with "NOT_SERVING")'),
    ([("grpc-status", "12"), ("grpc-message", "unknown%20service")], None, False,
     "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): unknown service"),
    ([("grpc-status", "5"), ("grpc-message", "unknown service foo")], None, False,
     "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service foo"),
])
async def test_grpc_health_check_answers_as_the_kubelets_grpc_probe(
    trailers: list[tuple[str, str]], serving: int | None, ok: bool, message: str
) -> None:
    received: list[bytes] = []
    server, port = await grpc_server(grpc_server_reply(trailers, serving), received)
    async with server:
        assert await grpc_health.check("127.0.0.1", port, "foo", 1.0, dial=direct) == (ok, message)
    request = received[0]
    assert request.startswith(grpc_health.PREFACE)
    assert b"/grpc.health.v1.Health/Check" in request and b"application/grpc" in request
    assert request.endswith(b"\x00\x00\x00\x00\x05\x0a\x03foo")  # the HealthCheckRequest, service "foo"


async def test_grpc_health_check_of_a_closed_port_fails_as_a_dial_timeout() -> None:
    port = await free_port()
    assert await grpc_health.check("127.0.0.1", port, "", 1.0, dial=direct) == (
        False, f'timeout: failed to connect service "127.0.0.1:{port}" within 1s: context deadline exceeded')


async def test_grpc_health_check_redials_a_refused_port_until_the_server_listens_as_grpc_go() -> None:
    # The kubelet's blocking dial redials a refused connection (1 s, x1.6) until the deadline: a
    # server that starts listening 0.5 s into a 5-s probe (after the first dial was refused) answers it.
    port = await free_port()
    received: list[bytes] = []
    handle_reply = grpc_server_reply([("grpc-status", "0")], 1)

    async def late_server() -> asyncio.AbstractServer:
        await asyncio.sleep(0.5)
        server, _ = await grpc_server(handle_reply, received, port=port)
        return server

    starting = asyncio.create_task(late_server())
    try:
        assert await grpc_health.check("127.0.0.1", port, "", 5.0, dial=direct) == (True, "service is healthy")
    finally:
        (await starting).close()
    assert received


async def test_the_event_stream_asks_only_for_the_actions_the_sidecar_uses_so_exec_probes_add_none() -> None:
    class Recording(FakeEngine):
        def __init__(self) -> None:
            super().__init__()
            self.filters: list[dict[str, list[str]]] = []

        async def events(self, filters: dict[str, list[str]]) -> AsyncIterator[dict[str, Any]]:
            self.filters.append(filters)
            async for event in super().events(filters):
                yield event

    engine = Recording()
    runtime = await started(engine)
    try:
        (filters,) = engine.filters
        assert {"die", "start", "destroy", "oom", "tag", "delete"} <= set(filters["event"])
        assert not any(a.startswith("exec_") for a in filters["event"])
    finally:
        await runtime.stop()


async def test_a_probe_that_cannot_run_is_reported_once_a_period_and_never_spins(
    rt: Runtime, engine: FakeEngine, clock: FakeClock
) -> None:
    pod = await create(rt, {"readinessProbe": {"httpGet": {"path": "/", "port": "no-such-port"}, "periodSeconds": 5}})
    for _ in range(5):
        await settle(pod)
    errored = ("Unhealthy", "Readiness probe errored: unable to resolve port 'no-such-port' of container main")
    assert events(rt, pod) == {errored: 1}
    await clock.advance(5, pod)
    assert events(rt, pod) == {errored: 2} and not main_status(rt, pod).ready
