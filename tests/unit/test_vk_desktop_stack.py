"""The desktop stack's generated files: configs every component accepts, private tokens, the same
default node name, a bootstrap kubeconfig the client library reads, bootstrap token Secrets the
API server accepts, and the checks before a kubelet-serving CSR is approved."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import stat
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from interlink.settings import InterlinkSettings
from kod import toml
from kod.kube_config import load_connection
from localenv import desktop_stack, node_join
from localenv.handle import ClusterHandle
from sidecars.docker.settings import DockerSidecarSettings
from vk_bridge.settings import VkSettings


@pytest.fixture
def stack(tmp_path: Path) -> desktop_stack.Stack:
    cluster = ClusterHandle(kubeconfig=tmp_path / "kc", kubectl_path=tmp_path / "kubectl", node_name="kod-worker")
    return desktop_stack.Stack(settings=desktop_stack.StackSettings(node_name="desktop-test", user="ann"), root=tmp_path, cluster=cluster)


def test_tokens_are_random_private_and_kept(stack: desktop_stack.Stack) -> None:
    path = stack.interlink_token_file
    assert desktop_stack.ensure_token(path)
    first = path.read_text()
    assert len(first.strip()) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not desktop_stack.ensure_token(path)
    assert path.read_text() == first
    assert desktop_stack.ensure_token(stack.sidecar_token_file)
    assert stack.sidecar_token_file.read_text() != first


def test_vk_config_is_valid_vk_settings(stack: desktop_stack.Stack) -> None:
    text = toml.dumps(desktop_stack.configs(stack)["vk"])
    settings = VkSettings.model_validate(tomllib.loads(text))
    # The node's own identity, bootstrapped: no credentials of anyone else.
    assert settings.identity.bootstrap_kubeconfig == stack.vk_bootstrap_kubeconfig and settings.kube.kubeconfig is None
    assert settings.identity.cert_dir == stack.vk_pki_dir == settings.kubelet_api.cert_dir
    assert settings.node.name == "desktop-test" and settings.node.user == "ann"
    assert settings.interlink.url == "http://127.0.0.1:3000"
    assert settings.interlink.token_file == stack.interlink_token_file
    assert settings.node.capacity["pods"] == "250"


def test_the_sidecar_config_is_valid_sidecar_settings_with_the_stacks_token(stack: desktop_stack.Stack) -> None:
    text = toml.dumps(desktop_stack.configs(stack)["sidecar"])
    settings = DockerSidecarSettings.model_validate(tomllib.loads(text))
    assert settings.create_token is False and settings.token_file == stack.sidecar_token_file


def test_the_interlink_config_is_valid_interlink_settings_routing_to_the_sidecar(stack: desktop_stack.Stack) -> None:
    text = toml.dumps(desktop_stack.configs(stack)["interlink"])
    settings = InterlinkSettings.model_validate(tomllib.loads(text))
    assert settings.create_token is False and settings.token_file == stack.interlink_token_file
    [sidecar] = settings.sidecars
    assert (sidecar.name, sidecar.url, sidecar.token_file) == ("docker", stack.sidecar_url, stack.sidecar_token_file)


def test_the_bootstrap_kubeconfig_carries_the_token_to_the_client(tmp_path: Path) -> None:
    config = node_join.bootstrap_kubeconfig({"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}, "abcdef.0123456789abcdef")
    path = tmp_path / "kc"
    path.write_text(json.dumps(config))
    conn = load_connection(path)
    assert conn.host == "https://127.0.0.1:6443"
    assert conn.authorization() == "Bearer abcdef.0123456789abcdef"
    assert node_join.kubeconfig_token(path) == "abcdef.0123456789abcdef"
    path.write_text(json.dumps(node_join.bootstrap_kubeconfig({"server": "https://127.0.0.1:6443"}, None)))
    assert load_connection(path).authorization() is None and node_join.kubeconfig_token(path) is None


def test_bootstrap_token_secrets_are_what_the_bootstrap_authenticator_reads() -> None:
    secret = node_join.bootstrap_token_secret("abcdef", "0123456789abcdef", node_name="desktop-test",
                                              expires=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert secret["metadata"]["name"] == "bootstrap-token-abcdef" and secret["metadata"]["namespace"] == "kube-system"
    data = secret["stringData"]
    assert data["usage-bootstrap-authentication"] == "true" and "usage-bootstrap-signing" not in data
    # Extra groups must start with system:bootstrappers: (the API server refuses others).
    assert data["auth-extra-groups"] == "system:bootstrappers:kod-desktops"
    assert data["expiration"] == "2026-01-02T03:04:05Z"
    assert re.fullmatch(r"[a-z0-9]{6}", data["token-id"]) and re.fullmatch(r"[a-z0-9]{16}", data["token-secret"])


# -- kubelet-serving CSRs ---------------------------------------------------------------------------

NODE = "desktop-test"
HOSTS = {"myhost", NODE}
IPS = {"192.0.2.7"}


def _csr(*, cn: str = f"system:node:{NODE}", orgs: tuple[str, ...] = ("system:nodes",), dns: tuple[str, ...] = ("myhost",),
         ips: tuple[str, ...] = ("192.0.2.7",), key: Any = None, username: str = f"system:node:{NODE}",
         groups: tuple[str, ...] = ("system:nodes", "system:authenticated"), usages: tuple[str, ...] = ("digital signature", "server auth"),
         extra: Callable[[x509.CertificateSigningRequestBuilder], x509.CertificateSigningRequestBuilder] | None = None,
         email: bool = False) -> dict[str, Any]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if email:
        names.append(x509.RFC822Name("me@example.org"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs] + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if extra:
        builder = extra(builder)
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return {"metadata": {"name": "csr-x"}, "spec": {"signerName": "kubernetes.io/kubelet-serving", "username": username,
            "groups": list(groups), "usages": list(usages), "request": base64.b64encode(pem).decode()}, "status": {}}


@pytest.mark.parametrize(
    ("csr", "problem"),
    [
        (lambda: _csr(), None),
        (lambda: _csr(dns=("myhost", NODE), ips=()), None),
        (lambda: _csr(key=rsa.generate_private_key(65537, 2048), usages=("digital signature", "key encipherment", "server auth")), None),
        (lambda: _csr(username="system:bootstrap:abcdef", groups=("system:bootstrappers",)), "not by the node"),
        (lambda: _csr(username="system:node:kod-worker"), "not by the node"),
        (lambda: _csr(cn="system:node:kod-worker"), "subject"),
        (lambda: _csr(orgs=("system:nodes", "system:masters")), "subject"),
        (lambda: _csr(ips=("127.0.0.1",)), "loopback"),
        (lambda: _csr(ips=("10.0.0.9",)), "not the node's"),
        (lambda: _csr(dns=("kubernetes.default.svc",)), "hostnames ['kubernetes.default.svc']"),
        (lambda: _csr(dns=(), ips=()), "names no address"),
        (lambda: _csr(email=True), "other than DNS names and IP addresses"),
        (lambda: _csr(usages=("digital signature", "server auth", "client auth")), "usages"),
        (lambda: _csr(key=rsa.generate_private_key(65537, 1024), usages=("digital signature", "server auth")), "under 2048"),
        (lambda: _csr(key=ec.generate_private_key(ec.SECP521R1())), "curve secp521r1"),
        (lambda: _csr(extra=lambda b: b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)),
         "extensions other than subjectAltName"),
    ],
)
def test_a_serving_csr_is_approved_only_for_the_nodes_own_names_and_a_sound_key(csr: Callable[[], dict[str, Any]], problem: str | None) -> None:
    got = node_join.serving_csr_problem(csr(), NODE, hostnames=HOSTS, ips=IPS)
    assert got is None if problem is None else (got is not None and problem in got), got


def test_a_serving_csr_with_a_forged_signature_is_refused() -> None:
    csr = _csr()
    pem = base64.b64decode(csr["spec"]["request"])
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    forged = der[:-3] + bytes([der[-3] ^ 0xFF]) + der[-2:]  # a bit of the signature flipped
    csr["spec"]["request"] = base64.b64encode(
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(forged) + b"-----END CERTIFICATE REQUEST-----\n").decode()
    got = node_join.serving_csr_problem(csr, NODE, hostnames=HOSTS, ips=IPS)
    assert got is not None and ("signature" in got or "not a PEM" in got)
