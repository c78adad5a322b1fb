"""The pods' own Docker network, and what keeps its pods apart from each other and from the desktop.

    net = PodNetwork(settings, engine)
    await net.ensure()            # the network (created, labelled, re-created if missing) + host rules
    net.protect_pod(inspected)    # after a pod's infra container started: isolate its port, pin its address
    await net.protect_all()       # at start and after a resync: every port, every address
    name = net.name               # what infra containers join (HostConfig.NetworkMode)

Why: on Docker's default bridge, pods would share a layer-2 segment with every container the user
starts (`docker run`), could reach them, and could ARP-spoof or sniff the viewer. So the sidecar
owns a bridge network of its own (`kod-<sidecar>-pods` unless `network.name` says otherwise), and:

- **No traffic between pods.** Docker's `enable_icc=false` drops IP between the network's
  containers, and every port of the bridge is an *isolated* bridge port (sysfs `isolated`, what
  `bridge link set ... isolated on` sets) without unknown-unicast flooding: frames from one pod
  never reach another, not even ARP or broadcasts, and the desktop's frames for one pod are never
  copied to another, so a pod can neither spoof nor sniff its neighbours at layer 2. Pods on a desktop have no reason to talk to
  each other (each pod is one network namespace; its containers share it).
- **Pinned addresses.** Each pod's address is a permanent neighbour entry on the bridge (its MAC
  from the engine): a forged ARP reply cannot move a pod's address to another pod, so nothing
  addressed to the viewer goes elsewhere, and a pod that forges the viewer's source address never
  gets an answer.
- **Not the desktop's services.** An INPUT chain for the bridge rejects everything a pod sends to
  the desktop's own addresses (the kubelet API, interlink, sshd, anything on 0.0.0.0 or on the
  Docker gateway), except `network.host_allow` (the cluster's API server when it runs on this
  host, cloudify's port-forward range). Traffic to the cluster (routed, NodePorts) flows as before;
  Docker isolates other Docker networks (the user's containers) from this one.

The host rules need root in the desktop's network namespace (the sidecar under localenv). Where it
has neither (the docker-compose service: uid 10001, no NET_ADMIN), `host_rules = "auto"` says so in
the log at start and pods can reach the desktop's services; "on" refuses to start instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from kod import errors
from kod.log import get_logger
from sidecars.docker import naming, netlink
from sidecars.docker.engine import Engine, EngineError
from sidecars.docker.settings import DockerSidecarSettings, HostAllow

log = get_logger(__name__)

#: Labels on the network: who owns it (a network of that name without them is not touched).
L_ROLE_NETWORK = "pods-network"

Runner = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]


class HostRulesMissing(errors.Unavailable):
    """network.host_rules = "on", and the host rules could not be installed."""


def pin_address(bridge: str, ip: str, mac: str) -> None:
    """`ip` is at `mac` behind `bridge` for good (in-process: netlink.py says why)."""
    netlink.replace_neighbour(socket.if_nametoindex(bridge), ip, mac)


def pin_port(port_index: int, mac: str) -> None:
    """Frames for `mac` go to this bridge port only, and it stays there."""
    netlink.replace_fdb(port_index, mac)


def have_command(name: str) -> bool:
    """Whether the host has this command (the one place the rules' tools are looked up, so
    that tests which record host commands need not have them installed)."""
    return shutil.which(name) is not None


async def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run a host command; (exit code, stderr+stdout)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def network_name(settings: DockerSidecarSettings) -> str:
    return settings.network.name or f"kod-{settings.name}-pods"


def bridge_name(settings: DockerSidecarSettings) -> str:
    """The Linux bridge of the network: at most 15 characters (IFNAMSIZ)."""
    return settings.network.bridge or f"kodp-{_short(network_name(settings))}"


def chain_name(settings: DockerSidecarSettings) -> str:
    return _chain_of(network_name(settings))


def _chain_of(network: str) -> str:
    return f"KOD-PODS-{_short(network).upper()}"


def remove_host_rules(network: str, bridge: str) -> None:
    """Undo the host rules of the pods' network `network` on `bridge` (for whoever removes a
    sidecar's network for good: the tests' and benchmarks' one-run sidecars; Docker has address
    pools for only about thirty networks, and the rules would outlive the bridge)."""
    chain = _chain_of(network)
    for argv in (["iptables", "-w", "-D", "INPUT", "-i", bridge, "-j", chain], ["iptables", "-w", "-F", chain],
                 ["iptables", "-w", "-X", chain], ["ip6tables", "-w", "-D", "INPUT", "-i", bridge, "-j", "DROP"]):
        if have_command(argv[0]):
            subprocess.run(argv, capture_output=True, check=False, timeout=30)


def create_body(settings: DockerSidecarSettings) -> dict[str, object]:
    """The engine's network create body: a bridge of our name, no inter-container traffic."""
    net = settings.network
    ipam: dict[str, object] = {"Driver": "default", "Config": [{"Subnet": net.subnet}] if net.subnet else []}
    return {
        "Name": network_name(settings),
        "Driver": "bridge",
        "CheckDuplicate": True,
        "EnableIPv6": False,
        "Internal": False,
        "IPAM": ipam,
        "Options": {
            "com.docker.network.bridge.name": bridge_name(settings),
            "com.docker.network.bridge.enable_icc": "false" if net.isolate_pods else "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
        },
        "Labels": {**naming.base_labels(settings.name), naming.ROLE: L_ROLE_NETWORK},
    }


def input_rules(settings: DockerSidecarSettings) -> list[list[str]]:
    """The iptables arguments that fill the network's INPUT chain (after a flush): answers to the
    desktop's own connections, the allowed destinations, then a refusal of everything else."""
    chain = chain_name(settings)
    rules = [["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
    for allow in settings.network.host_allow:
        rules.append(["-A", chain, *_match(allow), "-j", "ACCEPT"])
    rules.append(["-A", chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
    rules.append(["-A", chain, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"])
    return rules


def _match(allow: HostAllow) -> list[str]:
    out = ["-p", allow.protocol]
    if allow.address:
        out += ["-d", allow.address]
    if allow.ports:
        out += ["--dport", allow.ports.replace("-", ":")]
    return out


class PodNetwork:
    """The sidecar's pod network; see the module docstring. `run` runs host commands (tests give
    a fake)."""

    def __init__(self, settings: DockerSidecarSettings, engine: Engine, *, run: Runner | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.run = run or run_command
        self.name = network_name(settings)
        self.bridge = bridge_name(settings)
        self._ensured = False
        self._lock = asyncio.Lock()
        #: Whether the host rules are in place (None: not tried yet).
        self.host_rules: bool | None = None
        self.problem = ""

    @property
    def managed(self) -> bool:
        """False when the settings name one of Docker's own networks (bridge, host, none)."""
        return self.name not in ("bridge", "host", "none", "default")

    async def ensure(self, *, again: bool = False) -> None:
        """The network exists (created when missing, also when it was removed meanwhile: `again`)
        and its host rules are in place. Unavailable when a network of that name is not ours."""
        async with self._lock:
            if self._ensured and not again:
                return
            if self.managed:
                await self._ensure_network()
                await self._ensure_host_rules()
            else:
                log.warning("pods join a Docker network this sidecar does not own: they share it with other "
                            "containers and may reach the desktop's services", network=self.name)
            self._ensured = True

    def forget(self) -> None:
        """The network went away (a create said so): the next `ensure` checks and re-creates it."""
        self._ensured = False

    async def _ensure_network(self) -> None:
        try:
            found = await self.engine.inspect_network(self.name)
        except EngineError as exc:
            if not exc.not_found:
                raise
            try:
                found = await self.engine.create_network(create_body(self.settings))
                log.info("created the pods' network", network=self.name, bridge=self.bridge)
            except EngineError as again:
                if not again.conflict:
                    raise
                found = await self.engine.inspect_network(self.name)  # another process won the race
        labels = found.get("Labels") or {}
        if labels.get(naming.ROLE) != L_ROLE_NETWORK or labels.get(naming.SIDECAR) != self.settings.name:
            raise errors.Unavailable(
                f"a Docker network named {self.name} exists but is not this sidecar's pod network",
                hint="remove it (`docker network rm`), or set network.name to another name",
            )
        options = found.get("Options") or {}
        self.bridge = options.get("com.docker.network.bridge.name", self.bridge)

    async def _ensure_host_rules(self) -> None:
        mode = self.settings.network.host_rules
        if mode == "off":
            self.host_rules = False
            return
        problem = self._cannot_manage_host()
        if not problem:
            problem = await self._install_input_chain()
        self.host_rules = not problem
        self.problem = problem
        if problem:
            message = (f"pods can reach services listening on this desktop: the sidecar cannot install its "
                       f"host rules ({problem})")
            if mode == "on":
                raise HostRulesMissing(message, hint="run the sidecar as root on the desktop (localenv does), "
                                         "or set network.host_rules = \"auto\" to accept it")
            log.warning(message, network=self.name)

    def _cannot_manage_host(self) -> str:
        if os.geteuid() != 0:
            return "not root"
        if not have_command("iptables"):
            return "no iptables command (apt-get install iptables)"
        # A container has a network namespace of its own: rules there protect nothing.
        try:
            if os.stat("/proc/self/ns/net").st_ino != os.stat("/proc/1/ns/net").st_ino:
                return "not in the desktop's network namespace"
        except OSError:
            pass
        return ""

    async def _iptables(self, *args: str, v6: bool = False) -> tuple[int, str]:
        return await self.run(["ip6tables" if v6 else "iptables", "-w", *args])

    async def _install_input_chain(self) -> str:
        chain = chain_name(self.settings)
        await self._iptables("-N", chain)  # fails when it exists: fine
        code, out = await self._iptables("-F", chain)
        if code:
            return f"iptables -F {chain}: {out}"
        for rule in input_rules(self.settings):
            code, out = await self._iptables(*rule)
            if code:
                return f"iptables {' '.join(rule)}: {out}"
        jump = ["INPUT", "-i", self.bridge, "-j", chain]
        if (await self._iptables("-C", *jump))[0]:
            code, out = await self._iptables("-I", jump[0], "1", *jump[1:])
            if code:
                return f"iptables -I {' '.join(jump)}: {out}"
        # The network has no IPv6; the desktop's link-local addresses are not for pods either.
        if have_command("ip6tables") and (await self._iptables("-C", "INPUT", "-i", self.bridge, "-j", "DROP", v6=True))[0]:
            await self._iptables("-I", "INPUT", "1", "-i", self.bridge, "-j", "DROP", v6=True)
        log.info("host rules installed: pods reach only the allowed services of this desktop",
                 network=self.name, chain=chain, allowed=[str(a) for a in self.settings.network.host_allow])
        return ""

    def protect_pod(self, infra: dict[str, object]) -> None:
        """After a pod's infra container started (`infra`: its inspect): isolate the bridge's new
        port and pin the pod's address. Best effort: a failure is logged, never fatal."""
        if not self._protecting():
            return
        self._isolate_ports()
        self._pin_container(infra)

    def _pin_container(self, data: dict[str, object]) -> None:
        endpoint: Any = ((data.get("NetworkSettings") or {}).get("Networks") or {}).get(self.name) or {}  # type: ignore[union-attr]
        ip, mac = str(endpoint.get("IPAddress") or ""), str(endpoint.get("MacAddress") or "")
        self._pin(ip, mac)
        port = _veth_of(int((data.get("State") or {}).get("Pid") or 0), self.bridge)  # type: ignore[union-attr]
        if port and mac:
            # The pod's MAC belongs to its port for good: never flooded to other ports, and a pod
            # that sends frames with it does not move it (sticky).
            try:
                pin_port(port[1], mac)
            except (OSError, ValueError) as exc:
                log.warning("cannot pin a pod's MAC address to its port", port=port[0], error=str(exc))

    async def protect_all(self) -> None:
        """Every port isolated, every pod's address pinned, stale pins removed (at start and after
        each resync with the engine)."""
        if not self._protecting():
            return
        self._isolate_ports()
        try:
            found = await self.engine.inspect_network(self.name)
        except (EngineError, errors.Unavailable) as exc:
            log.warning("cannot inspect the pods' network", network=self.name, error=str(exc))
            return
        pinned: dict[str, str] = {}
        for cid, endpoint in (found.get("Containers") or {}).items():
            ip, mac = str(endpoint.get("IPv4Address", "")).split("/")[0], str(endpoint.get("MacAddress") or "")
            if ip and mac:
                pinned[ip] = mac
                try:
                    self._pin_container(await self.engine.inspect_container(cid))
                except (EngineError, errors.Unavailable):
                    self._pin(ip, mac)
        code, out = await self.run(["ip", "-4", "neigh", "show", "dev", self.bridge, "nud", "permanent"])
        for line in out.splitlines() if code == 0 else []:
            ip = line.split(" ", 1)[0]
            if _is_ip(ip) and ip not in pinned:
                await self.run(["ip", "neigh", "del", ip, "dev", self.bridge])

    def _protecting(self) -> bool:
        return self.managed and self.settings.network.isolate_pods and bool(self.host_rules)

    def _isolate_ports(self) -> None:
        """Every port of the bridge isolated (no frame from another pod reaches it) and without
        unknown-unicast flooding (the desktop's frames for another pod whose address the bridge
        forgot are not copied to it): sysfs flags, no process."""
        for port in _bridge_ports(self.bridge):
            base = Path("/sys/class/net") / self.bridge / "brif" / port
            for flag, value in (("isolated", "1"), ("unicast_flood", "0")):
                try:
                    if (base / flag).read_text().strip() != value:
                        (base / flag).write_text(value)
                except OSError as exc:
                    log.warning("cannot isolate a pod's bridge port", port=port, flag=flag, error=str(exc))

    def _pin(self, ip: str, mac: str) -> None:
        if not (ip and mac):
            return
        try:
            pin_address(self.bridge, ip, mac)
        except (OSError, ValueError) as exc:
            log.warning("cannot pin a pod's address", ip=ip, error=str(exc))


def _veth_of(pid: int, bridge: str) -> tuple[str, int] | None:
    """The host side of a container's eth0 (name, index): the interface whose index its peer link
    names (read in the container's own sysfs, which shows its network namespace), when it is a port
    of `bridge` (nothing else is ever pinned)."""
    if pid <= 0:
        return None
    try:
        peer = int((Path(f"/proc/{pid}/root/sys/class/net/eth0/iflink")).read_text())
        name = socket.if_indextoname(peer)
    except (OSError, ValueError):
        return None
    return (name, peer) if name in _bridge_ports(bridge) else None


def _bridge_ports(bridge: str) -> list[str]:
    try:
        return sorted(p.name for p in (Path("/sys/class/net") / bridge / "brif").iterdir())
    except OSError:
        return []


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
