"""Where the Kubernetes API server is and how to authenticate to it: one `Connection`, from a
kubeconfig or from the in-cluster service account.

    conn = load_connection(Path("~/.kube/config").expanduser(), context=None)
    conn = load_connection(None)          # in a pod: the service account; elsewhere ~/.kube/config

What is read directly (fast: a YAML parse, no import of the `kubernetes` package, ~40 ms instead
of ~250 ms): the server, its CA (`certificate-authority` or `-data`), `insecure-skip-tls-verify`,
client certificates (file or `-data`), `token` and `tokenFile`. What only the `kubernetes` package
understands (`exec` credential plugins, `auth-provider`) goes through it, and only then. The
in-cluster service account is read directly too: `KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted
CA, and the token file, re-read on every request because the kubelet rotates it. A kubeconfig's
`tokenFile` is re-read per request the same way.

Every failure to load is `InvalidInput` naming the file and what is wrong with it; the caller
may add its own `hint` (the setting that names the file).
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kod import errors
from kod.files import create_private

#: Where a pod's service account is mounted.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")


def _no_authorization() -> str | None:
    return None


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate to it. Immutable; one per process."""

    #: https://host:port (or http:// for a test server), without a trailing slash.
    host: str
    #: Verifies the server and presents the client certificate; None for plain http.
    ssl_context: ssl.SSLContext | None = None
    #: Returns the Authorization header value ("Bearer ..."), or None. Called per request, so a
    #: rotated token (service account, tokenFile, an exec plugin's refresh) is picked up.
    authorization: Callable[[], str | None] = field(default=_no_authorization, compare=False)
    #: The CA bundle (PEM) that verifies the API server; in most clusters also the CA that issues
    #: the kubelet's serving certificate. None when the system's CAs are used.
    ca_pem: bytes | None = field(default=None, repr=False)
    #: The kubeconfig context used (None in-cluster) and its default namespace.
    context: str | None = None
    namespace: str | None = None


def load_connection(
    kubeconfig: Path | None = None, context: str | None = None, *, in_cluster: bool | None = None,
    hint: str | None = None, environ: Mapping[str, str] | None = None, service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> Connection:
    """The connection a kubeconfig (its `context`, default the current one) or the in-cluster
    service account describes. `in_cluster=None`: in-cluster when no kubeconfig is given and a
    service account token is mounted, else `~/.kube/config`. `hint` is added to load errors.
    In-cluster, the variables are read from `environ` (default `os.environ`) and the account
    from `service_account_dir`."""
    env = os.environ if environ is None else environ
    if in_cluster is None:
        in_cluster = kubeconfig is None and (service_account_dir / "token").exists()
    try:
        if in_cluster:
            return _in_cluster(env, service_account_dir)
        return _from_kubeconfig((kubeconfig or DEFAULT_KUBECONFIG).expanduser(), context)
    except errors.InvalidInput as exc:
        if hint and not exc.hint:
            exc.hint = hint
        raise


def _in_cluster(env: Mapping[str, str], sa_dir: Path) -> Connection:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise errors.InvalidInput(
            "in-cluster Kubernetes config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set"
        )
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    token_file = sa_dir / "token"
    ca = _read_file(sa_dir / "ca.crt", "the service account's CA")
    _read_file(token_file, "the service account token")  # fail now, not at the first request
    namespace = None
    if (sa_dir / "namespace").exists():
        namespace = (sa_dir / "namespace").read_text().strip() or None
    return Connection(
        host=f"https://{host}:{port}", ssl_context=_ssl_context(ca_pem=ca), authorization=_token_file(token_file),
        ca_pem=ca, namespace=namespace,
    )


def _from_kubeconfig(path: Path, context: str | None) -> Connection:
    import yaml  # a dependency of the kubernetes package

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise errors.InvalidInput(f"cannot read the kubeconfig {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise errors.InvalidInput(f"kubeconfig {path} is not a kubeconfig (a YAML mapping)")

    def by_name(section: str) -> dict[str, dict[str, Any]]:
        entries = doc.get(section) or []
        return {str(e.get("name")): e.get(section[:-1]) or {} for e in entries if isinstance(e, dict)}

    contexts, clusters, users = by_name("contexts"), by_name("clusters"), by_name("users")
    ctx_name = context or doc.get("current-context")
    if not ctx_name or ctx_name not in contexts:
        have = ", ".join(sorted(contexts)) or "none"
        raise errors.InvalidInput(f"kubeconfig {path} has no context {ctx_name!r} (it has: {have})")
    ctx = contexts[ctx_name]
    cluster, user = clusters.get(str(ctx.get("cluster")), {}), users.get(str(ctx.get("user")), {})
    if not cluster.get("server"):
        raise errors.InvalidInput(f"kubeconfig {path}: context {ctx_name!r} names no cluster with a server")
    if "exec" in user or "auth-provider" in user:
        return _with_kubernetes_package(path, ctx_name, ctx.get("namespace"))
    if "username" in user and "token" not in user and "tokenFile" not in user:
        raise errors.InvalidInput(
            f"kubeconfig {path}: user {ctx.get('user')!r} has a username and password; Kubernetes dropped "
            "basic authentication in 1.19: use a client certificate or a token"
        )
    base = path.parent
    authorization: Callable[[], str | None] = _no_authorization
    if user.get("token"):
        header = f"Bearer {user['token']}"
        authorization = lambda: header  # noqa: E731
    elif user.get("tokenFile"):
        token_file = (base / str(user["tokenFile"])).expanduser()
        _read_file(token_file, f"kubeconfig {path}'s tokenFile")
        authorization = _token_file(token_file)
    server = str(cluster["server"]).rstrip("/")
    ca = _data_or_file(cluster, "certificate-authority", base, path)
    cert = _data_or_file(user, "client-certificate", base, path)
    key = _data_or_file(user, "client-key", base, path)
    if bool(cert) != bool(key):
        raise errors.InvalidInput(f"kubeconfig {path}: user {ctx.get('user')!r} has a client certificate without its key, or a key without its certificate")
    ctx_ssl = None
    if server.startswith("https"):
        ctx_ssl = _ssl_context(ca_pem=ca, cert_pem=cert, key_pem=key, insecure=bool(cluster.get("insecure-skip-tls-verify")), where=str(path))
    return Connection(
        host=server, ssl_context=ctx_ssl, authorization=authorization, ca_pem=ca, context=ctx_name,
        namespace=ctx.get("namespace"),
    )


def _with_kubernetes_package(path: Path, context: str, namespace: str | None) -> Connection:
    """exec plugins and auth providers: the `kubernetes` package runs them (slow import, so only
    here). Its per-request hook refreshes an expired exec token."""
    from kubernetes import client as kclient
    from kubernetes import config as kconfig

    cfg = kclient.Configuration()
    try:
        kconfig.load_kube_config(config_file=str(path), context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (kconfig.ConfigException, OSError, ValueError) as exc:
        raise errors.InvalidInput(f"cannot load the credentials of kubeconfig {path}, context {context!r}: {exc}") from exc

    def authorization() -> str | None:
        # kubernetes>=30 stores the token under "BearerToken"; older releases under "authorization".
        value = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if value and not value.lower().startswith(("bearer ", "basic ")):
            value = f"Bearer {value}"
        return value or None

    ca = Path(cfg.ssl_ca_cert).read_bytes() if cfg.ssl_ca_cert else None
    ctx_ssl = None
    if cfg.host.startswith("https"):
        cert = Path(cfg.cert_file).read_bytes() if cfg.cert_file else None
        key = Path(cfg.key_file).read_bytes() if cfg.key_file else None
        ctx_ssl = _ssl_context(ca_pem=ca, cert_pem=cert, key_pem=key, insecure=not cfg.verify_ssl, where=str(path))
    return Connection(
        host=cfg.host.rstrip("/"), ssl_context=ctx_ssl, authorization=authorization, ca_pem=ca, context=context,
        namespace=namespace,
    )


def with_client_certificate(conn: Connection, cert_pem: bytes, key_pem: bytes) -> Connection:
    """`conn`'s server and CA, authenticated by a client certificate (PEM) instead of whatever
    `conn` carried (a bootstrap token): how a kubelet turns its bootstrap kubeconfig into its own
    identity. Raises InvalidInput for an unusable certificate or key."""
    insecure = conn.ssl_context is not None and conn.ssl_context.verify_mode == ssl.CERT_NONE
    ctx = _ssl_context(ca_pem=conn.ca_pem, cert_pem=cert_pem, key_pem=key_pem, insecure=insecure, where="client certificate")
    return Connection(host=conn.host, ssl_context=ctx, ca_pem=conn.ca_pem, context=conn.context, namespace=conn.namespace)


def _token_file(path: Path) -> Callable[[], str | None]:
    """An authorization that re-reads `path` on every call (the kubelet rotates projected service
    account tokens about hourly; the previous one stays valid a while, so a read error keeps the
    last token rather than failing the request)."""
    last: list[str] = []

    def authorization() -> str | None:
        try:
            token = path.read_text().strip()
        except OSError:
            token = last[0] if last else ""
        if token:
            last[:] = [token]
        return f"Bearer {token}" if token else None

    return authorization


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise errors.InvalidInput(f"cannot read {what} ({path}): {exc.strerror or exc}") from exc


def _data_or_file(entry: Mapping[str, Any], key: str, base: Path, kubeconfig: Path) -> bytes | None:
    """`<key>-data` (base64) or `<key>` (a file, relative to the kubeconfig)."""
    if entry.get(f"{key}-data"):
        try:
            return base64.b64decode(str(entry[f"{key}-data"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise errors.InvalidInput(f"kubeconfig {kubeconfig}: {key}-data is not base64: {exc}") from exc
    if entry.get(key):
        return _read_file((base / str(entry[key])).expanduser(), f"kubeconfig {kubeconfig}'s {key}")
    return None


def _ssl_context(
    *, ca_pem: bytes | None, cert_pem: bytes | None = None, key_pem: bytes | None = None, insecure: bool = False,
    where: str = "the service account",
) -> ssl.SSLContext:
    """Verify the server with `ca_pem` only (as client-go does; the system's CAs when there is
    none), present the client certificate."""
    try:
        ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace") if ca_pem else None)
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert_pem and key_pem:
            # load_cert_chain reads files only: a private directory that lives for this one call,
            # so the key is never left on disk.
            with tempfile.TemporaryDirectory(prefix="kod-tls-") as tmp:
                cert, key = Path(tmp, "client.crt"), Path(tmp, "client.key")
                create_private(cert, cert_pem)
                create_private(key, key_pem)
                ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise errors.InvalidInput(f"{where}: unusable TLS certificate or key: {exc}") from exc
    return ctx
