"""`kubectl exec`, `attach`, `cp` and `port-forward` on the desktop's virtual node, end to end:
kubectl -> the API server (WebSocket v5, translated to SPDY/3.1) -> vk_bridge's kubelet API ->
interlink -> the Docker sidecar -> Docker exec/attach, or a socket dialled inside the pod's
network namespace. Held against the same commands on the cluster's real node, kod-worker.

What a user sees: the command's output and exit code (kubectl's own), stdin reaching the process,
a terminal whose size follows kubectl's (`stty size`), files copied both ways byte for byte, an
HTTP answer and a 100 MiB download through `kubectl port-forward` (to a server bound to the
pod's 127.0.0.1 only), and Status refusals for callers the cluster does not authenticate.

The stack is a private one (node `<virtual node>-streams`), started from this checkout and
stopped at the end, so that these tests run the code under test without restarting the shared
stack other sessions use.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import signal
import ssl
import struct
import subprocess
import termios
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localenv import desktop_stack
from localenv.handle import ClusterHandle
from localenv.progress import Progress
from tests.fixtures.virtual_node import VirtualNode, kubectl_stream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WORKER = "kod-worker"
BIG_MIB = 100


def streams_settings() -> desktop_stack.StackSettings:
    return desktop_stack.load_stack_settings().private("streams", port_offset=600, kubelet_port_offset=6)


@pytest.fixture(scope="module")
def streams_node(cluster: ClusterHandle, docker_engine: Any, testbox_image: str) -> Iterator[VirtualNode]:
    settings = streams_settings()
    try:
        stack = desktop_stack.up(Progress(), cluster=cluster, settings=settings)
        yield VirtualNode(stack=stack, cluster=cluster, docker=docker_engine, image=testbox_image)
    finally:
        desktop_stack.down(Progress(), cluster=cluster, settings=settings)


@pytest.fixture(scope="module")
def reference_namespace(cluster: ClusterHandle) -> Iterator[str]:
    name = f"kod-ref-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def on_worker(pod: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    out["spec"]["nodeSelector"] = {"kubernetes.io/hostname": WORKER}
    out["spec"].pop("tolerations", None)
    return out


SERVER = (
    "mkdir -p /tmp/www && echo served-from-127.0.0.1 > /tmp/www/index.html && "
    f"head -c {BIG_MIB * 1024 * 1024} /dev/urandom > /tmp/www/big && "
    "sha256sum /tmp/www/big | cut -d' ' -f1 > /tmp/www/big.sha256 && "
    "exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"
)


@pytest.fixture(scope="module")
def pods(streams_node: VirtualNode, reference_namespace: str) -> Iterator[dict[str, tuple[str, str]]]:
    """A long-running pod on each node: where -> (namespace, name). Its web server listens on the
    pod's 127.0.0.1:8080 only; `main` keeps stdin open (for attach)."""
    vn = streams_node
    ns = vn.owner_namespace
    vn.cluster.kubectl("create", "namespace", ns, check=False)
    name = f"streams-{uuid.uuid4().hex[:6]}"
    pod = vn.pod(name, [
        {"name": "main", "command": ["sh", "-c", "while read line; do echo \"attached: $line\"; done"], "stdin": True},
        {"name": "web", "command": ["sh", "-c", SERVER]},
    ])
    vn.create(ns, pod)
    vn.cluster.apply(on_worker(pod), namespace=reference_namespace)
    where = {"virtual": (ns, name), "real": (reference_namespace, name)}
    for namespace, pod_name in where.values():
        vn.wait(namespace, pod_name, lambda p: all(s.get("ready") for s in p.get("status", {}).get("containerStatuses", [{}]))
                and len(p.get("status", {}).get("containerStatuses", [])) == 2, timeout=120, what="both containers running")
    # The big file is written by then? Wait for its checksum file.
    for namespace, pod_name in where.values():
        deadline = time.monotonic() + 60
        while vn.cluster.kubectl("exec", pod_name, "-n", namespace, "-c", "web", "--", "test", "-s", "/tmp/www/big.sha256",
                                 check=False).returncode != 0:
            assert time.monotonic() < deadline, f"the web server of {namespace}/{pod_name} did not come up"
            time.sleep(0.5)
    yield where
    vn.cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false", check=False)


def kubectl(vn: VirtualNode, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(vn.cluster.kubectl_path), f"--kubeconfig={vn.cluster.kubeconfig}", *args],
                          input=input, capture_output=True, timeout=timeout)


WHERE = ("virtual", "real")


@pytest.mark.parametrize("where", WHERE)
def test_exec_prints_the_output_and_gives_the_exit_code(streams_node: VirtualNode, pods: Any, where: str) -> None:
    ns, name = pods[where]
    proc = kubectl(streams_node, "exec", name, "-n", ns, "-c", "main", "--", "echo", "hi")
    assert (proc.returncode, proc.stdout) == (0, b"hi\n"), proc.stderr
    proc = kubectl(streams_node, "exec", name, "-n", ns, "-c", "main", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert proc.returncode == 3 and proc.stdout == b"out\n" and proc.stderr.startswith(b"err\n"), proc.stderr
    # An argument is one argv entry, never parsed by a shell on the way.
    proc = kubectl(streams_node, "exec", name, "-n", ns, "-c", "main", "--", "echo", "$(id); ls", "a  b")
    assert proc.stdout == b"$(id); ls a  b\n"


@pytest.mark.parametrize("where", WHERE)
def test_exec_i_feeds_stdin_to_the_end(streams_node: VirtualNode, pods: Any, where: str) -> None:
    ns, name = pods[where]
    data = os.urandom(256 * 1024)
    proc = kubectl(streams_node, "exec", "-i", name, "-n", ns, "-c", "main", "--", "sh", "-c", "sha256sum; echo done", input=data)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == [hashlib.sha256(data).hexdigest(), "-", "done"]


def _read_until(fd: int, pattern: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while pattern not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} not seen; got {out!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.parametrize("where", WHERE)
def test_exec_it_gives_a_terminal_that_follows_kubectls_size(streams_node: VirtualNode, pods: Any, where: str) -> None:
    # The first size is asked for after a second: kubectl sends it as the session opens, but a
    # process that reads it in its first milliseconds races it on a real node too (containerd
    # applies it once the process runs; so does Docker before API 1.42).
    ns, name = pods[where]
    vn = streams_node
    pid, fd = pty.fork()
    if pid == 0:  # the child: kubectl on the pty's terminal, as a user runs it
        _set_size(0, 31, 97)
        os.execv(str(vn.cluster.kubectl_path), [str(vn.cluster.kubectl_path), f"--kubeconfig={vn.cluster.kubeconfig}",
                 "exec", "-it", name, "-n", ns, "-c", "main", "--", "sh", "-c",
                 "sleep 1; stty size; echo ready; read x; stty size; tty; exit 7"])
    try:
        out = _read_until(fd, b"ready", 30)
        assert re.search(rb"31 97\s", out), out
        _set_size(fd, 42, 123)  # the kernel sends SIGWINCH to kubectl
        time.sleep(1.0)
        os.write(fd, b"go\r")
        out = _read_until(fd, b"/dev/pts", 30)
        assert re.search(rb"42 123\s", out), out
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


@pytest.mark.parametrize("where", WHERE)
def test_cp_copies_files_both_ways_byte_for_byte(streams_node: VirtualNode, pods: Any, where: str, tmp_path: Path) -> None:
    ns, name = pods[where]
    src = tmp_path / "up"
    (src / "sub").mkdir(parents=True)
    files = {"a.bin": os.urandom(3 * 1024 * 1024 + 7), "sub/b.txt": "ümlaut and spaces\n".encode(), "empty": b""}
    for rel, content in files.items():
        (src / rel).write_bytes(content)
    proc = kubectl(streams_node, "cp", str(src), f"{ns}/{name}:/tmp/up", "-c", "main")
    assert proc.returncode == 0, proc.stderr
    listing = kubectl(streams_node, "exec", name, "-n", ns, "-c", "main", "--", "sh", "-c", "cd /tmp/up && sha256sum a.bin sub/b.txt empty")
    sums = dict(reversed(line.split()) for line in listing.stdout.decode().splitlines())
    assert sums == {rel: hashlib.sha256(content).hexdigest() for rel, content in files.items()}
    back = tmp_path / "down"
    proc = kubectl(streams_node, "cp", f"{ns}/{name}:/tmp/up", str(back), "-c", "main")
    assert proc.returncode == 0, proc.stderr
    assert {rel: (back / rel).read_bytes() for rel in files} == files


@pytest.mark.parametrize("where", WHERE)
def test_attach_reaches_the_main_process(streams_node: VirtualNode, pods: Any, where: str) -> None:
    ns, name = pods[where]
    attach = kubectl_stream(streams_node.cluster, "attach", "-i", name, "-n", ns, "-c", "main", stdin=True)
    try:
        attach.say_until_echoed("hello\n", "attached: hello", timeout=30)
    finally:
        attach.kill()


class PortForward:
    """`kubectl port-forward POD :PORT` running; `port` is the local one it picked."""

    def __init__(self, vn: VirtualNode, ns: str, name: str, remote: int) -> None:
        self.proc = subprocess.Popen([str(vn.cluster.kubectl_path), f"--kubeconfig={vn.cluster.kubeconfig}",
                                      "port-forward", "-n", ns, f"pod/{name}", f":{remote}", "--address", "127.0.0.1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+) ->", line)
        assert match, f"kubectl port-forward said {line!r}; {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        self.port = int(match.group(1))

    def get(self, path: str, timeout: float = 120) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return bytes(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.mark.parametrize("where", WHERE)
def test_port_forward_reaches_the_pods_loopback_and_carries_100_mib_intact(streams_node: VirtualNode, pods: Any, where: str) -> None:
    ns, name = pods[where]
    forward = PortForward(streams_node, ns, name, 8080)
    try:
        assert forward.get("/index.html") == b"served-from-127.0.0.1\n"
        assert forward.get("/index.html") == b"served-from-127.0.0.1\n"  # a second connection
        expected = forward.get("/big.sha256").decode().strip()
        started = time.monotonic()
        body = forward.get("/big")
        elapsed = time.monotonic() - started
        assert len(body) == BIG_MIB * 1024 * 1024
        assert hashlib.sha256(body).hexdigest() == expected
        print(f"{where}: {BIG_MIB} MiB through port-forward in {elapsed:.2f} s ({BIG_MIB / elapsed:.1f} MiB/s)")
    finally:
        forward.close()


def test_port_forward_to_a_closed_port_says_so(streams_node: VirtualNode, pods: Any) -> None:
    ns, name = pods["virtual"]
    forward = PortForward(streams_node, ns, name, 9)
    try:
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            forward.get("/", timeout=20)
        forward.proc.terminate()
        _, err = forward.proc.communicate(timeout=30)
        assert "error forwarding port 9" in err and "connection refused" in err, err
    finally:
        if forward.proc.poll() is None:
            forward.close()


def test_the_kubelet_api_refuses_unauthenticated_streams(streams_node: VirtualNode, pods: Any) -> None:
    ns, name = pods["virtual"]
    node = streams_node.node()
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    upgrade = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v4.channel.k8s.io"}
    for path in (f"/exec/{ns}/{name}/main?command=id&output=1", f"/attach/{ns}/{name}/main?output=1", f"/portForward/{ns}/{name}"):
        for headers in ({}, {"Authorization": "Bearer not-a-real-token"}):
            req = urllib.request.Request(f"https://{address}:{port}{path}", method="POST", headers={**upgrade, **headers})
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, context=ctx, timeout=10)
            assert info.value.code == 401
            body = json.loads(info.value.read())
            assert body["kind"] == "Status" and body["reason"] == "Unauthorized"


def test_exec_into_a_container_that_is_not_running_is_refused(streams_node: VirtualNode) -> None:
    vn = streams_node
    ns = vn.owner_namespace
    name = f"done-{uuid.uuid4().hex[:6]}"
    vn.create(ns, vn.pod(name, [{"name": "main", "command": ["true"]}, {"name": "idle", "command": ["sleep", "300"]}]))
    vn.wait(ns, name, lambda p: any(s.get("state", {}).get("terminated") for s in p.get("status", {}).get("containerStatuses", [])),
            what="main finished")
    proc = kubectl(vn, "exec", name, "-n", ns, "-c", "main", "--", "true")
    assert proc.returncode != 0 and b"not running" in proc.stderr, proc.stderr
    vn.cluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false", check=False)
