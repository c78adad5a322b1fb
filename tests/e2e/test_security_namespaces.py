"""One namespace per user, end to end: attacks of one cloudify user on another's session, which
must fail.

User A runs `cloudify firefox` (pod mode) with A's own kubeconfig, so the session lives in A's
namespace (kod-root on this machine). User B, with B's real kubeconfig (a client certificate of
the local cluster, not `--as`) and cloudify's role in B's own namespace, tries to read A's
session Secrets, list A's pods, read A's app's log, create pods, endpoints or endpointslices in
A's namespace, become an endpoint of A's Service from B's own namespace, and end A's session.
Meanwhile the session keeps running. And the viewer's Secret holds no host private key."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kod import apps, labels
from localenv import users
from tests.e2e.cloudify_support import FIREFOX_WINDOW, Cloudify, Session, cloudify_for, cloudify_images, firefox_drawn  # noqa: F401
from tests.fixtures.users import KubectlAs, wait_until

pytestmark = pytest.mark.e2e

FORBIDDEN = "Forbidden"


@pytest.fixture(scope="module")
def a_session(cluster: Any, virtual_node: Any, desktop: Any, cloudify_images: Any, user_a: users.User,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cloudify, Session, dict[str, Any]]]:
    """A's running session: (cloudify, its process, the app's Service)."""
    with cloudify_for(cluster, virtual_node, desktop, user_a, tmp_path_factory.mktemp("a-session")) as c:
        session = c.start("firefox")
        session.wait_line("is running", timeout=180)
        sid = session.session_id
        service = c.kubectl_json("get", "services", "-n", c.namespace, "-l", f"{labels.SESSION}={sid}")["items"][0]
        yield c, session, service


@pytest.fixture
def b(kubectl_as: Callable[[users.User], KubectlAs], user_b: users.User) -> KubectlAs:
    return kubectl_as(user_b)


def forbidden(proc: Any) -> bool:
    return proc.returncode != 0 and FORBIDDEN in proc.stderr


def session_pods(c: Cloudify, sid: str) -> list[dict[str, Any]]:
    return list(c.kubectl_json("get", "pods", "-n", c.namespace, "-l", f"{labels.SESSION}={sid}")["items"])


def test_the_session_runs_in_as_namespace_with_as_own_credentials(
        a_session: tuple[Cloudify, Session, dict[str, Any]], user_a: users.User, user_b: users.User,
        kubectl_as: Callable[[users.User], KubectlAs]) -> None:
    c, session, _ = a_session
    assert c.namespace == user_a.namespace == f"kod-{user_a.name}"
    assert c.env["KUBECONFIG"] == str(user_a.kubeconfig) and "KOD_CLOUDIFY_NAMESPACE" not in c.env
    assert oct(Path(str(user_a.kubeconfig)).stat().st_mode & 0o777) == "0o600"
    roles = {p["metadata"]["labels"][labels.ROLE] for p in session_pods(c, session.session_id)}
    assert roles == {"app", "viewer"}
    # A's credentials are A's own: nothing in B's namespace either.
    assert forbidden(kubectl_as(user_a)("get", "pods", "-n", user_b.namespace))


def test_b_cannot_read_as_session_secrets(a_session: tuple[Cloudify, Session, dict[str, Any]], b: KubectlAs) -> None:
    c, session, _ = a_session
    base = f"kod-firefox-{session.session_id}"
    assert forbidden(b("get", "secrets", "-n", c.namespace))
    for name in (base, f"{base}-viewer"):
        proc = b("get", "secret", name, "-n", c.namespace, "-o", "json")
        assert forbidden(proc), proc.stdout
        assert "data" not in proc.stdout


def test_b_cannot_list_as_pods_or_read_the_apps_log(a_session: tuple[Cloudify, Session, dict[str, Any]], b: KubectlAs) -> None:
    c, session, _ = a_session
    assert forbidden(b("get", "pods", "-n", c.namespace))
    assert forbidden(b("logs", "-n", c.namespace, c.app_pod(session.session_id), "-c", "app"))
    assert forbidden(b("port-forward", "-n", c.namespace, f"pod/{c.app_pod(session.session_id)}", f":{apps.SSH_PORT}", timeout=30))


@pytest.mark.parametrize("kind", ["Pod", "Endpoints", "EndpointSlice"])
def test_b_cannot_create_pods_or_endpoints_in_as_namespace(a_session: tuple[Cloudify, Session, dict[str, Any]],
                                                           b: KubectlAs, kind: str, testbox_image: str) -> None:
    c, _, service = a_session
    name = service["metadata"]["name"]
    obj = {
        "Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "intruder", "namespace": c.namespace,
                                                                 "labels": service["spec"]["selector"]},
                "spec": {"containers": [{"name": "c", "image": testbox_image}]}},
        "Endpoints": {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": c.namespace},
                      "subsets": [{"addresses": [{"ip": "10.0.0.66"}], "ports": [{"name": "ssh", "port": 22}]}]},
        "EndpointSlice": {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                          "metadata": {"name": f"{name}-intruder", "namespace": c.namespace,
                                       "labels": {"kubernetes.io/service-name": name}},
                          "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.66"]}],
                          "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"}]},
    }[kind]
    proc = b.create(obj)
    assert forbidden(proc), proc.stdout + proc.stderr


def endpoint_addresses(c: Cloudify, service: str) -> set[str]:
    slices = c.kubectl_json("get", "endpointslices", "-n", c.namespace, "-l", f"kubernetes.io/service-name={service}")["items"]
    return {a for s in slices for e in s.get("endpoints") or [] for a in e.get("addresses") or []}


def test_b_cannot_become_an_endpoint_of_as_service_from_bs_namespace(
        a_session: tuple[Cloudify, Session, dict[str, Any]], b: KubectlAs, user_b: users.User, cluster: Any,
        testbox_image: str) -> None:
    """B runs a pod with the session's labels (what A's Service selects) and publishes an
    EndpointSlice naming A's Service, both in B's namespace: A's Service still has only A's app."""
    c, session, service = a_session
    name = service["metadata"]["name"]
    app_ip = next(p["status"]["podIP"] for p in session_pods(c, session.session_id)
                  if p["metadata"]["labels"][labels.ROLE] == "app")
    assert endpoint_addresses(c, name) == {app_ip}
    lookalike = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "lookalike", "namespace": user_b.namespace, "labels": service["spec"]["selector"]},
                 "spec": {"containers": [{"name": "c", "image": testbox_image, "imagePullPolicy": "IfNotPresent",
                                          "command": ["sleep", "300"]}], "terminationGracePeriodSeconds": 1}}
    forged = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": f"{name}-forged", "namespace": user_b.namespace, "labels": {"kubernetes.io/service-name": name}},
              "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.66"]}],
              "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"}]}
    try:
        assert b.create(lookalike).returncode == 0  # B may run pods in B's own namespace
        b.create(forged)  # B's role has no EndpointSlices even there; if it had, it would not matter
        ip = ""

        def lookalike_runs() -> bool:
            nonlocal ip
            pod = json.loads(b("get", "pod", "lookalike", "-n", user_b.namespace, "-o", "json").stdout or "{}")
            ip = (pod.get("status") or {}).get("podIP") or ""
            return bool(ip) and pod["status"].get("phase") == "Running"

        wait_until(lookalike_runs, 90, "B's look-alike pod running")
        time.sleep(2.0)  # the EndpointSlice controller reacts to a new matching pod within this
        assert endpoint_addresses(c, name) == {app_ip}, "a pod of another namespace became an endpoint of A's Service"
        assert ip not in endpoint_addresses(c, name)
    finally:
        cluster.kubectl("delete", "pod", "lookalike", "-n", user_b.namespace, "--grace-period=0", "--force", check=False)
        cluster.kubectl("delete", "endpointslice", f"{name}-forged", "-n", user_b.namespace, "--ignore-not-found", check=False)


def test_b_cannot_end_as_session(a_session: tuple[Cloudify, Session, dict[str, Any]], b: KubectlAs) -> None:
    c, session, service = a_session
    sid = session.session_id
    before = {p["metadata"]["uid"] for p in session_pods(c, sid)}
    for pod in (c.app_pod(sid), f"kod-firefox-{sid}-viewer"):
        assert forbidden(b("delete", "pod", pod, "-n", c.namespace, "--wait=false"))
    assert forbidden(b("delete", "job", f"kod-firefox-{sid}", "-n", c.namespace, "--wait=false"))
    assert forbidden(b("delete", "service", service["metadata"]["name"], "-n", c.namespace, "--wait=false"))
    assert forbidden(b("delete", "pods", "--all", "-n", c.namespace, "--wait=false"))
    time.sleep(1.0)
    pods = session_pods(c, sid)
    assert {p["metadata"]["uid"] for p in pods} == before
    assert all(p["status"]["phase"] == "Running" and not p["metadata"].get("deletionTimestamp") for p in pods)
    assert session.proc.poll() is None, session.stderr


def test_the_viewers_secret_holds_no_host_private_key(a_session: tuple[Cloudify, Session, dict[str, Any]]) -> None:
    c, session, _ = a_session
    base = f"kod-firefox-{session.session_id}"

    def data(name: str) -> dict[str, str]:
        raw = c.kubectl_json("get", "secret", name, "-n", c.namespace)["data"]
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}

    app, viewer = data(base), data(f"{base}-viewer")
    host_key = app[apps.SECRET_HOST_KEY]
    assert "PRIVATE KEY" in host_key
    assert set(viewer) == {apps.SECRET_SSH_KEY, apps.SECRET_KNOWN_HOSTS, apps.SECRET_VNC_PASSWORD, "Xauthority"}
    assert all(host_key.strip() not in v for v in viewer.values())
    assert [k for k, v in viewer.items() if "PRIVATE KEY" in v] == [apps.SECRET_SSH_KEY]
    # Each pod mounts only its own side.
    pods = {p["metadata"]["labels"][labels.ROLE]: p for p in session_pods(c, session.session_id)}
    mounted = {role: [v["secret"]["secretName"] for v in p["spec"]["volumes"] if "secret" in v] for role, p in pods.items()}
    assert mounted == {"app": [base], "viewer": [f"{base}-viewer"]}


def test_the_session_still_works_after_the_attacks(a_session: tuple[Cloudify, Session, dict[str, Any]], desktop: Any) -> None:
    c, session, _ = a_session
    window = desktop.wait_for_window(FIREFOX_WINDOW, timeout=60)
    desktop.wait_for_content(window.box, firefox_drawn, timeout=60, what="Firefox drawn in the viewer window")
    assert session.proc.poll() is None


def test_the_desktops_own_identity_reads_the_viewers_secret_and_never_the_apps(
        a_session: tuple[Cloudify, Session, dict[str, Any]], virtual_node: Any, cluster: Any) -> None:
    """The virtual node is system:node:<node> (Node authorizer): it may read the Secrets of the
    pods bound to it, that is the viewer's, and not the app's, whose pod runs elsewhere."""
    c, session, _ = a_session
    base = f"kod-firefox-{session.session_id}"
    as_node = [str(cluster.kubectl_path), f"--kubeconfig={virtual_node.stack.vk_node_kubeconfig}"]

    def get(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_node, "get", "secret", name, "-n", c.namespace, "-o", "json"],
                              capture_output=True, text=True, timeout=60)

    viewer = get(f"{base}-viewer")
    assert viewer.returncode == 0, viewer.stderr
    assert set(json.loads(viewer.stdout)["data"]) >= {apps.SECRET_SSH_KEY, apps.SECRET_KNOWN_HOSTS}
    app = get(base)
    assert forbidden(app) and "no relationship found between node" in app.stderr, app.stderr
