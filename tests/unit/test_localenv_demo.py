"""`python -m localenv demo`: its command line, how it decides there is no desktop, the environment
cloudify gets on a virtual desktop, and how a session is ended (the end-to-end run is
tests/e2e/test_demo.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localenv import demo, desktop_stack
from localenv.handle import ClusterHandle
from localenv.virtual_desktop import Image, VirtualDesktop, drawn, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localenv", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_help_documents_the_app_and_every_option() -> None:
    out = _run("demo", "--help").stdout
    for word in ("APP", "--once", "--screenshot", "firefox", "VNC", "ssh -L", "Exit code"):
        assert word in out


def test_an_unknown_app_is_refused_before_anything_is_set_up(tmp_path: Path) -> None:
    proc = _run("demo", "notepad", env={"KOD_LOCALENV_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 1
    assert "unknown app 'notepad'" in proc.stderr and "what to do: one of: firefox" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_display_means_no_desktop() -> None:
    assert demo.why_not_users_desktop({"PATH": os.environ["PATH"]}) == "DISPLAY is not set"


def test_a_display_without_an_x_server_means_no_desktop(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DISPLAY": ":987", "XAUTHORITY": str(tmp_path / "none")}
    assert demo.why_not_users_desktop(env) == "the X server of DISPLAY=:987 does not answer"


def _stack(tmp_path: Path) -> desktop_stack.Stack:
    cluster = ClusterHandle(kubeconfig=tmp_path / "admin.kubeconfig", kubectl_path=tmp_path / "kubectl",
                            node_name="kod-worker")
    settings = desktop_stack.StackSettings(node_name="desktop-box", user="alice")
    return desktop_stack.Stack(settings=settings, root=tmp_path / "desktop", cluster=cluster)


def test_cloudify_runs_on_the_virtual_desktop_with_its_sound_and_the_cluster(tmp_path: Path) -> None:
    desk = VirtualDesktop(tmp_path / "demo", pulse_dir=Path("/run/kod/pulse/demo-x"))
    desk.display = ":42"
    env = demo.cloudify_env({"PULSE_SERVER": "tcp:elsewhere", "KUBECONFIG": "/other", "HOME": "/root"},
                            _stack(tmp_path).cluster, _stack(tmp_path), desk)
    assert env["DISPLAY"] == ":42" and env["XAUTHORITY"] == str(desk.xauthority)
    # cloudify finds the desktop's PulseAudio as in a desktop session, and the kod socket beside it.
    assert "PULSE_SERVER" not in env and env["XDG_RUNTIME_DIR"] == str(desk.runtime_dir)
    assert env["KOD_CLOUDIFY_KOD_PULSE_DIR"] == "/run/kod/pulse/demo-x"
    assert env["KOD_CLOUDIFY_DESKTOP_GID"] == str(desk.group)
    assert env["KUBECONFIG"] == str(tmp_path / "admin.kubeconfig")
    assert (env["KOD_CLOUDIFY_USER"], env["KOD_CLOUDIFY_VIRTUAL_NODE"]) == ("alice", "desktop-box")
    assert env["HOME"] == "/root"


def test_the_users_own_cloudify_settings_win(tmp_path: Path) -> None:
    env = demo.cloudify_env({"DISPLAY": ":0", "KOD_CLOUDIFY_USER": "bob"}, _stack(tmp_path).cluster, _stack(tmp_path))
    assert env["DISPLAY"] == ":0" and env["KOD_CLOUDIFY_USER"] == "bob"


def test_the_watch_instructions_name_the_port_and_the_password_files(tmp_path: Path) -> None:
    text = demo.watch_instructions(5907, tmp_path / "vnc-password", tmp_path / "vnc-passwd", "192.0.2.9")
    assert "127.0.0.1:5907" in text
    assert f"vncviewer -passwd {tmp_path / 'vnc-passwd'} localhost::5907" in text
    assert "ssh -N -L 5907:localhost:5907 " in text and "@192.0.2.9" in text
    assert str(tmp_path / "vnc-password") in text


#: A stand-in for cloudify's end: a session that runs until SIGINT, then exits with `code`.
UNTIL_SIGINT = ("import pathlib, signal, sys, time; signal.signal(signal.SIGINT, lambda *a: sys.exit({code})); "
                "pathlib.Path({ready!r}).touch(); time.sleep(60)")


def _session(code: int, tmp_path: Path) -> demo.Session:
    """A running stand-in, once its SIGINT handler is in place."""
    ready = tmp_path / "ready"
    session = demo.Session([sys.executable, "-c", UNTIL_SIGINT.format(code=code, ready=str(ready))], os.environ)
    wait_for(lambda: ready.exists() or not session.running, 30, "the stand-in to start")
    return session


@pytest.mark.parametrize("code", [130, 0])
def test_once_ends_the_session_with_sigint_and_counts_a_clean_end_as_success(code: int, tmp_path: Path) -> None:
    with _session(code, tmp_path) as session:
        assert session.running
        assert demo.finish_once(session) == 0
    assert session.proc.returncode == code


def test_once_reports_cloudify_failing_to_end_with_its_exit_code(tmp_path: Path) -> None:
    with _session(3, tmp_path) as session, pytest.raises(demo.SessionFailed) as failed:
        demo.finish_once(session)
    assert failed.value.exit_code == 3 and "code 3" in failed.value.message


def test_the_viewers_empty_framebuffer_with_its_f8_hint_is_not_drawn() -> None:
    black = bytearray(1280 * 800 * 3)
    for i in range(0, 300 * 3, 3):  # a few hundred anti-aliased grey levels of the hint's text
        black[i:i + 3] = bytes((i // 3 % 256, i // 3 % 256, (i // 3 + 7) % 256))
    assert not drawn(Image(1280, 800, bytes(black)))
    page = bytearray(b"\xeb\xeb\xed" * 1280 * 800)
    page[:len(black[:900])] = black[:900]
    assert drawn(Image(1280, 800, bytes(page)))


def test_pixel_counts_are_what_their_definition_says() -> None:
    # 2x2: black, black, near-black (within 16 on every channel), and a grey.
    img = Image(2, 2, bytes((0, 0, 0, 0, 0, 0, 16, 3, 9, 128, 128, 127)))
    assert img.distinct_colours() == 3
    assert img.fraction_near((0, 0, 0), 16) == 0.75
    assert img.fraction_near((0, 0, 0), 15) == 0.5
    assert img.fraction_near((128, 128, 128), 0) == 0.0 and img.fraction_near((128, 128, 128), 1) == 0.25
    assert Image(0, 0, b"").distinct_colours() == 0 and Image(0, 0, b"").fraction_near((0, 0, 0)) == 0.0


def test_rows_changed_counts_the_rows_that_differ() -> None:
    before = Image(4, 3, bytes(36))
    after = Image(4, 3, bytes(12) + b"\x01" + bytes(23))
    assert demo.rows_changed(before, before) == 0
    assert demo.rows_changed(before, after) == 1


def test_a_killed_demos_sound_directory_is_removed_by_the_next_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "KOD_PULSE_DIR", tmp_path)
    (tmp_path / "demo-1a2b3c4d").mkdir()
    (tmp_path / "demo-1a2b3c4d" / "native").touch()
    (tmp_path / "native").touch()            # the user's own kod socket
    (tmp_path / "test-99").mkdir()           # somebody else's
    assert demo.remove_stale_sound_dirs() == [tmp_path / "demo-1a2b3c4d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native", "test-99"]
