"""etcd: one member on 127.0.0.1, TLS for clients and peers, client certificates required
(issued by the etcd CA, which only the API server's etcd client certificate comes from)."""

from __future__ import annotations

from localenv import procs
from localenv.k8s import probes
from localenv.k8s.context import Context


def daemon(ctx: Context) -> procs.Daemon:
    p, ports = ctx.paths, ctx.settings.ports
    pki = p.pki_dir
    client_url = f"https://127.0.0.1:{ports.etcd_client}"
    peer_url = f"https://127.0.0.1:{ports.etcd_peer}"
    metrics_url = f"http://127.0.0.1:{ports.etcd_metrics}"
    argv = (
        str(p.etcd_bin / "etcd"),
        "--name=kod",
        f"--data-dir={p.etcd_data}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=kod={peer_url}",
        f"--listen-metrics-urls={metrics_url}",
        f"--cert-file={pki / 'etcd-server.crt'}",
        f"--key-file={pki / 'etcd-server.key'}",
        "--client-cert-auth=true",
        f"--trusted-ca-file={pki / 'etcd-ca.crt'}",
        f"--peer-cert-file={pki / 'etcd-peer.crt'}",
        f"--peer-key-file={pki / 'etcd-peer.key'}",
        "--peer-client-cert-auth=true",
        f"--peer-trusted-ca-file={pki / 'etcd-ca.crt'}",
        "--log-level=warn",
    )
    return procs.Daemon(
        name="etcd",
        argv=argv,
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        inputs=(pki / "etcd-server.crt", pki / "etcd-peer.crt", pki / "etcd-ca.crt"),
        ready=lambda: probes.ok(f"{metrics_url}/health"),
        ready_timeout=ctx.settings.ready_timeout,
        ports=(ports.etcd_client, ports.etcd_peer, ports.etcd_metrics),
    )
