"""vk_bridge's identity to the API server: `system:node:<node>` in `system:nodes`, as a kubelet.

    bootstrap = bootstrap_connection(settings.identity)           # server, CA, bootstrap token
    identity = NodeIdentity(settings.identity, node_name, bootstrap)
    conn = await identity.establish()                              # the node's own credentials
    kube = KubeClient(conn)
    await identity.run(kube)                                       # rotation, forever

The kubelet's TLS bootstrap, step by step:

1. At start, a client certificate in `cert_dir` (`kubelet-client-current.pem`: key and certificate
   in one 0600 file, so they are always replaced together) is used when it is this node's
   (CN `system:node:<node>`, O `system:nodes`), has not expired, and the API server still accepts
   it as this node (a SelfSubjectReview: a re-created cluster has a new CA).
2. Otherwise vk_bridge makes a new ECDSA P-256 key and a CSR (signer
   `kubernetes.io/kube-apiserver-client-kubelet`, usages digital signature + client auth, no SANs,
   `spec.expirationSeconds` from the settings) authenticated by the bootstrap token, and waits
   until the controller-manager approves it (the token's group may create
   `certificatesigningrequests/nodeclient`) and signs it.
3. From then on every request carries that certificate: the Node authorizer and NodeRestriction
   confine vk_bridge to its own Node, Lease and pods and to the Secrets, ConfigMaps and
   ServiceAccount tokens of those pods. The bootstrap token is no longer needed.
4. At a random point in 70-90 % of the certificate's lifetime (as the kubelet: many nodes do not
   renew at once) a new key and CSR, authenticated by the current certificate (auto-approved as
   `selfnodeclient`), replace it: the file first, then the running client
   (`KubeClient.swap_connection`: new requests at once, old connections drained). Until the new
   one is issued the old one serves; a failed renewal is retried with backoff, and once the old
   one has expired the bootstrap token is tried instead.

Errors say what to do: a rejected bootstrap token is `Unauthorized` with "run `python -m localenv
up` or ask your cluster admin for a new token"; a token without the bootstrap RBAC is `Forbidden`;
a CSR nobody approves is `Unavailable` naming it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kod import errors
from kod.files import write_private
from kod.kube import KubeClient
from kod.kube_config import Connection, load_connection, with_client_certificate
from kod.log import get_logger
from vk_bridge.certs import CSR_PATH, key_pem, make_key, wait_for_certificate
from vk_bridge.settings import IdentitySettings

log = get_logger(__name__)

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
NODES_GROUP = "system:nodes"
#: Key and certificate, in one file (the kubelet's name for it).
CLIENT_FILE = "kubelet-client-current.pem"
#: A kubeconfig that uses CLIENT_FILE: `kubectl --kubeconfig <cert_dir>/kubeconfig auth whoami`.
KUBECONFIG_FILE = "kubeconfig"
#: A stored certificate with less than this left is not worth starting with.
MIN_REMAINING = timedelta(seconds=60)
#: Delays between failed renewals (the last one repeats).
RENEW_BACKOFF: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Longest sleep before the wall clock is looked at again (a desktop that was suspended wakes
#: up past its deadline; a monotonic sleep alone would not notice).
MAX_SLEEP_SECONDS = 60.0
SELF_REVIEW_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SELF_REVIEW = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
#: What to do when the bootstrap token no longer works.
TOKEN_HINT = (
    "run `python -m localenv up` (it makes a new one) or ask your cluster admin for a new bootstrap token "
    "(docs/security.md, \"Joining a cluster\")"
)


def node_user(node_name: str) -> str:
    """The user name the Node authorizer recognises for `node_name`."""
    return f"system:node:{node_name}"


@dataclass(frozen=True)
class ClientCert:
    """A client certificate with its key, as stored (PEM)."""

    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate

    @property
    def not_before(self) -> datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")

    def rotation_deadline(self, fraction: tuple[float, float], rand: Callable[[], float] = random.random) -> datetime:
        """When to ask for the next one: notBefore + lifetime * a random fraction in `fraction`."""
        lo, hi = fraction
        return self.not_before + (self.not_after - self.not_before) * (lo + (hi - lo) * rand())


def parse_client_pem(data: bytes) -> ClientCert:
    """Key and certificate from one PEM file; ValueError when either is missing or they do not
    belong together."""
    cert = x509.load_pem_x509_certificate(data)
    key = serialization.load_pem_private_key(data, password=None)
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError("the key does not belong to the certificate")
    key_only = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ClientCert(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_only, cert=cert)


def unusable_because(cert: ClientCert, node_name: str, now: datetime) -> str | None:
    """Why a stored certificate cannot be this node's identity now, or None when it may (whether
    the API server accepts it is asked separately: its client CA need not be the CA in the
    kubeconfig)."""
    subject = cert.cert.subject
    cn = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if cn != [node_user(node_name)] or orgs != [NODES_GROUP]:
        return f"it is for {', '.join(map(str, cn)) or 'nobody'} ({', '.join(map(str, orgs)) or 'no group'}), not {node_user(node_name)}"
    if cert.not_after - MIN_REMAINING <= now:
        return f"it expired (or expires within a minute) at {cert.not_after.isoformat()}"
    if cert.not_before > now + timedelta(minutes=5):
        return f"it is valid only from {cert.not_before.isoformat()} (is the clock right?)"
    return None


def client_csr(key: ec.EllipticCurvePrivateKey, node_name: str) -> bytes:
    """A PKCS#10 request the kube-apiserver-client-kubelet signer and the csrapproving controller
    accept: subject only, no SANs."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODES_GROUP),
            x509.NameAttribute(NameOID.COMMON_NAME, node_user(node_name)),
        ]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def client_csr_object(node_name: str, csr_pem: bytes, expiration_seconds: int | None) -> dict[str, Any]:
    """The CertificateSigningRequest (named by the API server from `generateName`)."""
    spec: dict[str, Any] = {
        "request": base64.b64encode(csr_pem).decode(),
        "signerName": CLIENT_SIGNER,
        # ECDSA: no key encipherment (the signer accepts exactly these two, or these plus it for RSA).
        "usages": ["digital signature", "client auth"],
    }
    if expiration_seconds is not None:
        spec["expirationSeconds"] = expiration_seconds
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": f"kod-vk-client-{node_name}-"[:200], "labels": {"kod.io/managed-by": "kod-vk"}},
        "spec": spec,
    }


async def request_client_cert(
    kube: KubeClient, node_name: str, *, expiration_seconds: int | None, timeout: float, purpose: str,
) -> ClientCert:
    """Ask the cluster for a client certificate for `node_name`, with a fresh key, through `kube`
    (a bootstrap token or the current certificate). `purpose` names it in the log."""
    key = make_key()
    created = await kube.create(CSR_PATH, client_csr_object(node_name, client_csr(key, node_name), expiration_seconds))
    name = str(((created or {}).get("metadata") or {}).get("name") or "")
    if not name:
        raise errors.Internal("the API server created a CertificateSigningRequest without a name")
    log.info("waiting for the node's client certificate", csr=name, purpose=purpose)
    pem = await wait_for_certificate(
        kube, name, timeout,
        hint=f"the cluster auto-approves node client CSRs only for bootstrap tokens whose group may create "
        f"certificatesigningrequests/nodeclient (kustomizations/base); else an admin runs `kubectl certificate approve {name}`",
    )
    try:
        issued = parse_client_pem(pem + key_pem(key))
    except ValueError as exc:
        raise errors.Internal(f"CertificateSigningRequest {name} returned an unusable certificate: {exc}") from exc
    log.info("node client certificate issued", csr=name, purpose=purpose, serial=issued.serial,
             valid_until=issued.not_after.isoformat())
    return issued


def bootstrap_connection(settings: IdentitySettings) -> Connection:
    """Where the API server is and the bootstrap token, from `bootstrap_kubeconfig` or, in a pod,
    `bootstrap_token_dir` (InvalidInput naming the file when it cannot be read)."""
    if settings.bootstrap_kubeconfig is not None:
        return load_connection(
            settings.bootstrap_kubeconfig.expanduser(), in_cluster=False,
            hint="set identity.bootstrap_kubeconfig (KOD_VK_IDENTITY__BOOTSTRAP_KUBECONFIG) to a bootstrap kubeconfig",
        )
    if settings.bootstrap_token_dir is not None:
        return load_connection(
            None, in_cluster=True, service_account_dir=settings.bootstrap_token_dir.expanduser(),
            hint="mount the bootstrap token (`token`) and the cluster CA (`ca.crt`) at identity.bootstrap_token_dir",
        )
    raise errors.InvalidInput("no identity bootstrap is configured",
                              hint="set identity.bootstrap_kubeconfig or identity.bootstrap_token_dir")


class NodeIdentity:
    """Keeps this node's client certificate: loads or bootstraps it (`establish`), then renews it
    before it expires (`run`). `current` is the certificate in use."""

    def __init__(
        self, settings: IdentitySettings, node_name: str, bootstrap: Connection, *,
        backoff: Sequence[float] = (), request_timeout: float = 30.0,
        rand: Callable[[], float] = random.random, now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.bootstrap = bootstrap
        self.backoff = tuple(backoff)
        self.request_timeout = request_timeout
        self.rand = rand
        self.now = now
        self.cert_dir = settings.cert_dir.expanduser()
        self.cert_file = self.cert_dir / CLIENT_FILE
        self.current: ClientCert | None = None
        #: Certificates obtained by rotation so far.
        self.rotations = 0
        self._deadline: datetime | None = None

    # -- files ----------------------------------------------------------------------------------

    def load(self) -> ClientCert | None:
        """The stored certificate when it can serve as this node's identity now (the reason it
        cannot is logged)."""
        try:
            cert = parse_client_pem(self.cert_file.read_bytes())
        except FileNotFoundError:
            log.info("no client certificate yet: bootstrapping", node=self.node_name, path=str(self.cert_file))
            return None
        except (OSError, ValueError) as exc:
            log.warning("stored client certificate unreadable: bootstrapping again", path=str(self.cert_file), error=str(exc))
            return None
        reason = unusable_because(cert, self.node_name, self.now())
        if reason:
            log.warning("stored client certificate not usable: bootstrapping again", path=str(self.cert_file), reason=reason)
            return None
        return cert

    def store(self, cert: ClientCert) -> None:
        """Key and certificate in one private file (atomically), and a kubeconfig that uses it."""
        write_private(self.cert_file, cert.key_pem + cert.cert_pem)
        cluster: dict[str, Any] = {"server": self.bootstrap.host}
        if self.bootstrap.ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(self.bootstrap.ca_pem).decode()
        user = node_user(self.node_name)
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": user, "user": {"client-certificate": CLIENT_FILE, "client-key": CLIENT_FILE}}],
            "contexts": [{"name": self.node_name, "context": {"cluster": "cluster", "user": user}}],
            "current-context": self.node_name,
        }
        write_private(self.cert_dir / KUBECONFIG_FILE, json.dumps(config, indent=2) + "\n", unchanged_ok=True)

    def connection(self) -> Connection:
        """The API server, authenticated by the current certificate."""
        assert self.current is not None, "establish() first"
        return with_client_certificate(self.bootstrap, self.current.cert_pem, self.current.key_pem)

    # -- bootstrap ------------------------------------------------------------------------------

    async def establish(self) -> Connection:
        """The node's own credentials: the stored certificate, or a new one through the
        bootstrap token. Raises Unauthorized/Forbidden (with what to do) when the token cannot
        bootstrap, Unavailable when the API server does not answer or nobody approves."""
        cert = self.load()
        if cert is not None and not await self._accepted(cert):
            cert = None
        if cert is None:
            cert = await self._bootstrap()
            self.store(cert)
        else:
            self.store(cert)  # the kubeconfig beside it may be missing or point at an old server
        self._use(cert)
        log.info("authenticating as the node", user=node_user(self.node_name), serial=cert.serial,
                 valid_until=cert.not_after.isoformat(), renew_at=self._deadline.isoformat() if self._deadline else None)
        return self.connection()

    async def _accepted(self, cert: ClientCert) -> bool:
        """Whether the API server authenticates `cert` as this node (SelfSubjectReview)."""
        conn = with_client_certificate(self.bootstrap, cert.cert_pem, cert.key_pem)
        async with KubeClient(conn, backoff=self.backoff, timeout=self.request_timeout, user_agent="kod-vk") as probe:
            try:
                review = await probe.create(SELF_REVIEW_PATH, SELF_REVIEW)
            except errors.Unauthorized:
                log.warning("the API server no longer accepts the stored client certificate (a re-created "
                            "cluster?): bootstrapping again", path=str(self.cert_file))
                return False
        user = (((review or {}).get("status") or {}).get("userInfo") or {}).get("username")
        if user != node_user(self.node_name):
            log.warning("the stored client certificate authenticates as someone else: bootstrapping again",
                        user=user, expected=node_user(self.node_name))
            return False
        return True

    async def _bootstrap(self) -> ClientCert:
        if self.bootstrap.authorization() is None:
            raise errors.InvalidInput(
                f"no usable client certificate in {self.cert_dir} and no bootstrap token to get one", hint=TOKEN_HINT,
            )
        async with KubeClient(self.bootstrap, backoff=self.backoff, timeout=self.request_timeout, user_agent="kod-vk-bootstrap") as boot:
            try:
                return await request_client_cert(
                    boot, self.node_name, expiration_seconds=self.settings.certificate_seconds,
                    timeout=self.settings.csr_timeout_seconds, purpose="bootstrap",
                )
            except errors.Unauthorized as exc:
                raise errors.Unauthorized(
                    f"bootstrap token expired or unknown: the API server at {self.bootstrap.host} refused it "
                    f"({exc.message})", hint=TOKEN_HINT,
                ) from exc
            except errors.Forbidden as exc:
                raise errors.Forbidden(
                    f"the bootstrap token may not ask for a node certificate: {exc.message}",
                    hint="its group (auth-extra-groups) needs the system:node-bootstrapper ClusterRole, and "
                    "certificatesigningrequests/nodeclient for auto-approval: `kubectl apply -k kustomizations/` "
                    "or the commands in docs/security.md",
                ) from exc

    def _use(self, cert: ClientCert) -> None:
        self.current = cert
        self._deadline = cert.rotation_deadline(self.settings.rotation_fraction, self.rand)

    # -- rotation -------------------------------------------------------------------------------

    async def run(self, kube: KubeClient) -> None:
        """Renew the certificate before it expires, forever; `kube` (which uses it) is switched
        to each new one. Never raises (but CancelledError)."""
        failures = 0
        while True:
            await self._sleep_until(self._deadline or self.now())
            old = self.current
            assert old is not None
            try:
                new = await self._renew(kube, old)
            except errors.KodError as exc:
                delay = RENEW_BACKOFF[min(failures, len(RENEW_BACKOFF) - 1)]
                failures += 1
                left = (old.not_after - self.now()).total_seconds()
                level = log.error if left <= 0 else log.warning
                level("client certificate renewal failed; the current one still serves" if left > 0
                      else "client certificate expired and no new one could be obtained",
                      attempt=failures, retry_in=delay, expires_in_seconds=round(left), error=str(exc))
                self._deadline = self.now() + timedelta(seconds=delay)
                continue
            failures = 0
            self.store(new)
            self._use(new)
            drain = max(1.0, min(30.0, (old.not_after - self.now()).total_seconds() / 2))
            kube.swap_connection(self.connection(), drain_seconds=drain)
            log.info("client certificate rotated", old_serial=old.serial, serial=new.serial,
                     valid_until=new.not_after.isoformat(), renew_at=self._deadline.isoformat() if self._deadline else None)
            self.rotations += 1

    async def _renew(self, kube: KubeClient, old: ClientCert) -> ClientCert:
        """A new certificate, asked for with the current one; once that has expired, with the
        bootstrap token."""
        if old.not_after > self.now():
            return await request_client_cert(
                kube, self.node_name, expiration_seconds=self.settings.certificate_seconds,
                timeout=self.settings.csr_timeout_seconds, purpose="rotation",
            )
        return await self._bootstrap()

    async def _sleep_until(self, when: datetime) -> None:
        while True:
            left = (when - self.now()).total_seconds()
            if left <= 0:
                return
            await asyncio.sleep(min(left, MAX_SLEEP_SECONDS))
