"""The Docker engine: adopt a running one, or start Debian's dockerd in the background.

An engine that answers on the socket is used as it is, whoever started it, and is never restarted
(other components' containers run in it). `down` stops dockerd only when localenv started it and
`--docker` is given.
"""

from __future__ import annotations

from pathlib import Path

import docker
from docker.errors import DockerException

from kod import errors
from localenv import procs
from localenv.shell import require

SOCKET = Path("/var/run/docker.sock")


def client(timeout: int = 120) -> docker.DockerClient:
    """A client of the local engine (the standard environment: DOCKER_HOST or the socket)."""
    return docker.from_env(timeout=timeout)


def answers() -> bool:
    """True when the engine answers a ping."""
    try:
        c = client(timeout=5)
        try:
            return bool(c.ping())
        finally:
            c.close()
    except DockerException:
        return False
    except OSError:
        return False


def daemon(state_dir: Path, *, ready_timeout: float = 120.0) -> procs.Daemon:
    """dockerd as a localenv daemon (PID file and log under <data_dir>/docker)."""
    dockerd = require("dockerd", package="docker.io")
    return procs.Daemon(
        name="dockerd",
        argv=(str(dockerd),),
        run_dir=state_dir,
        logs_dir=state_dir,
        ready=answers,
        ready_timeout=ready_timeout,
        stop_timeout=60.0,
    )


def ensure(state_dir: Path) -> str:
    """Make sure an engine answers; returns a line saying what was found or done."""
    d = daemon(state_dir)
    ours = procs.running_pid(d.pid_file)
    if answers():
        return f"running (pid {ours}, started by localenv)" if ours else "running (adopted: not started by localenv)"
    if ours:
        # Our dockerd runs but does not answer yet (e.g. still starting): wait for it.
        procs.wait_ready(d, ours)
        return f"running (pid {ours}, started by localenv)"
    if SOCKET.exists() and Path("/var/run/docker.pid").exists():
        try:
            other = int(Path("/var/run/docker.pid").read_text().strip())
            if Path(f"/proc/{other}").exists():
                raise errors.Unavailable(
                    f"a dockerd (pid {other}) runs but does not answer on {SOCKET}",
                    hint="wait for it to finish starting, or stop it, then run `python -m localenv up` again",
                )
        except ValueError:
            pass
    pid = procs.start(d)
    return f"started dockerd (pid {pid}, log {d.log_file})"


def stop(state_dir: Path) -> int | None:
    """Stop dockerd if localenv started it; an adopted engine is left alone."""
    return procs.stop_by_pid_file(state_dir / "dockerd.pid", timeout=60.0)
