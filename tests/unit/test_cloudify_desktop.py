"""The desktop's display and X cookie as a viewer outside the session needs them; checked
against the real xauth tool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cloudify import desktop
from kod import errors


@pytest.mark.parametrize(("value", "number", "local"), [(":0", 0, ":0"), (":12.1", 12, ":12.1"), ("unix:3", 3, ":3"), ("host/unix:4", 4, ":4")])
def test_local_displays_are_understood(value: str, number: int, local: str) -> None:
    d = desktop.parse_display(value)
    assert (d.number, d.local_name, str(d.socket)) == (number, local, f"/tmp/.X11-unix/X{number}")


@pytest.mark.parametrize("value", ["localhost:10.0", "example.org:0", "", None])
def test_remote_or_missing_displays_are_refused(value: str | None) -> None:
    with pytest.raises(errors.InvalidInput):
        desktop.parse_display(value)


@pytest.mark.skipif(not shutil.which("xauth"), reason="needs xauth (x11-xserver-utils)")
def test_the_cookie_becomes_familywild_like_xauth_nlist_sed(tmp_path: Path) -> None:
    src = tmp_path / "Xauthority"
    cookie = "00112233445566778899aabbccddeeff"
    subprocess.run(["xauth", "-f", str(src), "add", "myhost/unix:7", "MIT-MAGIC-COOKIE-1", cookie], check=True)
    subprocess.run(["xauth", "-f", str(src), "add", "myhost/unix:8", "MIT-MAGIC-COOKIE-1", "ff" * 16], check=True)
    wild = desktop.wild_cookie(src, desktop.parse_display(":7"))
    assert wild is not None
    out = tmp_path / "wild"
    out.write_bytes(wild)
    listing = subprocess.run(["xauth", "-f", str(out), "nlist"], check=True, capture_output=True, text=True).stdout
    # FamilyWild (ffff), no address, display 7, the cookie; display 8's cookie is not there.
    assert listing.split() == ["ffff", "0000", "0001", "37", "0012", "4d49542d4d414749432d434f4f4b49452d31", "0010", cookie]
    assert desktop.wild_cookie(src, desktop.parse_display(":9")) is None
    assert desktop.wild_cookie(tmp_path / "missing", desktop.parse_display(":7")) is None


def test_a_damaged_authority_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x00\x05ab")
    with pytest.raises(errors.InvalidInput, match="damaged"):
        desktop.wild_cookie(bad, desktop.parse_display(":0"))


# --- the kod sound socket never lets other local users in -------------------------------------

def _listening_socket(path: Path) -> object:
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    return server


def _settings(directory: Path, gid: int) -> object:
    from cloudify.settings import CloudifySettings

    return CloudifySettings(kod_pulse_dir=str(directory), desktop_gid=gid)


@pytest.mark.parametrize(("mode", "message"), [
    (0o711, "lets every local user in"), (0o755, "lets every local user in"), (0o770, "writable by its group"),
])
def test_a_kod_sound_socket_in_a_directory_others_may_enter_is_refused(tmp_path: Path, mode: int, message: str) -> None:
    import os

    from cloudify.settings import HostEnv

    directory = tmp_path / "pulse"
    directory.mkdir()
    gid = os.getgid() or 4713
    if os.getgid() == 0:
        os.chown(directory, -1, gid)  # root gives it to a desktop group
    server = _listening_socket(directory / "native")
    try:
        directory.chmod(mode)
        with pytest.raises(errors.InvalidInput, match=message) as caught:
            desktop.kod_pulse(_settings(directory, gid), HostEnv(home=tmp_path, login="u"))  # type: ignore[arg-type]
        assert f"chmod 0710 {directory}" in (caught.value.hint or "")
        directory.chmod(0o710)  # only the owner and the desktop group: used
        assert desktop.kod_pulse(_settings(directory, gid), HostEnv(home=tmp_path, login="u")) == directory / "native"  # type: ignore[arg-type]
    finally:
        server.close()  # type: ignore[attr-defined]


async def test_no_fallback_to_a_mode_others_may_enter_when_the_group_cannot_be_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from cloudify.settings import HostEnv

    runtime = tmp_path / "run"
    (runtime / "pulse").mkdir(parents=True)
    session = _listening_socket(runtime / "pulse" / "native")  # the desktop session's own PulseAudio
    directory = tmp_path / "kod-pulse"

    def refused(path: object, uid: int, gid: int) -> None:  # the kernel's answer to a user not in the group
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", refused)
    monkeypatch.setattr(desktop.shutil, "which", lambda name: "/usr/bin/pactl")
    try:
        with pytest.raises(errors.InvalidInput, match="cannot give the kod sound socket's directory") as caught:
            await desktop.ensure_kod_pulse(_settings(directory, 4713), HostEnv(home=tmp_path, login="u",  # type: ignore[arg-type]
                                                                               xdg_runtime_dir=str(runtime)))
        assert "install -d -g 4713 -m 0710" in (caught.value.hint or "")
        assert directory.stat().st_mode & 0o077 == 0, "the directory was left open to others"
    finally:
        session.close()  # type: ignore[attr-defined]
