"""Network namespaces: make them, run commands in them, and be in one for a block of code.

    netns.add("kod-home")                           # idempotent (`ip netns add`)
    netns.run("kod-home", ["ip", "-br", "addr"])    # `ip netns exec kod-home ...`
    with netns.entered("kod-home"):                 # this thread is on that host now:
        subprocess.run(...)                         # children start there,
        socket.create_connection(...)               # sockets are made there,
        procs.ensure(daemon)                        # so are daemons and their readiness probes
    netns.pids("kod-home"); netns.delete("kod-home")

`entered` switches only the calling thread (setns(2) on a network namespace is per thread and
allowed in a threaded process); threads and processes it starts inherit the namespace, others are
untouched. Files, users and mounts stay the host's: a namespace here is "another machine" only for
the network, which is what the proving ground needs (the same checkout, images and caches).
`run` goes through `ip netns exec`, which also remounts /sys for the namespace: use it for
programs that read the network from /sys (dockerd).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from kod import errors
from localenv.shell import run

#: Where `ip netns add` pins named namespaces.
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def add(name: str) -> bool:
    """Create the namespace unless it exists (its loopback up); True when made now."""
    if exists(name):
        return False
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    return True


def delete(name: str) -> bool:
    """Remove the namespace's name (the namespace goes with its last process); True if it was there."""
    if not exists(name):
        return False
    run(["ip", "netns", "delete", name], check=False)
    return True


def pids(name: str) -> list[int]:
    """The processes whose network is this namespace."""
    if not exists(name):
        return []
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def run_in(name: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` run in the namespace (`ip netns exec`); localenv.shell.run's errors."""
    return run(["ip", "netns", "exec", name, *argv], check=check, timeout=timeout, input=input)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise errors.Internal(f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """This thread in the namespace `name` while the block runs, then back where it was (also
    when the block raises). Not reentrant across threads: each thread enters on its own."""
    if not exists(name):
        raise errors.NotFound(f"network namespace {name} does not exist")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path(name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def current_inode() -> int:
    """The inode of this thread's network namespace (tests: where am I?)."""
    return os.stat("/proc/thread-self/ns/net").st_ino
