"""The desktop's screen and speakers, as a viewer outside the desktop session needs them.

- The X display: a viewer in a container reaches it through the socket directory
  /tmp/.X11-unix, and needs a cookie it can use from another host name: the display's entries of
  the Xauthority file, rewritten to FamilyWild (what `xauth nlist | sed 's/^..../ffff/'` does).
- PulseAudio: the viewer plays the app's sound stream (fetched with `ssh -L`) into it with pacat;
  the app itself never reaches it. A viewer in a container uses the dedicated kod socket
  (anonymous auth, in a directory only the desktop group may enter, which viewers join): cloudify
  sets it up in the session's PulseAudio when it is not there. The native viewer (pacat runs as
  the user) may use the session's own socket.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from kod import errors

from cloudify.settings import CloudifySettings, HostEnv

FAMILY_WILD = 0xFFFF


@dataclass(frozen=True)
class Display:
    """An X display on this machine, reachable through its unix socket."""

    name: str
    number: int
    screen: int = 0

    @property
    def socket(self) -> Path:
        return Path(f"/tmp/.X11-unix/X{self.number}")

    @property
    def local_name(self) -> str:
        """The display's name inside a container that has /tmp/.X11-unix: ':N.S'."""
        return f":{self.number}.{self.screen}" if self.screen else f":{self.number}"


def parse_display(value: str | None) -> Display:
    """':0', ':1.0', 'unix:0' (sockets) are fine; a TCP display ('localhost:10') is not
    reachable through the socket directory."""
    if not value:
        raise errors.InvalidInput(
            "no X display: DISPLAY is not set", hint="run cloudify from your desktop session, or set display in the config"
        )
    m = re.fullmatch(r"(?:(?:[^/:]*/)?unix)?:(\d+)(?:\.(\d+))?", value)
    if not m:
        raise errors.InvalidInput(
            f"display {value!r} is not a local display", hint="the viewer needs a local X server (DISPLAY=:N)"
        )
    return Display(name=value, number=int(m.group(1)), screen=int(m.group(2) or 0))


def _read_entries(data: bytes) -> list[tuple[int, bytes, bytes, bytes, bytes]]:
    out = []
    pos = 0
    try:
        while pos < len(data):
            (family,) = struct.unpack_from(">H", data, pos)
            pos += 2
            fields = []
            for _ in range(4):
                (length,) = struct.unpack_from(">H", data, pos)
                pos += 2
                fields.append(data[pos:pos + length])
                pos += length
            out.append((family, fields[0], fields[1], fields[2], fields[3]))
    except struct.error as exc:
        raise errors.InvalidInput(f"the X authority file is damaged: {exc}") from exc
    return out


def _pack(family: int, address: bytes, number: bytes, name: bytes, data: bytes) -> bytes:
    out = struct.pack(">H", family)
    for f in (address, number, name, data):
        out += struct.pack(">H", len(f)) + f
    return out


def wild_cookie(xauthority: Path, display: Display) -> bytes | None:
    """The display's cookies as FamilyWild entries (valid from any host name), or None when the
    file has none for it (a display without access control needs none)."""
    try:
        data = xauthority.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.InvalidInput(f"cannot read the X authority file {xauthority}: {exc}") from exc
    number = str(display.number).encode()
    picked = [e for e in _read_entries(data) if e[2] == number]
    if not picked:
        return None
    return b"".join(_pack(FAMILY_WILD, b"", number, name, cookie) for _, _, _, name, cookie in picked)


def xauthority_path(settings: CloudifySettings, host: HostEnv) -> Path:
    return Path(settings.xauthority or host.xauthority or host.home / ".Xauthority").expanduser()


def answers(sock: Path) -> bool:
    """Whether a server accepts connections on the unix socket (a stale file does not)."""
    import socket as sockets

    if not sock.is_socket():
        return False
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def socket_group(sock: Path) -> int | None:
    """The group a viewer must be in to reach `sock`: its directory's group (None for root's own
    group, which no viewer joins). `check_private_dir` has refused a directory others may enter."""
    try:
        st = sock.parent.stat()
    except OSError:
        return None
    return None if st.st_gid == 0 else st.st_gid


def check_private_dir(directory: Path, gid: int) -> None:
    """Refuse a kod sound socket directory that lets other local users in: anyone who can enter
    it can play and record through the socket (anonymous auth). Only its owner and the desktop
    group `gid` may enter it (mode 0710 or 0750), nobody else, and the group may not write.
    InvalidInput saying how to fix it otherwise."""
    st = directory.stat()
    mode = st.st_mode & 0o7777
    fix = (f"`chgrp {gid} {directory} && chmod 0710 {directory}` (as its owner or root), or set "
           "kod_pulse_dir to a directory only you and that group may enter")
    if mode & 0o007:
        raise errors.InvalidInput(
            f"the kod sound socket's directory {directory} lets every local user in (mode {mode:o}): "
            "whoever enters it can play and record through your PulseAudio; refusing to use it", hint=fix)
    if mode & 0o070 and st.st_gid != gid:
        raise errors.InvalidInput(
            f"the kod sound socket's directory {directory} lets group {st.st_gid} in, not the desktop "
            f"group {gid}: refusing to use it", hint=fix)
    if mode & 0o020:
        raise errors.InvalidInput(
            f"the kod sound socket's directory {directory} is writable by its group (mode {mode:o}): a "
            "viewer could replace the socket; refusing to use it", hint=fix)


def session_pulse(settings: CloudifySettings, host: HostEnv) -> Path | None:
    """The desktop session's own PulseAudio socket ($PULSE_SERVER unix:..., else
    $XDG_RUNTIME_DIR/pulse/native), when it answers."""
    server = host.environ.get("PULSE_SERVER", "")
    candidates = [Path(server.removeprefix("unix:"))] if server.startswith(("unix:", "/")) else []
    if host.xdg_runtime_dir:
        candidates.append(Path(host.xdg_runtime_dir) / "pulse" / "native")
    return next((c for c in candidates if answers(c)), None)


def kod_pulse(settings: CloudifySettings, host: HostEnv) -> Path | None:
    """The dedicated kod socket (the setting, else <kod_pulse_dir>/native), when it answers."""
    if settings.pulse_socket:
        p = Path(settings.pulse_socket).expanduser()
        if not answers(p):
            raise errors.InvalidInput(f"pulse_socket {p}: no PulseAudio answers there", hint="is PulseAudio running?")
        return p
    p = Path(settings.kod_pulse_dir) / "native"
    if not answers(p):
        return None
    check_private_dir(p.parent, settings.desktop_gid)
    return p


async def ensure_kod_pulse(settings: CloudifySettings, host: HostEnv) -> tuple[Path | None, str]:
    """The kod socket viewers use: the one there is, or one set up now in the desktop session's
    PulseAudio (`module-native-protocol-unix auth-anonymous=1` in `kod_pulse_dir`, a directory only
    the desktop group may enter). Returns (socket or None, a note for the user)."""
    found = kod_pulse(settings, host)
    if found is not None:
        return found, ""
    own = session_pulse(settings, host)
    pactl = shutil.which("pactl")
    if own is None or pactl is None:
        why = "no PulseAudio answers in this session" if own is None else "pactl is not installed (pulseaudio-utils)"
        return None, f"no sound: {why}"
    directory = Path(settings.kod_pulse_dir)
    gid = settings.desktop_gid
    try:
        # Made private from the start (never a moment in which others may enter it).
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return None, f"no sound: cannot make {directory} ({exc}); ask for it to be made (or set pulse_socket)"
    try:
        if directory.stat().st_gid != gid:
            os.chown(directory, -1, gid)
        if directory.stat().st_uid == os.geteuid():
            directory.chmod(0o710)
    except PermissionError:
        # Never a mode that lets others in instead (0711 would: the socket accepts anyone).
        raise errors.InvalidInput(
            f"cannot give the kod sound socket's directory {directory} to the desktop group {gid} "
            "(you are not in it), and viewers reach the socket only through that group",
            hint=f"ask for it to be made: `install -d -g {gid} -m 0710 {directory}` and add yourself to "
            f"group {gid}; or set desktop_gid to a group of yours that only viewers join",
        ) from None
    check_private_dir(directory, gid)
    sock = directory / "native"
    proc = await asyncio.create_subprocess_exec(
        pactl, "-s", f"unix:{own}", "load-module", "module-native-protocol-unix", f"socket={sock}", "auth-anonymous=1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0 or not answers(sock):
        return None, f"no sound: PulseAudio refused the kod socket: {err.decode(errors='replace').strip()}"
    return sock, f"set up the kod sound socket {sock} in your PulseAudio (module {out.decode().strip()})"
