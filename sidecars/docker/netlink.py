"""The two rtnetlink requests that pin a pod to its place on the pods' bridge, sent in-process.

    replace_neighbour(bridge_index, "172.30.0.2", "02:42:ac:1e:00:02")
        # = ip neigh replace 172.30.0.2 lladdr 02:42:ac:1e:00:02 dev BRIDGE nud permanent
    replace_fdb(port_index, "02:42:ac:1e:00:02")
        # = bridge fdb replace 02:42:ac:1e:00:02 dev PORT master static sticky

Why not the `ip` and `bridge` commands: they are two processes per pod start, forked from a large
Python process on the path between the pod's infra container and its first container (a pod's
containers may only start once its pins are in place). The messages are what iproute2 sends for
those command lines (RTM_NEWNEIGH with NLM_F_CREATE | NLM_F_REPLACE; for `static`, iproute2 sets
NUD_NOARP | NUD_REACHABLE, which the bridge keeps as a static entry). The kernel answers each at
once; a refusal raises OSError with the kernel's errno.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct

RTM_NEWNEIGH = 28
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NDA_DST, NDA_LLADDR = 1, 2
NUD_REACHABLE, NUD_NOARP, NUD_PERMANENT = 0x02, 0x40, 0x80
NTF_MASTER, NTF_STICKY = 0x04, 0x40
AF_BRIDGE = 7

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NDMSG = struct.Struct("=BxxxiHBB")  # family, (pad), ifindex, state, flags, type
_seq = itertools.count(1)


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


def _request(family: int, ifindex: int, state: int, flags: int, attrs: bytes) -> None:
    seq = next(_seq)
    body = _NDMSG.pack(family, ifindex, state, flags, 0) + attrs
    message = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWNEIGH,
                             NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.sendto(message, (0, 0))
        while True:
            answer = sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(answer):
                length, kind, _, got_seq, _ = _NLMSGHDR.unpack_from(answer, offset)
                if kind == NLMSG_ERROR and got_seq == seq:
                    (code,) = struct.unpack_from("=i", answer, offset + _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                offset += max(length + (-length % 4), _NLMSGHDR.size)


def replace_neighbour(bridge_index: int, ip: str, mac: str) -> None:
    """A permanent neighbour entry: `ip` is at `mac` behind the bridge, whatever ARP says."""
    address = ipaddress.ip_address(ip)
    if address.version != 4:
        raise OSError(errno.EAFNOSUPPORT, "the pods' network is IPv4 only")
    _request(socket.AF_INET, bridge_index, NUD_PERMANENT, 0,
             _attr(NDA_DST, address.packed) + _attr(NDA_LLADDR, _mac(mac)))


def replace_fdb(port_index: int, mac: str) -> None:
    """A static, sticky forwarding entry of the bridge (the port's master): frames for `mac` go
    to this port only, and frames from `mac` on another port do not move it."""
    _request(AF_BRIDGE, port_index, NUD_NOARP | NUD_REACHABLE, NTF_MASTER | NTF_STICKY, _attr(NDA_LLADDR, _mac(mac)))
