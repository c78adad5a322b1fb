"""The kubelet's side of exec and attach (remotecommand v1..v4 over SPDY): options and protocol
negotiation as the kubelet does them, the error stream's Status per version, resize events, and
whole sessions on a real server driven by a SPDY client written from the framing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from multidict import MultiDict

from kod import errors, remotecommand, spdy, streams, wire
from tests.unit.spdy_client import Client, status_of

pytestmark = pytest.mark.timeout(30)


def test_options_are_the_kubelets_query_and_a_tty_drops_stderr() -> None:
    q = MultiDict([("command", "sh"), ("command", "-c"), ("command", "echo $0; exit 3"), ("input", "1"),
                   ("output", "1"), ("error", "1"), ("tty", "1"), ("container", "main")])
    opts = remotecommand.options_from_query(q, exec_=True)
    assert opts == wire.ExecOptions(command=["sh", "-c", "echo $0; exit 3"], stdin=True, stdout=True, stderr=False, tty=True)
    with pytest.raises(errors.InvalidInput, match="at least 1 of stdin, stdout, stderr"):
        remotecommand.options_from_query(MultiDict([("command", "true")]), exec_=True)
    with pytest.raises(errors.InvalidInput, match="command"):
        remotecommand.options_from_query(MultiDict([("output", "1")]), exec_=True)
    assert remotecommand.options_from_query(MultiDict([("output", "1")]), exec_=False).command == []


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io"], "v4.channel.k8s.io"),
        (["v3.channel.k8s.io, v2.channel.k8s.io"], "v3.channel.k8s.io"),
        (["channel.k8s.io"], "channel.k8s.io"),
        ([], ""),
    ],
)
def test_the_clients_first_supported_protocol_is_chosen(offered: list[str], chosen: str) -> None:
    assert remotecommand.negotiate(offered) == chosen


def test_no_protocol_in_common_is_refused_naming_both_lists() -> None:
    with pytest.raises(remotecommand.NegotiationFailed) as caught:
        remotecommand.negotiate(["v5.channel.k8s.io"])
    assert caught.value.status == 403 and caught.value.supported == remotecommand.SUPPORTED
    assert "v5.channel.k8s.io" in str(caught.value)


def test_v4_reports_a_status_with_the_exit_code_and_older_versions_only_failures_as_text() -> None:
    failed = remotecommand.status_for(wire.StreamStatus(exitCode=3))
    assert json.loads(remotecommand.encode_status(remotecommand.V4, failed)) == {
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": "command terminated with non-zero exit code: exit status 3",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    ok = remotecommand.status_for(wire.StreamStatus(exitCode=0))
    assert remotecommand.encode_status(remotecommand.V4, ok) == b'{"metadata":{},"status":"Success"}'
    assert remotecommand.encode_status(remotecommand.V3, ok) == b""
    assert remotecommand.encode_status(remotecommand.V2, failed) == b"command terminated with non-zero exit code: exit status 3"
    broke = remotecommand.status_for(None)
    assert broke["reason"] == "InternalError" and broke["code"] == 500


# --- sessions on a real server -----------------------------------------------------------------


class Process:
    """The backend's end of a `kod.streams` socket, in memory: a process that upper-cases its
    stdin to stdout, says "warn" on stderr, records resizes, and exits with `exit_code` once its
    stdin ends (at once without stdin)."""

    def __init__(self, exit_code: int = 0, *, stdin: bool = True) -> None:
        self.exit_code, self.stdin = exit_code, stdin
        self.to_caller: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.resizes: list[tuple[int, int]] = []
        self.closed = False

    async def start(self) -> None:
        await self.to_caller.put((streams.STDERR, b"warn\n"))
        if not self.stdin:
            await self.finish()

    async def finish(self) -> None:
        await self.to_caller.put((streams.STATUS, wire.StreamStatus(exitCode=self.exit_code).model_dump_json().encode()))

    # the Channels interface bridge() uses
    async def send(self, channel: int, payload: bytes = b"") -> None:
        if channel == streams.STDIN:
            await self.to_caller.put((streams.STDOUT, payload.upper()))
        elif channel == streams.RESIZE:
            size = streams.parse_resize(payload)
            assert size is not None
            self.resizes.append(size)

    async def end(self, channel: int) -> None:
        assert channel == streams.STDIN
        await self.finish()

    async def receive(self) -> tuple[int, bytes] | None:
        return await self.to_caller.get()

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def kubelet() -> AsyncIterator[Callable[[Process], Any]]:
    """A kubelet-like exec endpoint on a free port whose process is the given `Process`."""
    runners: list[web.AppRunner] = []

    async def start(process: Process) -> int:
        async def exec_(request: web.Request) -> web.StreamResponse:
            opts = remotecommand.options_from_query(request.query, exec_=True)
            try:
                protocol = remotecommand.negotiate(request.headers.getall(remotecommand.PROTOCOL_HEADER, []))
            except remotecommand.NegotiationFailed as exc:
                return web.Response(status=403, text=str(exc))
            session = await spdy.accept_upgrade(request, {remotecommand.PROTOCOL_HEADER: protocol} if protocol else {})
            async with session:
                found = await remotecommand.wait_for_streams(session, protocol, opts, timeout=1)
                await process.start()
                await remotecommand.bridge(found, process, session)  # type: ignore[arg-type]
            assert session.response is not None
            return session.response

        app = web.Application()
        app.router.add_post("/exec", exec_)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_v4_exec_carries_stdin_stdout_stderr_and_ends_with_the_exit_code(kubelet: Any) -> None:
    port = await kubelet(Process(exit_code=3))
    client, status, headers = await Client.connect(
        port, "/exec?command=cat&input=1&output=1&error=1",
        [("X-Stream-Protocol-Version", "v4.channel.k8s.io"), ("X-Stream-Protocol-Version", "v3.channel.k8s.io")],
    )
    assert status == 101 and headers["x-stream-protocol-version"] == "v4.channel.k8s.io"
    error = client.open({"streamtype": ["error"]})
    stdin = client.open({"streamtype": ["stdin"]})
    stdout = client.open({"streamtype": ["stdout"]})
    stderr = client.open({"streamtype": ["stderr"]})
    client.send(spdy.DataFrame(stdin, b"hello"))
    client.send(spdy.DataFrame(stdin, b"", spdy.FLAG_FIN))
    data, ended, frames = await client.collect()
    assert {f.stream_id for f in frames if isinstance(f, spdy.SynReply)} == {error, stdin, stdout, stderr}
    assert data[stdout] == b"HELLO" and data[stderr] == b"warn\n"
    assert {stdout, stderr, error} <= ended
    assert status_of(data[error])["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert isinstance(frames[-1], spdy.GoAway)


async def test_v3_with_a_tty_opens_a_resize_stream_and_each_size_reaches_the_process(kubelet: Any) -> None:
    process = Process(exit_code=0)
    port = await kubelet(process)
    client, status, _ = await Client.connect(port, "/exec?command=sh&input=1&output=1&tty=1",
                                             {"X-Stream-Protocol-Version": "v3.channel.k8s.io"})
    assert status == 101
    for kind in ("error", "stdin", "stdout", "resize"):
        client.open({"streamtype": [kind]})
    resize = 7
    # Two sizes, the second split over two frames: the decoder reads a sequence of objects.
    client.send(spdy.DataFrame(resize, b'{"Width":80,"Height":24}{"Width":1'))
    client.send(spdy.DataFrame(resize, b'01,"Height":33}'))
    await asyncio.sleep(0.2)
    client.send(spdy.DataFrame(3, b"", spdy.FLAG_FIN))
    data, ended, _ = await client.collect()
    assert process.resizes == [(80, 24), (101, 33)]
    assert data.get(1, b"") == b""  # v3 says nothing on success
    assert data[5] == b"warn\n"  # with a tty, stderr is the terminal (stdout)
    assert {1, 5} <= ended


async def test_a_client_without_protocol_header_speaks_v1_and_a_foreign_one_is_refused(kubelet: Any) -> None:
    port = await kubelet(Process(exit_code=0, stdin=False))
    client, status, headers = await Client.connect(port, "/exec?command=true&output=1")
    assert status == 101 and "x-stream-protocol-version" not in headers
    client.open({"streamtype": ["error"]})
    client.open({"streamtype": ["stdout"]})
    data, ended, _ = await client.collect()
    assert {1, 3} <= ended and data.get(1, b"") == b""
    _, status, answer = await Client.connect(port, "/exec?command=true&output=1", {"X-Stream-Protocol-Version": "v9.example"})
    assert status == 403 and "unable to negotiate protocol" in answer["body"]


async def test_streams_of_unknown_types_are_reset_and_a_client_that_opens_too_few_times_out(kubelet: Any) -> None:
    port = await kubelet(Process(exit_code=0, stdin=False))
    client, _, _ = await Client.connect(port, "/exec?command=true&output=1", {"X-Stream-Protocol-Version": "v4.channel.k8s.io"})
    client.open({"streamtype": ["bogus"]})
    client.open({"streamtype": ["error"]})
    frames = await client.frames_until_close(timeout=10)
    assert spdy.RstStream(1, spdy.PROTOCOL_ERROR) in frames
    # stdout never came: after the creation timeout the session ends (GOAWAY), nothing hangs.
    assert isinstance(frames[-1], spdy.GoAway)


async def test_resize_events_stop_at_garbage() -> None:
    class Fake:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        async def read(self) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

    got = [s async for s in remotecommand.resize_events(Fake([b' {"Width": 10, "Height": 5}\n', b'{"Width": "x"}', b"{}"]))]  # type: ignore[arg-type]
    assert got == [(10, 5)]
