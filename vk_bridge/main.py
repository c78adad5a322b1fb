"""`kod-vk`: run the virtual kubelet (the desktop as a node of the cluster).

`main` parses flags, loads the settings once and runs `serve`, which wires the parts together and
runs each long-running loop as its own task: the Lease, the node status, the API's pod watch,
InterLink's status stream, the pod workers, the Services cache, the live volumes and the rotation
of the node's client certificate. vk_bridge talks to the API server as its node (`system:node:<node>`, see
vk_bridge/identity.py) when a bootstrap is configured, else with `kube.kubeconfig`'s credentials
as they are (with a warning when those are not the node's). SIGTERM/SIGINT set the stop
event; the tasks are cancelled with a timeout, the node is marked NotReady, and the servers and
clients are closed in `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from kod import __version__, errors
from kod.kube import KubeClient
from kod.kube_config import Connection, load_connection
from kod.kube_watch import ObjectCache
from kod.log import configure, get_logger
from kod.service import stop_on_signals
from kod.settings import load_settings
from kod.tokens import resolve_token
from vk_bridge.admission import Admission, NodeFacts as AdmissionFacts
from vk_bridge.certs import ServingCert, client_ca_pem, obtain_serving_cert, server_ssl_context
from vk_bridge.events import EventRecorder
from vk_bridge.identity import SELF_REVIEW, SELF_REVIEW_PATH, NodeIdentity, bootstrap_connection, node_user
from vk_bridge.kubelet_api import Authenticator, create_app, start_server
from vk_bridge.lease import LeaseRenewer
from vk_bridge.live_volumes import LiveVolumes, running_pods
from vk_bridge.node import NodeController, check_ownership, detect_address
from vk_bridge.pods import PodController
from vk_bridge.provider import InterLinkProvider, Provider, VolumeUpdates
from vk_bridge.references import KubeReferences
from vk_bridge.resolve import NodeFacts, Resolver
from vk_bridge.settings import DEFAULT_CONFIG, ENV_PREFIX, VkSettings
from vk_bridge.token_manager import TokenManager

log = get_logger(__name__)
T = TypeVar("T")


#: Delays between attempts of a start-up step whose dependency is not there yet (the API server
#: starting, RBAC not bootstrapped yet); the last one repeats.
STARTUP_BACKOFF = (1.0, 2.0, 5.0, 10.0)
#: Start-up failures that waiting cannot fix: bad settings, a bootstrap token the cluster refuses
#: (or one that may not bootstrap), a Node of this name that is not this desktop's.
FATAL_IDENTITY: tuple[type[errors.KodError], ...] = (errors.InvalidInput, errors.Unauthorized, errors.Forbidden)
FATAL_NODE: tuple[type[errors.KodError], ...] = (errors.InvalidInput, errors.Conflict)


async def until_done(
    what: str, step: Callable[[], Awaitable[T]], *, fatal: tuple[type[errors.KodError], ...] = (errors.InvalidInput,),
) -> T:
    """Run a start-up step until it succeeds: a daemon waits for what it needs instead of dying.
    Errors of the `fatal` kinds (bad settings, by default) still stop it at once."""
    attempt = 0
    while True:
        try:
            return await step()
        except fatal:
            raise
        except errors.KodError as exc:
            delay = STARTUP_BACKOFF[min(attempt, len(STARTUP_BACKOFF) - 1)]
            attempt += 1
            log.warning("start-up step failed, retrying", step=what, attempt=attempt, delay=delay, error=str(exc))
            await asyncio.sleep(delay)


class VirtualKubelet:
    """The running parts, for tests that want to look inside (`serve` builds one)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.node: NodeController | None = None
        self.pods: PodController | None = None
        self.kube: KubeClient | None = None
        self.kubelet_port: int | None = None
        self.identity: NodeIdentity | None = None
        self.auth: Authenticator | None = None


async def serve(
    settings: VkSettings,
    *,
    token: str | None,
    stop: asyncio.Event,
    provider: Provider | None = None,
    state: VirtualKubelet | None = None,
) -> None:
    """Run until `stop` is set (or a task fails)."""
    state = state or VirtualKubelet()
    identity: NodeIdentity | None = None
    if settings.identity.bootstraps:
        identity = NodeIdentity(
            settings.identity, settings.node.name, bootstrap_connection(settings.identity),
            backoff=settings.kube.backoff, request_timeout=settings.kube.request_timeout_seconds,
        )
        state.identity = identity
        conn: Connection = await until_done("node identity", identity.establish, fatal=FATAL_IDENTITY)
    else:
        conn = load_connection(
            settings.kube.kubeconfig, settings.kube.context,
            hint="set kube.kubeconfig (KOD_VK_KUBE__KUBECONFIG) to a valid kubeconfig",
        )
    kube = KubeClient(conn, backoff=settings.kube.backoff, timeout=settings.kube.request_timeout_seconds, user_agent="kod-vk")
    state.kube = kube
    provider = provider or InterLinkProvider(
        settings.interlink.url, token, timeout=settings.interlink.timeout_seconds, backoff=settings.interlink.backoff
    )
    runner = None
    tasks: list[asyncio.Task[None]] = []
    node: NodeController | None = None
    pods: PodController | None = None
    events = EventRecorder(kube, settings.node.name)
    try:
        version = (await until_done("API server version", lambda: kube.get("/version")) or {}).get("gitVersion", "v0.0.0")
        if identity is None:
            await _warn_unless_node(kube, settings.node.name)
        # Before anything is asked for in the node's name: never take over someone else's Node.
        await until_done("node ownership", lambda: check_ownership(kube, settings.node), fatal=FATAL_NODE)
        address = settings.node.address or detect_address(conn.host)
        # The node's own names and address only: what an approver can check (no loopback, which
        # would name every machine).
        dns = [settings.node.hostname, settings.node.name]
        ips = [address]
        api = settings.kubelet_api
        if api.cert_file and api.key_file:
            cert = ServingCert(api.cert_file.expanduser(), api.key_file.expanduser())
        else:
            cert = await until_done("kubelet serving certificate", lambda: obtain_serving_cert(
                kube, node_name=settings.node.name, dns_names=dns, ips=ips, cert_dir=api.cert_dir,
                timeout=api.csr_timeout_seconds, ca_pem=conn.ca_pem,
            ))
        client_ca = await until_done("client CA", lambda: client_ca_pem(kube, api.client_ca_file))
        ssl_ctx = server_ssl_context(cert, client_ca)
        auth = Authenticator(
            kube, settings.node.name, token_ttl=api.token_cache_seconds, token_failure_ttl=api.token_failure_cache_seconds,
            allowed_ttl=api.authz_allowed_cache_seconds, denied_ttl=api.authz_denied_cache_seconds,
            reviews_per_second=api.token_reviews_per_second, burst=api.token_review_burst,
        )
        state.auth = auth
        runner, port = await start_server(create_app(provider=provider, kube=kube, auth=auth), api.host, api.port, ssl_ctx)
        state.kubelet_port = port
        log.info("kubelet API listening", host=api.host, port=port)

        node = NodeController(
            kube, provider, settings.node, address=address, kubelet_port=port, kubelet_version=f"{version}+kod.{__version__}"
        )
        state.node = node
        await until_done("node registration", node.register, fatal=FATAL_NODE)
        lease = LeaseRenewer(
            kube, settings.node.name, duration_seconds=settings.node.lease_duration_seconds,
            renew_seconds=settings.node.lease_renew_seconds,
        )
        lease.node_uid = node.uid

        services = ObjectCache()
        refs = KubeReferences(kube, services)
        refs.tokens = TokenManager(
            refs.request_token, refresh_fraction=settings.volumes.token_refresh_fraction,
            max_age_seconds=settings.volumes.token_max_age_seconds,
        )
        resolver = Resolver(
            refs,
            NodeFacts(name=settings.node.name, host_ips=node.host_ips, allocatable=node.allocatable),
            enable_service_links_default=settings.pods.enable_service_links,
        )
        registered = node

        def node_facts() -> AdmissionFacts:
            # The Node as last written (taints and labels others added too), and the allocatable
            # it advertises now.
            seen = registered.last_seen or {"metadata": {"name": settings.node.name}}
            return AdmissionFacts.of(seen, allocatable=registered.allocatable)

        admission = Admission(settings.admission, node_name=settings.node.name, node_user=settings.node.user, node=node_facts)
        log.info("admission", owner_namespace=admission.owner_namespace, allow=settings.admission.allow)
        pods = PodController(
            kube, provider, resolver, events, node_name=settings.node.name, host_ips=node.host_ips,
            settings=settings.pods, admission=admission, watch_timeout_seconds=settings.kube.watch_timeout_seconds,
        )
        state.pods = pods
        loops = {
            "lease": lease.run(),
            "node-status": node.run(),
            "services": services.run(kube, "/api/v1/services", timeout_seconds=settings.kube.watch_timeout_seconds),
            "pod-watch": pods.run_api_watch(),
            "interlink-watch": pods.run_remote_watch(),
            "pod-workers": pods.run_workers(),
        }
        if isinstance(provider, VolumeUpdates):  # an optional extra of a provider
            loops["live-volumes"] = LiveVolumes(
                kube, provider, resolver, refs, refs.tokens, running=lambda: running_pods(pods.pods, pods.remote),
                known=lambda: pods.pods.keys(), resync_seconds=settings.volumes.resync_seconds,
                watch_timeout_seconds=settings.kube.watch_timeout_seconds,
            ).run()
        if identity is not None:
            loops["client-certificate"] = identity.run(kube)
        tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        ready = asyncio.create_task(_announce_ready(lease, pods, state), name="ready")
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stopper.cancel()
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                raise errors.Internal(f"{task.get_name()} stopped: {task.exception()!r}") from task.exception()
    finally:
        await _shutdown(tasks, settings.shutdown_timeout_seconds)
        if node is not None and node.registered.is_set():
            await node.mark_not_ready("kod-vk stopped")
        if pods is not None:
            await pods.drain(timeout=2.0)
        await events.drain()
        if runner is not None:
            await runner.cleanup()
        await provider.close()
        await kube.close()
        state.stopped.set()
        log.info("stopped")


async def _warn_unless_node(kube: KubeClient, node_name: str) -> None:
    """Credentials given as they are (kube.kubeconfig) may be anyone's: say so when they are not
    the node's own, since they then reach whatever that identity may."""
    try:
        review = await kube.create(SELF_REVIEW_PATH, SELF_REVIEW)
    except errors.KodError as exc:
        log.warning("could not ask the API server who vk_bridge is", error=str(exc))
        return
    user = (((review or {}).get("status") or {}).get("userInfo") or {}).get("username", "")
    if user != node_user(node_name):
        log.warning(
            "vk_bridge does not authenticate as its node: it can do whatever this identity may, not only what "
            "a kubelet of this node may", user=user, expected=node_user(node_name),
            hint="set identity.bootstrap_kubeconfig and leave kube.kubeconfig unset (docs/security.md)",
        )


async def _announce_ready(lease: LeaseRenewer, pods: PodController, state: VirtualKubelet) -> None:
    await lease.ready.wait()
    await pods.ready.wait()
    state.started.set()
    log.info("virtual kubelet ready", pods=len(pods.pods))


async def _shutdown(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.warning("task did not stop in time", task=task.get_name())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kod-vk",
        description="The desktop's virtual kubelet: registers this machine as a node of a Kubernetes "
        "cluster and runs the pods bound to it through InterLink (in the local Docker engine).",
        epilog=f"Settings: defaults < the config file (TOML) < {ENV_PREFIX}* environment variables "
        f"(e.g. {ENV_PREFIX}NODE__NAME, {ENV_PREFIX}INTERLINK__URL, {ENV_PREFIX}INTERLINK__TOKEN_FILE) < flags. "
        "See docs/virtual-node.md.",
    )
    parser.add_argument("--config", default=os.environ.get(f"{ENV_PREFIX}CONFIG", DEFAULT_CONFIG),
                        help=f"settings file (TOML); default {DEFAULT_CONFIG} (or ${ENV_PREFIX}CONFIG)")
    parser.add_argument("--node-name", help="node name (default desktop-<hostname>)")
    parser.add_argument("--interlink-url", help="InterLink URL, http://host:port or unix:///path (default http://127.0.0.1:3000)")
    parser.add_argument("--interlink-token-file", type=Path, help="file holding InterLink's bearer token")
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster, else ~/.kube/config)")
    parser.add_argument("--kubelet-port", type=int, help="port of the kubelet HTTPS API (default 10260; 0 = any free port)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level (default info)")
    parser.add_argument("--version", action="version", version=f"kod-vk {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `kod-vk`."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, object] = {
        "node": {k: v for k, v in {"name": args.node_name}.items() if v is not None},
        "interlink": {k: v for k, v in {"url": args.interlink_url, "token_file": args.interlink_token_file}.items() if v is not None},
        "kube": {k: v for k, v in {"kubeconfig": args.kubeconfig}.items() if v is not None},
        "kubelet_api": {k: v for k, v in {"port": args.kubelet_port}.items() if v is not None},
        "log_level": args.log_level,
    }
    try:
        settings = load_settings(VkSettings, args.config, env_prefix=ENV_PREFIX, overrides=overrides)
    except errors.KodError as exc:
        print(f"kod-vk: {exc}", file=sys.stderr)
        return 2
    if not settings.node.user:
        settings.node.user = os.environ.get("USER") or getpass.getuser()
    configure(level=settings.log_level, component="kod-vk")
    try:
        # Refused when others can read it; its group only when the settings say so (in the
        # cluster: a Secret volume, group-readable by the pod's fsGroup).
        token_file = settings.interlink.token_file
        token = resolve_token(None, token_file.expanduser() if token_file else None,
                              allow_group=settings.interlink.token_file_group_readable)
        return asyncio.run(_run(settings, token))
    except errors.KodError as exc:
        log.error("kod-vk failed", error=str(exc))
        print(f"kod-vk: {exc}", file=sys.stderr)
        return 1


async def _run(settings: VkSettings, token: str | None) -> int:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await serve(settings, token=token, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
