"""The REST APIs of the running chain (interlink and the Docker sidecar, as the desktop stack runs
them, and the kubelet API through the API server): bad input is 400 with a message, a missing or
wrong token 401, an unknown pod 404 — never 500."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.fixtures.virtual_node import VirtualNode

pytestmark = pytest.mark.e2e

POD = {"metadata": {"name": "p", "namespace": "default", "uid": "u-rest"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}


def call(url: str, method: str, path: str, *, token: str | None, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except json.JSONDecodeError:
            return exc.code, {"raw": raw.decode(errors="replace")}


CASES = [
    # (method, path, body, token, status)
    ("POST", "/v1/pods", b"{not json", "good", 400),
    ("POST", "/v1/pods", b"", "good", 400),
    ("POST", "/v1/pods", json.dumps({"pod": {"metadata": {"name": "p"}}}).encode(), "good", 400),
    ("POST", "/v1/pods", json.dumps({"pod": POD, "unexpected": 1}).encode(), "good", 400),
    ("GET", "/v1/pods/default/no-such-pod", None, "good", 404),
    ("DELETE", "/v1/pods/default/no-such-pod", None, "good", 404),
    ("DELETE", "/v1/pods/default/no-such-pod?gracePeriodSeconds=-1", None, "good", 400),
    ("GET", "/v1/pods/default/no-such-pod/containers/c/logs", None, "good", 404),
    ("GET", "/v1/pods/default/no-such-pod/containers/c/logs?tailLines=many", None, "good", 400),
    ("GET", "/v1/pods", None, None, 401),
    ("GET", "/v1/pods", None, "wrong", 401),
    ("POST", "/v1/pods", json.dumps({"pod": POD}).encode(), None, 401),
    ("GET", "/v1/ping", None, "wrong", 401),
]


@pytest.mark.parametrize("service", ["interlink", "sidecar"])
@pytest.mark.parametrize(("method", "path", "body", "token", "status"), CASES)
def test_rest_apis_answer_bad_requests_with_clear_errors(
    virtual_node: VirtualNode, service: str, method: str, path: str, body: bytes | None, token: str | None, status: int
) -> None:
    stack = virtual_node.stack
    url = stack.interlink_url if service == "interlink" else stack.sidecar_url
    given = {"good": stack.token(service), "wrong": "not-the-token", None: None}[token]
    got, answer = call(url, method, path, token=given, body=body)
    assert got == status, answer
    assert answer.get("message"), answer  # an ErrorBody that says what is wrong
    assert answer.get("error") in {400: "InvalidInput", 401: "Unauthorized", 404: "NotFound"}[status]


def test_logs_of_unknown_pods_and_containers_through_the_api_server(virtual_node: VirtualNode, owner_namespace: str) -> None:
    """The kubelet API, reached the way `kubectl` reaches it (the API server's node proxy)."""
    k = virtual_node.cluster.kubectl
    proxy = f"/api/v1/nodes/{virtual_node.name}/proxy/containerLogs"
    missing = k("get", "--raw", f"{proxy}/{owner_namespace}/no-such-pod/main", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr and "500" not in missing.stderr
    bad = k("get", "--raw", f"{proxy}/{owner_namespace}/no-such-pod/main?tailLines=many", check=False)
    assert bad.returncode != 0 and "tailLines must be an integer" in bad.stderr
    virtual_node.create(owner_namespace, virtual_node.pod("one", [{"name": "main", "command": ["sh", "-c", "echo hi"]}]))
    virtual_node.wait_phase(owner_namespace, "one", "Succeeded", "Failed")
    wrong = k("logs", "one", "-n", owner_namespace, "-c", "nope", check=False)
    assert wrong.returncode != 0 and "nope" in wrong.stderr
    ok = k("get", "--raw", f"{proxy}/{owner_namespace}/one/main")
    assert ok.stdout == "hi\n"
