"""A desktop joining the cluster as a node, the cluster admin's side: a bootstrap token for it, and
approving its kubelet-serving certificate after checking it.

    token = create_bootstrap_token(cluster, node_name="desktop-vm", minutes=60)     # "abcdef.0123..."
    write_bootstrap_kubeconfig(path, cluster, token)                                 # 0600
    node_user_of(kubectl, node_kubeconfig)                                           # "system:node:desktop-vm"
    approved, denied = approve_serving_csrs(cluster, "desktop-vm", hostnames={...}, ips={...})

The token is a `bootstrap-token-<id>` Secret in kube-system (usage-bootstrap-authentication,
group `system:bootstrappers:kod-desktops`, an expiration after which the tokencleaner deletes it);
with it vk_bridge gets its node's client certificate (vk_bridge/identity.py), after which the
token is no longer needed and `delete_bootstrap_tokens` removes it. Tokens are random, written
only into private files, never printed.

Serving CSRs (signer kubernetes.io/kubelet-serving) are never approved automatically by the
cluster: a certificate for an address lets its holder pose as whatever the API server reaches
there. `serving_csr_problem` says why one must not be approved: it must come from
`system:node:<node>` itself, name exactly that subject, ask for exactly the kubelet's usages, use
an ECDSA P-256/P-384 or RSA >= 2048 key, and name only the node's own hostnames and (non-loopback)
addresses. CSRs for the node that fail are denied with the reason; others are left alone.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import string
import subprocess
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from kod import errors
from kod.files import write_private
from localenv.handle import ClusterHandle
from localenv.shell import run

#: The group every desktop's bootstrap token puts its holder in (kustomizations/base binds it).
DESKTOP_GROUP = "system:bootstrappers:kod-desktops"
TOKEN_NAMESPACE = "kube-system"
#: Label of the token Secrets: the node each was made for (so a stack cleans up only its own).
FOR_NODE_LABEL = "kod.io/bootstrap-for"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
CSR_API = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
_TOKEN_CHARS = string.ascii_lowercase + string.digits
_SERVING_USAGES = {"digital signature", "server auth"}
_CURVES = ("secp256r1", "secp384r1")


def node_user(node_name: str) -> str:
    return f"system:node:{node_name}"


# -- bootstrap tokens -----------------------------------------------------------------------------


def bootstrap_token_secret(token_id: str, token_secret: str, *, node_name: str, expires: datetime) -> dict[str, Any]:
    """The Secret the API server's bootstrap authenticator reads (as data)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": TOKEN_NAMESPACE, "labels": {FOR_NODE_LABEL: node_name}},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": f"kod: joins the desktop {node_name} as a node (vk_bridge's TLS bootstrap)",
            "token-id": token_id,
            "token-secret": token_secret,
            "expiration": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true",
            "auth-extra-groups": DESKTOP_GROUP,
        },
    }


def create_bootstrap_token(cluster: ClusterHandle, *, node_name: str, minutes: int,
                           now: datetime | None = None) -> str:
    """A new bootstrap token (`<id>.<secret>`) valid for `minutes`; its Secret is created with
    the admin's credentials."""
    token_id = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(6))
    token_secret = "".join(secrets.choice(_TOKEN_CHARS) for _ in range(16))
    expires = (now or datetime.now(UTC)) + timedelta(minutes=minutes)
    secret = bootstrap_token_secret(token_id, token_secret, node_name=node_name, expires=expires)
    cluster.kubectl("create", "-f", "-", input=json.dumps(secret))
    return f"{token_id}.{token_secret}"


def token_expiry(cluster: ClusterHandle, token: str) -> datetime | None:
    """When the token's Secret expires; None when it no longer exists (deleted, cleaned up)."""
    token_id = token.split(".", 1)[0]
    proc = cluster.kubectl("get", "secret", f"bootstrap-token-{token_id}", "-n", TOKEN_NAMESPACE, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout).get("data") or {}
    try:
        if base64.b64decode(data.get("token-secret", "")).decode() != token.split(".", 1)[1]:
            return None
        return datetime.fromisoformat(base64.b64decode(data["expiration"]).decode().replace("Z", "+00:00"))
    except (KeyError, ValueError, IndexError):
        return None


def delete_bootstrap_tokens(cluster: ClusterHandle, node_name: str) -> int:
    """Delete the bootstrap tokens made for `node_name`; returns how many there were."""
    listing = cluster.kubectl_json("get", "secrets", "-n", TOKEN_NAMESPACE, "-l", f"{FOR_NODE_LABEL}={node_name}")
    names = [s["metadata"]["name"] for s in listing.get("items", []) if s["metadata"]["name"].startswith("bootstrap-token-")]
    if names:
        cluster.kubectl("delete", "secret", "-n", TOKEN_NAMESPACE, "--ignore-not-found", *names)
    return len(names)


def cluster_entry(cluster: ClusterHandle) -> dict[str, Any]:
    """The admin kubeconfig's server and CA (what every kubeconfig for this cluster needs)."""
    admin = cluster.kubectl_json("config", "view", "--raw", "--minify")
    entry = admin["clusters"][0]["cluster"]
    return {k: v for k, v in entry.items() if k in ("server", "certificate-authority-data", "certificate-authority")}


def bootstrap_kubeconfig(cluster: Mapping[str, Any], token: str | None) -> dict[str, Any]:
    """A kubeconfig with the server, its CA and the bootstrap token (or no credential at all)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": dict(cluster)}],
        "users": [{"name": "bootstrap", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "bootstrap", "context": {"cluster": "cluster", "user": "bootstrap"}}],
        "current-context": "bootstrap",
    }


def write_bootstrap_kubeconfig(path: Path, cluster: ClusterHandle, token: str | None) -> bool:
    """Write it 0600; True when it changed."""
    config = bootstrap_kubeconfig(cluster_entry(cluster), token)
    return write_private(path, json.dumps(config, indent=2) + "\n", unchanged_ok=True)


def kubeconfig_token(path: Path) -> str | None:
    """The token in a kubeconfig written by `write_bootstrap_kubeconfig`, if any."""
    try:
        return str(json.loads(path.read_text())["users"][0]["user"]["token"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def whoami(kubectl: Path, kubeconfig: Path, timeout: float = 15) -> str | None:
    """The user the API server authenticates `kubeconfig` as (SelfSubjectReview), or None when it
    refuses it (or the file is unusable)."""
    if not kubeconfig.exists():
        return None
    try:
        proc = subprocess.run([str(kubectl), f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "json"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        return str(json.loads(proc.stdout)["status"]["userInfo"]["username"])
    except (ValueError, KeyError, TypeError):
        return None


# -- serving certificates -------------------------------------------------------------------------


def local_addresses() -> set[str]:
    """This machine's own addresses (every interface), loopback excluded."""
    out = run(["ip", "-j", "addr", "show"], timeout=10).stdout
    found = set()
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info") or []:
            addr = info.get("local")
            if addr and not ipaddress.ip_address(addr).is_loopback:
                found.add(str(ipaddress.ip_address(addr)))
    return found


def serving_csr_problem(csr: Mapping[str, Any], node_name: str, *, hostnames: Collection[str],
                        ips: Collection[str]) -> str | None:
    """Why this kubelet-serving CSR must not be approved for `node_name`, or None when it may."""
    spec = csr.get("spec") or {}
    user = node_user(node_name)
    if spec.get("signerName") != SERVING_SIGNER:
        return f"signer {spec.get('signerName')!r} is not {SERVING_SIGNER}"
    if spec.get("username") != user or "system:nodes" not in (spec.get("groups") or []):
        return f"requested by {spec.get('username')!r} (groups {spec.get('groups')}), not by the node {user} itself"
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request") or ""))
    except ValueError as exc:
        return f"the request is not a PEM certificate request: {exc}"
    if not request.is_signature_valid:
        return "the request's signature is not valid"
    subject = [(a.oid, a.value) for a in request.subject]
    if sorted(subject, key=lambda p: p[0].dotted_string) != sorted(
            [(NameOID.COMMON_NAME, user), (NameOID.ORGANIZATION_NAME, "system:nodes")], key=lambda p: p[0].dotted_string):
        return f"subject {request.subject.rfc4514_string()!r} is not CN={user},O=system:nodes"
    key = request.public_key()
    rsa_key = isinstance(key, rsa.RSAPublicKey)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            return f"ECDSA curve {key.curve.name} is not one of {', '.join(_CURVES)}"
    elif rsa_key:
        if key.key_size < 2048:
            return f"RSA key of {key.key_size} bits is under 2048"
    else:
        return f"key type {type(key).__name__} is not ECDSA or RSA"
    usages = set(spec.get("usages") or [])
    if usages != _SERVING_USAGES and not (rsa_key and usages == _SERVING_USAGES | {"key encipherment"}):
        return f"usages {sorted(usages)} are not exactly {sorted(_SERVING_USAGES)}"
    extensions = {e.oid for e in request.extensions}
    if extensions - {ExtensionOID.SUBJECT_ALTERNATIVE_NAME}:
        return "the request carries extensions other than subjectAltName"
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the request names no address or hostname"
    dns = set(san.get_values_for_type(x509.DNSName))
    addresses = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    if len(list(san)) != len(dns) + len(addresses):
        return "the request names something other than DNS names and IP addresses (e-mail, URI, ...)"
    if not dns | addresses:
        return "the request names no address or hostname"
    if dns - set(hostnames):
        return f"hostnames {sorted(dns - set(hostnames))} are not the node's ({sorted(hostnames)})"
    loopback = sorted(a for a in addresses if ipaddress.ip_address(a).is_loopback)
    if loopback:
        return f"addresses {loopback} are loopback: a certificate for them would fit every machine"
    if addresses - set(ips):
        return f"addresses {sorted(addresses - set(ips))} are not the node's ({sorted(ips)})"
    return None


def _concerns(csr: Mapping[str, Any], node_name: str) -> bool:
    """A pending kubelet-serving CSR made by or for `node_name` (the others are not ours to judge)."""
    spec, status = csr.get("spec") or {}, csr.get("status") or {}
    if status.get("conditions") or spec.get("signerName") != SERVING_SIGNER:
        return False
    if spec.get("username") == node_user(node_name):
        return True
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request") or ""))
        return any(a.value == node_user(node_name) for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    except ValueError:
        return False


def approve_serving_csrs(cluster: ClusterHandle, node_name: str, *, hostnames: Collection[str],
                         ips: Collection[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Approve the pending serving CSRs of `node_name` that pass `serving_csr_problem`, deny the
    others that claim to be its (with the reason). Returns (approved, [(denied, reason)])."""
    approved: list[str] = []
    denied: list[tuple[str, str]] = []
    for csr in cluster.kubectl_json("get", "csr").get("items", []):
        if not _concerns(csr, node_name):
            continue
        name = csr["metadata"]["name"]
        problem = serving_csr_problem(csr, node_name, hostnames=hostnames, ips=ips)
        if problem is None:
            cluster.kubectl("certificate", "approve", name)
            approved.append(name)
            continue
        csr = dict(csr)
        csr["status"] = {"conditions": [{
            "type": "Denied", "status": "True", "reason": "KodLocalenvRefused",
            "message": f"not approved for node {node_name}: {problem}",
        }]}
        proc = cluster.kubectl("replace", "--raw", f"{CSR_API}/{name}/approval", "-f", "-", input=json.dumps(csr), check=False)
        if proc.returncode != 0 and "NotFound" not in proc.stderr:
            raise errors.Internal(f"could not deny CertificateSigningRequest {name}: {proc.stderr.strip()}")
        denied.append((name, problem))
    return approved, denied
