"""exec, attach, port-forward, logs and metrics of the desktop's virtual node are only for those
allowed, attacked end to end against the real API server, the real vk_bridge and the real
metrics-server.

1. User B (pods only in B's own namespace, B's real kubeconfig) runs `kubectl exec`, `attach`,
   `port-forward`, `cp`, `logs` and `top` against A's session pod on A's desktop, and the same
   subresources as raw API requests: 403 from the API server. A's own requests work.
2. Straight at the virtual node's kubelet port (the Node's InternalIP and
   daemonEndpoints.kubeletEndpoint): no credentials, a made-up token, B's token, B's client
   certificate, a bootstrap token of the desktops' group, and another desktop's node certificate
   get a 401/403 Status, within seconds and never a 101, for exec (a SPDY upgrade as the API
   server sends it, and a plain POST), attach, portForward, containerLogs, /stats/summary,
   /metrics/resource, /metrics, /pods, /runningpods, /configz and /debug. The API server's
   kubelet-client certificate, and the admin's (whom the SubjectAccessReview allows), get through.
3. metrics-server (the aggregated metrics.k8s.io API): without credentials, with B's token, B's
   certificate, or B's certificate and forged front-proxy headers naming the admin, its nodes,
   A's namespace's pods and /metrics are refused; the API server's front-proxy certificate gets
   A's pods for A. It listens on the cluster host's node address only.
4. Broken upgrades at the kubelet port (an unknown stream protocol, a WebSocket upgrade, huge or
   countless headers, a connection that never sends a request, an upgrade that never opens its
   streams, a header block that inflates without bound) get a Status or a close within seconds,
   and vk_bridge stays up: the same process, the node Ready, and exec works afterwards.

The virtual node is a private stack (node `<virtual node>-secstreams`), started from this
checkout, so that these tests run the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kod import spdy
from localenv import desktop_stack, node_join, users
from localenv.handle import ClusterHandle
from localenv.progress import Progress
from tests.fixtures.users import KubectlAs
from tests.fixtures.virtual_node import VirtualNode, kubectl_stream
from tests.unit.spdy_client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

#: Every refusal must come within this many seconds (a hang is a failure, not a refusal).
ANSWER_WITHIN = 5.0
#: vk_bridge's deadline for a connection's first request headers (kubelet_api.HEADER_TIMEOUT).
HEADER_TIMEOUT = 10.0
#: How long an upgraded client may take to open its streams (the kubelet's default, 30 s).
STREAM_TIMEOUT = 30.0
#: The stream protocols the API server offers a kubelet for exec and attach, best first.
REMOTECOMMAND = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")


def protocol_headers(protocols: tuple[str, ...]) -> list[tuple[str, str]]:
    """One X-Stream-Protocol-Version per protocol, and the API server's User-Agent."""
    return [("User-Agent", "kube-apiserver/v1.35.8"), *(("X-Stream-Protocol-Version", p) for p in protocols)]


def upgrade_headers(protocols: tuple[str, ...]) -> list[tuple[str, str]]:
    """The headers of the API server's SPDY upgrade request to a kubelet (client-go's spdy
    round tripper)."""
    return [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("Content-Length", "0"), *protocol_headers(protocols)]


# --- the node ---------------------------------------------------------------------------------


def secstreams_settings() -> desktop_stack.StackSettings:
    return desktop_stack.load_stack_settings().private("secstreams", port_offset=800, kubelet_port_offset=8)


@pytest.fixture(scope="module")
def node(cluster: ClusterHandle, docker_engine: Any, testbox_image: str, user_a: users.User) -> Iterator[VirtualNode]:
    """A's desktop: a private stack of A's, from this checkout."""
    settings = secstreams_settings()
    try:
        stack = desktop_stack.up(Progress(), cluster=cluster, settings=settings)
        yield VirtualNode(stack=stack, cluster=cluster, docker=docker_engine, image=testbox_image)
    finally:
        desktop_stack.down(Progress(), cluster=cluster, settings=settings)


SERVER = "mkdir -p /tmp/www && echo served-to-the-owner > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"


@pytest.fixture(scope="module")
def a_pod(node: VirtualNode) -> Iterator[tuple[str, str]]:
    """A's session pod on A's desktop, in A's namespace: (namespace, name). `main` echoes what is
    attached to it, and says so in its log; `web` serves the pod's 127.0.0.1:8080."""
    ns = node.owner_namespace
    node.cluster.kubectl("create", "namespace", ns, check=False)
    name = f"viewer-{uuid.uuid4().hex[:6]}"
    node.create(ns, node.pod(name, [
        {"name": "main", "stdin": True,
         "command": ["sh", "-c", "echo session-of-a; while read line; do echo \"attached: $line\"; done"]},
        {"name": "web", "command": ["sh", "-c", SERVER]},
    ]))
    try:
        node.wait(ns, name, lambda p: len(p.get("status", {}).get("containerStatuses", [])) == 2
                  and all(s.get("ready") for s in p["status"]["containerStatuses"]), timeout=120, what="both containers running")
        yield ns, name
    finally:
        node.cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false", check=False)


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


@pytest.fixture(scope="module")
def kubelet(node: VirtualNode) -> Endpoint:
    """The kubelet API as the Node advertises it."""
    status = node.node()["status"]
    address = next(a["address"] for a in status["addresses"] if a["type"] == "InternalIP")
    return Endpoint(address, int(status["daemonEndpoints"]["kubeletEndpoint"]["Port"]))


# --- credentials ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Who knocks: a client certificate (cert, key; the key may be in the cert file) and/or a token."""

    cert: tuple[Path, Path | None] | None = None
    token: str | None = None


def tls_context(creds: Credentials, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if ca is None:  # who serves is not the question of these tests; who may ask is
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ctx.check_hostname = False
    if creds.cert:
        ctx.load_cert_chain(str(creds.cert[0]), str(creds.cert[1]) if creds.cert[1] else None)
    return ctx


def pki(cluster: ClusterHandle) -> Path:
    return cluster.kubeconfig.parent / "pki"


def cert_of(cluster: ClusterHandle, name: str) -> Credentials:
    return Credentials(cert=(pki(cluster) / f"{name}.crt", pki(cluster) / f"{name}.key"))


def user_cert(user: users.User, into: Path) -> Credentials:
    """The client certificate in a user's own kubeconfig, as files."""
    assert user.kubeconfig is not None
    entry = json.loads(user.kubeconfig.read_text())["users"][0]["user"]  # localenv writes JSON
    cert, key = into / f"{user.name}.crt", into / f"{user.name}.key"
    cert.write_bytes(base64.b64decode(entry["client-certificate-data"]))
    key.write_bytes(base64.b64decode(entry["client-key-data"]))
    key.chmod(0o600)
    return Credentials(cert=(cert, key))


@pytest.fixture(scope="module")
def attackers(cluster: ClusterHandle, user_b: users.User, desktop_b: VirtualNode,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Credentials, int]]]:
    """name -> (credentials, the refusal they must get: 401 unauthenticated, 403 not allowed)."""
    tmp = tmp_path_factory.mktemp("attackers")
    # B's token: what a pod B runs in B's namespace reads from its service account volume.
    b_token = cluster.kubectl("create", "token", "default", "-n", user_b.namespace, "--duration=10m").stdout.strip()
    # A bootstrap token of the desktops' group, as an admin hands one to a joining desktop.
    probe_node = f"secstreams-probe-{uuid.uuid4().hex[:6]}"
    bootstrap = node_join.create_bootstrap_token(cluster, node_name=probe_node, minutes=10)
    try:
        yield {
            "no credentials": (Credentials(), 401),
            "a made-up token": (Credentials(token=f"{uuid.uuid4().hex[:6]}.{uuid.uuid4().hex[:16]}"), 401),
            "B's token": (Credentials(token=b_token), 403),
            "B's client certificate": (user_cert(user_b, tmp), 403),
            "a bootstrap token": (Credentials(token=bootstrap), 403),
            "B's desktop's node certificate": (Credentials(cert=(desktop_b.stack.vk_client_file, None)), 403),
        }
    finally:
        node_join.delete_bootstrap_tokens(cluster, probe_node)


# --- raw HTTP at a port -----------------------------------------------------------------------


@dataclass
class Answer:
    """What came back: status 0 when the server closed without a word, -1 when it said nothing
    within the timeout (a hang)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    error: str = ""

    def status_body(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.body))
        except ValueError:
            return {}


def ask(where: Endpoint, method: str, path: str, creds: Credentials = Credentials(), *,
        headers: list[tuple[str, str]] | None = None, raw_headers: bytes = b"", timeout: float = ANSWER_WITHIN) -> Answer:
    """One HTTP/1.1 request over TLS, read by hand (so that a 101 or a hang shows as it is)."""
    started = time.monotonic()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {where.address}:{where.port}", *(f"{k}: {v}" for k, v in headers or [])]
    if creds.token:
        lines.append(f"Authorization: Bearer {creds.token}")
    request = ("\r\n".join(lines) + "\r\n").encode() + raw_headers + b"\r\n"
    data = b""
    try:
        with socket.create_connection((where.address, where.port), timeout=timeout) as raw, \
                tls_context(creds).wrap_socket(raw) as tls:
            tls.settimeout(max(0.1, timeout - (time.monotonic() - started)))
            try:
                tls.sendall(request)
            except (ssl.SSLError, OSError):
                pass  # the server may answer and close while a huge request is still going out
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not head:
                return Answer(0, seconds=time.monotonic() - started)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            # A header sent more than once (the kubelet sends one X-Accepted-Stream-Protocol-Versions
            # per protocol) reads as its values joined with ", ", as HTTP allows.
            got: dict[str, str] = {}
            for k, _, v in (h.partition(":") for h in header_lines):
                key = k.strip().lower()
                got[key] = f"{got[key]}, {v.strip()}" if key in got else v.strip()
            status = int(status_line.split()[1])
            length = int(got.get("content-length", "0") or 0) if status != 101 else 0
            chunked = status != 101 and got.get("transfer-encoding", "").lower() == "chunked"
            while len(body) < length or (chunked and not body.endswith(b"0\r\n\r\n")):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                body += chunk
            return Answer(status, got, body, time.monotonic() - started)
    except TimeoutError:
        return Answer(-1 if not data else 0, seconds=time.monotonic() - started, error="timed out")
    except (ssl.SSLError, ConnectionError) as exc:
        return Answer(0, seconds=time.monotonic() - started, error=repr(exc))


def kubelet_requests(ns: str, pod: str) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(what, method, path, headers) of everything the kubelet API serves or refuses."""
    exec_path = f"/exec/{ns}/{pod}/main?command=id&input=1&output=1&error=1"
    return [
        ("exec, SPDY upgrade", "POST", exec_path, upgrade_headers(REMOTECOMMAND)),
        ("exec, GET upgrade", "GET", exec_path, upgrade_headers(REMOTECOMMAND)),
        ("exec, plain POST", "POST", exec_path, [("Content-Length", "0")]),
        ("attach, SPDY upgrade", "POST", f"/attach/{ns}/{pod}/main?input=1&output=1", upgrade_headers(REMOTECOMMAND)),
        ("portForward, SPDY upgrade", "POST", f"/portForward/{ns}/{pod}", upgrade_headers(("portforward.k8s.io",))),
        ("containerLogs", "GET", f"/containerLogs/{ns}/{pod}/main", []),
        ("stats/summary", "GET", "/stats/summary", []),
        ("metrics/resource", "GET", "/metrics/resource", []),
        ("metrics", "GET", "/metrics", []),
        ("pods", "GET", "/pods", []),
        ("runningpods", "GET", "/runningpods/", []),
        ("configz", "GET", "/configz", []),
        ("debug", "GET", "/debug/pprof/", []),
        ("healthz", "GET", "/healthz", []),
    ]


def refusal_problem(answer: Answer, code: int) -> str:
    """Why `answer` is not a quick Kubernetes Status refusal with `code` ('' when it is)."""
    if answer.status != code:
        return f"got {answer.status} ({answer.error or answer.body[:200]!r}) instead of {code}"
    status = answer.status_body()
    if status.get("kind") != "Status" or status.get("code") != code:
        return f"the {code} is not a Status: {answer.body[:200]!r}"
    if answer.seconds > ANSWER_WITHIN:
        return f"the answer took {answer.seconds:.1f} s"
    return ""


# --- 1. through the API server --------------------------------------------------------------


def forbidden(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode != 0 and ("Forbidden" in proc.stderr or "forbidden" in proc.stderr)


@pytest.fixture
def b(kubectl_as: Callable[[users.User], KubectlAs], user_b: users.User) -> KubectlAs:
    return kubectl_as(user_b)


@pytest.fixture
def a(kubectl_as: Callable[[users.User], KubectlAs], user_a: users.User) -> KubectlAs:
    return kubectl_as(user_a)


def test_b_cannot_exec_attach_forward_copy_or_read_logs_of_as_pod(node: VirtualNode, a_pod: tuple[str, str], b: KubectlAs,
                                                                   tmp_path: Path) -> None:
    ns, name = a_pod
    (tmp_path / "loot").mkdir()
    attempts = {
        "exec": b("exec", name, "-n", ns, "-c", "main", "--", "id", timeout=30),
        "exec -i": b("exec", "-i", name, "-n", ns, "-c", "main", "--", "sh", input="id\n", timeout=30),
        "attach": b("attach", "-i", name, "-n", ns, "-c", "main", input="hello\n", timeout=30),
        "port-forward": b("port-forward", "-n", ns, f"pod/{name}", ":8080", timeout=30),
        "cp from": b("cp", f"{ns}/{name}:/etc/hostname", str(tmp_path / "loot" / "h"), "-c", "main", timeout=30),
        "cp to": b("cp", __file__, f"{ns}/{name}:/tmp/planted", "-c", "main", timeout=30),
        "logs": b("logs", name, "-n", ns, "-c", "main", timeout=30),
        "logs -f": b("logs", "-f", name, "-n", ns, "-c", "main", timeout=30),
        "node proxy logs": b("get", "--raw", f"/api/v1/nodes/{node.name}/proxy/containerLogs/{ns}/{name}/main", timeout=30),
    }
    let_through = {what: proc.stdout[:200] or proc.stderr[:200] for what, proc in attempts.items() if not forbidden(proc)}
    assert not let_through, f"B got past the API server: {let_through}"
    assert "session-of-a" not in "".join(p.stdout for p in attempts.values())
    assert not any((tmp_path / "loot").iterdir())


def test_b_is_refused_each_streaming_subresource_itself(cluster: ClusterHandle, node: VirtualNode, a_pod: tuple[str, str],
                                                        user_b: users.User, tmp_path: Path) -> None:
    """The same requests as kubectl's, without its GET of the pod first: the API server refuses
    the subresource itself (pods/exec, pods/attach, pods/portforward, pods/log, nodes/proxy)."""
    ns, name = a_pod
    creds = user_cert(user_b, tmp_path)
    server = json.loads(Path(str(user_b.kubeconfig)).read_text())["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").rstrip("/").rpartition(":")
    api = Endpoint(host.strip("[]"), int(port))
    pod = f"/api/v1/namespaces/{ns}/pods/{name}"
    for method, path, headers in [
        ("POST", f"{pod}/exec?command=id&stdout=true&container=main", upgrade_headers(REMOTECOMMAND)),
        ("GET", f"{pod}/exec?command=id&stdout=true&container=main", [("Connection", "Upgrade"), ("Upgrade", "websocket"),
          ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
          ("Sec-WebSocket-Protocol", "v5.channel.k8s.io")]),
        ("POST", f"{pod}/attach?stdout=true&container=main", upgrade_headers(REMOTECOMMAND)),
        ("POST", f"{pod}/portforward?ports=8080", upgrade_headers(("portforward.k8s.io",))),
        ("GET", f"{pod}/log?container=main", []),
        ("GET", f"/api/v1/nodes/{node.name}/proxy/containerLogs/{ns}/{name}/main", []),
        ("GET", f"/api/v1/nodes/{node.name}/proxy/stats/summary", []),
    ]:
        answer = ask(api, method, path, creds, headers=headers)
        assert answer.status == 403 and b"session-of-a" not in answer.body, (path, answer)


def test_a_execs_copies_forwards_and_reads_logs_of_as_own_pod(a_pod: tuple[str, str], a: KubectlAs, cluster: ClusterHandle,
                                                              tmp_path: Path) -> None:
    """The control: what B was refused works for the owner (and attach, which A's role does not
    grant, for the admin), so the refusals are the checks and not a broken path."""
    ns, name = a_pod
    proc = a("exec", name, "-n", ns, "-c", "main", "--", "echo", "owner-exec")
    assert (proc.returncode, proc.stdout) == (0, "owner-exec\n"), proc.stderr
    assert "session-of-a" in a("logs", name, "-n", ns, "-c", "main").stdout
    (tmp_path / "f").write_text("from the owner\n")
    assert a("cp", str(tmp_path / "f"), f"{ns}/{name}:/tmp/f", "-c", "main").returncode == 0
    assert a("exec", name, "-n", ns, "-c", "main", "--", "cat", "/tmp/f").stdout == "from the owner\n"
    forward = subprocess.Popen([str(cluster.kubectl_path), f"--kubeconfig={a.user.kubeconfig}", "port-forward", "-n", ns,
                                f"pod/{name}", ":8080", "--address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert forward.stdout is not None
        match = re.search(r"127\.0\.0\.1:(\d+) ->", forward.stdout.readline())
        assert match, forward.stderr.read() if forward.poll() is not None else "no port"
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/index.html", timeout=30) as r:
            assert r.read() == b"served-to-the-owner\n"
    finally:
        forward.terminate()
        forward.wait(timeout=30)
    attach = kubectl_stream(cluster, "attach", "-i", name, "-n", ns, "-c", "main", stdin=True)
    try:
        attach.say_until_echoed("hello\n", "attached: hello", timeout=30)
    finally:
        attach.kill()


# --- 2. straight at the kubelet port ----------------------------------------------------------


ATTACKERS = ["no credentials", "a made-up token", "B's token", "B's client certificate", "a bootstrap token",
             "B's desktop's node certificate"]


@pytest.mark.parametrize("attacker", ATTACKERS)
def test_the_kubelet_port_refuses_every_request_of_those_not_allowed(kubelet: Endpoint, a_pod: tuple[str, str],
                                                                     attackers: dict[str, tuple[Credentials, int]],
                                                                     attacker: str) -> None:
    creds, code = attackers[attacker]
    problems = {}
    for what, method, path, headers in kubelet_requests(*a_pod):
        answer = ask(kubelet, method, path, creds, headers=headers)
        if answer.status == 101 or b"session-of-a" in answer.body or b"uid=" in answer.body:
            problems[what] = f"let in: {answer.status} {answer.body[:200]!r}"
        elif problem := refusal_problem(answer, code):
            problems[what] = problem
    assert not problems, f"{attacker} at {kubelet}: {json.dumps(problems, indent=1)}"


async def exec_over_spdy(where: Endpoint, creds: Credentials, path: str,
                         protocols: tuple[str, ...] = REMOTECOMMAND) -> tuple[int, dict[str, str], bytes]:
    """exec as the API server does it: upgrade, open the error and stdout streams, read stdout
    until the server closes. (status, answer headers, stdout)."""
    client, status, answer = await Client.connect(where.port, path, protocol_headers(protocols),
                                                  ssl_context=tls_context(creds), host=where.address)
    try:
        if status != 101:
            return status, answer, b""
        client.open({"streamtype": ["error"]})
        out = client.open({"streamtype": ["stdout"]})
        data, _, _ = await client.collect(timeout=20)
        return status, answer, data.get(out, b"")
    finally:
        client.writer.close()


def test_the_api_servers_kubelet_client_and_the_admin_get_through(cluster: ClusterHandle, node: VirtualNode,
                                                                  kubelet: Endpoint, a_pod: tuple[str, str]) -> None:
    """The control: the door opens for the API server's own identity (a client certificate, no
    review) and for an identity the SubjectAccessReview allows nodes/proxy (the admin's)."""
    ns, name = a_pod
    for who in ("apiserver-kubelet-client", "admin-client"):
        creds = cert_of(cluster, who)
        status, answer, out = asyncio.run(exec_over_spdy(kubelet, creds, f"/exec/{ns}/{name}/main?command=echo&command=let-in&output=1"))
        assert (status, out) == (101, b"let-in\n"), (who, status, answer)
        assert answer.get("x-stream-protocol-version") == "v4.channel.k8s.io"
        logs = ask(kubelet, "GET", f"/containerLogs/{ns}/{name}/main", creds)
        assert logs.status == 200 and b"session-of-a" in logs.body, (who, logs)
        summary = ask(kubelet, "GET", "/stats/summary", creds)
        assert summary.status == 200, (who, summary)
    # /pods, /runningpods and /configz are not served, even to them: no data, a Status.
    for path in ("/pods", "/runningpods/", "/configz"):
        answer = ask(kubelet, "GET", path, cert_of(cluster, "apiserver-kubelet-client"))
        assert answer.status == 404 and answer.status_body().get("kind") == "Status", (path, answer)


# --- 3. metrics-server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_server(cluster: ClusterHandle) -> Endpoint:
    """metrics-server where the API server reaches it: the address of its EndpointSlice."""
    ep = cluster.kubectl_json("get", "endpointslice", "metrics-server", "-n", "kube-system")
    return Endpoint(ep["endpoints"][0]["addresses"][0], int(ep["ports"][0]["port"]))


def test_metrics_server_refuses_strangers_and_b(cluster: ClusterHandle, metrics_server: Endpoint, a_pod: tuple[str, str],
                                               attackers: dict[str, tuple[Credentials, int]], user_a: users.User) -> None:
    ns, _ = a_pod
    b_cert = attackers["B's client certificate"][0]
    forged = [("X-Remote-User", "kubernetes-admin"), ("X-Remote-Group", "system:masters")]
    knocks = {
        "no credentials": (Credentials(), []),
        "no credentials, forged front-proxy headers": (Credentials(), forged),
        "B's token": (attackers["B's token"][0], []),
        "B's client certificate": (b_cert, []),
        "B's certificate, forged front-proxy headers": (b_cert, forged),
        "B's desktop's node certificate": (attackers["B's desktop's node certificate"][0], []),
    }
    paths = ["/apis/metrics.k8s.io/v1beta1/nodes", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", "/metrics"]
    problems = {}
    for who, (creds, headers) in knocks.items():
        for path in paths:
            answer = ask(metrics_server, "GET", path, creds, headers=headers)
            if answer.status not in (401, 403) or answer.status_body().get("kind") != "Status" or answer.seconds > ANSWER_WITHIN:
                problems[f"{who} {path}"] = f"{answer.status} {answer.body[:160]!r}"
    assert not problems, json.dumps(problems, indent=1)
    # The control: the aggregator's own certificate, asking for A, gets A's pods' metrics.
    front = cert_of(cluster, "front-proxy-client")
    answer = ask(metrics_server, "GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", front,
                 headers=[("X-Remote-User", user_a.name), ("X-Remote-Group", users.GROUP)])
    assert answer.status == 200 and answer.status_body().get("kind") == "PodMetricsList", answer


def test_b_cannot_top_as_namespace_and_a_can(a_pod: tuple[str, str], a: KubectlAs, b: KubectlAs) -> None:
    ns, _ = a_pod
    assert forbidden(b("top", "pod", "-n", ns, timeout=30))
    assert forbidden(b("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", timeout=30))
    assert forbidden(b("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", timeout=30))
    mine = a("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", timeout=30)
    assert mine.returncode == 0 and json.loads(mine.stdout)["kind"] == "PodMetricsList", mine.stderr


def listening(port: int) -> set[str]:
    """The local addresses with a TCP listener on `port`."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def test_metrics_server_listens_only_where_the_api_server_reaches_it(metrics_server: Endpoint) -> None:
    assert listening(metrics_server.port) == {metrics_server.address}


# --- 4. broken upgrades -----------------------------------------------------------------------


def vk_pid(node: VirtualNode) -> int:
    pid = desktop_stack.pid("vk", node.stack)
    assert pid is not None, "vk_bridge is not running"
    return pid


def idle_connection(where: Endpoint, *, tls: bool, send: bytes = b"", wait: float) -> tuple[str, float]:
    """Open a connection (TLS or not), send `send`, then nothing: how it ended and when."""
    started = time.monotonic()
    with socket.create_connection((where.address, where.port), timeout=wait) as raw:
        conn: socket.socket = tls_context(Credentials()).wrap_socket(raw) if tls else raw
        conn.settimeout(wait)
        try:
            if send:
                conn.sendall(send)
            data = conn.recv(4096)
            return ("closed" if not data else f"answered {data[:60]!r}"), time.monotonic() - started
        except TimeoutError:
            return "still open", time.monotonic() - started
        except (ssl.SSLError, ConnectionError) as exc:
            return f"closed ({type(exc).__name__})", time.monotonic() - started


def test_connections_that_never_finish_a_request_are_closed(kubelet: Endpoint) -> None:
    within = HEADER_TIMEOUT + 3
    for what, tls, send in [("no TLS handshake", False, b""), ("no request", True, b""),
                            ("half a request", True, b"POST /exec/a/b/c?command=id HTTP/1.1\r\nHost: x\r\nUpgrade: SPDY/3.1\r\n")]:
        ended, seconds = idle_connection(kubelet, tls=tls, send=send, wait=within + 5)
        assert ended.startswith("closed") and seconds <= within, f"{what}: {ended} after {seconds:.1f} s"


def test_a_refused_caller_does_not_keep_its_connection(kubelet: Endpoint) -> None:
    answer = ask(kubelet, "GET", "/pods", headers=[("Connection", "keep-alive")])
    assert answer.status == 401 and answer.headers.get("connection", "").lower() == "close", answer


def test_broken_upgrades_get_a_status_or_a_close_and_vk_bridge_stays_up(cluster: ClusterHandle, node: VirtualNode,
                                                                       kubelet: Endpoint, a_pod: tuple[str, str]) -> None:
    ns, name = a_pod
    pid = vk_pid(node)
    apiserver = cert_of(cluster, "apiserver-kubelet-client")
    exec_path = f"/exec/{ns}/{name}/main?command=id&output=1"
    huge = b"X-Big: " + b"a" * 200_000 + b"\r\n"
    countless = b"".join(b"X-H%d: v\r\n" % i for i in range(100_000))
    for who, creds in (("no credentials", Credentials()), ("the API server", apiserver)):
        for what, raw in (("a 200 kB header", huge), ("100,000 headers", countless)):
            answer = ask(kubelet, "POST", exec_path, creds, headers=upgrade_headers(REMOTECOMMAND), raw_headers=raw)
            assert answer.status in (0, 400, 431) and answer.seconds <= ANSWER_WITHIN, (who, what, answer)
    # An unknown stream protocol: a 403 Status naming what the node speaks, no upgrade.
    answer = ask(kubelet, "POST", exec_path, apiserver, headers=upgrade_headers(("v99.bogus.k8s.io",)))
    assert answer.status == 403 and "unable to negotiate protocol" in answer.status_body().get("message", ""), answer
    assert "v4.channel.k8s.io" in answer.headers.get("x-accepted-stream-protocol-versions", ""), answer
    # A WebSocket upgrade (kubectl's own protocol, which the API server translates): not here.
    answer = ask(kubelet, "GET", exec_path, apiserver, headers=[
        ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()), ("Sec-WebSocket-Protocol", "v5.channel.k8s.io")])
    assert answer.status == 400 and answer.status_body().get("kind") == "Status", answer
    # A SPDY header block that inflates to 64 MiB: the session is ended with a protocol error.
    assert asyncio.run(inflating_header_block(kubelet, apiserver, exec_path)) == "GOAWAY protocol error"
    # An upgrade whose client never opens its streams is closed when the kubelet's 30 s are up.
    started = time.monotonic()
    ended = asyncio.run(silent_upgrade(kubelet, apiserver, f"/exec/{ns}/{name}/main?command=sleep&command=600&output=1"))
    assert ended == "closed" and time.monotonic() - started <= STREAM_TIMEOUT + 5, ended
    # vk_bridge is the same process, the node Ready, and exec works.
    assert vk_pid(node) == pid
    assert node.node_ready() == "True"
    proc = cluster.kubectl("exec", name, "-n", ns, "-c", "main", "--", "echo", "still-here", check=False)
    assert (proc.returncode, proc.stdout) == (0, "still-here\n"), proc.stderr


async def inflating_header_block(where: Endpoint, creds: Credentials, path: str) -> str:
    client, status, answer = await Client.connect(where.port, path, protocol_headers(REMOTECOMMAND),
                                                  ssl_context=tls_context(creds), host=where.address)
    try:
        assert status == 101, answer
        deflate = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
        block = deflate.compress(bytes(64 << 20)) + deflate.flush(zlib.Z_SYNC_FLUSH)
        # SYN_STREAM (type 1): stream id 1, no associated stream, priority 0, then the block.
        payload = (1).to_bytes(4, "big") + bytes(4) + bytes(2) + block
        client.writer.write(bytes([0x80, 3, 0, 1, 0]) + len(payload).to_bytes(3, "big") + payload)
        frames = await client.frames_until_close(timeout=ANSWER_WITHIN)
        goaway = [f for f in frames if isinstance(f, spdy.GoAway)]
        return "GOAWAY protocol error" if goaway and goaway[0].status == spdy.GOAWAY_PROTOCOL_ERROR else f"frames {frames}"
    except TimeoutError:
        return "no answer"
    finally:
        client.writer.close()


async def silent_upgrade(where: Endpoint, creds: Credentials, path: str) -> str:
    client, status, answer = await Client.connect(where.port, path, protocol_headers(REMOTECOMMAND),
                                                  ssl_context=tls_context(creds), host=where.address)
    try:
        assert status == 101, answer
        await client.frames_until_close(timeout=STREAM_TIMEOUT + 5)
        return "closed"
    except TimeoutError:
        return "still open"
    finally:
        client.writer.close()
