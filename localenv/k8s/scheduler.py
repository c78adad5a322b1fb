"""kube-scheduler: one instance, so no leader election."""

from __future__ import annotations

from localenv import procs
from localenv.k8s import probes
from localenv.k8s.context import Context


def daemon(ctx: Context) -> procs.Daemon:
    p, s = ctx.paths, ctx.settings
    pki = p.pki_dir
    kubeconfig = ctx.kubeconfig("scheduler")
    argv = (
        ctx.k8s_binary("kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={s.ports.scheduler}",
        f"--tls-cert-file={pki / 'scheduler-serving.crt'}",
        f"--tls-private-key-file={pki / 'scheduler-serving.key'}",
        f"--client-ca-file={p.ca_cert}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    )
    return procs.Daemon(
        name="kube-scheduler",
        argv=argv,
        run_dir=p.run_dir,
        logs_dir=p.logs_dir,
        inputs=(p.ca_cert, p.kubeconfig_dir / "scheduler.kubeconfig", pki / "scheduler-serving.crt"),
        ready=lambda: probes.ok(f"https://127.0.0.1:{s.ports.scheduler}/healthz", ca=p.ca_cert),
        ready_timeout=ctx.settings.ready_timeout,
        ports=(s.ports.scheduler,),
    )
