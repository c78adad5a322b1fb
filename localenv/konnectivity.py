"""The way back from the cluster to a desktop it cannot dial: the upstream apiserver-network-proxy
("konnectivity"), as managed clusters use it for nodes behind NAT.

    cluster host                                         a desktop at home (behind NAT)
    kube-apiserver --egress-selector-config-file          vk_bridge: kubelet API on its own
        | "cluster" traffic (kubelet logs/exec,           |     address, port 10260
        |  pod and service proxies, webhooks)             |
        v  unix socket (root only)                        |
    proxy-server ---- TCP 8132, mTLS <------------------- proxy-agent: dials OUT, as system:node:<node>
        |                                                 (the node's own client certificate)
        +------ the real node's proxy-agent (127.0.0.1), the default route for every other address

The API server never opens a connection to a node: it asks the server for a tunnel to
`<node address>:<port>`; the server picks the agent that announced that address (`destHost`)
or, for every other address (the real node, pods, Services), the real node's agent, announced
as the default route (`defaultRoute`). The TLS between the API server and the kubelet API runs
end to end inside the tunnel: the API server still verifies the kubelet's serving certificate
(--kubelet-certificate-authority) and presents its own client certificate, so neither the server
nor an agent can read or alter what it carries.

Who may be an agent: a node, and no one else. The server takes client certificates of the nodes'
own CA only (localenv.pki's `node-client-ca`: the controller-manager signs desktops' TLS-bootstrap
certificates, signer kubernetes.io/kube-apiserver-client-kubelet, with it, and the real node's
kubelet certificate comes from it); a user's or a component's certificate (cluster CA) is
refused in the handshake. A desktop's agent presents the certificate its vk_bridge got through
the TLS bootstrap (system:node:<node>); the real node's agent the kubelet's. What remains: the
server checks the chain, not the name, so a node could announce an address that is not its own
and receive the API server's dials for it; it cannot complete their TLS (it has no serving key
for that node), so that is a denial of `kubectl logs/exec` for that address, not a disclosure.
Desktops that use the tunnel need node addresses no other node has (two home networks with the
same private address would get each other's dials, refused the same way).

Ends that die are started again (localenv.supervisor), and agents reconnect on their own: a
kill -9 of either end heals in a few seconds.

    files(ctx) / server_daemon(ctx) / node_agent_daemon(ctx)     # cluster side (localenv.cluster)
    agent_daemon(AgentSpec(...))                                  # a desktop (localenv.desktop_stack)
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from localenv import gobuild, pki, procs
from localenv.k8s import probes
from localenv.k8s.context import Context

#: The API server's egress selector: every "cluster" connection through the server's socket.
EGRESS_API_VERSION = "apiserver.k8s.io/v1beta1"
SERVER_NAME = "konnectivity-server"
NODE_AGENT_NAME = "konnectivity-agent"
#: Agents ask the server again this often while they have no connection, backing off to the cap:
#: a restarted server is found within SYNC_CAP.
SYNC_INTERVAL = "1s"
SYNC_CAP = "3s"
#: gRPC keepalive of the agent's connection: a NAT that forgets an idle mapping (home routers
#: keep them for minutes) is noticed and the agent reconnects.
KEEPALIVE = "30s"


def binary(ctx_or_cache: Context | Path, name: str) -> str:
    """The path of `proxy-server` or `proxy-agent` in the build cache."""
    cache = ctx_or_cache.paths.cache_dir if isinstance(ctx_or_cache, Context) else ctx_or_cache
    return str(cache / f"konnectivity-{gobuild.KONNECTIVITY_VERSION}" / "bin" / name)


def socket_path(ctx: Context) -> Path:
    """The server's unix socket for the API server (in the cluster's private run directory)."""
    return ctx.paths.run_dir / "konnectivity-server.sock"


def egress_config_path(ctx: Context) -> Path:
    return ctx.paths.config_dir / "egress-selector.json"


def egress_config(ctx: Context) -> str:
    """The EgressSelectorConfiguration (JSON is YAML): "cluster" traffic over gRPC through the
    server's unix socket; the control plane's own traffic (etcd, itself) goes direct."""
    return json.dumps({
        "apiVersion": EGRESS_API_VERSION,
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [{
            "name": "cluster",
            "connection": {"proxyProtocol": "GRPC", "transport": {"uds": {"udsName": str(socket_path(ctx))}}},
        }],
    }, indent=2) + "\n"


def server_cert(ctx: Context) -> pki.CertPair:
    """The server's certificate for agents: this host's address and names, from the cluster CA."""
    return pki.issue(ctx.paths.pki_dir, SERVER_NAME, common_name=SERVER_NAME, usages=("server",),
                     sans=["127.0.0.1", "localhost", ctx.node_ip, socket.gethostname()])


def supervised(name: str, argv: list[str]) -> tuple[str, ...]:
    """`argv` under localenv.supervisor (restarted whenever it exits)."""
    return (sys.executable, "-m", "localenv.supervisor", "--name", name, "--", *argv)


def server_daemon(ctx: Context) -> procs.Daemon:
    """proxy-server: the API server's socket, the agents' port (all addresses: desktops dial in;
    mTLS with a node's client certificate), health and admin on 127.0.0.1."""
    s, p = ctx.settings, ctx.paths
    cert = server_cert(ctx)
    argv = [
        binary(ctx, "proxy-server"),
        "--mode=grpc",
        f"--uds-name={socket_path(ctx)}", "--delete-existing-uds-file=true", "--server-port=0",
        f"--agent-port={s.ports.konnectivity}", "--agent-bind-address=0.0.0.0",
        f"--health-port={s.ports.konnectivity_health}", "--health-bind-address=127.0.0.1",
        f"--admin-port={s.ports.konnectivity_admin}", "--admin-bind-address=127.0.0.1",
        f"--cluster-cert={cert.cert}", f"--cluster-key={cert.key}", f"--cluster-ca-cert={p.node_client_ca_cert}",
        "--proxy-strategies=destHost,defaultRoute",
        f"--keepalive-time={KEEPALIVE}", "--server-count=1", "--tls-min-version=VersionTLS12", "--v=1",
    ]
    return procs.Daemon(
        name=SERVER_NAME,
        argv=supervised(SERVER_NAME, argv),
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        inputs=(p.ca_cert, p.node_client_ca_cert, cert.cert),
        ready=lambda: probes.ok(f"http://127.0.0.1:{s.ports.konnectivity_health}/healthz"),
        ready_timeout=s.ready_timeout,
        stop_timeout=10.0,
        ports=(s.ports.konnectivity, s.ports.konnectivity_health, s.ports.konnectivity_admin),
    )


@dataclass(frozen=True)
class AgentSpec:
    """One agent: where the server is, who the agent is, which addresses it serves."""

    name: str
    server_host: str
    server_port: int
    ca_cert: Path
    #: A PEM file (or two) with the client certificate and its key.
    cert_file: Path
    key_file: Path
    #: Addresses whose dials it takes (the node's InternalIP).
    addresses: tuple[str, ...]
    hostnames: tuple[str, ...] = ()
    #: Also the dials no other agent announced (the real node: pods, Services, itself).
    default_route: bool = False
    health_port: int = 8093
    admin_port: int = 8094
    cache_dir: Path = Path("~/.cache/kod").expanduser()
    run_dir: Path = Path(".")
    logs_dir: Path = Path(".")
    ready_timeout: float = 60.0

    def identifiers(self) -> str:
        pairs = [("ipv4", a) for a in self.addresses] + [("host", h) for h in self.hostnames]
        if self.default_route:
            pairs.append(("default-route", "true"))
        return urlencode(pairs)

    def argv(self) -> list[str]:
        return [
            binary(self.cache_dir, "proxy-agent"),
            f"--proxy-server-host={self.server_host}", f"--proxy-server-port={self.server_port}",
            f"--ca-cert={self.ca_cert}", f"--agent-cert={self.cert_file}", f"--agent-key={self.key_file}",
            f"--agent-identifiers={self.identifiers()}",
            f"--health-server-host=127.0.0.1", f"--health-server-port={self.health_port}",
            "--admin-bind-address=127.0.0.1", f"--admin-server-port={self.admin_port}",
            f"--sync-interval={SYNC_INTERVAL}", f"--sync-interval-cap={SYNC_CAP}", "--sync-forever=true",
            f"--keepalive-time={KEEPALIVE}", "--v=1",
        ]


def agent_daemon(spec: AgentSpec) -> procs.Daemon:
    """proxy-agent as a supervised localenv daemon; ready once it is connected to the server
    (its /readyz)."""
    argv = spec.argv()
    return procs.Daemon(
        name=spec.name,
        argv=supervised(spec.name, argv),
        run_dir=spec.run_dir,
        logs_dir=spec.logs_dir,
        inputs=(spec.ca_cert, spec.cert_file, spec.key_file),
        ready=lambda: probes.ok(f"http://127.0.0.1:{spec.health_port}/readyz"),
        ready_timeout=spec.ready_timeout,
        stop_timeout=10.0,
        ports=(spec.health_port, spec.admin_port),
    )


def node_agent_daemon(ctx: Context) -> procs.Daemon:
    """The real node's agent: on this host, as the kubelet (its client certificate), for the
    node's address and, as the default route, every address no desktop announced."""
    s, p = ctx.settings, ctx.paths
    return agent_daemon(AgentSpec(
        name=NODE_AGENT_NAME, server_host="127.0.0.1", server_port=s.ports.konnectivity, ca_cert=p.ca_cert,
        cert_file=p.pki_dir / "kubelet-client.crt", key_file=p.pki_dir / "kubelet-client.key",
        addresses=(ctx.node_ip,), hostnames=(s.node_name,), default_route=True,
        health_port=s.ports.konnectivity_node_agent_health, admin_port=s.ports.konnectivity_node_agent_admin,
        cache_dir=p.cache_dir, run_dir=p.run_dir, logs_dir=p.logs_dir, ready_timeout=s.ready_timeout,
    ))


def child_pid(supervisor_pid: int) -> int | None:
    """The program a supervisor runs now (tests kill it to see the tunnel heal)."""
    try:
        children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None
