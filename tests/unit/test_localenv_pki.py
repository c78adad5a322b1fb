"""localenv.pki issues certificates that openssl verifies against the right CA, with the names and
usages asked for, and keeps them when nothing changed."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from kod import errors
from localenv import pki


def _text(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True, text=True,
                          check=True).stdout


def _verifies(ca: Path, cert: Path) -> bool:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True).returncode == 0


def test_an_issued_server_cert_verifies_against_its_ca_and_carries_the_names(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path, pki.CLUSTER_CA, "test-ca")
    pair = pki.issue(tmp_path, "web", common_name="web", sans=["127.0.0.1", "web.local"], usages=["server"])

    assert _verifies(ca.cert, pair.cert)
    text = _text(pair.cert)
    assert "IP Address:127.0.0.1" in text and "DNS:web.local" in text
    assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" not in text
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_a_client_cert_carries_the_user_and_groups_kubernetes_reads(tmp_path: Path) -> None:
    pki.ensure_ca(tmp_path)
    pair = pki.issue(tmp_path, "node", common_name="system:node:n1", organizations=["system:nodes"])
    subject = subprocess.run(["openssl", "x509", "-in", str(pair.cert), "-noout", "-subject"], capture_output=True,
                             text=True, check=True).stdout
    assert "O = system:nodes" in subject and "CN = system:node:n1" in subject
    assert "TLS Web Client Authentication" in _text(pair.cert)


def test_a_cert_of_the_etcd_ca_does_not_verify_against_the_cluster_ca(tmp_path: Path) -> None:
    cluster = pki.ensure_ca(tmp_path, pki.CLUSTER_CA)
    etcd = pki.ensure_ca(tmp_path, pki.ETCD_CA)
    pair = pki.issue(tmp_path, "etcd-client", common_name="x", ca=pki.ETCD_CA)
    assert _verifies(etcd.cert, pair.cert)
    assert not _verifies(cluster.cert, pair.cert)


def test_issue_keeps_an_unchanged_cert_and_reissues_when_the_names_change(tmp_path: Path) -> None:
    pki.ensure_ca(tmp_path)
    first = pki.issue(tmp_path, "s", common_name="s", sans=["a.local"], usages=["server"]).cert.read_bytes()
    again = pki.issue(tmp_path, "s", common_name="s", sans=["a.local"], usages=["server"]).cert.read_bytes()
    changed = pki.issue(tmp_path, "s", common_name="s", sans=["b.local"], usages=["server"]).cert.read_bytes()
    assert again == first
    assert changed != first and "DNS:b.local" in _text(tmp_path / "s.crt")


@pytest.mark.parametrize("cn", ["a/b", "x=y", ""])
def test_a_bad_subject_is_refused_with_a_clear_error(tmp_path: Path, cn: str) -> None:
    pki.ensure_ca(tmp_path)
    with pytest.raises(errors.InvalidInput):
        pki.issue(tmp_path, "bad", common_name=cn)


def test_issuing_without_a_ca_says_to_run_up(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound) as exc:
        pki.issue(tmp_path, "x", common_name="x")
    assert "localenv up" in str(exc.value)
