"""The shared vocabulary of kod/: Kubernetes names, the virtual node's name, private files,
the TOML writer and the line reader behave as every component relies on."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kod import files, lines, names, toml


@pytest.mark.parametrize("value", ["a", "kod-system", "a" * 63, "0abc"])
def test_dns_labels_accepted(value: str) -> None:
    assert names.is_dns_label(value) and names.dns_label_problem(value) is None


@pytest.mark.parametrize("value", ["", "A", "-a", "a-", "a.b", "a" * 64, "a_b", "ä"])
def test_dns_labels_refused(value: str) -> None:
    assert not names.is_dns_label(value)
    assert "DNS-1123 label" in (names.dns_label_problem(value) or "")


@pytest.mark.parametrize("value", ["a", "a.b", "desktop-vm.local", ("a" * 63 + ".") * 3 + "a" * 61])
def test_dns_subdomains_accepted(value: str) -> None:
    assert names.is_dns_subdomain(value)


@pytest.mark.parametrize("value", ["", "a..b", "a.-b", ".a", "a.", "A.b", "a" * 254])
def test_dns_subdomains_refused(value: str) -> None:
    assert not names.is_dns_subdomain(value)


@pytest.mark.parametrize(("value", "ok"), [("", True), ("ann", True), ("Ann_B.c-d", True), ("-a", False),
                                          ("a" * 64, False), ("a b", False)])
def test_label_values(value: str, ok: bool) -> None:
    assert names.is_label_value(value) is ok


@pytest.mark.parametrize(("host", "node"), [
    ("vm", "desktop-vm"), ("Laptop_7.Home", "desktop-laptop-7.home"), ("---", "desktop-localhost"),
    ("a.-b..c", "desktop-a.b.c"), ("x" * 300, "desktop-" + "x" * 245),
])
def test_virtual_node_name_is_always_a_valid_node_name(host: str, node: str) -> None:
    assert names.virtual_node_name(host) == node
    assert names.is_dns_subdomain(node)


def test_write_private_is_0600_atomic_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "secret"
    assert files.write_private(target, "one")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    os.chmod(target, 0o644)
    assert not files.write_private(target, "one", unchanged_ok=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600, "an unchanged file still gets its mode fixed"
    assert files.write_private(target, b"two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret"], "no temporary file is left"


def test_write_private_never_shows_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    big_a, big_b = b"a" * 2_000_000, b"b" * 2_000_000
    files.write_private(target, big_a)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(20):
        files.write_private(target, big_b if i % 2 else big_a)
    stop.set()
    thread.join()
    assert seen <= {b"aa2000000", b"bb2000000"}


def test_create_private_does_not_follow_or_overwrite(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(victim)
    assert not files.create_private(link, "evil")
    assert victim.read_text() == "keep"
    new = tmp_path / "new"
    assert files.create_private(new, "x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert not files.create_private(new, "y") and new.read_text() == "x"


def test_toml_round_trips_every_shape_the_configs_use() -> None:
    data = {"a": 1, "b": 'x"y', "c": [1, 2], "d": {"e": True, "f": {"g": 0.5}}, "h": [{"name": "n", "url": "u"}],
            "quoted key": {"io.containerd.grpc.v1.cri": {"x": "y"}}, "p": Path("/tmp/x")}
    expected = {**data, "p": "/tmp/x"}
    assert tomllib.loads(toml.dumps(data)) == expected


def test_toml_leaves_out_none() -> None:
    assert tomllib.loads(toml.dumps({"a": None, "b": {"c": None, "d": 1}})) == {"b": {"d": 1}}


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def test_lines_have_no_fixed_size_limit() -> None:
    big = b"x" * (1 << 20)  # 1 MiB, eight times aiohttp's line limit
    got = [line async for line in lines.split_lines(_chunks(b'{"a"', b":1}\n\n", big[:7000], big[7000:] + b"\nlast"))]
    assert got == [b'{"a":1}', big], "a cut last line is not an event"


async def test_lines_final_keeps_the_last_unterminated_line() -> None:
    got = [line async for line in lines.split_lines(_chunks(b"one\ntw", b"o"), final=True)]
    assert got == [b"one", b"two"]


async def test_lines_guard_against_a_peer_without_newlines() -> None:
    with pytest.raises(lines.LineTooLong):
        async for _ in lines.split_lines(_chunks(b"x" * 600, b"x" * 600), max_line_bytes=1000):
            pass
