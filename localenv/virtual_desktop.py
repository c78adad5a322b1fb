"""A desktop for a machine that has none: a real X server and real speakers, and the ways to see
and hear what they show. `make demo` uses it on headless machines, the end-to-end tests always.

    desk = VirtualDesktop(root)                  # root: a private directory for its files
    desk.start()                                 # Xvfb with an X cookie; PulseAudio, null-sink speakers
    desk.env()                                   # DISPLAY, XAUTHORITY, PULSE_SERVER for programs on it
    win = desk.wait_for_window("^firefox - TigerVNC$", timeout=60)
    desk.capture(win.box).save_png(path)         # a screenshot (libX11, no tool needed)
    with desk.recording(raw_path): ...           # what the speakers play (parec, s16le)
    vnc = desk.start_vnc()                       # watch it live: 127.0.0.1 only, with a password
    desk.stop()                                  # everything it started ends (also if we die)

What `start` makes, as a real desktop has it:

- an Xvfb display protected by an X cookie: `xauthority` is the host's authority file (a
  FamilyLocal entry for this host name, as `xauth add` writes), `wild_xauthority` a FamilyWild
  copy for containers (their host name differs, so only a FamilyWild entry matches there),
  readable by the desktop group only;
- a PulseAudio daemon in user mode (as root too) whose default sink is a null sink (the
  "speakers"), with its normal socket `<runtime_dir>/pulse/native` and the dedicated kod socket
  (`module-native-protocol-unix auth-anonymous=1`, the desktop side of cloudify's sound design)
  alone in `pulse_dir`, a directory only the desktop group (`group`) may enter: viewers join it.

Every process is started with PR_SET_PDEATHSIG, so no X server or sound server outlives the
process that started it, even after a SIGKILL. Tools come from Debian packages (`TOOLS`);
a missing one raises `kod.errors.Unavailable` naming the package.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import math
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kod import errors

#: The screen of the virtual display (Firefox's viewer window is 1280x800 by default).
SCREEN = (1920, 1080)
SAMPLE_RATE = 44100
#: The group that may use the FamilyWild X cookie and the kod sound socket (cloudify's desktop_gid).
DESKTOP_GID = 4713
NULL_SINK = "kod_speakers"
#: Program -> the Debian package that has it.
TOOLS = {
    "Xvfb": "xvfb", "xdotool": "xdotool", "pulseaudio": "pulseaudio", "pactl": "pulseaudio-utils",
    "parec": "pulseaudio-utils", "X0tigervnc": "tigervnc-scraping-server", "vncpasswd": "tigervnc-tools",
}


def tool(name: str) -> str:
    """The path of a program this module runs; Unavailable (with the package) when missing."""
    path = shutil.which(name)
    if path is None:
        package = TOOLS.get(name, name)
        raise errors.Unavailable(f"{name} is not installed", hint=f"apt-get install {package} "
                                 "(or run `python -m localenv up`, which installs the desktop's packages)")
    return path


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when our process dies, even by SIGKILL."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


#: For other processes that must not outlive their starter (localenv.demo's cloudify).
die_with_parent = _die_with_parent


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Polls `condition` until it returns something truthy (returned); TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- X authority files ---------------------------------------------------------------------------

FAMILY_LOCAL = 256
FAMILY_WILD = 0xFFFF
COOKIE_NAME = b"MIT-MAGIC-COOKIE-1"


def xauth_entry(family: int, address: bytes, number: int, cookie: bytes) -> bytes:
    """One entry of an X authority file (the format libXau reads)."""
    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    return struct.pack(">H", family) + counted(address) + counted(str(number).encode()) + counted(COOKIE_NAME) + counted(cookie)


# --- Pixels --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


@dataclass
class Image:
    """RGB pixels, row by row (3 bytes per pixel)."""

    width: int
    height: int
    rgb: bytes
    path: Path | None = None

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * 3
        return self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]

    def crop(self, box: Box) -> Image:
        x0, y0 = max(0, box.x), max(0, box.y)
        x1, y1 = min(self.width, box.x + box.width), min(self.height, box.y + box.height)
        rows = [self.rgb[(y * self.width + x0) * 3:(y * self.width + x1) * 3] for y in range(y0, y1)]
        return Image(max(0, x1 - x0), max(0, y1 - y0), b"".join(rows))

    def colours(self) -> dict[tuple[int, int, int], int]:
        """How many pixels have each colour."""
        counts: dict[tuple[int, int, int], int] = {}
        mv = self.rgb
        for i in range(0, len(mv), 3):
            key = (mv[i], mv[i + 1], mv[i + 2])
            counts[key] = counts.get(key, 0) + 1
        return counts

    def distinct_colours(self) -> int:
        """How many colours the image has. (Computed on 32-bit pixel values, in C: a window
        capture is judged several times a second while waiting for it to be drawn.)"""
        n = self.width * self.height
        if not n:
            return 0
        padded = bytearray(4 * n)
        for channel in range(3):
            padded[channel::4] = self.rgb[channel::3]
        return len(set(memoryview(padded).cast("I")))

    def fraction_near(self, colour: tuple[int, int, int], tolerance: int = 24) -> float:
        """Share of pixels within `tolerance` of `colour` on every channel."""
        n = self.width * self.height
        if not n:
            return 0.0
        # Per channel, a byte per pixel that is 1 when that channel is near (bytes.translate, in
        # C); a pixel is near when all three are: AND the three as big integers, count the ones.
        near = None
        for channel, value in enumerate(colour):
            table = bytes(1 if abs(b - value) <= tolerance else 0 for b in range(256))
            ones = int.from_bytes(self.rgb[channel::3].translate(table), "big")
            near = ones if near is None else near & ones
        return (near or 0).bit_count() / n

    def dominant_share(self) -> float:
        """Share of the most common colour: 1.0 for a blank (uniform) image."""
        counts = self.colours()
        return max(counts.values()) / (self.width * self.height) if counts else 1.0

    def save_png(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(self))
        self.path = path
        return path


def drawn(img: Image) -> bool:
    """An app's window is painted: a toolbar and a page give hundreds of colours, and little is
    black. Before the first frame the viewer shows its black framebuffer, with at most its
    anti-aliased "Press F8 to open the context menu" hint (~200 colours, 99 % black), which must
    not count. The one judgement of "drawn" of the demo, the end-to-end tests of cloudify and the
    first-frame benchmark."""
    return img.width > 200 and img.fraction_near((0, 0, 0), 16) < 0.5 and img.distinct_colours() > 150


def encode_png(img: Image) -> bytes:
    """An 8-bit RGB PNG (no filter; zlib does the work)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    stride = img.width * 3
    raw = b"".join(b"\x00" + img.rgb[y * stride:(y + 1) * stride] for y in range(img.height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", img.width, img.height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def decode_png(data: bytes) -> Image:
    """Decodes an 8-bit, non-interlaced RGB or RGBA PNG (what encode_png and Chromium write)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, [], 0
    height = depth = colour_type = interlace = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if depth != 8 or colour_type not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour_type}, interlace {interlace})")
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype:  # filter 0 (what encode_png writes) needs no pass over the bytes
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if ftype == 1:
                    line[i] = (line[i] + a) & 0xFF
                elif ftype == 2:
                    line[i] = (line[i] + b) & 0xFF
                elif ftype == 3:
                    line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
                elif ftype == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        if bpp == 3:
            out += line
        else:
            rgb = bytearray(width * 3)
            rgb[0::3], rgb[1::3], rgb[2::3] = line[0::4], line[1::4], line[2::4]
            out += rgb
    return Image(width, height, bytes(out))


# --- Screen capture through libX11 (no screenshot tool needed) ----------------------------------

class _XImage(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int), ("format", ctypes.c_int),
        ("data", ctypes.POINTER(ctypes.c_ubyte)), ("byte_order", ctypes.c_int), ("bitmap_unit", ctypes.c_int),
        ("bitmap_bit_order", ctypes.c_int), ("bitmap_pad", ctypes.c_int), ("depth", ctypes.c_int),
        ("bytes_per_line", ctypes.c_int), ("bits_per_pixel", ctypes.c_int), ("red_mask", ctypes.c_ulong),
        ("green_mask", ctypes.c_ulong), ("blue_mask", ctypes.c_ulong),
    ]


_X_LOCK = threading.Lock()
_ZPIXMAP = 2


def _libx11() -> ctypes.CDLL:
    name = ctypes.util.find_library("X11") or "libX11.so.6"
    lib = ctypes.CDLL(name)
    lib.XOpenDisplay.restype = ctypes.c_void_p
    lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    lib.XDefaultRootWindow.restype = ctypes.c_ulong
    lib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    lib.XGetImage.restype = ctypes.POINTER(_XImage)
    lib.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                              ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
    lib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    lib.XSetAuthorization.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.XFree.argtypes = [ctypes.c_void_p]
    return lib


def capture_x(display: str, cookie: bytes, box: Box) -> Image:
    """The pixels of `box` on the root window of `display` (24/32-bit TrueColor)."""
    lib = _libx11()
    with _X_LOCK:
        # Authenticate with the cookie for this call only, without touching the process's env.
        lib.XSetAuthorization(COOKIE_NAME, len(COOKIE_NAME), cookie, len(cookie))
        try:
            dpy = lib.XOpenDisplay(display.encode())
        finally:
            lib.XSetAuthorization(None, 0, None, 0)
        if not dpy:
            raise RuntimeError(f"cannot open X display {display}")
        try:
            root = lib.XDefaultRootWindow(dpy)
            ximg = lib.XGetImage(dpy, root, box.x, box.y, box.width, box.height, 0xFFFFFFFF, _ZPIXMAP)
            if not ximg:
                raise RuntimeError("XGetImage failed")
            img = ximg.contents
            if img.bits_per_pixel != 32:
                raise RuntimeError(f"unsupported X image format: {img.bits_per_pixel} bits per pixel")
            raw = ctypes.string_at(img.data, img.bytes_per_line * img.height)
            stride = img.bytes_per_line
            lib.XFree(img.data)
            lib.XFree(ximg)
        finally:
            lib.XCloseDisplay(dpy)
    rgb = bytearray(box.width * box.height * 3)
    for y in range(box.height):
        row = raw[y * stride:y * stride + box.width * 4]  # B, G, R, X (little-endian 0x00RRGGBB)
        o = y * box.width * 3
        rgb[o:o + box.width * 3:3] = row[2::4]
        rgb[o + 1:o + box.width * 3:3] = row[1::4]
        rgb[o + 2:o + box.width * 3:3] = row[0::4]
    return Image(box.width, box.height, bytes(rgb))


def free_display_numbers(first: int = 0, count: int = 64) -> Iterator[int]:
    """Display numbers that no X server of this machine has claimed: neither its socket file
    (shared by every network namespace, unlike the abstract socket) nor its lock file exists."""
    for n in range(first, first + count):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            yield n


def display_opens(display: str, env: Mapping[str, str], timeout: float = 5.0) -> bool:
    """Whether an X client with `env` (its XAUTHORITY) can open `display`: a separate short-lived
    process, since libX11 reads the authority file from its own environment."""
    probe = ("import ctypes, ctypes.util, sys; x = ctypes.CDLL(ctypes.util.find_library('X11') or 'libX11.so.6'); "
             "x.XOpenDisplay.restype = ctypes.c_void_p; x.XOpenDisplay.argtypes = [ctypes.c_char_p]; "
             "sys.exit(0 if x.XOpenDisplay(sys.argv[1].encode()) else 1)")
    try:
        proc = subprocess.run([sys.executable, "-c", probe, display], env=dict(env), capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


# --- Sound ----------------------------------------------------------------------------------------

def rms(samples: array.array) -> float:
    """Root mean square of 16-bit samples, as a fraction of full scale (silence: 0.0)."""
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples)) / 32768.0


def write_wav(path: Path, raw: bytes, rate: int = SAMPLE_RATE, channels: int = 1) -> Path:
    """A 16-bit little-endian PCM WAV of `raw` samples (what `recording` writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(raw[:len(raw) - len(raw) % (2 * channels)])
    return path


@contextmanager
def record_raw(out: Path, env: Mapping[str, str], source: str, rate: int = SAMPLE_RATE,
               channels: int = 1) -> Iterator[Path]:
    """Records `source` (e.g. a sink's monitor) of the PulseAudio that `env` names into `out`
    (s16le) while the block runs. parec buffers ~2 s on a null sink unless told a short latency."""
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [tool("parec"), "--latency-msec=50", "-d", source, f"--rate={rate}", f"--channels={channels}",
             "--format=s16le", "--raw"], env=dict(env), stdout=f, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        try:
            wait_for(lambda: out.stat().st_size > 0 or proc.poll() is not None, 10, "parec to start recording")
            yield out
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


# --- The desktop ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    id: int
    name: str
    box: Box


@dataclass(frozen=True)
class VncAccess:
    """How to watch the display live: a VNC server on 127.0.0.1:`port` with the password in
    `password_file` (plain text, 0600) and `passwd_file` (vncpasswd format, for `vncviewer -passwd`)."""

    port: int
    password_file: Path
    passwd_file: Path


class VirtualDesktop:
    """A running Xvfb + PulseAudio pair; see the module docstring.

    `root` is a directory of its own (made 0700; its files stay after `stop` for the logs).
    `pulse_dir` is where the kod sound socket goes (default `<root>/kod-pulse`; a viewer pod's
    sidecar accepts only paths below /run/kod/pulse). `sound=False` starts no PulseAudio (when the
    machine already has a sound server)."""

    def __init__(self, root: Path, *, screen: tuple[int, int] = SCREEN, group: int = DESKTOP_GID,
                 pulse_dir: Path | None = None, null_sink: str = NULL_SINK, sound: bool = True) -> None:
        self.root = root
        self.screen = screen
        self.group = group
        self.cookie = os.urandom(16)
        self.display = ""
        self.xauthority = root / "Xauthority"
        self.wild_xauthority = root / "container" / "Xauthority"
        self.runtime_dir = root / "pulse-runtime"
        self.pulse_dir = pulse_dir or root / "kod-pulse"
        self.pulse_socket = self.pulse_dir / "native"
        self.null_sink = null_sink
        self.sound = sound
        self.vnc: VncAccess | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._made_pulse_dir = False

    # -- lifecycle --
    def start(self) -> None:
        """Starts the X server, then (with `sound`) PulseAudio; on failure stops what started."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.start_x()
            if self.sound:
                self.start_sound()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, argv: list[str], log_name: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.root / log_name, "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent, **kwargs)
        self._procs.append(proc)
        return proc

    def log_tail(self, log_name: str, size: int = 2000) -> str:
        try:
            return (self.root / log_name).read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def start_x(self) -> None:
        """Xvfb on a display number no X server of this machine uses, cookie-protected."""
        xvfb = tool("Xvfb")
        server_auth = self.root / "server-auth"
        server_auth.write_bytes(xauth_entry(FAMILY_WILD, b"", 0, self.cookie))
        server_auth.chmod(0o600)
        number = ""
        for candidate in free_display_numbers():
            # The number is ours to choose: Xvfb's own pick (-displayfd alone) checks only the
            # sockets it can bind, and in another network namespace (the home proving ground)
            # the abstract socket of a display in use elsewhere is free, so it took :0 again and
            # replaced the other server's /tmp/.X11-unix/X0. -displayfd still says when it is up.
            read_fd, write_fd = os.pipe()
            try:
                self._spawn([xvfb, f":{candidate}", "-displayfd", str(write_fd), "-screen", "0",
                             f"{self.screen[0]}x{self.screen[1]}x24", "-auth", str(server_auth), "-nolisten", "tcp",
                             "-noreset"], "Xvfb.log", pass_fds=(write_fd,))
            finally:
                os.close(write_fd)
            with os.fdopen(read_fd) as ready:
                number = ready.readline().strip()
            if number:
                break
        if not number:
            raise errors.Unavailable(f"Xvfb did not start: {self.log_tail('Xvfb.log')}")
        self.display = f":{number}"
        # The host's own file names the host (FamilyLocal), as `xauth add` on a desktop does; the
        # containers' copy is FamilyWild and readable by the desktop group only.
        self.xauthority.write_bytes(xauth_entry(FAMILY_LOCAL, socket.gethostname().encode(), int(number), self.cookie))
        self.xauthority.chmod(0o600)
        self.wild_xauthority.parent.mkdir(mode=0o750, exist_ok=True)
        self.wild_xauthority.write_bytes(xauth_entry(FAMILY_WILD, b"", int(number), self.cookie))
        self._give_group(self.wild_xauthority.parent, 0o750)
        self._give_group(self.wild_xauthority, 0o640)

    def _give_group(self, path: Path, mode: int) -> None:
        """`path` to the desktop group with `mode` (root only; others keep their own group)."""
        with suppress(PermissionError):
            os.chown(path, -1, self.group)
        path.chmod(mode)

    def start_sound(self) -> None:
        """PulseAudio in user mode: a null sink as the default (the speakers), its own socket, then
        the kod socket in `pulse_dir`."""
        pulseaudio = tool("pulseaudio")
        tool("pactl")
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        home = self.root / "pulse-home"
        home.mkdir(mode=0o700, exist_ok=True)
        script = self.root / "default.pa"
        script.write_text(
            f"load-module module-null-sink sink_name={self.null_sink} rate={SAMPLE_RATE} "
            f"sink_properties=device.description={self.null_sink.replace('_', '-')}\n"
            f"set-default-sink {self.null_sink}\n"
            "load-module module-native-protocol-unix\n"
        )
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "XDG_RUNTIME_DIR": str(self.runtime_dir), "XDG_CONFIG_HOME": str(home / ".config")}
        proc = self._spawn([pulseaudio, "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1",
                            "--use-pid-file=no", "--disallow-exit", "--log-target=stderr"], "pulseaudio.log", env=env)
        wait_for(lambda: self.pactl("info").returncode == 0 or proc.poll() is not None, 20, "PulseAudio to answer")
        if proc.poll() is not None:
            raise errors.Unavailable(f"pulseaudio exited: {self.log_tail('pulseaudio.log')}")
        # The kod socket, as the desktop side of the product sets it up: a dedicated socket with
        # anonymous auth, alone in a directory that only the desktop group can enter.
        # Never a mode that lets other local users in (they could play and record through the
        # anonymous socket): made 0700, then given to the desktop group, or refused.
        self.pulse_dir.parent.mkdir(parents=True, exist_ok=True)
        self.pulse_dir.mkdir(mode=0o700)
        self._made_pulse_dir = True
        try:
            os.chown(self.pulse_dir, -1, self.group)
        except PermissionError as exc:
            raise errors.Unavailable(
                f"cannot give the kod sound socket's directory {self.pulse_dir} to the desktop group {self.group}",
                hint=f"run as root, or as a member of group {self.group}; the socket is never made "
                "where other users could enter",
            ) from exc
        self.pulse_dir.chmod(0o710)
        out = self.pactl("load-module", "module-native-protocol-unix", f"socket={self.pulse_socket}", "auth-anonymous=1")
        if out.returncode != 0:
            raise errors.Unavailable(f"cannot load the kod sound socket module: {out.stderr.strip()}")
        wait_for(self.pulse_socket.is_socket, 5, "the kod PulseAudio socket")

    def pactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """pactl against this desktop's PulseAudio."""
        return subprocess.run([tool("pactl"), *args], env=self.env(), capture_output=True, text=True, timeout=10,
                              check=False)

    def start_vnc(self, port: int | None = None) -> VncAccess:
        """A VNC server showing the display (TigerVNC's X0tigervnc), on 127.0.0.1 only, with a
        random password: look with `vncviewer -passwd <passwd_file> localhost::<port>`, or from
        another machine through `ssh -L <port>:localhost:<port>`. Port: the first free from 5901."""
        server, vncpasswd = tool("X0tigervnc"), tool("vncpasswd")
        port = port or _free_port(5901)
        password = secrets.token_urlsafe(12)[:8]  # VNC authentication uses 8 characters
        text_file, passwd_file = self.root / "vnc-password", self.root / "vnc-passwd"
        for path in (text_file, passwd_file):
            path.touch(mode=0o600)
            path.chmod(0o600)
        text_file.write_text(password + "\n")
        made = subprocess.run([vncpasswd, "-f"], input=password.encode() + b"\n", capture_output=True, check=False,
                              timeout=10)
        if made.returncode != 0:
            raise errors.Internal(f"vncpasswd -f failed: {made.stderr.decode(errors='replace').strip()}")
        passwd_file.write_bytes(made.stdout)
        proc = self._spawn([server, "-display", self.display, "-rfbport", str(port), "-interface", "127.0.0.1",
                            "-localhost", "-SecurityTypes", "VncAuth", "-PasswordFile", str(passwd_file),
                            "-AlwaysShared"], "vnc.log", env=self.env())

        def listening() -> bool:
            if proc.poll() is not None:
                return True
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 15, f"the VNC server on port {port}")
        if proc.poll() is not None:
            raise errors.Unavailable(f"X0tigervnc exited: {self.log_tail('vnc.log')}")
        self.vnc = VncAccess(port, text_file, passwd_file)
        return self.vnc

    def stop(self) -> None:
        """Stops every process it started (last first; SIGKILL after 5 s) and removes the kod
        sound socket's directory. Idempotent."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._made_pulse_dir:
            shutil.rmtree(self.pulse_dir, ignore_errors=True)
            self._made_pulse_dir = False
        for path in (self.root / "vnc-password", self.root / "vnc-passwd"):
            path.unlink(missing_ok=True)

    def pids(self) -> list[int]:
        """PIDs of the processes it started that still run (tests check that none is left)."""
        return [p.pid for p in self._procs if p.poll() is None]

    # -- environment --
    def env(self, **extra: str) -> dict[str, str]:
        """An environment for host programs on this desktop (DISPLAY, XAUTHORITY, PULSE_SERVER)."""
        env = dict(os.environ)
        env.update({"DISPLAY": self.display, "XAUTHORITY": str(self.xauthority)})
        if self.sound:
            env["PULSE_SERVER"] = f"unix:{self.runtime_dir / 'pulse' / 'native'}"
        env.update(extra)
        return env

    def container_mounts(self) -> dict[str, dict[str, str]]:
        """Docker SDK `volumes=` for a viewer: the X sockets, the FamilyWild file's directory and
        the kod PulseAudio socket's directory (give the container `group_add=[desktop.group]`)."""
        return {
            "/tmp/.X11-unix": {"bind": "/tmp/.X11-unix", "mode": "rw"},
            str(self.wild_xauthority.parent): {"bind": "/run/kod-x11", "mode": "ro"},
            str(self.pulse_dir): {"bind": "/run/kod/pulse", "mode": "rw"},
        }

    def cloudify_env(self, base: Mapping[str, str], kod_pulse_dir: Path) -> dict[str, str]:
        """`base` made into the environment of a `cloudify` run on this desktop, as in a desktop
        session: its DISPLAY and XAUTHORITY, its PulseAudio found through XDG_RUNTIME_DIR (no
        PULSE_SERVER), the kod sound socket set up in `kod_pulse_dir` for the desktop group."""
        env = dict(base)
        env.update({"DISPLAY": self.display, "XAUTHORITY": str(self.xauthority),
                    "XDG_RUNTIME_DIR": str(self.runtime_dir), "KOD_CLOUDIFY_KOD_PULSE_DIR": str(kod_pulse_dir),
                    "KOD_CLOUDIFY_DESKTOP_GID": str(self.group)})
        env.pop("PULSE_SERVER", None)
        env.pop("KOD_CLOUDIFY_PULSE_SOCKET", None)
        return env

    def container_env(self) -> dict[str, str]:
        """The viewer's DISPLAY/XAUTHORITY/KOD_PULSE_SOCKET matching container_mounts()."""
        return {"DISPLAY": self.display, "XAUTHORITY": "/run/kod-x11/Xauthority",
                "KOD_PULSE_SOCKET": f"/run/kod/pulse/{self.pulse_socket.name}"}

    # -- screen --
    def capture(self, region: Box | None = None) -> Image:
        """The pixels of the screen (or of `region`)."""
        return capture_x(self.display, self.cookie, region or Box(0, 0, *self.screen))

    def windows(self, name: str) -> list[Window]:
        """Visible windows whose name matches the regular expression `name`."""
        xdotool, env = tool("xdotool"), self.env()
        out = subprocess.run([xdotool, "search", "--onlyvisible", "--name", name], env=env,
                             capture_output=True, text=True, check=False)
        found = []
        for wid in out.stdout.split():
            geo = subprocess.run([xdotool, "getwindowgeometry", "--shell", wid], env=env,
                                 capture_output=True, text=True, check=False)
            title = subprocess.run([xdotool, "getwindowname", wid], env=env, capture_output=True, text=True,
                                   check=False)
            if geo.returncode or title.returncode:
                continue  # gone meanwhile
            vals = dict(line.split("=", 1) for line in geo.stdout.split() if "=" in line)
            found.append(Window(int(wid), title.stdout.strip(),
                                Box(int(vals["X"]), int(vals["Y"]), int(vals["WIDTH"]), int(vals["HEIGHT"]))))
        return found

    def find_window(self, name: str) -> Window | None:
        wins = self.windows(name)
        return wins[0] if wins else None

    def wait_for_window(self, name: str, timeout: float = 30) -> Window:
        return wait_for(lambda: self.find_window(name), timeout, f"a window named /{name}/ on {self.display}",
                        interval=0.1)  # type: ignore[return-value]

    def wait_for_content(self, box: Box, check: Callable[[Image], bool], timeout: float, what: str) -> Image:
        """Captures `box` until `check(image)` holds; returns that image (not saved)."""
        last: list[Image] = []

        def probe() -> bool:
            img = capture_x(self.display, self.cookie, box)
            last[:] = [img]
            return check(img)

        wait_for(probe, timeout, what, interval=0.1)
        return last[0]

    # -- sound --
    @contextmanager
    def recording(self, out: Path, rate: int = SAMPLE_RATE, channels: int = 1) -> Iterator[Path]:
        """Records the speakers (the null sink's monitor) into `out` (s16le) while the block runs."""
        with record_raw(out, self.env(), f"{self.null_sink}.monitor", rate, channels) as path:
            yield path


def _free_port(first: int, last: int = 5999) -> int:
    """The first port from `first` that nothing listens on at 127.0.0.1 (VNC's usual range)."""
    for port in range(first, last + 1):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise errors.Unavailable(f"no free TCP port in {first}-{last} for the VNC server")


def window_title_pattern(app: str) -> str:
    """The title of a TigerVNC viewer window showing `app` (its VNC desktop name is the app's)."""
    return rf"^{re.escape(app)} - TigerVNC"
