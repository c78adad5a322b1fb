"""Background daemons tracked by PID files (there is no systemd on these machines).

A `Daemon` is a command line plus the config files it reads and a readiness probe. `ensure()`
starts it unless it already runs with the same fingerprint (command line, config file contents,
inputs such as certificates, and the binary's identity); when the fingerprint changed, it
restarts it. The PID file records the command line, and a PID only counts as "ours" when
/proc/<pid>/cmdline still shows exactly that command line, so a recycled PID is never signalled.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kod import errors
from kod.files import write_private
from localenv.shell import run, tail

#: Logs bigger than this are moved to <name>.log.1 when the daemon (re)starts.
LOG_ROTATE_BYTES = 64 * 1024 * 1024

Outcome = Literal["running", "started", "restarted"]


@dataclass(frozen=True)
class Daemon:
    """A background program managed by localenv."""

    name: str
    argv: tuple[str, ...]
    #: Where its PID file and log go.
    run_dir: Path
    logs_dir: Path
    #: Config files written (0600) before it starts; their contents are part of the fingerprint.
    files: Mapping[Path, str] = field(default_factory=dict)
    #: Files it reads that something else writes (certificates, keys): part of the fingerprint.
    inputs: tuple[Path, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    #: Returns True once the daemon serves; None means "ready when the process is alive".
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 120.0
    #: Seconds between SIGTERM and SIGKILL on stop.
    stop_timeout: float = 20.0
    #: TCP ports it listens on: they must be free before it starts (else its readiness probe
    #: could be answered by whatever holds them).
    ports: tuple[int, ...] = ()
    #: Source trees it runs (Python packages of this checkout): their files are part of the
    #: fingerprint, so a daemon started before the code changed is restarted, never reused stale.
    code: tuple[Path, ...] = ()

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.argv).encode())
        for path, content in sorted(self.files.items()):
            h.update(str(path).encode() + b"\0" + content.encode())
        for path in self.inputs:
            h.update(str(path).encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
        exe = Path(self.argv[0])
        if exe.exists():
            st = exe.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(code_digest(self.code).encode())
        return h.hexdigest()


def code_digest(trees: tuple[Path, ...]) -> str:
    """A digest of the Python sources under `trees` (names and contents; ~1 MB, a few ms)."""
    h = hashlib.sha256()
    for tree in trees:
        for path in sorted(tree.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(tree.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Record:
    """What a PID file holds."""

    pid: int
    argv: tuple[str, ...]
    fingerprint: str
    started_at: float
    #: The daemon's stop timeout, so that `down` (which has only the PID file) honours it.
    stop_timeout: float = 20.0


def read_record(pid_file: Path) -> Record | None:
    try:
        data = json.loads(pid_file.read_text())
        return Record(int(data["pid"]), tuple(data["argv"]), str(data["fingerprint"]), float(data["started_at"]),
                      float(data.get("stop_timeout", 20.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    if state in ("Z", "X"):
        return None
    return tuple(raw.decode(errors="replace").split("\0")[:-1]) if raw else ()


def is_alive(record: Record) -> bool:
    """True when the recorded PID is alive AND still runs the recorded command line."""
    return _cmdline(record.pid) == record.argv


def running_pid(pid_file: Path) -> int | None:
    """The PID of the daemon whose PID file this is, when it really runs; else None."""
    record = read_record(pid_file)
    return record.pid if record and is_alive(record) else None


def _reap(pid: int) -> None:
    # A daemon started by this very process becomes a zombie when it exits; collect it.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _rotate(log: Path) -> None:
    if log.exists() and log.stat().st_size > LOG_ROTATE_BYTES:
        log.replace(log.with_name(log.name + ".1"))


def port_holder(port: int) -> str | None:
    """None when nothing listens on TCP `port` (any address); else who does (from `ss`)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
    except OSError:
        ss = run(["ss", "-Hltnp", f"sport = :{port}"], check=False).stdout.strip()
        if not ss:
            return None
        return ss.split("users:")[-1] if "users:" in ss else "another process"
    ss = run(["ss", "-Hltnp", f"sport = :{port}"], check=False).stdout.strip()
    return ss.split("users:")[-1] if "users:" in ss else "another process"


def start(daemon: Daemon) -> int:
    """Write the daemon's files, start it in its own session with its log, record its PID,
    and wait until it is ready. Raises `errors.Conflict` when one of its ports is taken, and
    `errors.Unavailable` with the end of its log when it exits or does not become ready in time."""
    for port in daemon.ports:
        holder = port_holder(port)
        for _ in range(30):  # a process that just exited may take a moment to release it
            if not holder:
                break
            time.sleep(0.1)
            holder = port_holder(port)
        if holder:
            raise errors.Conflict(
                f"{daemon.name} needs TCP port {port}, which is in use by {holder}",
                hint="stop that process (another cluster?), or choose other ports with KOD_LOCALENV_PORTS__*",
            )
    for path, content in daemon.files.items():
        write_private(path, content)
    daemon.run_dir.mkdir(parents=True, exist_ok=True)
    daemon.logs_dir.mkdir(parents=True, exist_ok=True)
    _rotate(daemon.log_file)
    fingerprint = daemon.fingerprint()
    with daemon.log_file.open("ab") as log:
        log.write(f"\n--- localenv: starting {daemon.name} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            daemon.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(daemon.env) if daemon.env is not None else None,
            cwd=daemon.cwd,
            start_new_session=True,  # no SIGHUP/SIGINT from the terminal or from pytest
        )
    record = {"pid": proc.pid, "argv": list(daemon.argv), "fingerprint": fingerprint, "started_at": time.time(),
              "stop_timeout": daemon.stop_timeout}
    write_private(daemon.pid_file, json.dumps(record))
    wait_ready(daemon, proc.pid)
    return proc.pid


def wait_ready(daemon: Daemon, pid: int) -> None:
    """Poll the daemon's probe until it answers, the process dies, or the timeout passes."""
    deadline = time.monotonic() + daemon.ready_timeout
    delay = 0.05
    while True:
        _reap(pid)
        if _cmdline(pid) is None:
            raise errors.Unavailable(
                f"{daemon.name} exited right after starting; the end of its log "
                f"({daemon.log_file}):\n{tail(daemon.log_file)}",
                hint=f"fix what the log says, then run `python -m localenv up` again",
            )
        try:
            if daemon.ready is None or daemon.ready():
                return
        except Exception:  # noqa: BLE001 - a probe that raises means "not ready yet"
            pass
        if time.monotonic() > deadline:
            raise errors.Unavailable(
                f"{daemon.name} did not become ready within {daemon.ready_timeout:.0f} s; the end of "
                f"its log ({daemon.log_file}):\n{tail(daemon.log_file)}",
                hint="fix what the log says, then run `python -m localenv up` again",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def ensure(daemon: Daemon) -> tuple[Outcome, int]:
    """Make sure the daemon runs with its current configuration; never starts a second copy.
    Returns what was done and the PID."""
    record = read_record(daemon.pid_file)
    if record and is_alive(record):
        if record.fingerprint == daemon.fingerprint():
            wait_ready(daemon, record.pid)
            return "running", record.pid
        stop(daemon)
        return "restarted", start(daemon)
    return "started", start(daemon)


def stop_pid(pid: int, argv: tuple[str, ...], *, timeout: float = 20.0) -> bool:
    """SIGTERM, wait, then SIGKILL the process, but only while it still runs `argv`.
    Returns True when a process was stopped."""
    if _cmdline(pid) != argv:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid, argv):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    for _ in range(100):
        if _gone(pid, argv):
            break
        time.sleep(0.1)
    return True


def _gone(pid: int, argv: tuple[str, ...]) -> bool:
    """True once the process has exited completely. An exiting process shows an empty command
    line (its memory is released) while it still holds its files and listening sockets: that is
    not gone yet, or a restart would find its ports taken."""
    _reap(pid)
    now = _cmdline(pid)
    return now is None or (now != argv and now != ())


def stop(daemon: Daemon) -> int | None:
    """Stop the daemon if it runs (verified by command line) and remove its PID file.
    Returns the PID that was stopped, if any."""
    return stop_by_pid_file(daemon.pid_file, timeout=daemon.stop_timeout)


def stop_by_pid_file(pid_file: Path, *, timeout: float | None = None) -> int | None:
    """`stop()` for a PID file alone (used by `down`, which needs no full daemon description);
    `timeout` defaults to the one recorded when the daemon started."""
    record = read_record(pid_file)
    stopped = None
    if record and stop_pid(record.pid, record.argv, timeout=record.stop_timeout if timeout is None else timeout):
        stopped = record.pid
    pid_file.unlink(missing_ok=True)
    return stopped
