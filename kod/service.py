"""Running a service: where it listens (TCP, or a private unix socket), until when (SIGTERM or
SIGINT, or a stop event), and a clean shutdown. interlink and every sidecar run this way.

    settings = load_settings(...)                     # with a `listen: ListenSettings` section
    await serve_app(create_app(settings), settings.listen, env_prefix=ENV_PREFIX,
                    shutdown_timeout=settings.shutdown_timeout_seconds,
                    listening="interlink listening", stopping="interlink shutting down")

A unix socket is born with mode 0600 (it is bound under a umask, so there is no moment when
others may connect), in a directory created 0700 when missing; a stale socket of an earlier run is
replaced, a live one (another instance answers on it) or anything that is not a socket is refused.
The socket file is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from kod import errors
from kod.log import get_logger

log = get_logger(__name__)

S = TypeVar("S", bound=BaseModel)

#: The signals that stop a service cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ListenSettings(BaseModel):
    """Where a service listens. Each service subclasses it to give `port` its own default."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        description="TCP address. Keep it on loopback: the bearer token and pod specs travel in "
        "clear (put TLS in front, or use a unix socket, when the client runs elsewhere).",
    )
    port: int = Field(default=0, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    socket: str = Field(
        default="",
        description="Path of a unix socket to listen on INSTEAD of TCP (created with mode 0600).",
    )


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening-ready unix socket at `path`, mode 0600 from birth. Raises InvalidInput when
    something that is not a socket is there, Unavailable when another process answers on it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise errors.InvalidInput(f"{path} exists and is not a socket; refusing to replace it")
        if _answers(path):
            raise errors.Unavailable(f"another process listens on {path}", hint="stop it, or pick another socket path")
        path.unlink()  # a stale socket of an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask is process-wide: it is changed only around the bind itself, with no `await`
        # in between, so no other task of this program creates files under it.
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)  # whatever the umask, never wider than this
    except OSError as exc:
        sock.close()
        raise errors.Unavailable(f"cannot listen on {path}: {exc.strerror}") from exc
    return sock


async def start_site(runner: web.AppRunner, listen: ListenSettings, *, env_prefix: str = "") -> str:
    """Start listening as `listen` says; returns where, as a URL (the real port for port 0)."""
    if listen.socket:
        path = Path(listen.socket).expanduser()
        await web.SockSite(runner, bind_unix_socket(path)).start()
        return f"unix://{path}"
    if not is_loopback(listen.host):
        log.warning(
            "listening on a non-loopback address: the bearer token and pod specs travel in clear; "
            "put TLS in front or use a unix socket",
            host=listen.host,
        )
    try:
        await web.TCPSite(runner, listen.host, listen.port).start()
    except OSError as exc:
        raise errors.Unavailable(
            f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}",
            hint=f"pick another port with --port or {env_prefix}LISTEN__PORT" if env_prefix else None,
        ) from exc
    return ", ".join(f"http://{a[0]}:{a[1]}" for a in runner.addresses if isinstance(a, tuple))


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Set `stop` on SIGTERM/SIGINT while the block runs (on the running loop). The handler only
    sets the event: it never writes anything, so it cannot fail (a closed stderr, a dead `tee`),
    and every signal, the first one included, takes effect."""
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def serve_app(
    app: web.Application,
    listen: ListenSettings,
    *,
    shutdown_timeout: float,
    env_prefix: str = "",
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    listening: str = "listening",
    stopping: str = "shutting down",
    log_fields: Mapping[str, Any] | None = None,
) -> None:
    """Serve `app` until SIGTERM/SIGINT (or until `stop` is set), then shut down cleanly: the
    app's on_shutdown hooks end its streams, open requests get `shutdown_timeout` seconds, the
    cleanup contexts run, and the socket file is removed. `ready` is set once it listens."""
    stop = stop or asyncio.Event()
    runner = web.AppRunner(
        app,
        # A client that goes away cancels its handler at once, so a follow of a quiet stream
        # does not keep its upstream open until the next byte.
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout,
        access_log=None,
    )
    with stop_on_signals(stop):
        await runner.setup()
        where: str | None = None
        try:
            where = await start_site(runner, listen, env_prefix=env_prefix)
            log.info(listening, address=where, **(log_fields or {}))
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info(stopping)
        finally:
            await runner.cleanup()
            if where is not None and listen.socket:  # ours only: never a socket we refused to replace
                Path(listen.socket).expanduser().unlink(missing_ok=True)


def run_service(script: str, load: Callable[[], S], serve: Callable[[S], Coroutine[Any, Any, None]], *,
                component: str, print_settings: bool = False, secret_fields: frozenset[str] = frozenset({"token"})) -> int:
    """The body of a sidecar's console script: load the settings (exit 2 with the reason on bad
    ones), print them without their secrets when asked (exit 0), else configure logging and serve
    until stopped (exit 1 when the service cannot start)."""
    try:
        settings = load()
    except errors.KodError as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        return 2
    if print_settings:
        print(settings.model_dump_json(indent=2, exclude=set(secret_fields)))
        return 0
    from kod.log import configure

    configure(level=getattr(settings, "log_level", "info"), component=component)
    try:
        asyncio.run(serve(settings))
    except errors.KodError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    return 0
