"""The kubelet API's serving certificate and the CA that authenticates its callers.

The API server verifies the kubelet's serving certificate against `--kubelet-certificate-authority`
(the cluster CA). vk_bridge gets one the way a kubelet does with `serverTLSBootstrap`: as its node
(`system:node:<node>`, vk_bridge/identity.py) it creates a CertificateSigningRequest for signer
`kubernetes.io/kubelet-serving` (subject `system:node:<node>`, organisation `system:nodes`, the
node's address and names as SANs), waits until someone approves it and the controller-manager
signs it, and keeps the result in `cert_dir` for the next start. Nothing approves serving CSRs
automatically (a certificate for an address is worth checking): `kubectl certificate approve
<name>` after checking requester, subject, SANs and key; the local stack does exactly that
(localenv.desktop_stack.approve_vk_csrs). Files given in the settings are used as they are.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kod import errors
from kod.files import write_private
from kod.kube import KubeClient
from kod.kube_watch import list_and_watch
from kod.log import get_logger

log = get_logger(__name__)

SIGNER = "kubernetes.io/kubelet-serving"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
#: A stored certificate this close to expiry (or with other SANs) is replaced at start.
RENEW_BEFORE = timedelta(days=7)


@dataclass(frozen=True)
class ServingCert:
    cert_file: Path
    key_file: Path


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_csr(key: ec.EllipticCurvePrivateKey, node_name: str, dns_names: list[str], ips: list[str]) -> bytes:
    """A PKCS#10 request the kubelet-serving signer accepts."""
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns_names) if d]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips) if i]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}"),
        ]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def cert_fits(
    cert_file: Path, key_file: Path, dns_names: list[str], ips: list[str], now: datetime | None = None,
    *, ca_pem: bytes | None = None,
) -> bool:
    """True when a stored certificate is valid for a while yet, names every wanted SAN, and (when
    the cluster's CA bundle `ca_pem` is given) was issued by that CA: a re-created cluster has a
    new CA, and the API server would refuse the old certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    if ca_pem is not None and not issued_by(cert, ca_pem):
        return False
    now = now or datetime.now(UTC)
    if cert.not_valid_after_utc - RENEW_BEFORE < now or cert.not_valid_before_utc > now + timedelta(minutes=5):
        return False
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return set(d for d in dns_names if d) <= have_dns and set(i for i in ips if i) <= have_ips


def issued_by(cert: x509.Certificate, ca_pem: bytes) -> bool:
    """True when one of the CAs in `ca_pem` signed `cert` (or `ca_pem` holds no readable CA)."""
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        return True  # no readable CA: nothing to check against
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def csr_object(name: str, csr_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "labels": {"kod.io/managed-by": "kod-vk"}},
        "spec": {
            "request": base64.b64encode(csr_pem).decode(),
            "signerName": SIGNER,
            "usages": ["digital signature", "server auth"],
        },
    }


async def obtain_serving_cert(
    kube: KubeClient,
    *,
    node_name: str,
    dns_names: list[str],
    ips: list[str],
    cert_dir: Path,
    timeout: float,
    ca_pem: bytes | None = None,
) -> ServingCert:
    """A serving certificate for the kubelet API from the cluster's kubelet-serving signer,
    reusing the stored one when it still fits (and, given the cluster CA, was issued by it)."""
    cert_dir = cert_dir.expanduser()
    cert_file, key_file = cert_dir / "kubelet-serving.crt", cert_dir / "kubelet-serving.key"
    if cert_fits(cert_file, key_file, dns_names, ips, ca_pem=ca_pem):
        return ServingCert(cert_file, key_file)
    key = make_key()
    csr_pem = make_csr(key, node_name, dns_names, ips)
    name = f"kod-vk-{node_name}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"[:253]
    await kube.create(CSR_PATH, csr_object(name, csr_pem))
    log.info(
        "waiting for the kubelet serving certificate",
        csr=name,
        hint=f"a cluster admin checks and approves it: kubectl certificate approve {name}",
    )
    pem = await wait_for_certificate(
        kube, name, timeout,
        hint=f"approve it with `kubectl certificate approve {name}`, or set kubelet_api.cert_file/key_file",
    )
    write_private(key_file, key_pem(key))
    write_private(cert_file, pem)
    log.info("kubelet serving certificate issued", csr=name)
    return ServingCert(cert_file, key_file)


async def wait_for_certificate(kube: KubeClient, name: str, timeout: float, *, hint: str) -> bytes:
    """The certificate (PEM) the signer put into CSR `name`, once approved and signed. Raises
    Forbidden when it is denied or fails, Unavailable (with `hint`) after `timeout` seconds."""
    try:
        return await asyncio.wait_for(_wait_signed(kube, name), timeout)
    except TimeoutError as exc:
        raise errors.Unavailable(
            f"CertificateSigningRequest {name} was not approved and signed within {timeout:.0f}s", hint=hint,
        ) from exc


async def _wait_signed(kube: KubeClient, name: str) -> bytes:
    async for event in list_and_watch(
        kube, CSR_PATH, params={"fieldSelector": f"metadata.name={name}"}, timeout_seconds=60, retry_refusals=False,
    ):
        objects = event.objects if event.type == "SYNC" else [event.object] if event.object else []
        for obj in objects:
            status = obj.get("status") or {}
            for cond in status.get("conditions") or []:
                if cond.get("type") in ("Denied", "Failed") and cond.get("status") == "True":
                    raise errors.Forbidden(f"CertificateSigningRequest {name} was {cond['type'].lower()}: {cond.get('message', '')}")
            if status.get("certificate"):
                return base64.b64decode(status["certificate"])
    raise AssertionError("unreachable")


async def client_ca_pem(kube: KubeClient, ca_file: Path | None) -> str:
    """The CA bundle that signs the client certificates the cluster trusts (the API server's
    `--client-ca-file`, published in kube-system/extension-apiserver-authentication)."""
    if ca_file is not None:
        return ca_file.expanduser().read_text()
    cm = await kube.get_or_none("/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication")
    pem = ((cm or {}).get("data") or {}).get("client-ca-file")
    if not pem:
        raise errors.Unavailable(
            "cannot read the cluster's client CA (kube-system/extension-apiserver-authentication)",
            hint="set kubelet_api.client_ca_file, or let nodes read it: the RoleBinding in kustomizations/base",
        )
    return str(pem)


def server_ssl_context(cert: ServingCert, client_ca: str) -> ssl.SSLContext:
    """TLS for the kubelet API: our certificate; client certificates optional (bearer tokens are
    the alternative), and verified against the cluster's client CA when given."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    ctx.load_verify_locations(cadata=client_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
