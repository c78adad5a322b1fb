"""The desktop's screen and speakers, as a viewer outside the desktop session needs them.

- The X display: a viewer in a container reaches it through the socket directory
  /tmp/.X11-unix, and needs a cookie it can use from another host name: the display's entries of
  the Xauthority file, rewritten to FamilyWild (what `xauth nlist | sed 's/^..../ffff/'` does).
- PulseAudio: the app's sound comes back through `ssh -R <port>:<socket>`; the socket is the
  dedicated kod socket when the desktop has one (it accepts the viewer's uid without a cookie),
  else the session's own.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from kod import errors

from cloudify.settings import CloudifySettings, HostEnv

FAMILY_WILD = 0xFFFF
#: Where the desktop stack puts the dedicated PulseAudio socket for viewers, relative to
#: $XDG_RUNTIME_DIR (or /run/kod when there is none), newest convention first.
KOD_PULSE_CANDIDATES = ("kod/pulse/native", "kod-pulse/native")


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


def pulse_socket(settings: CloudifySettings, host: HostEnv, *, dedicated_only: bool) -> Path | None:
    """The PulseAudio socket the app's sound should go to: the setting, else the dedicated kod
    socket, else (unless `dedicated_only`) the desktop session's own. None when there is none:
    the session then has no sound, and says so."""
    if settings.pulse_socket:
        p = Path(settings.pulse_socket).expanduser()
        if not p.exists():
            raise errors.InvalidInput(f"pulse_socket {p} does not exist", hint="is PulseAudio running?")
        return p
    roots = [Path(host.xdg_runtime_dir)] if host.xdg_runtime_dir else []
    roots.append(Path("/run"))
    for root in roots:
        for rel in KOD_PULSE_CANDIDATES:
            if (root / rel).exists():
                return root / rel
    if not dedicated_only and host.xdg_runtime_dir:
        own = Path(host.xdg_runtime_dir) / "pulse" / "native"
        if own.exists():
            return own
    return None
