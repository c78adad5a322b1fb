"""Certificates of the local cluster, made with the `openssl` command (Debian's openssl 3).

Four CAs live in the PKI directory: `ca` (the cluster CA: API server, kubelets' serving
certificates, users and components, the controller-manager's CSR signer), `node-client-ca` (the
client certificates of nodes only: the real kubelet's and the ones desktops get through the TLS
bootstrap, so that the tunnel server can take agents from nodes and from no one else), `etcd-ca`
(etcd only, so that a certificate issued for a kubelet or a user never opens etcd) and
`front-proxy-ca` (the API server's aggregation layer: requests it forwards carry the user in
headers, trusted only from its front-proxy client). The API server trusts client certificates of
`ca` and `node-client-ca` (one bundle file, `client_ca_bundle`). Keys are ECDSA P-256, files are 0600, the directory 0700.

Other components issue their own certificates from the cluster CA:

    from localenv import pki
    from localenv.paths import default_paths
    pair = pki.issue(default_paths().pki_dir, "my-node", common_name="system:node:my-node",
                     organizations=("system:nodes",), usages=("client",))
    pair.cert, pair.key, pair.ca

`issue()` is idempotent: it keeps an existing certificate while its subject, names and CA are
unchanged and it is valid for at least RENEW_BEFORE more days.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kod import errors
from localenv.shell import require, run

Usage = Literal["client", "server"]

CA_DAYS = 3650
CERT_DAYS = 730
RENEW_BEFORE = 30
CLUSTER_CA = "ca"
ETCD_CA = "etcd-ca"
FRONT_PROXY_CA = "front-proxy-ca"
NODE_CLIENT_CA = "node-client-ca"
CLIENT_CA_BUNDLE = "client-ca-bundle"


@dataclass(frozen=True)
class CertPair:
    """A certificate, its private key and the CA certificate that verifies it."""

    cert: Path
    key: Path
    ca: Path


def _openssl() -> Path:
    return require("openssl")


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _new_key(path: Path) -> None:
    run([_openssl(), "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path])
    os.chmod(path, 0o600)


def ensure_ca(pki_dir: Path, name: str = CLUSTER_CA, common_name: str = "kod-cluster-ca") -> CertPair:
    """Create the CA `name` (<name>.crt, <name>.key) unless it exists."""
    _private_dir(pki_dir)
    cert, key = pki_dir / f"{name}.crt", pki_dir / f"{name}.key"
    if not (cert.exists() and key.exists()):
        _new_key(key)
        run([
            _openssl(), "req", "-x509", "-new", "-key", key, "-sha256", "-days", str(CA_DAYS),
            "-subj", f"/CN={common_name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-out", cert,
        ])
    return CertPair(cert, key, cert)


def _subject(common_name: str, organizations: Sequence[str]) -> str:
    for part in (common_name, *organizations):
        if "/" in part or "=" in part or not part:
            raise errors.InvalidInput(f"certificate subject part {part!r} must be non-empty, without '/' or '='")
    return "".join(f"/O={o}" for o in organizations) + f"/CN={common_name}"


def _san(names: Sequence[str]) -> str:
    out = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            out.append(f"IP:{n}")
        except ValueError:
            out.append(f"DNS:{n}")
    return ",".join(out)


def issue(
    pki_dir: Path,
    name: str,
    *,
    common_name: str,
    organizations: Sequence[str] = (),
    sans: Sequence[str] = (),
    usages: Sequence[Usage] = ("client",),
    ca: str = CLUSTER_CA,
    days: int = CERT_DAYS,
) -> CertPair:
    """Issue (or keep) <pki_dir>/<name>.crt and .key, signed by the CA `ca`.
    `sans` are DNS names or IP addresses; `usages` picks the extended key usages."""
    if not name or "/" in name:
        raise errors.InvalidInput(f"bad certificate name {name!r}")
    if not usages:
        raise errors.InvalidInput("a certificate needs at least one usage (client, server)")
    ca_cert, ca_key = pki_dir / f"{ca}.crt", pki_dir / f"{ca}.key"
    if not ca_key.exists():
        raise errors.NotFound(f"CA {ca_cert} does not exist", hint="run `python -m localenv up` first")
    cert, key, meta = pki_dir / f"{name}.crt", pki_dir / f"{name}.key", pki_dir / f"{name}.json"
    subject = _subject(common_name, organizations)
    names, uses = sorted(set(sans)), sorted(set(usages))
    spec = {"subject": subject, "sans": names, "usages": uses, "ca": ca_cert.read_text()}
    try:
        old = json.loads(meta.read_text())
    except (OSError, ValueError):
        old = {}
    fresh = old.get("not_after", 0) - time.time() > RENEW_BEFORE * 86400
    if cert.exists() and key.exists() and old.get("spec") == spec and fresh:
        return CertPair(cert, key, ca_cert)

    _private_dir(pki_dir)
    _new_key(key)
    ext = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=" + ",".join({"client": "clientAuth", "server": "serverAuth"}[u] for u in uses),
    ]
    if names:
        ext.append("subjectAltName=" + _san(names))
    with tempfile.TemporaryDirectory(dir=pki_dir) as tmp:
        csr, extfile = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        extfile.write_text("\n".join(ext) + "\n")
        run([_openssl(), "req", "-new", "-key", key, "-subj", subject, "-out", csr])
        run([
            _openssl(), "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
            "-set_serial", "0x" + secrets.token_hex(16), "-days", str(days), "-sha256",
            "-extfile", extfile, "-out", cert,
        ])
    os.chmod(cert, 0o644)
    meta.write_text(json.dumps({"spec": spec, "not_after": time.time() + days * 86400}))
    return CertPair(cert, key, ca_cert)


def write_bundle(pki_dir: Path, name: str, cas: Sequence[str]) -> Path:
    """<pki_dir>/<name>.crt: the certificates of the CAs `cas`, in that order (rewritten only when
    they changed, so that daemons that watch it restart only then)."""
    path = pki_dir / f"{name}.crt"
    text = "".join((pki_dir / f"{ca}.crt").read_text() for ca in cas)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(path)
    return path


def ensure_service_account_key(pki_dir: Path) -> tuple[Path, Path]:
    """The key pair that signs service-account tokens (sa.key, sa.pub); RSA for the widest
    compatibility of token verifiers."""
    _private_dir(pki_dir)
    key, pub = pki_dir / "sa.key", pki_dir / "sa.pub"
    if not key.exists():
        run([_openssl(), "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key])
        os.chmod(key, 0o600)
        pub.unlink(missing_ok=True)
    if not pub.exists():
        run([_openssl(), "pkey", "-in", key, "-pubout", "-out", pub])
    return key, pub
