"""Who may use a session's forwarders (cloudify/portforward.py): the session's own viewer only.
Real sockets on this machine; the other local user is a real process of another uid."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest

from cloudify import portforward as pf

pytestmark = pytest.mark.timeout(30)


async def _echo_server(path: Path) -> asyncio.AbstractServer:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"secret:" + await reader.read(100))
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(echo, str(path))


async def _talk(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hi")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(100), 5)
    writer.close()
    return data


def test_the_kernels_tcp_table_names_the_owner_of_a_loopback_socket() -> None:
    import socket

    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client.connect(server.getsockname())
        peer, local = client.getsockname(), server.getsockname()
        assert pf.loopback_peer_uid(peer, local) == os.getuid()
        assert pf.loopback_peer_uid(peer, (local[0], local[1] + 1 if local[1] < 65535 else 1)) is None


async def test_a_relay_serves_its_user_and_refuses_another_local_user(tmp_path: Path) -> None:
    server = await _echo_server(tmp_path / "app.sock")
    relay = pf.UnixRelay(tmp_path / "app.sock", guard=pf.same_user_guard())
    port = await relay.start()
    try:
        assert await _talk(port) == b"secret:hi"
        if os.getuid() != 0:
            pytest.skip("needs root to run the other user's process")
        # Another local user (uid 65534) connects to the same port: closed without a byte.
        code = ("import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5); s.sendall(b'hi');"
                "s.settimeout(5); print(repr(s.recv(100)))")
        out = await asyncio.to_thread(subprocess.run, ["/usr/bin/python3", "-c", code, str(port)], user=65534, cwd="/",
                                      capture_output=True, text=True, timeout=20)
        assert out.stdout.strip() in ("b''", "") and "secret" not in out.stdout + out.stderr
        assert relay.refused == 1
    finally:
        await relay.close()
        server.close()


async def test_a_viewer_address_guard_accepts_only_that_address(tmp_path: Path) -> None:
    server = await _echo_server(tmp_path / "app.sock")
    guard = pf.ViewerAddress()
    relay = pf.UnixRelay(tmp_path / "app.sock", guard=guard)
    port = await relay.start()
    try:
        guard.set("127.0.0.2")  # the viewer is elsewhere: this process is not it
        assert await _talk(port) == b""
        assert relay.refused == 1
    finally:
        await relay.close()
        server.close()


def test_forward_ports_are_a_range() -> None:
    assert pf.parse_port_range("39400-39499") == (39400, 39499)
    assert pf.parse_port_range("0") == (0, 0)
    with pytest.raises(Exception, match="port range"):
        pf.parse_port_range("40000-39000")


def two_free_ports() -> tuple[int, int]:
    """Two neighbouring loopback ports free right now (a live session may hold some of the
    forwarders' own range, so the test does not use fixed ones)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            low = probe.getsockname()[1]
        with socket.socket() as s1, socket.socket() as s2:
            try:
                s1.bind(("127.0.0.1", low))
                s2.bind(("127.0.0.1", low + 1))
            except OSError:
                continue
        return low, low + 1
    raise AssertionError("no two neighbouring free ports")


async def test_a_listener_takes_a_free_port_of_its_range(tmp_path: Path) -> None:
    ports = two_free_ports()
    a = pf.UnixRelay(tmp_path / "x.sock", guard=None)
    a.ports = ports
    b = pf.UnixRelay(tmp_path / "x.sock", guard=None)
    b.ports = ports
    first, second = await a.start(), await b.start()
    try:
        assert {first, second} == set(ports)
    finally:
        await a.close()
        await b.close()
