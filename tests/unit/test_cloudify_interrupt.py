"""Ctrl-C in a real `cloudify firefox` process, with its output a pipe whose reader is gone, as
after `cloudify firefox 2>&1 | tee log` and Ctrl-C (the terminal's SIGINT kills tee at once).

The one boundary faked is the cluster: an API server that accepts connections and never answers,
so that cloudify sits in its first phase (measuring the cluster) with its signal handlers
installed when the SIGINT comes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Seconds cloudify may take to end after a Ctrl-C (it has nothing to clean up yet).
PROMPT = 15.0


@pytest.fixture
def silent_cluster(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig whose API server accepts connections and never answers; yields its path."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: x, user: u}}]\n"
        f"clusters: [{{name: x, cluster: {{server: 'http://127.0.0.1:{server.getsockname()[1]}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n")
    kubeconfig.chmod(0o600)  # credentials: cloudify refuses one others may read
    try:
        yield kubeconfig
    finally:
        server.close()
        for conn in held:
            conn.close()


def start_cloudify(kubeconfig: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`cloudify --no-fallback -r native firefox` with stdout and stderr one pipe; returns the
    process and the pipe's read end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOD_CLOUDIFY_") and k != "DISPLAY"}
    # The native viewer's tools need only exist: cloudify checks for them before it measures the
    # cluster, and never gets further here. These fail loudly should one ever run.
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("vncviewer", "ssh"):
        (tools / name).write_text("#!/bin/sh\necho \"$0 must not run in this test\" >&2\nexit 99\n")
        (tools / name).chmod(0o755)
    env.update(KUBECONFIG=str(kubeconfig), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_STATE_HOME=str(tmp_path / "state"), XDG_RUNTIME_DIR=str(tmp_path),
               PATH=f"{tools}:{os.environ.get('PATH', '')}")
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "cloudify.main", "--no-fallback", "-r", "native", "-t", "60",
                             "firefox"], stdin=subprocess.DEVNULL, stdout=write, stderr=write, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    os.close(write)
    return proc, read


def read_until(fd: int, text: bytes, timeout: float = 30.0) -> bytes:
    """What the pipe gave until `text` showed up."""
    got = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while text not in got:
        assert time.monotonic() < deadline, f"no {text!r} within {timeout:.0f} s: {got!r}"
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        assert chunk, f"the pipe closed before {text!r}: {got!r}"
        got += chunk
    return got


def ended(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_the_first_ctrl_c_ends_cloudify_even_when_its_output_pipe_is_broken(silent_cluster: Path, tmp_path: Path) -> None:
    proc, read = start_cloudify(silent_cluster, tmp_path)
    try:
        read_until(read, b"(session ")  # cloudify runs, its handlers are installed
        time.sleep(0.5)                 # and it waits for the cluster's answer
        os.close(read)                  # tee died: every write now fails with EPIPE
        proc.send_signal(signal.SIGINT)
        code = ended(proc, PROMPT)
        assert code is not None, f"cloudify still runs {PROMPT:.0f} s after a Ctrl-C with its stderr broken"
        assert code == 130
        # Nothing of the session is left on this desktop: no session record.
        records = tmp_path / "state" / "kod" / "sessions"
        assert not records.exists() or not any(records.iterdir())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_with_its_output_intact_ctrl_c_says_what_it_does_and_exits_130(silent_cluster: Path, tmp_path: Path) -> None:
    proc, read = start_cloudify(silent_cluster, tmp_path)
    try:
        read_until(read, b"(session ")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        said = read_until(read, b"stopping the session")
        assert ended(proc, PROMPT) == 130, said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(read)
