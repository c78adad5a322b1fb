"""The node's identity (vk_bridge/identity.py) against a fake API server over real TLS: the CSR
endpoints, a signer that issues from a test CA, SelfSubjectReview, and authentication by bootstrap
token or client certificate, as the API server does. What the tests assert is what an admin would
notice: which CSRs arrive from whom, with what subject, usages and key; which certificate the
client presents; which files are left on disk; what the error says."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kod import errors
from kod.kube import KubeClient
from kod.kube_watch import list_and_watch
from tests.unit.test_vk_kubelet_api import Pki
from vk_bridge.identity import CLIENT_FILE, CLIENT_SIGNER, KUBECONFIG_FILE, NodeIdentity, bootstrap_connection
from vk_bridge.kubelet_api import start_server
from vk_bridge.settings import IdentitySettings, VkSettings

NODE = "desktop-test"
TOKEN = "abcdef.0123456789abcdef"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


def unauthorized() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text=json.dumps({"kind": "Status", "code": 401, "message": "Unauthorized"}),
                                content_type="application/json")


class FakeApi:
    """The API server's CSR, signing and review behaviour, in memory. `approve(csr)` decides each
    new CSR: True (approve and sign), False (deny), None (leave it pending)."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.tokens = {TOKEN: ("system:bootstrap:abcdef", ["system:bootstrappers", "system:bootstrappers:kod-desktops"])}
        self.csrs: dict[str, dict[str, Any]] = {}
        #: (method, path, user, serial of the client certificate or None)
        self.calls: list[tuple[str, str, str, str | None]] = []
        self.approve: Callable[[dict[str, Any]], bool | None] = lambda csr: True
        #: Client certificate serials the server no longer accepts (a re-created cluster).
        self.rejected: set[str] = set()
        self.rv = 1
        self.changed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post(CSRS, self.create)
        self.app.router.add_get(CSRS, self.list_or_watch)
        self.app.router.add_post("/apis/authentication.k8s.io/v1/selfsubjectreviews", self.self_review)

    def who(self, request: web.Request) -> tuple[str, list[str], str | None]:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if der:
            cert = x509.load_der_x509_certificate(der)
            serial = format(cert.serial_number, "x")
            if serial in self.rejected:
                raise unauthorized()
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
            return str(cn), [str(o) for o in orgs], serial
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in self.tokens:
            name, groups = self.tokens[token]
            return name, groups, None
        raise unauthorized()

    async def create(self, request: web.Request) -> web.Response:
        user, groups, serial = self.who(request)
        self.calls.append(("POST", request.path, user, serial))
        body = await request.json()
        name = body["metadata"]["generateName"] + f"{len(self.csrs):05d}"
        self.rv += 1
        csr = {**body, "metadata": {**body["metadata"], "name": name, "resourceVersion": str(self.rv)},
               "spec": {**body["spec"], "username": user, "groups": groups}, "status": {}}
        self.csrs[name] = csr
        decision = self.approve(csr)
        if decision is True:
            csr["status"] = {"conditions": [{"type": "Approved", "status": "True"}], "certificate": base64.b64encode(self.sign(csr)).decode()}
        elif decision is False:
            csr["status"] = {"conditions": [{"type": "Denied", "status": "True", "message": "not yours"}]}
        self.changed.set()
        return web.json_response(csr, status=201)

    def sign(self, csr: dict[str, Any]) -> bytes:
        request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
        now = datetime.now(UTC)
        lifetime = timedelta(seconds=csr["spec"].get("expirationSeconds") or 86400)
        cert = (
            x509.CertificateBuilder().subject_name(request.subject).issuer_name(self.pki.cert.subject)
            .public_key(request.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(seconds=1)).not_valid_after(now + lifetime)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.pki.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def approve_pending(self) -> None:
        for csr in self.csrs.values():
            if not csr["status"]:
                self.rv += 1
                csr["metadata"]["resourceVersion"] = str(self.rv)
                csr["status"] = {"conditions": [{"type": "Approved", "status": "True"}], "certificate": base64.b64encode(self.sign(csr)).decode()}
        self.changed.set()

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        user, _, serial = self.who(request)
        watch = request.query.get("watch") == "true"
        self.calls.append(("WATCH" if watch else "LIST", request.path, user, serial))
        wanted = request.query.get("fieldSelector", "").removeprefix("metadata.name=")
        if not watch:
            items = [c for n, c in self.csrs.items() if not wanted or n == wanted]
            return web.json_response({"metadata": {"resourceVersion": str(self.rv)}, "items": items})
        response = web.StreamResponse()
        await response.prepare(request)
        seen = int(request.query.get("resourceVersion") or 0)
        deadline = asyncio.get_running_loop().time() + int(request.query.get("timeoutSeconds", "30"))
        while asyncio.get_running_loop().time() < deadline and request.transport and not request.transport.is_closing():
            for name, csr in self.csrs.items():
                if (not wanted or name == wanted) and int(csr["metadata"]["resourceVersion"]) > seen:
                    seen = int(csr["metadata"]["resourceVersion"])
                    await response.write(json.dumps({"type": "MODIFIED", "object": csr}).encode() + b"\n")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.2)
            except TimeoutError:
                pass
        return response

    async def self_review(self, request: web.Request) -> web.Response:
        user, groups, serial = self.who(request)
        self.calls.append(("POST", request.path, user, serial))
        return web.json_response({"kind": "SelfSubjectReview", "status": {"userInfo": {"username": user, "groups": groups}}}, status=201)


class World:
    def __init__(self, api: FakeApi, url: str, tmp: Path) -> None:
        self.api, self.url, self.tmp = api, url, tmp
        self.cert_dir = tmp / "pki"

    def bootstrap_kubeconfig(self, token: str | None = TOKEN) -> Path:
        user = {"token": token} if token else {}
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.url, "certificate-authority-data": base64.b64encode(self.api.pki.ca_pem.encode()).decode()}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], "current-context": "x",
        }
        path = self.tmp / f"bootstrap-{token or 'none'}.kubeconfig"
        path.write_text(json.dumps(config))
        return path

    def identity(self, token: str | None = TOKEN, **settings: Any) -> NodeIdentity:
        settings.setdefault("csr_timeout_seconds", 10)  # every wait of these tests is bounded
        s = IdentitySettings(bootstrap_kubeconfig=self.bootstrap_kubeconfig(token), cert_dir=self.cert_dir, **settings)
        return NodeIdentity(s, NODE, bootstrap_connection(s), backoff=(), request_timeout=5.0)

    def csr_posts(self) -> list[tuple[str, str | None]]:
        return [(user, serial) for method, path, user, serial in self.api.calls if method == "POST" and path == CSRS]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    pki = Pki(tmp_path)
    crt, key = pki.issue("server", "kube-apiserver", server=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    ctx.load_verify_locations(cadata=pki.ca_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    api = FakeApi(pki)
    runner, port = await start_server(api.app, "127.0.0.1", 0, ctx)
    yield World(api, f"https://127.0.0.1:{port}", tmp_path)
    await runner.cleanup()


async def whoami(kube: KubeClient) -> str:
    review = await kube.create("/apis/authentication.k8s.io/v1/selfsubjectreviews", {"kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


async def test_bootstrap_makes_an_ecdsa_node_csr_and_then_talks_as_the_node(world: World) -> None:
    identity = world.identity(certificate_seconds=900)
    conn = await identity.establish()
    (csr,) = world.api.csrs.values()
    spec = csr["spec"]
    assert spec["username"] == "system:bootstrap:abcdef"  # sent with the bootstrap token
    assert spec["signerName"] == CLIENT_SIGNER == "kubernetes.io/kube-apiserver-client-kubelet"
    assert sorted(spec["usages"]) == ["client auth", "digital signature"] and spec["expirationSeconds"] == 900
    request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
    assert request.subject.rfc4514_string() == f"CN=system:node:{NODE},O=system:nodes"
    assert isinstance(request.public_key(), ec.EllipticCurvePublicKey) and request.public_key().curve.name == "secp256r1"
    assert not list(request.extensions)  # no SANs: the signer refuses them
    async with KubeClient(conn, backoff=()) as kube:
        assert await whoami(kube) == f"system:node:{NODE}"
    assert world.api.calls[-1][3] == identity.current.serial if identity.current else False
    pem = world.cert_dir / CLIENT_FILE
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600 and b"PRIVATE KEY" in pem.read_bytes()
    kubeconfig = json.loads((world.cert_dir / KUBECONFIG_FILE).read_text())
    assert kubeconfig["users"][0]["user"] == {"client-certificate": CLIENT_FILE, "client-key": CLIENT_FILE}
    assert TOKEN not in (world.cert_dir / KUBECONFIG_FILE).read_text()


async def test_a_stored_certificate_is_used_without_any_token(world: World) -> None:
    first = world.identity()
    await first.establish()
    again = world.identity(token=None)  # the token is gone: the certificate is all it needs
    async with KubeClient(await again.establish(), backoff=()) as kube:
        assert await whoami(kube) == f"system:node:{NODE}"
    assert len(world.api.csrs) == 1 and again.current and first.current and again.current.serial == first.current.serial


def _store_foreign(world: World, cn: str, days: float) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(world.api.pki.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2)).not_valid_after(now + timedelta(days=days))
        .sign(world.api.pki.key, hashes.SHA256())
    )
    world.cert_dir.mkdir(parents=True, exist_ok=True)
    (world.cert_dir / CLIENT_FILE).write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda w: _store_foreign(w, "system:node:kod-worker", 30), "is for system:node:kod-worker"),
        (lambda w: _store_foreign(w, f"system:node:{NODE}", -1), "expired"),
        (lambda w: (w.cert_dir.mkdir(parents=True), (w.cert_dir / CLIENT_FILE).write_text("garbage")), "unreadable"),
    ],
)
async def test_a_certificate_that_is_not_this_nodes_valid_one_is_replaced(
    world: World, prepare: Callable[[World], Any], reason: str,
) -> None:
    prepare(world)
    with structlog.testing.capture_logs() as logs:
        identity = world.identity()
        await identity.establish()
    assert len(world.csr_posts()) == 1 and world.csr_posts()[0][0] == "system:bootstrap:abcdef"
    assert any(reason in str(entry.get("reason", "")) + str(entry.get("error", "")) + entry["event"] for entry in logs)
    assert identity.current is not None and identity.current.cert.subject.rfc4514_string().startswith(f"CN=system:node:{NODE}")


async def test_a_certificate_the_api_server_no_longer_accepts_is_replaced(world: World) -> None:
    first = world.identity()
    await first.establish()
    assert first.current is not None
    world.api.rejected.add(first.current.serial)  # as after the cluster was re-created
    again = world.identity()
    await again.establish()
    assert len(world.csr_posts()) == 2 and again.current and again.current.serial != first.current.serial


async def test_a_rejected_bootstrap_token_says_what_to_do(world: World) -> None:
    identity = world.identity(token="zzzzzz.0000000000000000")
    with pytest.raises(errors.Unauthorized, match="bootstrap token expired or unknown") as caught:
        await identity.establish()
    assert "python -m localenv up" in str(caught.value.hint) and "cluster admin" in str(caught.value.hint)
    assert not (world.cert_dir / CLIENT_FILE).exists()


async def test_no_certificate_and_no_token_is_a_clear_error(world: World) -> None:
    with pytest.raises(errors.InvalidInput, match="no usable client certificate .* no bootstrap token"):
        await world.identity(token=None).establish()


async def test_a_denied_csr_is_forbidden_and_a_pending_one_names_itself(world: World) -> None:
    world.api.approve = lambda csr: False
    with pytest.raises(errors.Forbidden, match="denied"):
        await world.identity().establish()
    world.api.approve = lambda csr: None
    with pytest.raises(errors.Unavailable, match="was not approved and signed within 1s") as caught:
        await world.identity(csr_timeout_seconds=1).establish()
    assert "kubectl certificate approve kod-vk-client-desktop-test-" in str(caught.value.hint)


async def test_rotation_renews_with_the_current_certificate_and_moves_the_running_client(world: World) -> None:
    # 4-second certificates renewed at half their life: a few rotations within seconds.
    identity = world.identity(certificate_seconds=600, rotation_fraction=(0.5, 0.5))
    world.api.approve = lambda csr: True
    original_sign = world.api.sign

    def short(csr: dict[str, Any]) -> bytes:
        csr["spec"]["expirationSeconds"] = 4
        return original_sign(csr)

    world.api.sign = short  # type: ignore[method-assign]
    kube = KubeClient(await identity.establish(), backoff=(0.1, 0.2))
    first = identity.current
    assert first is not None
    events: list[str] = []

    async def follow() -> None:
        # A watch opened on the first certificate: it must go on across rotations.
        async for event in list_and_watch(kube, CSRS, params={"fieldSelector": "metadata.name=none"}, timeout_seconds=30):
            events.append(event.type)

    watcher = asyncio.create_task(follow())
    rotation = asyncio.create_task(identity.run(kube))
    try:
        async with asyncio.timeout(20):
            while identity.rotations < 2:
                await asyncio.sleep(0.05)
        second = identity.current
        assert second is not None and second.serial != first.serial
        posts = world.csr_posts()
        assert posts[0] == ("system:bootstrap:abcdef", None)
        # Each renewal was asked for as the node, with the certificate it replaces.
        assert all(user == f"system:node:{NODE}" and serial for user, serial in posts[1:])
        assert posts[1][1] == first.serial
        assert await whoami(kube) == f"system:node:{NODE}"
        assert world.api.calls[-1][3] == identity.current.serial if identity.current else False
        stored = (world.cert_dir / CLIENT_FILE).read_bytes()
        assert identity.current is not None and identity.current.cert_pem in stored
        async with asyncio.timeout(10):
            while not [c for c in world.api.calls if c[0] == "WATCH" and c[3] not in (None, first.serial)]:
                await asyncio.sleep(0.05)  # the watch resumed on a newer certificate
        assert not watcher.done()
    finally:
        for task in (watcher, rotation):
            task.cancel()
        await asyncio.gather(watcher, rotation, return_exceptions=True)
        await kube.close()


async def test_a_failed_renewal_keeps_the_old_certificate_then_the_token_after_expiry(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vk_bridge.identity.RENEW_BACKOFF", (0.5,))
    monkeypatch.setattr("vk_bridge.identity.MIN_REMAINING", timedelta(seconds=0))
    identity = world.identity(certificate_seconds=600, rotation_fraction=(0.3, 0.3), csr_timeout_seconds=0.5)
    original_sign = world.api.sign

    def short(csr: dict[str, Any]) -> bytes:
        csr["spec"]["expirationSeconds"] = 2
        return original_sign(csr)

    world.api.sign = short  # type: ignore[method-assign]
    kube = KubeClient(await identity.establish(), backoff=())
    first = identity.current
    assert first is not None
    # From now on the cluster answers no renewal of the node; bootstrap CSRs it approves.
    world.api.approve = lambda csr: True if csr["spec"]["username"].startswith("system:bootstrap:") else None
    with structlog.testing.capture_logs() as logs:
        rotation = asyncio.create_task(identity.run(kube))
        try:
            async with asyncio.timeout(4):
                while not any("still serves" in e["event"] for e in logs):
                    await asyncio.sleep(0.05)
            assert identity.current is first and await whoami(kube) == f"system:node:{NODE}"
            async with asyncio.timeout(15):
                while identity.rotations < 1:
                    await asyncio.sleep(0.05)
        finally:
            rotation.cancel()
            await asyncio.gather(rotation, return_exceptions=True)
            await kube.close()
    current = identity.current
    assert current is not None and current.serial != first.serial
    # The new one came through the bootstrap token, once the old certificate had expired; before
    # that, renewals were asked for as the node (and nobody answered them).
    (issuer_csr,) = [c for c in world.api.csrs.values() if base64.b64decode(c["status"].get("certificate", "")) == current.cert_pem]
    assert issuer_csr["spec"]["username"] == "system:bootstrap:abcdef"
    before = [c["spec"]["username"] for c in world.api.csrs.values()][1:list(world.api.csrs.values()).index(issuer_csr)]
    assert before and set(before) == {f"system:node:{NODE}"}


def test_settings_accept_one_credential_source() -> None:
    with pytest.raises(ValueError, match="not both"):
        VkSettings.model_validate({"kube": {"kubeconfig": "/a"}, "identity": {"bootstrap_kubeconfig": "/b"}})
    with pytest.raises(ValueError, match="not both"):
        IdentitySettings(bootstrap_kubeconfig=Path("/a"), bootstrap_token_dir=Path("/b"))
    with pytest.raises(ValueError, match="600"):
        IdentitySettings(certificate_seconds=60)
    assert IdentitySettings().rotation_fraction == (0.7, 0.9)
