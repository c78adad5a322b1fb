"""The kubelet HTTPS API over real TLS: only callers the cluster authenticates (a client certificate
from its CA, or a token TokenReview accepts) and authorizes (SubjectAccessReview) read logs; the
query becomes typed LogOptions; bad input is 400, unknown pods 404, exec 501 - never 500. Review
answers are cached like the kubelet's, and a flood of made-up tokens costs a bounded number of
TokenReviews."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kod import errors, spdy
from kod.kube import KubeClient
from kod.kube_config import Connection
from tests.unit.spdy_client import Client, status_of
from tests.unit.vk_fakes import TOKEN, FakeInterLink
from vk_bridge.certs import ServingCert, cert_fits, make_csr, make_key, server_ssl_context
from vk_bridge.kubelet_api import (
    DEADLINES, Authenticator, create_app, parse_log_options, start_server, subresource_for, user_from_peercert,
)
from vk_bridge.provider import InterLinkProvider
from tests.unit.test_vk_provider import create_request


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


class Pki:
    """A throwaway CA with server and client certificates."""

    def __init__(self, tmp: Path, name: str = "test-ca") -> None:
        self.dir = tmp
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, stem: str, cn: str, org: str | None = None, *, server: bool = False, days: int = 30) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        crt, key_file = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return crt, key_file


class FakeAuthApi:
    """TokenReview and SubjectAccessReview like the API server answers them."""

    def __init__(self) -> None:
        self.tokens = {"good-token": {"username": "alice", "groups": ["devs"]}, "weak-token": {"username": "bob", "groups": []}}
        self.allowed = {("alice", "proxy"), ("kube-apiserver-kubelet-client", "proxy"), ("alice", "metrics")}
        self.reviews: list[dict[str, Any]] = []
        self.token_reviews = 0
        self.app = web.Application()
        self.app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.token_review)
        self.app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self.access_review)

    async def token_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.token_reviews += 1
        await asyncio.sleep(0.01)  # a review takes a moment: concurrent requests overlap
        user = self.tokens.get(body["spec"]["token"])
        return web.json_response({**body, "status": {"authenticated": bool(user), **({"user": user} if user else {})}}, status=201)

    async def access_review(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.reviews.append(body["spec"])
        ra = body["spec"]["resourceAttributes"]
        ok = (body["spec"]["user"], ra["subresource"]) in self.allowed and ra["resource"] == "nodes" and ra["name"] == "vnode"
        return web.json_response({**body, "status": {"allowed": ok}}, status=201)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Setup:
    def __init__(self, url: str, pki: Pki, auth_api: FakeAuthApi, interlink: FakeInterLink, clock: Clock) -> None:
        self.url, self.pki, self.auth_api, self.interlink, self.clock = url, pki, auth_api, interlink, clock

    def client_ssl(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.pki.ca_pem)
        if cert:
            ctx.load_cert_chain(*cert)
        return ctx

    async def get(self, path: str, *, cert: tuple[Path, Path] | None = None, token: str | None = None) -> tuple[int, str]:
        status, _, body = await self.get_full(path, cert=cert, token=token)
        return status, body

    async def get_full(self, path: str, *, cert: tuple[Path, Path] | None = None, token: str | None = None,
                       session: aiohttp.ClientSession | None = None) -> tuple[int, Mapping[str, str], str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        own = session is None
        s = session or aiohttp.ClientSession()
        try:
            async with s.get(self.url + path, ssl=self.client_ssl(cert), headers=headers) as r:
                return r.status, dict(r.headers), await r.text()
        finally:
            if own:
                await s.close()


@pytest.fixture
async def setup(tmp_path: Path, aiohttp_server: Callable[..., Any]) -> AsyncIterator[Setup]:
    pki = Pki(tmp_path)
    auth_api, interlink = FakeAuthApi(), FakeInterLink()
    api_server: TestServer = await aiohttp_server(auth_api.app)
    il_server: TestServer = await aiohttp_server(interlink.app)
    kube = KubeClient(Connection(host=str(api_server.make_url("")).rstrip("/"), ssl_context=None, authorization=lambda: None), backoff=())
    provider = InterLinkProvider(str(il_server.make_url("")), TOKEN, backoff=())
    await provider.create_pod(create_request(uid="u1", name="p1"))
    crt, key = pki.issue("serving", "system:node:vnode", "system:nodes", server=True)
    clock = Clock()
    auth = Authenticator(kube, "vnode", token_ttl=120, token_failure_ttl=10, allowed_ttl=300, denied_ttl=30,
                         reviews_per_second=5, burst=20, clock=clock)
    app = create_app(provider=provider, kube=kube, auth=auth)
    runner, port = await start_server(app, "127.0.0.1", 0, server_ssl_context(ServingCert(crt, key), pki.ca_pem))
    yield Setup(f"https://127.0.0.1:{port}", pki, auth_api, interlink, clock)
    await runner.cleanup()
    await provider.close()
    await kube.close()


async def test_the_api_servers_client_certificate_reads_logs(setup: Setup) -> None:
    cert = setup.pki.issue("apiserver", "kube-apiserver-kubelet-client", "kubeadm:cluster-admins")
    setup.interlink.logs["u1/c"] = ["one", "two", "three"]
    status, body = await setup.get("/containerLogs/ns/p1/c?tailLines=1", cert=cert)
    assert (status, body) == (200, "three\n")  # the tail option reached the runtime
    review = setup.auth_api.reviews[-1]
    assert review["user"] == "kube-apiserver-kubelet-client" and review["groups"] == ["kubeadm:cluster-admins"]
    assert review["resourceAttributes"] == {"verb": "get", "resource": "nodes", "subresource": "proxy", "name": "vnode", "version": "v1"}


async def test_a_token_the_cluster_accepts_reads_logs_and_follow_streams(setup: Setup) -> None:
    status, body = await setup.get("/containerLogs/ns/p1/c?follow=true", token="good-token")
    assert status == 200 and body.splitlines() == ["hello from c", "follow 0", "follow 1", "follow 2"]


@pytest.mark.parametrize(
    ("token", "path", "status"),
    [
        (None, "/containerLogs/ns/p1/c", 401),
        ("forged-token", "/containerLogs/ns/p1/c", 401),
        ("weak-token", "/containerLogs/ns/p1/c", 403),
        ("good-token", "/containerLogs/ns/nope/c", 404),
        ("good-token", "/containerLogs/ns/p1/nope", 404),
        ("good-token", "/containerLogs/ns/p1/c?tailLines=abc", 400),
        ("good-token", "/containerLogs/ns/p1/c?follow=maybe", 400),
        ("good-token", "/containerLogs/ns/p1/c?sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z", 400),
        ("good-token", "/containerLogs/ns/p1/c?tailLines=-1", 400),
        ("good-token", "/exec/ns/p1/c?command=sh", 400),  # no stream asked for
        ("good-token", "/exec/ns/p1/c?command=sh&output=1", 400),  # no upgrade
        ("good-token", "/exec/ns/p1/nope?command=sh&output=1", 404),
        ("good-token", "/attach/ns/nope/c?output=1", 404),
        ("weak-token", "/exec/ns/p1/c?command=sh&output=1", 403),
        (None, "/portForward/ns/p1", 401),
        ("good-token", "/portForward/ns/p1", 400),  # no upgrade
        ("good-token", "/run/ns/p1/c", 501),
        ("good-token", "/nothing/here", 404),
    ],
)
async def test_bad_requests_get_clear_answers_never_500(setup: Setup, token: str | None, path: str, status: int) -> None:
    got, body = await setup.get(path, token=token)
    assert got == status, body
    answer = json.loads(body)  # a Kubernetes Status, which kubectl prints
    assert answer["kind"] == "Status" and answer["code"] == status and answer["message"]


async def test_a_certificate_from_another_ca_is_refused(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other", name="evil-ca")
    cert = other.issue("evil", "kube-apiserver-kubelet-client")
    with pytest.raises(aiohttp.ClientError):
        await setup.get("/containerLogs/ns/p1/c", cert=cert)


async def test_metrics_count_api_requests(setup: Setup) -> None:
    status, body = await setup.get("/metrics", token="good-token")
    assert status == 200 and 'kod_vk_api_requests_total{verb="POST",resource="subjectaccessreviews"}' in body


async def test_a_rejected_token_is_reviewed_again_only_after_10_s_an_accepted_one_after_2_min(setup: Setup) -> None:
    api = setup.auth_api
    assert (await setup.get("/healthz", token="forged-token"))[0] == 401
    assert (await setup.get("/healthz", token="forged-token"))[0] == 401
    assert api.token_reviews == 1
    setup.clock.now += 11
    assert (await setup.get("/healthz", token="forged-token"))[0] == 401
    assert api.token_reviews == 2

    assert (await setup.get("/containerLogs/ns/p1/c", token="good-token"))[0] == 200
    setup.clock.now += 110
    assert (await setup.get("/containerLogs/ns/p1/c", token="good-token"))[0] == 200
    assert api.token_reviews == 3
    setup.clock.now += 11  # 121 s after the review
    assert (await setup.get("/containerLogs/ns/p1/c", token="good-token"))[0] == 200
    assert api.token_reviews == 4


async def test_access_reviews_are_cached_5_min_when_allowed_and_30_s_when_denied(setup: Setup) -> None:
    api = setup.auth_api
    for _ in range(2):
        assert (await setup.get("/containerLogs/ns/p1/c", token="weak-token"))[0] == 403
        assert (await setup.get("/containerLogs/ns/p1/c", token="good-token"))[0] == 200
    assert len(api.reviews) == 2
    setup.clock.now += 31
    assert (await setup.get("/containerLogs/ns/p1/c", token="weak-token"))[0] == 403
    assert (await setup.get("/containerLogs/ns/p1/c", token="good-token"))[0] == 200
    assert len(api.reviews) == 3  # only the denial was asked again
    api.allowed.discard(("alice", "proxy"))
    setup.clock.now += 270  # 301 s after alice's review: asked again, and now refused
    assert (await setup.get("/containerLogs/ns/p1/c", token="good-token"))[0] == 403


async def test_a_flood_of_bad_tokens_costs_a_bounded_number_of_token_reviews(setup: Setup) -> None:
    api = setup.auth_api
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        same = [setup.get_full("/healthz", token="forged-token", session=session) for _ in range(200)]
        made_up = [setup.get_full("/healthz", token=secrets.token_urlsafe(16), session=session) for _ in range(300)]
        answers = await asyncio.gather(*same, *made_up)
    codes = [status for status, _, _ in answers]
    assert set(codes) <= {401, 429} and codes.count(429) >= 250
    assert all(int(headers["Retry-After"]) >= 1 for status, headers, _ in answers if status == 429)
    # The bucket holds 20 and the clock did not move: the same token is reviewed once, the
    # made-up ones until the bucket is empty.
    assert api.token_reviews <= 20
    # A caller whose token is known still gets in while the flood is throttled (the API server
    # itself calls with its client certificate and needs no review at all).
    cert = setup.pki.issue("apiserver", "kube-apiserver-kubelet-client")
    assert (await setup.get("/containerLogs/ns/p1/c", cert=cert))[0] == 200
    setup.clock.now += 1  # five more reviews a second
    assert (await setup.get("/containerLogs/ns/p1/c", token="good-token"))[0] == 200


def test_log_options_parse_like_the_kubelet() -> None:
    opts = parse_log_options({"follow": "true", "tailLines": "10", "limitBytes": "100", "timestamps": "1",
                              "sinceTime": "2026-01-02T03:04:05Z", "previous": "false", "container": "ignored"})
    assert (opts.follow, opts.tailLines, opts.limitBytes, opts.timestamps, opts.previous) == (True, 10, 100, True, False)
    assert opts.sinceTime == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(errors.InvalidInput, match="stream"):
        parse_log_options({"stream": "Stderr"})


@pytest.mark.parametrize(
    ("path", "sub"),
    [("/containerLogs/a/b/c", "proxy"), ("/metrics", "metrics"), ("/metrics/cadvisor", "metrics"), ("/logs/x", "log"),
     ("/stats/summary", "stats"), ("/exec/a/b/c", "proxy")],
)
def test_paths_map_to_node_subresources_like_the_kubelet(path: str, sub: str) -> None:
    assert subresource_for(path) == sub


def test_peer_certificate_subject_becomes_user_and_groups() -> None:
    peer = {"subject": ((("organizationName", "system:masters"),), (("organizationName", "ops"),), (("commonName", "carol"),))}
    user = user_from_peercert(peer)
    assert user is not None and user.name == "carol" and user.groups == ("system:masters", "ops")
    assert user_from_peercert(None) is None


def test_serving_csr_is_what_the_kubelet_serving_signer_accepts(tmp_path: Path) -> None:
    key = make_key()
    csr = x509.load_pem_x509_csr(make_csr(key, "vnode", ["vm", "vnode"], ["192.0.2.2", "127.0.0.1"]))
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:vnode"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vm", "vnode"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.2", "127.0.0.1"]


def test_a_stored_certificate_is_reused_only_when_it_fits(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    crt, key = pki.issue("serving", "system:node:vnode", "system:nodes", server=True)
    assert cert_fits(crt, key, ["localhost"], ["127.0.0.1"])
    assert not cert_fits(crt, key, ["localhost", "other-host"], ["127.0.0.1"])  # a SAN is missing
    assert not cert_fits(crt, key, ["localhost"], ["127.0.0.1"], now=datetime.now(UTC) + timedelta(days=25))  # expires soon
    assert not cert_fits(tmp_path / "missing.crt", key, [], [])
    assert cert_fits(crt, key, ["localhost"], ["127.0.0.1"], ca_pem=pki.ca_pem.encode())
    (tmp_path / "new").mkdir()
    new_ca = Pki(tmp_path / "new", name="recreated-cluster-ca").ca_pem.encode()
    assert not cert_fits(crt, key, ["localhost"], ["127.0.0.1"], ca_pem=new_ca)  # the cluster was re-created


# --- exec, attach, port-forward over SPDY, end to end through the provider -----------------------


def _port(setup: Setup) -> int:
    return int(setup.url.rsplit(":", 1)[1])


async def _spdy(setup: Setup, path: str, cert: tuple[Path, Path] | None, headers: list[tuple[str, str]] | None = None,
                token: str | None = None) -> tuple[Client, int, dict[str, str]]:
    extra = list(headers or [])
    if token:
        extra.append(("Authorization", f"Bearer {token}"))
    return await Client.connect(_port(setup), path, extra, ssl_context=setup.client_ssl(cert))


async def test_the_api_server_execs_over_spdy_and_gets_the_exit_code(setup: Setup) -> None:
    cert = setup.pki.issue("apiserver", "kube-apiserver-kubelet-client", "kubeadm:cluster-admins")
    v4 = [("X-Stream-Protocol-Version", "v4.channel.k8s.io")]
    client, status, _ = await _spdy(setup, "/exec/ns/p1/c?command=echo&command=hi&output=1&error=1", cert, v4)
    assert status == 101
    error, stdout, _ = (client.open({"streamtype": [k]}) for k in ("error", "stdout", "stderr"))
    data, ended, _ = await client.collect()
    assert data[stdout] == b"hi\n" and status_of(data[error]) == {"metadata": {}, "status": "Success"}
    assert setup.auth_api.reviews[-1]["resourceAttributes"]["verb"] == "create"  # POST: nodes/proxy create

    client, status, _ = await _spdy(setup, "/exec/ns/p1/u1/c?command=exit&command=3&output=1", cert, v4)
    assert status == 101
    error = client.open({"streamtype": ["error"]})
    client.open({"streamtype": ["stdout"]})
    data, _, _ = await client.collect()
    assert status_of(data[error])["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


async def test_stdin_and_resize_reach_the_process_with_a_bearer_token(setup: Setup) -> None:
    headers = [("X-Stream-Protocol-Version", "v4.channel.k8s.io")]
    client, status, _ = await _spdy(setup, "/exec/ns/p1/c?command=cat&input=1&output=1&tty=1", None, headers, token="good-token")
    assert status == 101
    error, stdin, stdout, resize = (client.open({"streamtype": [k]}) for k in ("error", "stdin", "stdout", "resize"))
    client.send(spdy.DataFrame(resize, b'{"Width":100,"Height":30}'))
    client.send(spdy.DataFrame(stdin, b"typed"))
    await asyncio.sleep(0.2)
    client.send(spdy.DataFrame(stdin, b"", spdy.FLAG_FIN))
    data, _, _ = await client.collect()
    assert b"typed" in data[stdout] and b'resize {"Width": 100, "Height": 30}' in data[stdout]
    assert status_of(data[error])["status"] == "Success"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/exec/ns/p1/c?command=not-running&output=1", 400, 'container "c" is not running'),
        ("/exec/ns/p1/c?command=true&output=1&tty=1&input=1", 403, "unable to negotiate protocol"),
        ("/exec/ns/p1/wrong-uid/c?command=true&output=1", 404, "uid wrong-uid"),
    ],
)
async def test_refused_streams_are_status_answers_before_any_upgrade(setup: Setup, path: str, status: int, message: str) -> None:
    headers = [("X-Stream-Protocol-Version", "v5.channel.k8s.io")] if status == 403 else []
    _, got, answer = await _spdy(setup, path, None, headers, token="good-token")
    assert got == status
    body = json.loads(answer["body"])
    assert body["kind"] == "Status" and body["code"] == status and message in body["message"]
    if status == 403:
        assert "v4.channel.k8s.io" in answer["x-accepted-stream-protocol-versions"]


async def test_unauthenticated_streams_get_401_and_unauthorized_ones_403(setup: Setup) -> None:
    for token, status in ((None, 401), ("forged-token", 401), ("weak-token", 403)):
        for path in ("/exec/ns/p1/c?command=true&output=1", "/attach/ns/p1/c?output=1", "/portForward/ns/p1"):
            _, got, answer = await _spdy(setup, path, None, token=token)
            assert got == status and json.loads(answer["body"])["code"] == status


async def test_port_forward_carries_each_pair_and_reports_a_refused_port(setup: Setup) -> None:
    client, status, headers = await _spdy(setup, "/portForward/ns/p1", None, [("X-Stream-Protocol-Version", "portforward.k8s.io")],
                                          token="good-token")
    assert status == 101 and headers["x-stream-protocol-version"] == "portforward.k8s.io"
    error = client.open({"streamtype": ["error"], "port": ["80"], "requestid": ["0"]})
    data_id = client.open({"streamtype": ["data"], "port": ["80"], "requestid": ["0"]})
    bad_error = client.open({"streamtype": ["error"], "port": ["81"], "requestid": ["1"]})
    client.open({"streamtype": ["data"], "port": ["81"], "requestid": ["1"]})
    client.send(spdy.DataFrame(data_id, b"get /"))
    client.send(spdy.DataFrame(data_id, b"", spdy.FLAG_FIN))
    got: dict[int, bytes] = {}
    ended: set[int] = set()
    while not {error, data_id, bad_error} <= ended:
        frame = await client.frame(10)
        if isinstance(frame, spdy.DataFrame):
            got[frame.stream_id] = got.get(frame.stream_id, b"") + frame.data
            if frame.flags & spdy.FLAG_FIN:
                ended.add(frame.stream_id)
    assert got[data_id] == b"GET /" and got.get(error, b"") == b""
    assert got[bad_error].decode().startswith("error forwarding port 81 to pod ns/p1: failed to connect to localhost:81")


# --- connections: nobody holds one without asking -------------------------------------------------


async def _ended_within(port: int, ctx: ssl.SSLContext | None, send: bytes, seconds: float) -> bool:
    """Whether the server closes a connection that sent `send` (and then nothing) in time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(send)
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_a_connection_that_never_sends_its_request_headers_is_closed(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    crt, key = pki.issue("serving", "system:node:vnode", "system:nodes", server=True)
    kube = KubeClient(Connection(host="http://127.0.0.1:9", ssl_context=None, authorization=lambda: None), backoff=())
    app = create_app(provider=InterLinkProvider("http://127.0.0.1:9", TOKEN, backoff=()), kube=kube,
                     auth=Authenticator(kube, "vnode"), header_timeout=0.05)
    runner, port = await start_server(app, "127.0.0.1", 0, server_ssl_context(ServingCert(crt, key), pki.ca_pem))
    try:
        ctx = ssl.create_default_context(cadata=pki.ca_pem)
        assert await _ended_within(port, ctx, b"", 2)  # no request at all
        assert await _ended_within(port, ctx, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 2)  # half of one
        assert await _ended_within(port, None, b"", 2)  # not even the TLS handshake
        assert len(app[DEADLINES]) == 0
    finally:
        await runner.cleanup()
        await kube.close()


async def test_a_refused_request_closes_its_connection_and_a_let_in_one_keeps_it(setup: Setup) -> None:
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await setup.get_full("/containerLogs/ns/p1/c", session=session)
        assert status == 401 and headers.get("Connection", "").lower() == "close"
        cert = setup.pki.issue("apiserver", "kube-apiserver-kubelet-client", "kubeadm:cluster-admins")
        status, headers, _ = await setup.get_full("/healthz", cert=cert, session=session)
        assert status == 200 and headers.get("Connection", "").lower() != "close"
