"""The two-host proving ground: the user's desktop as another machine, at home, behind NAT, on a
slow link, made on this one machine with network namespaces (nothing outside it is touched).

    cluster host (this machine's network)        router ("<name>-gw")              desktop ("<name>")
    API server 0.0.0.0:6443      10.77.0.1 <-veth-> 10.77.0.2   192.168.77.1 <-veth-> 192.168.77.2
    konnectivity 0.0.0.0:8132    (no route to the   NAT (MASQUERADE) out,         its own dockerd
    NodePorts 30000-32767         desktop's LAN)    replies only in; toxiproxy    (bridge 172.30.77.0/24),
                                                    (the home link's delay)       Xvfb, PulseAudio, the
                                                                                  desktop stack, cloudify

    lab = Netlab()                           # names, addresses, the cluster host's address
    lab.up(variant="api")                    # idempotent; "api": the desktop reaches only the
                                             # control plane (API server, konnectivity server);
                                             # "nodeports": NodePorts as well
    lab.home_link(True)                      # 20 Mbit/s down, 5 up (tc tbf), +40 ms RTT (toxiproxy)
    lab.slow_api(2.0)                        # the API server 2 s further away (the fallback's case)
    lab.engine.start(); lab.engine.load([...])   # the desktop's own Docker engine and images
    with lab.desktop(): ...                  # this thread on the desktop: its network, processes
    lab.cluster_handle()                     # the cluster as the desktop reaches it (kubeconfig)
    lab.down()                               # everything: processes in the namespaces, the
                                             # namespaces, their veths, the dockerd; idempotent

What makes it "behind NAT": the router rewrites the desktop's connections to its own WAN address
and keeps no port forwarding; its firewall drops every new connection from the cluster side
(only replies come back) and, from the desktop, lets through only the allowed ports of the
cluster host. The cluster host has no route to the desktop's network at all.

What the home link is: rate limits on both ends of the desktop's own cable (tbf: download on the
router's side, upload on the desktop's), and the round-trip time added by toxiproxy in the
router, through which the desktop's connections to the control plane are redirected (half the
delay each way). The delay applies to connections made after it is switched on (established
ones go on as they were) and to the control-plane ports only: in the "nodeports" variant,
NodePort traffic is rate-limited but not delayed.

State lives under `<data_dir>/netlab/` (configs, logs, the desktop's kubeconfig); the desktop
engine's data root under `<cache_dir>/netlab/docker` is kept between runs as an image cache.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kod import errors
from kod.files import write_private
from localenv import gobuild, host, netns, procs, toxiproxy
from localenv import handle as handle_mod
from localenv import settings as localenv_settings
from localenv.paths import Paths, paths_for
from localenv.shell import require, run

Variant = Literal["api", "nodeports"]
#: Images the desktop's engine needs: the sidecar's pause, the viewer, the tests' box.
DESKTOP_IMAGES = ("kod/pause:3.10", "kod/viewer:0.1.0", "kod/testbox:0.1.0")
#: Where toxiproxy listens in the router for each control-plane port it delays.
PROXY_PORT_BASE = 10000
DOCKER = "/usr/bin/docker"


@dataclass(frozen=True)
class Topology:
    """Names and numbers of the proving ground (the defaults clash with nothing of localenv's)."""

    name: str = "kod-home"
    wan: str = "10.77.0.0/30"
    lan: str = "192.168.77.0/24"
    docker_bridge: str = "172.30.77.1/24"
    down_mbit: float = 20.0
    up_mbit: float = 5.0
    rtt_ms: float = 40.0
    node_ports: tuple[int, int] = (30000, 32767)

    @property
    def router(self) -> str:
        return f"{self.name}-gw"

    @property
    def short(self) -> str:
        # Interface names have at most 15 characters.
        return self.name.replace("-", "")[:10]

    @property
    def wan_host_if(self) -> str:
        return f"{self.short}-wh"

    @property
    def wan_router_if(self) -> str:
        return f"{self.short}-wr"

    @property
    def lan_router_if(self) -> str:
        return f"{self.short}-lr"

    @property
    def lan_desktop_if(self) -> str:
        return f"{self.short}-ld"

    def _hosts(self, cidr: str) -> tuple[str, str]:
        hosts = list(ipaddress.ip_network(cidr).hosts())
        return str(hosts[0]), str(hosts[1])

    @property
    def wan_host(self) -> str:
        return self._hosts(self.wan)[0]

    @property
    def wan_router(self) -> str:
        return self._hosts(self.wan)[1]

    @property
    def lan_router(self) -> str:
        return self._hosts(self.lan)[0]

    @property
    def desktop_address(self) -> str:
        return self._hosts(self.lan)[1]

    def prefix(self, cidr: str) -> int:
        return ipaddress.ip_network(cidr).prefixlen


@dataclass
class LinkState:
    """What is switched on."""

    variant: Variant = "api"
    home: bool = False
    #: Seconds added to the API server's answers (0: none).
    slow_api: float = 0.0


class DesktopEngine:
    """The desktop's own Docker engine: dockerd with its own data root, exec root, PID file,
    socket, bridge subnet and cgroup parent, in the desktop's network."""

    def __init__(self, lab: Netlab) -> None:
        self.lab = lab
        t = lab.topology
        self.exec_root = Path("/run") / t.name / "docker"
        self.data_root = lab.paths.cache_dir / "netlab" / "docker"
        self.socket = Path("/run") / t.name / "docker.sock"
        self.state_dir = lab.root / "docker"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def daemon(self) -> procs.Daemon:
        dockerd = require("dockerd", package="docker.io")
        t = self.lab.topology
        return procs.Daemon(
            name="dockerd",
            argv=(str(dockerd), f"--data-root={self.data_root}", f"--exec-root={self.exec_root}",
                  f"--pidfile={self.exec_root.parent / 'dockerd.pid'}", f"--host={self.url}",
                  f"--bip={t.docker_bridge}", f"--cgroup-parent=/{t.name}-docker", "--log-level=warn"),
            run_dir=self.state_dir, logs_dir=self.state_dir, ready=self.answers, ready_timeout=90.0,
            stop_timeout=30.0,
        )

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, f"--host={self.url}", *args], check=check, timeout=timeout)

    def answers(self) -> bool:
        return self.socket.exists() and self.docker("version", "--format", "{{.Server.Version}}", check=False,
                                                    timeout=10).returncode == 0

    def start(self) -> str:
        """Start it (idempotent), in the desktop's network; no container of an earlier run is left."""
        for d in (self.exec_root, self.data_root, self.state_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.lab.desktop():
            outcome, pid = procs.ensure(self.daemon())
        removed = self.remove_containers()
        return f"{outcome} (pid {pid}, {self.url}; {removed} old containers removed)"

    def remove_containers(self) -> int:
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        return len(ids)

    def load(self, refs: Iterable[str] = DESKTOP_IMAGES) -> list[str]:
        """Copy images from this machine's engine into the desktop's (`docker save | docker load`),
        skipping those it has with the same id. Returns the refs loaded."""
        loaded = []
        for ref in refs:
            source = run([DOCKER, "image", "inspect", "-f", "{{.Id}}", ref], check=False).stdout.strip()
            if not source:
                raise errors.NotFound(f"image {ref} is not in this machine's Docker engine",
                                      hint="build it: `python -m localenv images` (or localenv up for the testbox)")
            have = self.docker("image", "inspect", "-f", "{{.Id}}", ref, check=False).stdout.strip()
            if have == source:
                continue
            save = subprocess.Popen([DOCKER, "save", ref], stdout=subprocess.PIPE)
            try:
                out = subprocess.run([DOCKER, f"--host={self.url}", "load", "-q"], stdin=save.stdout,
                                     capture_output=True, text=True, timeout=600)
            finally:
                assert save.stdout is not None
                save.stdout.close()
                save.wait(timeout=600)
            if out.returncode != 0 or save.returncode != 0:
                raise errors.Internal(f"docker save {ref} | docker load failed: {out.stderr.strip()}")
            loaded.append(ref)
        return loaded

    def stop(self) -> int | None:
        """Remove its containers and stop it (and the containerd it runs)."""
        if self.answers():
            self.remove_containers()
        return procs.stop_by_pid_file(self.daemon().pid_file, timeout=30.0)


@dataclass
class Netlab:
    """The proving ground on this machine (see the module docstring)."""

    topology: Topology = field(default_factory=Topology)
    settings: localenv_settings.LocalEnvSettings = field(default_factory=localenv_settings.load)
    #: The cluster host's address the desktop dials (default: the node address localenv uses).
    cluster_address: str = ""
    state: LinkState = field(default_factory=LinkState)

    def __post_init__(self) -> None:
        self.cluster_address = self.cluster_address or host.node_ip()
        self.engine = DesktopEngine(self)

    # -- where things are ----------------------------------------------------------------------

    @property
    def paths(self) -> Paths:
        return paths_for(self.settings)

    @property
    def root(self) -> Path:
        return self.paths.data_dir / "netlab" / self.topology.name

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def apiserver_port(self) -> int:
        return self.settings.ports.apiserver

    @property
    def tunnel_port(self) -> int:
        return self.settings.ports.konnectivity

    @property
    def apiserver_url(self) -> str:
        """The API server as the desktop reaches it."""
        return f"https://{self.cluster_address}:{self.apiserver_port}"

    @property
    def tunnel_server(self) -> str:
        """The konnectivity server as the desktop reaches it (StackSettings.konnectivity_server)."""
        return f"{self.cluster_address}:{self.tunnel_port}"

    @property
    def kubeconfig(self) -> Path:
        """The cluster's admin credentials, with the server the desktop reaches (the proving
        ground's desktop also plays the cluster admin who lets it join)."""
        return self.root / "admin.kubeconfig"

    def delayed_ports(self) -> dict[str, tuple[int, int]]:
        """toxiproxy proxy name -> (control-plane port, the port toxiproxy listens on)."""
        return {"apiserver": (self.apiserver_port, PROXY_PORT_BASE + self.apiserver_port),
                "konnectivity": (self.tunnel_port, PROXY_PORT_BASE + self.tunnel_port)}

    # -- being there ---------------------------------------------------------------------------

    def desktop(self) -> contextlib.AbstractContextManager[None]:
        """The calling thread on the desktop host for the block (localenv.netns.entered)."""
        return netns.entered(self.topology.name)

    def router(self) -> contextlib.AbstractContextManager[None]:
        return netns.entered(self.topology.router)

    def cluster_handle(self) -> handle_mod.ClusterHandle:
        """The cluster as seen from the desktop (its kubeconfig names the address it dials)."""
        local = handle_mod.local(self.settings)
        return handle_mod.ClusterHandle(
            kubeconfig=self.kubeconfig, kubectl_path=local.kubectl_path, node_name=local.node_name,
            containerd_socket=local.containerd_socket, settings=self.settings,
        )

    def is_up(self) -> bool:
        return netns.exists(self.topology.name) and netns.exists(self.topology.router)

    # -- up ------------------------------------------------------------------------------------

    def up(self, variant: Variant = "api") -> str:
        """The namespaces, cables, addresses, routes, NAT and firewall, toxiproxy in the router,
        the desktop's kubeconfig; idempotent. The home link starts off."""
        t = self.topology
        for d in (self.run_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        gobuild.ensure(gobuild.toxiproxy_build(self.paths), self.logs_dir)
        made = [n for n in (t.router, t.name) if netns.add(n)]
        self._cable(t.wan_host_if, None, t.wan_router_if, t.router)
        self._cable(t.lan_router_if, t.router, t.lan_desktop_if, t.name)
        run(["ip", "addr", "replace", f"{t.wan_host}/{t.prefix(t.wan)}", "dev", t.wan_host_if])
        run(["ip", "link", "set", t.wan_host_if, "up"])
        ns_ip = lambda ns, *a: run(["ip", "-n", ns, *a])  # noqa: E731
        ns_ip(t.router, "addr", "replace", f"{t.wan_router}/{t.prefix(t.wan)}", "dev", t.wan_router_if)
        ns_ip(t.router, "addr", "replace", f"{t.lan_router}/{t.prefix(t.lan)}", "dev", t.lan_router_if)
        ns_ip(t.name, "addr", "replace", f"{t.desktop_address}/{t.prefix(t.lan)}", "dev", t.lan_desktop_if)
        for ns, ifs in ((t.router, (t.wan_router_if, t.lan_router_if)), (t.name, (t.lan_desktop_if,))):
            for i in ifs:
                ns_ip(ns, "link", "set", i, "up")
        # The cluster host has no way to the desktop's networks: without these routes its packets
        # would leave by its default route, and this machine's network answers any address.
        for cidr in self.unrouted():
            run(["ip", "route", "replace", "unreachable", cidr])
        ns_ip(t.router, "route", "replace", "default", "via", t.wan_host)
        ns_ip(t.name, "route", "replace", "default", "via", t.lan_router)
        netns.run_in(t.router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.state = LinkState(variant=variant)
        self._firewall()
        self._shaping()
        self._toxiproxy()
        self._write_kubeconfig()
        return (f"{'made ' + ', '.join(made) if made else 'namespaces present'}; desktop {t.desktop_address} "
                f"behind NAT ({t.wan_router}); reaches {self.cluster_address} ports {self._allowed_text()}")

    def unrouted(self) -> list[str]:
        """The desktop's networks (its LAN, its Docker bridge), unreachable from the cluster host."""
        t = self.topology
        return [str(ipaddress.ip_network(t.lan)), str(ipaddress.ip_interface(t.docker_bridge).network)]

    def _cable(self, a: str, a_ns: str | None, b: str, b_ns: str) -> None:
        """A veth pair a <-> b, `a` in `a_ns` (None: this host), `b` in `b_ns`; kept if present."""
        probe = ["ip", "-n", b_ns, "link", "show", b]
        if run(probe, check=False).returncode == 0:
            return
        # A half-made pair of an interrupted run: the end on this host blocks the name.
        run(["ip", "link", "del", a], check=False)
        run(["ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns])
        if a_ns is not None:
            run(["ip", "link", "set", a, "netns", a_ns])

    def _allowed_ports(self) -> list[str]:
        ports = [str(self.apiserver_port), str(self.tunnel_port)]
        if self.state.variant == "nodeports":
            lo, hi = self.topology.node_ports
            ports.append(f"{lo}:{hi}")
        return ports

    def _allowed_text(self) -> str:
        return ", ".join(p.replace(":", "-") for p in self._allowed_ports())

    def ruleset(self) -> str:
        """The router's iptables rules (iptables-restore format) for the current state."""
        t, s = self.topology, self.state
        lan, wan = t.lan_router_if, t.wan_router_if
        redirect = s.home or s.slow_api > 0
        nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
               ":POSTROUTING ACCEPT [0:0]"]
        if redirect:
            for port, proxy_port in self.delayed_ports().values():
                nat.append(f"-A PREROUTING -i {lan} -d {self.cluster_address}/32 -p tcp --dport {port} "
                           f"-j REDIRECT --to-ports {proxy_port}")
        nat += [f"-A POSTROUTING -o {wan} -j MASQUERADE", "COMMIT"]
        flt = ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
               "-A INPUT -i lo -j ACCEPT",
               "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
        if redirect:
            proxied = ",".join(str(p) for _, p in self.delayed_ports().values())
            flt.append(f"-A INPUT -i {lan} -p tcp -m multiport --dports {proxied} -j ACCEPT")
        flt.append("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
        for port in self._allowed_ports():
            flt.append(f"-A FORWARD -i {lan} -o {wan} -d {self.cluster_address}/32 -p tcp --dport {port} -j ACCEPT")
        flt.append("COMMIT")
        return "\n".join(nat + flt) + "\n"

    def _firewall(self) -> None:
        netns.run_in(self.topology.router, ["iptables-restore"], input=self.ruleset())
        # The router forwards no IPv6 at all (a new namespace has forwarding off; make it explicit).
        netns.run_in(self.topology.router, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])

    def _shaping(self) -> None:
        """tbf on both ends of the desktop's cable when the home link is on, nothing otherwise."""
        t = self.topology
        for ns, dev, mbit in ((t.router, t.lan_router_if, t.down_mbit), (t.name, t.lan_desktop_if, t.up_mbit)):
            netns.run_in(ns, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
            if self.state.home:
                # burst: a few ms of the rate (at least 16 KiB); latency: the queue a home router
                # holds before it drops (bufferbloat shows as added delay under load, as at home).
                burst = max(16 * 1024, int(mbit * 1e6 / 8 / 250))
                netns.run_in(ns, ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbit:g}mbit",
                                  "burst", str(burst), "latency", "50ms"])

    def _toxiproxy(self) -> None:
        api = toxiproxy.Api()
        with self.router():
            procs.ensure(toxiproxy.daemon(self.paths.cache_dir, self.run_dir, self.logs_dir))
            for name, (port, proxy_port) in self.delayed_ports().items():
                api.proxy(name, listen=f"0.0.0.0:{proxy_port}", upstream=f"{self.cluster_address}:{port}")
                # Only what changes is touched (toxiproxy.Api.latency says why).
                if self.state.home:
                    api.latency(name, "home", ms=self.topology.rtt_ms / 2)
                else:
                    api.remove(name, "home")
                if name != "apiserver" or self.state.slow_api <= 0:
                    api.remove(name, "slow")
            if self.state.slow_api > 0:
                api.latency("apiserver", "slow", ms=self.state.slow_api * 1000, streams=("downstream",))

    def _write_kubeconfig(self) -> None:
        self.desktop_kubeconfig(self.paths.admin_kubeconfig, self.kubeconfig)

    def desktop_kubeconfig(self, source: Path, target: Path) -> Path:
        """`source` (a kubeconfig of this machine's cluster, e.g. a user's own) written to
        `target` (0600) with the server the desktop dials: the same credentials, from home."""
        config = json.loads(run([str(self.paths.kubectl), f"--kubeconfig={source}", "config", "view",
                                 "--raw", "--flatten", "-o", "json"]).stdout)
        for c in config.get("clusters", []):
            c["cluster"]["server"] = self.apiserver_url
        write_private(target, json.dumps(config, indent=2) + "\n", unchanged_ok=True)
        return target

    # -- switches ------------------------------------------------------------------------------

    def set_variant(self, variant: Variant) -> None:
        self.state.variant = variant
        self._firewall()

    def home_link(self, on: bool = True) -> None:
        """The home link on (rates and delay) or off (plain NAT)."""
        self.state.home = on
        self._firewall()
        self._shaping()
        self._toxiproxy()

    def slow_api(self, seconds: float) -> None:
        """The API server's answers `seconds` later (0: back to the link's own delay)."""
        self.state.slow_api = max(0.0, seconds)
        self._firewall()
        self._toxiproxy()

    # -- down ----------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Everything of the proving ground goes (idempotent): the desktop's engine, toxiproxy,
        any process left in the two namespaces (they are the lab's), the namespaces and cables."""
        t = self.topology
        done = []
        if netns.exists(t.name):
            if self.engine.stop():
                done.append("dockerd stopped")
        if procs.stop_by_pid_file(self.run_dir / "toxiproxy.pid", timeout=5.0):
            done.append("toxiproxy stopped")
        for ns in (t.name, t.router):
            left = netns.pids(ns)
            if left:
                _terminate(left)
                done.append(f"{len(left)} processes in {ns} ended")
            if netns.delete(ns):
                done.append(f"{ns} deleted")
        run(["ip", "link", "del", t.wan_host_if], check=False)
        for cidr in self.unrouted():
            if run(["ip", "route", "del", "unreachable", cidr], check=False).returncode == 0:
                done.append(f"route to {cidr} removed")
        _unmount_below(self.engine.exec_root)
        return done


def _terminate(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`, the lab's leftover processes."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        for pid in pids:
            procs._reap(pid)
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _unmount_below(root: Path) -> None:
    """Unmount what a killed dockerd left mounted under its exec root (netns files, shm)."""
    prefix = str(root) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        run(["umount", "-l", target], check=False)


@contextlib.contextmanager
def proving_ground(variant: Variant = "api", **topology: object) -> Iterator[Netlab]:
    """The proving ground for a block (tests, benchmarks): up, then down even on failure."""
    lab = Netlab(topology=Topology(**topology))  # type: ignore[arg-type]
    lab.down()  # what a killed earlier run left
    try:
        lab.up(variant)
        yield lab
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    """`python -m localenv.netlab up [--nodeports] | home on|off | slow SECONDS | down | status`:
    the proving ground by hand (the tests and benchmarks use the functions)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m localenv.netlab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="make the namespaces, NAT and firewall (idempotent)")
    up_p.add_argument("--nodeports", action="store_true", help="the desktop may also reach NodePorts")
    home_p = sub.add_parser("home", help="the home link (20/5 Mbit/s, +40 ms) on or off")
    home_p.add_argument("state", choices=("on", "off"))
    slow_p = sub.add_parser("slow", help="the API server's answers SECONDS later (0: off)")
    slow_p.add_argument("seconds", type=float)
    sub.add_parser("down", help="remove everything of the proving ground")
    sub.add_parser("status", help="is it up, and the router's rules")
    args = parser.parse_args(argv)
    lab = Netlab()
    if args.command == "up":
        print(lab.up("nodeports" if args.nodeports else "api"))
    elif args.command == "down":
        print("; ".join(lab.down()) or "nothing was up")
    elif args.command == "status":
        print(f"up: {lab.is_up()}")
        if lab.is_up():
            print(netns.run_in(lab.topology.router, ["iptables-save"]).stdout)
    else:
        if not lab.is_up():
            print("the proving ground is not up: `python -m localenv.netlab up`")
            return 1
        # The switches keep no state across processes: read what runs, change one thing.
        lab.state = LinkState(variant="nodeports" if "30000" in netns.run_in(lab.topology.router, ["iptables-save"]).stdout
                              else "api")
        if args.command == "home":
            lab.home_link(args.state == "on")
        else:
            lab.slow_api(args.seconds)
        print(f"home link {'on' if lab.state.home else 'off'}, API server +{lab.state.slow_api:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
