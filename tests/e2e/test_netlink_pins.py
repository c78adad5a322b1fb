"""The Docker sidecar's in-process pins (sidecars/docker/netlink.py) against iproute2 on a real
kernel: on a scratch bridge in a network namespace of its own, a pin made with the netlink request
reads back exactly as one made with the `ip neigh` / `bridge fdb` command line it replaces, and the
kernel's refusals come back as errors (the ARP-spoof attack on the sidecar's real pins is in
test_security_network.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]


def sh(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True,
                          timeout=20).stdout


@pytest.fixture
def bridge() -> Iterator[str]:
    """A namespace with bridge `brt` and two veth ports `pa`, `pb`; yields the namespace."""
    ns = f"kod-nlt-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        for cmd in ("ip link add brt type bridge", "ip link set brt up",
                    "ip link add pa type veth peer name qa", "ip link set pa master brt", "ip link set pa up",
                    "ip link add pb type veth peer name qb", "ip link set pb master brt", "ip link set pb up"):
            sh(ns, *cmd.split())
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)


def pin_in(ns: str, program: str) -> subprocess.CompletedProcess[str]:
    """Run `program` (with `netlink` and `socket` imported) inside the namespace."""
    code = f"import socket, sys; sys.path.insert(0, {str(REPO)!r}); from sidecars.docker import netlink\n{program}"
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20)


def entries(ns: str) -> tuple[dict[str, str], dict[str, str]]:
    """Neighbour entries of brt by address, and forwarding entries by MAC, without the key."""
    neigh = {line.split()[0]: " ".join(line.split()[1:]).replace(line.split()[2], "MAC")
             for line in sh(ns, "ip", "neigh", "show", "dev", "brt").splitlines()}
    fdb = {line.split()[0]: " ".join(line.split()[1:]).replace(" pa ", " PORT ").replace(" pb ", " PORT ")
           for line in sh(ns, "bridge", "fdb", "show", "br", "brt").splitlines() if line.startswith("02:00:5e:")}
    return neigh, fdb


def test_a_netlink_pin_is_the_same_entry_as_the_command_line_it_replaces(bridge: str) -> None:
    sh(bridge, "ip", "neigh", "replace", "10.9.0.2", "lladdr", "02:00:5e:00:00:02", "dev", "brt", "nud", "permanent")
    sh(bridge, "bridge", "fdb", "replace", "02:00:5e:00:00:02", "dev", "pa", "master", "static", "sticky")
    done = pin_in(bridge, "netlink.replace_neighbour(socket.if_nametoindex('brt'), '10.9.0.3', '02:00:5e:00:00:03')\n"
                          "netlink.replace_fdb(socket.if_nametoindex('pb'), '02:00:5e:00:00:03')\n"
                          "netlink.replace_fdb(socket.if_nametoindex('pb'), '02:00:5e:00:00:03')  # again: replaced\n")
    assert done.returncode == 0, done.stderr
    neigh, fdb = entries(bridge)
    assert neigh["10.9.0.3"] == neigh["10.9.0.2"] and "PERMANENT" in neigh["10.9.0.3"]
    assert fdb["02:00:5e:00:00:03"] == fdb["02:00:5e:00:00:02"]
    assert "static" in fdb["02:00:5e:00:00:03"] and "sticky" in fdb["02:00:5e:00:00:03"]
    assert "dev pb" in sh(bridge, "bridge", "fdb", "show", "br", "brt")  # on the port it was pinned to


def test_a_pin_the_kernel_refuses_is_an_error_not_a_silent_no(bridge: str) -> None:
    done = pin_in(bridge, "netlink.replace_fdb(424242, '02:00:5e:00:00:04')")
    assert done.returncode != 0 and "No such device" in done.stderr
    bad = pin_in(bridge, "netlink.replace_neighbour(socket.if_nametoindex('brt'), '10.9.0.4', '02:00')")
    assert bad.returncode != 0 and "not a MAC address" in bad.stderr
    neigh, fdb = entries(bridge)
    assert "10.9.0.4" not in neigh and "02:00:5e:00:00:04" not in fdb
