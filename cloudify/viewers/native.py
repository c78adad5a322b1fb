"""Native run mode: the desktop's own ssh, vncviewer and browser.

- ssh brings the app's sound stream here (`-L <socket>:localhost:<audio port>`) and, with -s, VNC
  or noVNC (`-L`), authenticated by the session key and pinned to the session's host key.
- Sound: pacat plays that stream (raw PCM, kod.apps.AUDIO_*) into the desktop's PulseAudio. The
  app only sends; it never reaches the desktop's sound server, so it cannot record from it.
- VNC: vncviewer, once the server answers (a viewer that cannot connect would show an error
  dialog instead of retrying); the password goes in its environment (VNC_PASSWORD), not on its
  command line.
- noVNC: the URL carries the password in its fragment (never sent to any server); it is printed,
  and opened with xdg-open (or the configured browser) when there is one. The session then ends
  when the app ends, or on Ctrl-C.

Every process started here dies with cloudify (PR_SET_PDEATHSIG), even after a kill -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shlex
import shutil
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from kod import apps, errors
from kod.files import create_private
from kod.log import get_logger

from cloudify.manifests import SessionPlan, Target
from cloudify.portforward import UnixRelay, same_user_guard

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1
#: Seconds between two attempts to reach the app while it starts.
RETRY_SECONDS = 0.25
SSH_CONNECT_TIMEOUT = 5
#: Longest pause before the sound stream is fetched again after it ended at once.
SOUND_RETRY_MAX = 8.0


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when cloudify dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def vnc_answers(connect: Connect, *, timeout: float = 2.0) -> bool:
    """Whether a VNC server answers (sends its 'RFB xxx.yyy' greeting) at the target."""
    try:
        reader, writer = await asyncio.wait_for(connect(), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        greeting: bytes = await asyncio.wait_for(reader.readexactly(12), timeout)
        return greeting.startswith(b"RFB ")
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def ssh_answers(host: str, port: int, *, timeout: float = 2.0) -> bool:
    """Whether an SSH server greets ('SSH-2.0-...') at host:port."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        line: bytes = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"SSH-")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def http_answers(host: str, port: int, *, timeout: float = 2.0) -> bool:
    """Whether noVNC's web server answers at host:port."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"HEAD /vnc.html HTTP/1.0\r\nHost: kod\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return b" 200 " in line
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class NativeViewer:
    kind = "native"

    def __init__(
        self,
        plan: SessionPlan,
        *,
        ssh: str,
        vncviewer: str,
        pacat: str = "pacat",
        browser: str | None,
        pulse_socket: Path | None,
        runtime_dir: str | None,
        display: str | None,
        timeout: float,
        env: Mapping[str, str],
        on_path: Callable[[str], None] | None = None,
        print_line: Callable[[str], None] = print,
    ) -> None:
        self.plan, self.timeout = plan, timeout
        self.ssh_tool, self.vncviewer_tool, self.browser, self.pacat_tool = ssh, vncviewer, browser, pacat
        self.pulse_socket, self.runtime_dir, self.display = pulse_socket, runtime_dir, display
        #: The desktop session's environment (from `main`): what the viewer and browser need.
        self.env = dict(env)
        if display:
            self.env["DISPLAY"] = display
        self._on_path, self._print = on_path, print_line
        self._dir: Path | None = None
        self._ssh: asyncio.subprocess.Process | None = None
        self._viewer: asyncio.subprocess.Process | None = None
        self._pacat: asyncio.subprocess.Process | None = None
        self._sound_task: asyncio.Task[None] | None = None
        self._ssh_task: asyncio.Task[None] | None = None
        self._ssh_failed = asyncio.Event()
        self._ssh_error = ""
        self._stopping = False
        self._local: tuple[str, int] | str = ""
        self._viewer_task: asyncio.Task[None] | None = None
        self._relay: UnixRelay | None = None
        self.url: str | None = None

    # --- checks, before anything is created ---

    @staticmethod
    def check_tools(ssh: str, vncviewer: str, protocol: str) -> None:
        """Unavailable, naming the package, when a tool this mode needs is missing."""
        if not shutil.which(ssh):
            raise errors.Unavailable(f"{ssh} is not installed", hint="apt-get install openssh-client, or use -r docker")
        if protocol == "vnc" and not shutil.which(vncviewer):
            raise errors.Unavailable(
                f"{vncviewer} is not installed", hint="apt-get install tigervnc-viewer, or use -r docker / -p novnc"
            )

    # --- the interface ---

    async def start(self, target: Target) -> None:
        self._prepare_files()
        opts = self.plan.options
        forwards: list[str] = []
        assert self._dir is not None
        if self.pulse_socket and shutil.which(self.pacat_tool):
            sound = self._dir / "sound.sock"
            forwards += ["-L", f"{sound}:localhost:{apps.AUDIO_PORT}"]
            self._sound_task = asyncio.create_task(self._play_sound(sound, self.pulse_socket))
        elif self.pulse_socket:
            self._print(f"  ! no sound: {self.pacat_tool} is not installed (apt-get install pulseaudio-utils)")
        if opts.secure and opts.protocol == "vnc":
            assert self._dir is not None
            sock = str(self._dir / "vnc.sock")
            forwards += ["-L", f"{sock}:localhost:{apps.VNC_PORT}"]
            self._local = sock
        elif opts.secure:
            # A browser reaches noVNC only over TCP: ssh's -L goes to a socket of the session's
            # 0700 directory, and a loopback relay that accepts only this user's sockets leads
            # there (an `ssh -L 127.0.0.1:PORT` would be open to every local user).
            sock_path = self._dir / "novnc.sock"
            forwards += ["-L", f"{sock_path}:localhost:{apps.NOVNC_PORT}"]
            self._relay = UnixRelay(sock_path, guard=same_user_guard())
            self._local = ("127.0.0.1", await self._relay.start())
        elif opts.protocol == "vnc":
            assert target.vnc_port is not None
            self._local = (target.vnc_host or target.host, target.vnc_port)
        else:
            assert target.novnc_port is not None
            self._local = (target.vnc_host or target.host, target.novnc_port)
        if forwards:
            self._ssh_task = asyncio.create_task(self._keep_ssh(target, forwards))
        self._viewer_task = asyncio.create_task(self._launch_viewer())

    async def wait_running(self, timeout: float) -> str:
        """Returns once the viewer (vncviewer, or the browser's URL) is up."""
        assert self._viewer_task is not None
        waiter = asyncio.ensure_future(self._viewer_task)
        failed = asyncio.ensure_future(self._ssh_failed.wait())
        try:
            done, _ = await asyncio.wait({waiter, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if waiter in done:
            waiter.result()
            if self.url:
                return "in your browser"
            return "as a local vncviewer"
        waiter.cancel()
        if self._ssh_failed.is_set():
            raise errors.Unavailable(f"ssh to the app failed: {self._ssh_error}")
        raise errors.Unavailable(f"the app's {'noVNC' if self.url is None and self.plan.options.protocol == 'novnc' else 'VNC'} server did not answer within {timeout:g} s")

    async def wait_done(self) -> int:
        if self._viewer is None:
            # noVNC in a browser: nothing of ours to wait for; the session ends with the app.
            await asyncio.Event().wait()
        assert self._viewer is not None and self._dir is not None
        code = await self._viewer.wait()
        with contextlib.suppress(OSError):
            # TigerVNC ends with 0 after refusing a server; its log says why.
            if "No matching security types" in (self._dir / "vncviewer.log").read_text(errors="replace"):
                raise errors.Forbidden(
                    "the VNC server does not use the session's authentication (VncAuth): the viewer refused it",
                    hint="an impostor may be on the path; run the app again, without --insecure",
                )
        if code != 0 and not self._stopping:
            with contextlib.suppress(OSError):
                tail = (self._dir / "vncviewer.log").read_text(errors="replace").strip().splitlines()[-8:]
                raise errors.Unavailable("vncviewer ended with exit code {}:\n  {}".format(code, "\n  ".join(tail)))
        return code

    async def stop(self) -> None:
        self._stopping = True
        for proc in (self._viewer, self._ssh, self._pacat):
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in (self._viewer, self._ssh, self._pacat):
            if proc is not None:
                try:
                    await asyncio.wait_for(proc.wait(), 3)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        for task in (self._ssh_task, self._viewer_task, self._sound_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._relay is not None:
            await self._relay.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # --- the parts ---

    def _prepare_files(self) -> None:
        creds = self.plan.credentials
        self._dir = Path(tempfile.mkdtemp(prefix=f"kod-{self.plan.names.session}-", dir=self.runtime_dir))
        if self._on_path:
            self._on_path(str(self._dir))
        for name, text in (("id_ed25519", creds.client.private), ("known_hosts", creds.known_hosts())):
            create_private(self._dir / name, text)

    def ssh_argv(self, target: Target, forwards: list[str]) -> list[str]:
        assert self._dir is not None
        return [
            self.ssh_tool, "-N", "-T",
            "-i", str(self._dir / "id_ed25519"),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self._dir / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ExitOnForwardFailure=yes",
            "-o", "StreamLocalBindUnlink=yes",
            "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
            "-o", "ServerAliveInterval=10",
            "-o", "LogLevel=ERROR",
            "-F", "/dev/null",
            "-p", str(target.ssh_port),
            *forwards,
            f"{apps.APP_USER}@{target.host}",
        ]

    async def _keep_ssh(self, target: Target, forwards: list[str]) -> None:
        """Run ssh; while the app starts its sshd is not there yet, so retry until it holds or
        the timeout passes. A tunnel that breaks later is not restarted: the session is over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        # Spawning ssh while the app's sshd is not up yet costs a process per attempt: wait for
        # its greeting first (a cheap TCP probe).
        while not await ssh_answers(target.host, target.ssh_port):
            if loop.time() > deadline:
                self._ssh_error = f"no SSH server answered at {target.host}:{target.ssh_port}"
                self._ssh_failed.set()
                return
            await asyncio.sleep(RETRY_SECONDS)
        while not self._stopping:
            self._ssh = await asyncio.create_subprocess_exec(
                *self.ssh_argv(target, forwards),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                preexec_fn=die_with_parent,
            )
            assert self._ssh.stderr is not None
            started = asyncio.get_running_loop().time()
            err = await self._ssh.stderr.read()
            await self._ssh.wait()
            if self._stopping:
                return
            self._ssh_error = err.decode(errors="replace").strip() or f"exit code {self._ssh.returncode}"
            if asyncio.get_running_loop().time() - started > SSH_CONNECT_TIMEOUT * 2:
                log.warning("ssh tunnel ended", error=self._ssh_error)
                return  # it held, then ended: the app went away
            if asyncio.get_running_loop().time() > deadline:
                self._ssh_failed.set()
                return
            await asyncio.sleep(RETRY_SECONDS)

    async def _play_sound(self, stream: Path, pulse: Path) -> None:
        """pacat plays the app's stream (through ssh's -L socket `stream`) into the PulseAudio at
        `pulse`, for the whole session. A stream ends when its connection breaks (ssh not up yet,
        the app's side restarted or serves no sound): connect again after a pause, longer each
        time a stream ends at once (up to SOUND_RETRY_MAX), so that an app without sound does not
        make the desktop's PulseAudio open streams in a loop."""
        argv = [
            self.pacat_tool, "--playback", "--raw", f"--format={apps.AUDIO_FORMAT}", f"--rate={apps.AUDIO_RATE}",
            f"--channels={apps.AUDIO_CHANNELS}", f"--latency-msec={apps.AUDIO_LATENCY_MS}",
            "--client-name=kod-viewer", f"--stream-name={self.plan.options.app.name}", f"--server=unix:{pulse}",
        ]
        loop = asyncio.get_running_loop()
        pause = RETRY_SECONDS
        while not self._stopping:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(str(stream))
            except OSError:
                conn.close()
                await asyncio.sleep(RETRY_SECONDS)
                continue
            try:
                # pacat reads the connection itself: no copy through this process.
                self._pacat = await asyncio.create_subprocess_exec(
                    *argv, stdin=conn.fileno(), stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent,
                )
            finally:
                conn.close()
            started = loop.time()
            await self._pacat.wait()
            pause = RETRY_SECONDS if loop.time() - started > 2 else min(pause * 2, SOUND_RETRY_MAX)
            await asyncio.sleep(pause)

    async def _launch_viewer(self) -> None:
        opts = self.plan.options
        local = self._local
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            if isinstance(local, str):
                up = await vnc_answers(lambda: asyncio.open_unix_connection(local))
            elif opts.protocol == "vnc":
                up = await vnc_answers(lambda: asyncio.open_connection(*local))
            else:
                up = await http_answers(*local)
            if up:
                break
            if loop.time() > deadline:
                raise errors.Unavailable(f"the app did not answer within {self.timeout:g} s")
            await asyncio.sleep(RETRY_SECONDS)
        if opts.protocol == "vnc":
            await self._start_vncviewer(local)
        else:
            assert not isinstance(local, str)
            self._open_browser(*local)

    async def _start_vncviewer(self, local: tuple[str, int] | str) -> None:
        opts = self.plan.options
        server = local if isinstance(local, str) else f"{local[0]}::{local[1]}"
        env = {**self.env, "VNC_PASSWORD": self.plan.credentials.vnc_password}
        assert self._dir is not None
        # Its chatter goes to a file of the session, shown only when it fails.
        with open(self._dir / "vncviewer.log", "wb") as logfile:
            self._viewer = await asyncio.create_subprocess_exec(
                self.vncviewer_tool,
                "-QualityLevel", str(opts.quality), "-CompressLevel", str(opts.compression), "-AutoSelect=0",
                # Only the authentication the app's server uses: a server (an impostor on the
                # path, in clear mode) that offers none or another is refused.
                "-SecurityTypes", "VncAuth",
                # No dialog on an error (a refused server, a lost connection): vncviewer ends, and
                # so does the session, instead of waiting for a click on "reconnect".
                "-Shared=0", "-AlertOnFatalError=0", "-ReconnectOnError=0", server,
                stdin=asyncio.subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                env=env, preexec_fn=die_with_parent,
            )

    def _open_browser(self, host: str, port: int) -> None:
        password = self.plan.credentials.vnc_password
        # Everything after '#' stays in the browser: the password never reaches a server log.
        self.url = f"http://{host}:{port}/vnc.html#autoconnect=1&resize=remote&password={password}"
        self._print(f"noVNC: open {self.url}")
        opener = self.browser or shutil.which("xdg-open")
        if opener:
            asyncio.ensure_future(asyncio.create_subprocess_exec(
                *shlex.split(opener), self.url, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=self.env,
            ))
