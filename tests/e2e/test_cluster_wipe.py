"""What `down --wipe` relies on, against the real kernel: it never deletes through a mount point,
it unmounts what pods left, and it removes only the iptables chains of the prefixes it owns."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from kod import errors
from localenv import wipe

pytestmark = pytest.mark.e2e


def _mount_tmpfs(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)


def test_a_tree_with_a_mount_below_is_not_deleted_until_unmounted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    host_dir = tmp_path / "host-data"
    host_dir.mkdir()
    (host_dir / "precious").write_text("keep me")
    inner = state / "kubelet/pods/x/volumes/data"
    inner.mkdir(parents=True)
    # A hostPath-like bind mount: deleting through it would delete the host's files.
    subprocess.run(["mount", "--bind", str(host_dir), str(inner)], check=True)
    _mount_tmpfs(state / "kubelet/pods/y/secret")
    try:
        with pytest.raises(errors.Internal):
            wipe.remove_tree(state)
        assert (host_dir / "precious").read_text() == "keep me"

        assert wipe.unmount_all(state) == 2
        assert wipe.remove_tree(state)
        assert not state.exists()
        assert (host_dir / "precious").read_text() == "keep me"
    finally:
        for mp in wipe.mounts_under(state):
            subprocess.run(["umount", "-l", str(mp)], check=False)


def test_only_chains_with_the_given_prefixes_are_removed() -> None:
    prefix = f"KODT{uuid.uuid4().hex[:4].upper()}-"
    ours, other = f"{prefix}A", f"KODKEEP{uuid.uuid4().hex[:4].upper()}"
    harmless = ["-s", "203.0.113.77/32"]  # a TEST-NET-3 source: matches nothing here
    try:
        for chain in (ours, other):
            subprocess.run(["iptables", "-t", "filter", "-N", chain], check=True)
            subprocess.run(["iptables", "-t", "filter", "-A", "FORWARD", *harmless, "-j", chain], check=True)

        assert wipe.iptables_rules((prefix,)) == 1

        chains = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
        assert f":{ours} " not in chains and f"-j {ours}" not in chains
        assert f":{other} " in chains and f"-j {other}" in chains
    finally:
        subprocess.run(["iptables", "-t", "filter", "-D", "FORWARD", *harmless, "-j", other], check=False)
        subprocess.run(["iptables", "-t", "filter", "-X", other], check=False)
        subprocess.run(["iptables", "-t", "filter", "-D", "FORWARD", *harmless, "-j", ours], check=False)
        subprocess.run(["iptables", "-t", "filter", "-X", ours], check=False)
