"""The service runner (`kod.service`): a private unix socket from birth, what is at its path before,
TCP with the real port, and a clean stop on a signal or an event."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from kod import errors, service, wire
from kod.http import ApiClient


def _app() -> web.Application:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"capacity": {"cpu": "1"}})

    app.router.add_get("/v1/ping", hello)
    return app


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would make a plain bind world-accessible (0777)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def _started(listen: service.ListenSettings, stop: asyncio.Event) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(service.serve_app(_app(), listen, shutdown_timeout=1, stop=stop, ready=ready))
    done, _ = await asyncio.wait([task, asyncio.ensure_future(ready.wait())], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raise what stopped it
    return task


async def test_the_socket_is_born_0600_answers_and_is_removed_at_the_end(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the chmod after the bind, the socket must already be 0600: the bind itself ran
    # under the restrictive umask, so there is no window in which others could connect.
    monkeypatch.setattr(service.os, "chmod", lambda *a, **k: None)
    path = tmp_path / "run" / "svc.sock"
    stop = asyncio.Event()
    task = await _started(service.ListenSettings(socket=str(path)), stop)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        api = ApiClient(f"unix://{path}", None)
        try:
            info = await api.request("GET", "/v1/ping", model=wire.NodeInfo)
            assert info.capacity == {"cpu": "1"}
        finally:
            await api.close()
        fresh = tmp_path / "after.txt"
        fresh.write_text("x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o666  # the umask is the program's again
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert not path.exists()


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "svc.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as after kill -9
    stop = asyncio.Event()
    task = await _started(service.ListenSettings(socket=str(path)), stop)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_a_live_socket_or_a_file_at_the_path_is_refused_and_left_alone(tmp_path: Path) -> None:
    live = tmp_path / "live.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(live))
    other.listen()
    try:
        with pytest.raises(errors.Unavailable, match="another process listens"):
            await _started(service.ListenSettings(socket=str(live)), asyncio.Event())
        assert live.exists()
    finally:
        other.close()
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    with pytest.raises(errors.InvalidInput, match="is not a socket"):
        await _started(service.ListenSettings(socket=str(plain)), asyncio.Event())
    assert plain.read_text() == "keep me"


async def test_tcp_port_0_reports_the_real_port_and_a_taken_port_names_the_fix() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        runner = web.AppRunner(_app())
        await runner.setup()
        try:
            where = await service.start_site(runner, service.ListenSettings(port=0))
            assert where.startswith("http://127.0.0.1:") and not where.endswith(":0")
        finally:
            await runner.cleanup()
        with pytest.raises(errors.Unavailable) as caught:
            await service.serve_app(_app(), service.ListenSettings(port=port), shutdown_timeout=1, env_prefix="KOD_X_")
        assert caught.value.hint == "pick another port with --port or KOD_X_LISTEN__PORT"
    finally:
        taken.close()


async def test_sigterm_stops_the_service_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "svc.sock"
    task = await _started(service.ListenSettings(socket=str(path)), asyncio.Event())
    os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets the stop event
    await asyncio.wait_for(task, 10)
    assert not path.exists()
    # The handlers are gone with the service: the loop no longer intercepts the signal.
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


def test_loopback_names() -> None:
    assert service.is_loopback("localhost") and service.is_loopback("127.0.0.2") and service.is_loopback("::1")
    assert not service.is_loopback("0.0.0.0") and not service.is_loopback("example.org")
