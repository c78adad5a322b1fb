"""Docker exec and attach from the sidecar's side: the engine client's hijacked streams (a real
HTTP server that speaks the Engine API's exec endpoints, upgrade and multiplexed frames
included), `exec_run` for the exec probes and hooks, and the join of a `kod.streams` socket to
an exec: stdin and its end, resizes, output channels, the exit code last."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from kod import streams, wire
from sidecars.docker import exec_streams
from sidecars.docker.engine import Engine, EngineError

pytestmark = pytest.mark.timeout(30)


def mux(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


class FakeDocker:
    """POST /containers/{id}/exec, POST /exec/{id}/start (hijacked: the process writes "out" on
    stdout and "err" on stderr, then echoes stdin upper-cased until its EOF, then exits 3),
    GET /exec/{id}/json, POST /exec/{id}/resize. Container "stopped" is not running (409)."""

    def __init__(self, api: str = "1.41") -> None:
        self.api = api
        self.starts: list[tuple[str, dict[str, Any]]] = []
        self.created: list[dict[str, Any]] = []
        self.resizes: list[tuple[str, str]] = []
        self.started = asyncio.Event()
        self.done = False
        app = web.Application()
        app.router.add_post("/v1.41/containers/{id}/exec", self.create)
        app.router.add_post("/v1.41/exec/{id}/start", self.start)
        app.router.add_post("/v1.42/exec/{id}/start", self.start)
        app.router.add_get("/v1.41/exec/{id}/json", self.inspect)
        app.router.add_post("/v1.41/exec/{id}/resize", self.resize)
        app.router.add_get("/v1.41/version", self.version)
        self.app = app

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": self.api})

    async def create(self, request: web.Request) -> web.Response:
        if request.match_info["id"] == "stopped":
            return web.json_response({"message": "Container stopped is not running"}, status=409)
        self.created.append(await request.json())
        return web.json_response({"Id": "e1"}, status=201)

    async def start(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.starts.append((request.path.split("/")[1], body))
        tty = body["Tty"]
        assert request.headers["Upgrade"] == "tcp"
        response = web.StreamResponse(status=101, headers={"Connection": "Upgrade", "Upgrade": "tcp",
                                                           "Content-Type": "application/vnd.docker.raw-stream"})
        await response.prepare(request)
        reader = asyncio.StreamReader()
        request.protocol.set_parser(_Feed(reader))  # type: ignore[arg-type]
        transport = request.transport
        assert transport is not None
        self.started.set()

        def out(kind: int, payload: bytes) -> None:
            transport.write(payload if tty else mux(kind, payload))

        out(1, b"out\n")
        out(2, b"err\n")
        while chunk := await reader.read(1024):
            out(1, chunk.upper())
        self.done = True
        transport.close()
        return response

    async def inspect(self, request: web.Request) -> web.Response:
        return web.json_response({"Running": not self.done, "ExitCode": 3 if self.done else None})

    async def resize(self, request: web.Request) -> web.Response:
        if not self.started.is_set():
            return web.json_response({"message": "not running"}, status=409)
        self.resizes.append((request.query["w"], request.query["h"]))
        return web.Response(status=201)


class _Feed:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()


@pytest.fixture(params=["1.41"])
async def docker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeDocker, Engine]]:
    fake = FakeDocker(request.param)
    runner = web.AppRunner(fake.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    engine = Engine(f"tcp://127.0.0.1:{runner.addresses[0][1]}", timeout=5)
    yield fake, engine
    await engine.close()
    await runner.cleanup()


async def test_exec_run_collects_the_merged_output_and_the_exit_code_of_an_argv(docker: Any) -> None:
    fake, engine = docker
    code, output = await engine.exec_run("c1", ["sh", "-c", "echo $HOME; exit 3"], timeout=5)
    assert (code, output) == (3, b"out\nerr\n")
    assert fake.created == [{"Cmd": ["sh", "-c", "echo $HOME; exit 3"], "AttachStdin": False, "AttachStdout": True,
                             "AttachStderr": True, "Tty": False}]


async def test_an_exec_into_a_stopped_container_is_refused_before_any_stream(docker: Any) -> None:
    _, engine = docker
    with pytest.raises(EngineError) as caught:
        await engine.exec_run("stopped", ["true"], timeout=5)
    assert caught.value.conflict
    from kod import errors

    with pytest.raises(errors.InvalidInput, match="not running"):
        await exec_streams.prepare_exec(engine, "stopped", wire.ExecOptions(command=["true"]))


class Caller:
    """The caller's end of a `kod.streams` socket, in memory: what it sends is queued first."""

    def __init__(self, messages: list[tuple[int, bytes] | None]) -> None:
        self.inbox: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        for m in messages:
            self.inbox.put_nowait(m)
        self.sent: list[tuple[int, bytes]] = []
        self.closed = False

    async def receive(self) -> tuple[int, bytes] | None:
        return await self.inbox.get()

    async def send(self, channel: int, payload: bytes = b"") -> None:
        self.sent.append((channel, payload))

    async def send_status(self, status: wire.StreamStatus) -> None:
        self.sent.append((streams.STATUS, status.model_dump_json(exclude_none=True).encode()))

    async def end(self, channel: int) -> None:
        self.sent.append((streams.CLOSE, bytes((channel,))))

    async def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("tty", [False, True])
async def test_an_exec_stream_carries_stdin_to_its_end_resizes_and_the_exit_code_last(docker: Any, tty: bool) -> None:
    fake, engine = docker
    options = wire.ExecOptions(command=["cat"], stdin=True, tty=tty)
    exec_id = await exec_streams.prepare_exec(engine, "c1", options)
    caller = Caller([(streams.STDIN, b"hello"), (streams.RESIZE, streams.resize_message(120, 40))])
    hijacked = await exec_streams.open_stream(engine, exec_streams.Target(exec_id=exec_id), options, size=(100, 30))
    run = asyncio.create_task(exec_streams.run(engine, caller, hijacked, exec_streams.Target(exec_id=exec_id), tty=tty,  # type: ignore[arg-type]
                                               size=(100, 30)))
    await asyncio.sleep(0.3)
    caller.inbox.put_nowait((streams.CLOSE, bytes((streams.STDIN,))))  # stdin's end: the process ends
    await asyncio.wait_for(run, 10)
    output = b"".join(p for c, p in caller.sent if c == streams.STDOUT)
    errors_ = b"".join(p for c, p in caller.sent if c == streams.STDERR)
    if tty:
        assert output == b"out\nerr\nHELLO" and errors_ == b""  # a terminal has one stream
    else:
        assert output == b"out\nHELLO" and errors_ == b"err\n"
    assert caller.sent[-1] == (streams.STATUS, b'{"exitCode":3}')
    assert ("100", "30") in fake.resizes and ("120", "40") in fake.resizes
    assert caller.closed
    assert fake.created[-1]["AttachStderr"] is (not tty)


async def test_a_caller_that_goes_away_drops_the_engine_stream_and_gets_no_status(docker: Any) -> None:
    fake, engine = docker
    options = wire.ExecOptions(command=["cat"], stdin=True)
    target = exec_streams.Target(exec_id=await exec_streams.prepare_exec(engine, "c1", options))
    caller = Caller([(streams.STDIN, b"x"), None])
    hijacked = await exec_streams.open_stream(engine, target, options)
    await asyncio.wait_for(exec_streams.run(engine, caller, hijacked, target, tty=False), 10)  # type: ignore[arg-type]
    assert all(c != streams.STATUS for c, _ in caller.sent)
    await asyncio.sleep(0.1)
    assert fake.done  # the engine saw the connection end


@pytest.mark.parametrize("docker", ["1.41", "1.43"], indirect=True)
async def test_a_terminal_starts_with_its_size_where_the_engine_can(docker: Any) -> None:
    fake, engine = docker
    options = wire.ExecOptions(command=["sh"], tty=True)
    exec_id = await exec_streams.prepare_exec(engine, "c1", options)
    stream = await exec_streams.open_stream(engine, exec_streams.Target(exec_id=exec_id), options, size=(100, 30))
    stream.close()
    if fake.api == "1.41":  # Docker 20.10: no ConsoleSize; the size follows as a resize
        assert fake.starts == [("v1.41", {"Detach": False, "Tty": True})]
    else:
        assert fake.starts == [("v1.42", {"Detach": False, "Tty": True, "ConsoleSize": [30, 100]})]
