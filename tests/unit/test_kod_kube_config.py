"""Loading a connection (`kod.kube_config`) and using it against a real TLS server on port 0 that
asks for client certificates like the API server: certificates and CAs as data or as files, tokens,
a token file and the in-cluster service account re-read per request, an exec credential plugin run
through the `kubernetes` package, and clear errors for kubeconfigs that cannot work."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kod import errors
from kod.kube import KubeClient
from kod.kube_config import Connection, load_connection

WAIT = 10.0


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _issue(cn: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool = False,
           ip: str | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


@dataclass
class Pki:
    """A cluster CA, the API server's certificate for 127.0.0.1, and a user's client certificate."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes

    @classmethod
    def make(cls) -> Pki:
        ca, ca_key = _issue("test-cluster-ca", None, ca=True)
        server, server_key = _issue("kube-apiserver", (ca.subject, ca_key), ip="127.0.0.1")
        client, client_key = _issue("ann", (ca.subject, ca_key))
        return cls(_pem(ca), _pem(server), _key_pem(server_key), _pem(client), _key_pem(client_key))


@dataclass
class Api:
    url: str
    pki: Pki
    seen: list[dict[str, str | None]]


@pytest.fixture
async def tls_api(aiohttp_server: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Api]:
    """An https server that, like the API server, verifies optional client certificates against
    the cluster CA and answers /whoami with what it authenticated."""
    pki = Pki.make()
    (tmp_path / "srv.crt").write_bytes(pki.server_cert)
    (tmp_path / "srv.key").write_bytes(pki.server_key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=pki.ca.decode())
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    seen: list[dict[str, str | None]] = []

    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn if k == "commonName"), None)
        seen.append({"cn": cn, "authorization": request.headers.get("Authorization")})
        return web.json_response(seen[-1])

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    server = await aiohttp_server(app, ssl=ctx)
    yield Api(f"https://127.0.0.1:{server.port}", pki, seen)


def kubeconfig(path: Path, server: str, *, cluster: dict[str, Any] | None = None, user: dict[str, Any] | None = None) -> Path:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team"}}],
    }
    path.write_text(json.dumps(doc))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def whoami(conn: Connection) -> dict[str, Any]:
    async with KubeClient(conn, backoff=()) as kube:
        answer: dict[str, Any] = await asyncio.wait_for(kube.get("/whoami"), WAIT)
        return answer


async def test_client_certificate_and_ca_as_data(tls_api: Api, tmp_path: Path) -> None:
    pki = tls_api.pki
    path = kubeconfig(tmp_path / "kc", tls_api.url, cluster={"certificate-authority-data": b64(pki.ca)},
                      user={"client-certificate-data": b64(pki.client_cert), "client-key-data": b64(pki.client_key)})
    conn = load_connection(path)
    assert (conn.context, conn.namespace, conn.ca_pem) == ("c", "team", pki.ca)
    assert await whoami(conn) == {"cn": "ann", "authorization": None}
    assert not list(Path(tempfile.gettempdir()).glob("kod-tls-*"))  # the key was not left on disk


async def test_client_certificate_and_ca_as_files_relative_to_the_kubeconfig(tls_api: Api, tmp_path: Path) -> None:
    pki = tls_api.pki
    (tmp_path / "ca.crt").write_bytes(pki.ca)
    (tmp_path / "ann.crt").write_bytes(pki.client_cert)
    (tmp_path / "ann.key").write_bytes(pki.client_key)
    path = kubeconfig(tmp_path / "kc", tls_api.url, cluster={"certificate-authority": "ca.crt"},
                      user={"client-certificate": "ann.crt", "client-key": "ann.key"})
    assert (await whoami(load_connection(path)))["cn"] == "ann"


async def test_a_server_the_ca_did_not_sign_is_refused_unless_verification_is_skipped(tls_api: Api, tmp_path: Path) -> None:
    other_ca = Pki.make().ca
    refused = load_connection(kubeconfig(tmp_path / "a", tls_api.url, cluster={"certificate-authority-data": b64(other_ca)}))
    with pytest.raises(errors.Unavailable, match="cannot reach the Kubernetes API"):
        await whoami(refused)
    assert tls_api.seen == []
    skipped = load_connection(kubeconfig(tmp_path / "b", tls_api.url, cluster={"insecure-skip-tls-verify": True},
                                         user={"token": "abc"}))
    assert await whoami(skipped) == {"cn": None, "authorization": "Bearer abc"}


async def test_a_token_file_is_read_again_for_every_request(tls_api: Api, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    conn = load_connection(kubeconfig(tmp_path / "kc", tls_api.url, cluster={"certificate-authority-data": b64(tls_api.pki.ca)},
                                      user={"tokenFile": "token"}))
    assert (await whoami(conn))["authorization"] == "Bearer first"
    token.write_text("rotated\n")
    assert (await whoami(conn))["authorization"] == "Bearer rotated"


async def test_in_cluster_service_account_with_its_token_rotated(tls_api: Api, tmp_path: Path) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(tls_api.pki.ca)
    (sa / "token").write_text("sa-token-1")
    (sa / "namespace").write_text("kod-system")
    port = tls_api.url.rsplit(":", 1)[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    conn = load_connection(None, in_cluster=True, environ=env, service_account_dir=sa)
    assert (conn.host, conn.namespace) == (tls_api.url, "kod-system")
    assert (await whoami(conn))["authorization"] == "Bearer sa-token-1"
    (sa / "token").write_text("sa-token-2")  # the kubelet rotates projected tokens
    assert (await whoami(conn))["authorization"] == "Bearer sa-token-2"
    with pytest.raises(errors.InvalidInput, match="KUBERNETES_SERVICE_HOST"):
        load_connection(None, in_cluster=True, environ={}, service_account_dir=sa)


async def test_an_exec_credential_plugin_runs_through_the_kubernetes_package(tls_api: Api, tmp_path: Path) -> None:
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": "from-the-plugin"}}
    plugin = tmp_path / "plugin.sh"
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(credential)}'\n")
    plugin.chmod(0o700)
    path = kubeconfig(tmp_path / "kc", tls_api.url, cluster={"certificate-authority-data": b64(tls_api.pki.ca)},
                      user={"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin),
                                     "interactiveMode": "Never"}})
    assert (await whoami(load_connection(path)))["authorization"] == "Bearer from-the-plugin"


@pytest.mark.parametrize(
    ("content", "context", "message"),
    [
        ("{not yaml: [", None, "cannot read the kubeconfig"),
        (json.dumps({"contexts": [{"name": "a", "context": {}}], "current-context": "a"}), "b", r"has no context 'b' \(it has: a\)"),
        (json.dumps({"contexts": [{"name": "a", "context": {"cluster": "x"}}], "current-context": "a"}), None, "names no cluster"),
        (json.dumps({"clusters": [{"name": "x", "cluster": {"server": "https://h"}}],
                     "users": [{"name": "u", "user": {"username": "ann", "password": "pw"}}],
                     "contexts": [{"name": "a", "context": {"cluster": "x", "user": "u"}}], "current-context": "a"}),
         None, "dropped basic authentication"),
        (json.dumps({"clusters": [{"name": "x", "cluster": {"server": "https://h", "certificate-authority": "nope.crt"}}],
                     "contexts": [{"name": "a", "context": {"cluster": "x"}}], "current-context": "a"}),
         None, "cannot read kubeconfig .*certificate-authority"),
    ],
)
def test_kubeconfigs_that_cannot_work_are_clear_errors(tmp_path: Path, content: str, context: str | None, message: str) -> None:
    path = tmp_path / "kc"
    path.write_text(content)
    with pytest.raises(errors.InvalidInput, match=message) as caught:
        load_connection(path, context, hint="set kube.kubeconfig")
    assert caught.value.hint == "set kube.kubeconfig"
    with pytest.raises(errors.InvalidInput, match="cannot read the kubeconfig"):
        load_connection(tmp_path / "missing")
