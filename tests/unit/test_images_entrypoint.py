"""The app image's entrypoint (images/base/entrypoint.py): its configuration checks and the files
it writes, without starting anything. The e2e tests (tests/e2e/test_images_*.py) run it for real."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kod import apps

ENTRYPOINT = Path(__file__).resolve().parents[2] / "images" / "base" / "entrypoint.py"


@pytest.fixture(scope="module")
def ep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kod_app_entrypoint", ENTRYPOINT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def secrets(ep: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(ep, "SECRET_DIR", tmp_path)
    return tmp_path


def test_the_contract_constants_match_kod_apps(ep: ModuleType) -> None:
    assert str(ep.SECRET_DIR) == apps.APP_SECRET_DIR
    assert (ep.EXIT_USAGE, ep.EXIT_FAILURE, ep.EXIT_NO_VIEWER) == (
        apps.APP_EXIT_CONFIG, apps.APP_EXIT_FAILURE, apps.APP_EXIT_NO_VIEWER)
    assert ep.APP_USER == apps.APP_USER
    assert (ep.AUDIO_FORMAT, ep.AUDIO_RATE, ep.AUDIO_CHANNELS) == (apps.AUDIO_FORMAT, apps.AUDIO_RATE, apps.AUDIO_CHANNELS)


def test_the_viewer_plays_the_stream_in_the_contract_format() -> None:
    viewer = (ENTRYPOINT.parents[1] / "viewer" / "entrypoint.sh").read_text()
    assert (f"readonly AUDIO_FORMAT={apps.AUDIO_FORMAT} AUDIO_RATE={apps.AUDIO_RATE} "
            f"AUDIO_CHANNELS={apps.AUDIO_CHANNELS}") in viewer
    assert f"number KOD_AUDIO_PORT {apps.AUDIO_PORT} " in viewer
    assert f"number KOD_AUDIO_LATENCY_MS {apps.AUDIO_LATENCY_MS} " in viewer
    assert "forwards+=(-R" not in viewer, "the viewer must not open remote forwards"


def test_the_app_pulseaudio_has_a_null_sink_and_no_way_out(ep: ModuleType) -> None:
    script = ep.pulse_script()
    modules = [line.split()[1] for line in script.splitlines() if line.startswith("load-module")]
    assert modules == ["module-null-sink", "module-native-protocol-unix"]
    assert f"socket={ep.PULSE_SOCKET}" in script and "set-default-sink kod" in script


def test_defaults(ep: ModuleType, secrets: Path) -> None:
    cfg = ep.load_config({"KOD_VNC_PASSWORD": "abcdefgh"}, ["firefox-esr"])
    assert (cfg.width, cfg.height, cfg.depth) == (1280, 800, 24)
    assert (cfg.vnc_port, cfg.novnc_port, cfg.ssh_port, cfg.audio_port) == (
        apps.VNC_PORT, apps.NOVNC_PORT, apps.SSH_PORT, apps.AUDIO_PORT)
    assert cfg.encrypt is False and cfg.connect_timeout == 60 and cfg.frame_rate == apps.MAX_FRAME_RATE
    assert cfg.authorized_keys is None and cfg.host_key is None
    assert cfg.command == ["firefox-esr"] and cfg.app == "firefox-esr"


def test_secret_files_are_found_in_the_secret_dir(ep: ModuleType, secrets: Path) -> None:
    (secrets / apps.SECRET_VNC_PASSWORD).write_text("s3cretpw\n")
    (secrets / apps.SECRET_AUTHORIZED_KEYS).write_text("ssh-ed25519 AAAA test\n")
    (secrets / apps.SECRET_HOST_KEY).write_text("KEY")
    cfg = ep.load_config({}, ["app"])
    assert cfg.password == "s3cretpw"
    assert cfg.authorized_keys == "ssh-ed25519 AAAA test\n"
    assert cfg.host_key == secrets / apps.SECRET_HOST_KEY


def test_app_args_are_shell_words_after_the_command(ep: ModuleType, secrets: Path) -> None:
    cfg = ep.load_config({"KOD_VNC_PASSWORD": "abcdefgh", "KOD_APP_ARGS": "--new-window 'file:///a b.html'",
                          "KOD_APP": "firefox"}, ["firefox-esr"])
    assert cfg.command == ["firefox-esr", "--new-window", "file:///a b.html"]
    assert cfg.app == "firefox"


@pytest.mark.parametrize(("env", "argv", "message"), [
    ({}, ["app"], "no VNC password"),
    ({"KOD_VNC_PASSWORD": "abc"}, ["app"], "at least 6 characters"),
    ({"KOD_VNC_PASSWORD_FILE": "/nonexistent"}, ["app"], "does not exist"),
    ({"KOD_GEOMETRY": "1280*800"}, ["app"], "is not WIDTHxHEIGHT"),
    ({"KOD_DEPTH": "8"}, ["app"], "must be 16, 24 or 32"),
    ({"KOD_ENCRYPT": "true"}, ["app"], "must be 0 or 1"),
    ({"KOD_VNC_PORT": "0"}, ["app"], "is not a TCP port"),
    ({"KOD_SSH_PORT": "ssh"}, ["app"], "is not a TCP port"),
    ({"KOD_CONNECT_TIMEOUT": "-1"}, ["app"], "whole number of seconds"),
    ({"KOD_FRAME_RATE": "0"}, ["app"], "updates per second, 1-60"),
    ({"KOD_FRAME_RATE": "61"}, ["app"], "updates per second, 1-60"),
    ({"KOD_APP_ARGS": "'unclosed"}, ["app"], "cannot be split"),
    ({}, [], "no app to run"),
], ids=["no-password", "short-password", "password-file", "geometry", "depth", "encrypt", "port-zero",
        "port-word", "timeout", "frame-rate-0", "frame-rate-61", "app-args", "no-command"])
def test_bad_configuration_is_refused_with_what_to_fix(ep: ModuleType, secrets: Path, env: dict[str, str],
                                                       argv: list[str], message: str) -> None:
    base = {} if "password" in message or "PASSWORD" in str(env) else {"KOD_VNC_PASSWORD": "abcdefgh"}
    with pytest.raises(ep.ConfigError, match=message):
        ep.load_config({**base, **env}, argv)


def test_an_empty_authorized_keys_file_is_refused(ep: ModuleType, secrets: Path) -> None:
    (secrets / apps.SECRET_AUTHORIZED_KEYS).write_text("\n")
    with pytest.raises(ep.ConfigError, match="is empty"):
        ep.load_config({"KOD_VNC_PASSWORD": "abcdefgh"}, ["app"])


def test_sshd_allows_only_the_session_forwards(ep: ModuleType, secrets: Path) -> None:
    cfg = ep.load_config({"KOD_VNC_PASSWORD": "abcdefgh", "KOD_VNC_PORT": "5901", "KOD_AUDIO_PORT": "4800"}, ["a"])
    lines = ep.sshd_config(cfg).splitlines()
    assert "PasswordAuthentication no" in lines and "PermitTTY no" in lines
    assert "AllowStreamLocalForwarding no" in lines and "X11Forwarding no" in lines
    assert "PermitOpen localhost:5901 127.0.0.1:5901 localhost:6080 127.0.0.1:6080 localhost:4800 127.0.0.1:4800" in lines
    # Local forwards only: the app side may never open a forward back into the viewer's side.
    assert "AllowTcpForwarding local" in lines and "PermitListen none" in lines
    assert any(line.startswith("ForceCommand ") for line in lines)
    assert "AllowUsers kod" in lines


def test_session_keys_are_restricted_to_port_forwarding(ep: ModuleType) -> None:
    text = "# comment\nssh-ed25519 AAAA one\n\nfrom=\"10.0.0.1\" ssh-ed25519 BBBB two\n"
    assert ep.authorized_keys(text) == (
        "restrict,port-forwarding ssh-ed25519 AAAA one\nfrom=\"10.0.0.1\" ssh-ed25519 BBBB two\n")


def test_the_x_cookie_file_is_private_and_well_formed(ep: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "Xauthority"
    ep.write_xauthority(path, 0)
    assert path.stat().st_mode & 0o777 == 0o600
    data = path.read_bytes()
    (family,) = struct.unpack(">H", data[:2])
    assert family == 0xFFFF
    pos, fields = 2, []
    for _ in range(4):
        (n,) = struct.unpack(">H", data[pos:pos + 2])
        fields.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    assert fields[0] == b"" and fields[1] == b"0" and fields[2] == b"MIT-MAGIC-COOKIE-1" and len(fields[3]) == 16
    assert pos == len(data)
