"""The host's kernel settings that pod networking needs, and the node's address."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from kod import errors
from localenv.shell import run, which

#: sysctl -> value. Forwarding for routed pod traffic; bridge netfilter so that kube-proxy's
#: iptables rules see traffic between pods on the same bridge (Service hairpin, NodePort).
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/bridge/bridge-nf-call-ip6tables": "1",
}

#: Kernel modules: overlay for containerd's snapshotter, br_netfilter for the sysctls above.
MODULES = ("overlay", "br_netfilter")


def _module_present(name: str) -> bool:
    if name == "br_netfilter":
        return Path("/proc/sys/net/bridge").is_dir()
    return any(line.split()[-1] == name for line in Path("/proc/filesystems").read_text().splitlines())


def prepare() -> list[str]:
    """Load the modules and set the sysctls; returns what was changed."""
    changed = []
    for mod in MODULES:
        if _module_present(mod):
            continue
        modprobe = which("modprobe")
        if modprobe is None or run([modprobe, mod], check=False).returncode != 0 or not _module_present(mod):
            raise errors.Unavailable(
                f"the kernel module {mod} is not loaded and cannot be loaded",
                hint=f"load it (`modprobe {mod}`, package kmod) or use a kernel with it built in",
            )
        changed.append(f"module {mod}")
    for key, value in SYSCTLS.items():
        path = Path("/proc/sys") / key
        if path.read_text().strip() != value:
            path.write_text(value)
            changed.append(f"{key.replace('/', '.')}={value}")
    return changed


def node_ip() -> str:
    """The address the host uses to reach other machines (the source address of the default
    route, else the first global address of a non-bridge interface): the node's InternalIP and
    the API server's advertised address. No packet is sent."""
    ip = ""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("1.1.1.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            pass
    if not ip or ip.startswith("127."):
        ip = ""
        proc = run(["ip", "-j", "-4", "addr", "show", "scope", "global"], check=False)
        try:
            links = json.loads(proc.stdout or "[]")
        except ValueError:
            links = []
        for link in links:
            if link.get("ifname", "").startswith(("docker", "kod", "cni", "br-", "veth")):
                continue
            for addr in link.get("addr_info", []):
                ip = ip or addr.get("local", "")
    if not ip:
        raise errors.Unavailable(
            "this machine has no IPv4 address off the loopback",
            hint="the node needs a non-loopback address that pods can reach; configure a network interface",
        )
    return ip
