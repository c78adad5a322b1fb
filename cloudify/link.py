"""How good the desktop's link to the cluster is, measured before a session starts, and what
follows from it: run the app in the cluster or locally, and the picture's quality, compression and
frame-rate ceiling.

    link = await measure(kube, answer=0.06, settings=settings, local_app=True)
    link.rtt, link.down_mbps, link.describe()                 # 0.044, 18.7, "round trip 44 ms ..."
    chosen = picture(link, settings)  # quality, compression, frame_rate, why: unless the user chose them
    # and cloudify.fallback.judge(link, settings, local_app=...): cluster or local, and why

The round-trip time is the median of small requests (`/version`) on the connection the node list
already opened, so it is the network's round trip plus a few hundred microseconds of the API
server, not TLS handshakes. Throughput is measured only when it matters: on a link slower than a
LAN's round trip (LAN_RTT), where the picture must fit it and a too-thin link may send the user to
the local app; reading one large answer (the API server's OpenAPI document, uncompressed) for at
most THROUGHPUT_BYTES or THROUGHPUT_SECONDS, counting from its first bytes, so that the server's
time to start answering is not taken for the link's.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from kod import errors
from kod.kube import KubeClient

from cloudify.settings import CloudifySettings

#: Below this round trip the link is a LAN (or this machine): no throughput probe, the default picture.
LAN_RTT = 0.010
RTT_PATH = "/version"
#: A large answer every API server has; ~2 MB uncompressed on Kubernetes 1.35.
THROUGHPUT_PATH = "/openapi/v2"
THROUGHPUT_BYTES = 1024 * 1024
THROUGHPUT_SECONDS = 1.5
#: Counted from the first bytes of the answer, but only past this much of it: TCP's slow start
#: is still opening the window over the first few round trips.
THROUGHPUT_WARMUP_BYTES = 128 * 1024

#: The picture for a measured downstream rate: (at least Mbit/s, quality, compression, frame-rate
#: ceiling), best first. A 720p animation at quality 5 and 60 updates a second took 46.6 Mbit/s on
#: the same host (bench/home_link.py, docs/home.md). What a moving picture sends is about
#: proportional to the updates a second: below a LAN's rate the ceiling comes down with the
#: quality; the home link's step (2, 6, 12) keeps text readable, and what it sends is the figure
#: bench/home_link.py measures (issue 11's goal: at most 8 Mbit/s). A still picture sends nothing
#: whatever the ceiling, and typing still shows within 1/12 s.
PICTURE_STEPS: tuple[tuple[float, int, int, int], ...] = ((50.0, 5, 2, 60), (10.0, 2, 6, 12), (0.0, 1, 9, 8))


@dataclass(frozen=True)
class Picture:
    """What the session's picture will be, and what to tell the user about it."""

    quality: int
    compression: int
    frame_rate: int
    why: str


@dataclass(frozen=True)
class Link:
    """What was measured: seconds of the first answer (the node list, TLS set-up included), the
    round trips, and the downstream rate (None when not measured)."""

    answer: float
    rtts: tuple[float, ...] = ()
    down_mbps: float | None = None

    @property
    def rtt(self) -> float:
        """The median round trip (the first answer's time when there are no samples)."""
        return statistics.median(self.rtts) if self.rtts else self.answer

    @property
    def is_lan(self) -> bool:
        return self.rtt < LAN_RTT

    def describe(self) -> str:
        """'round trip 44 ms (median of 3), 18.7 Mbit/s down'."""
        rtt = f"round trip {duration(self.rtt)}" + (f" (median of {len(self.rtts)})" if len(self.rtts) > 1 else "")
        if self.down_mbps is not None:
            return f"{rtt}, {self.down_mbps:.1f} Mbit/s down"
        return rtt + (" (a LAN: throughput not measured)" if self.is_lan else "")


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


async def round_trips(kube: KubeClient, *, samples: int, timeout: float, stop_over: float | None = None) -> tuple[float, ...]:
    """The times of `samples` small requests, one after the other (fewer when one takes longer
    than `stop_over`: the link is slow, more samples would only make the user wait). Unavailable
    when one gets no answer within `timeout`."""
    out: list[float] = []
    for _ in range(samples):
        start = time.monotonic()
        await kube.request("GET", RTT_PATH, timeout=timeout, retry=False)
        out.append(time.monotonic() - start)
        if stop_over is not None and out[-1] > stop_over:
            break
    return tuple(out)


async def throughput(kube: KubeClient, *, max_bytes: int = THROUGHPUT_BYTES, max_seconds: float = THROUGHPUT_SECONDS,
                     path: str = THROUGHPUT_PATH) -> float | None:
    """Mbit/s of one uncompressed answer read from its first bytes, past the warm-up, for at most
    `max_bytes` or `max_seconds` (the connection is dropped then); None when too little came to
    tell (a tiny answer, or an error)."""
    got = 0
    marks: list[tuple[float, int]] = []
    start = time.monotonic()
    chunks = kube.stream_chunks(path, timeout=max_seconds + 1.0, compressed=False)
    try:
        async for chunk in chunks:
            got += len(chunk)
            marks.append((time.monotonic(), got))
            if got >= max_bytes or time.monotonic() - start > max_seconds:
                break  # the measurement is done: the rest is not read
    except errors.KodError:
        return None
    finally:
        await chunks.aclose()
    past = [(t, n) for t, n in marks if n >= THROUGHPUT_WARMUP_BYTES]
    if len(past) < 2 or past[-1][0] - past[0][0] <= 0:
        return None
    (t0, n0), (t1, n1) = past[0], past[-1]
    return (n1 - n0) * 8 / (t1 - t0) / 1e6


async def measure(kube: KubeClient, *, answer: float, settings: CloudifySettings, local_app: bool,
                  samples: int = 3) -> Link:
    """The link, after the first answer took `answer` s: round trips (stopping early over the
    limit), and the throughput when the round trip is not a LAN's and it matters (the app could
    run here instead, or the picture is not all the user's choice). Unavailable when a small
    request gets no answer within `settings.slow_threshold`."""
    rtts = await round_trips(kube, samples=samples, timeout=settings.slow_threshold,
                             stop_over=settings.max_rtt_ms / 1000)
    link = Link(answer=answer, rtts=rtts)
    picture_chosen = {"quality", "compression", "frame_rate"} <= settings.model_fields_set
    matters = local_app or not picture_chosen
    if link.is_lan or link.rtt > settings.max_rtt_ms / 1000 or not matters:
        return link
    return Link(answer=answer, rtts=rtts, down_mbps=await throughput(kube))


def picture(link: Link, settings: CloudifySettings) -> Picture:
    """The quality, compression and frame-rate ceiling for this link: the user's when set (flag,
    environment or config file), else the step of PICTURE_STEPS the measured rate reaches (a LAN:
    the defaults)."""
    fields = ("quality", "compression", "frame_rate")
    chosen = set(fields) & settings.model_fields_set
    quality, compression, frame_rate = settings.quality, settings.compression, settings.frame_rate
    if link.down_mbps is None or chosen == set(fields):
        why = "as you set them" if chosen else "the defaults for a LAN" if link.down_mbps is None else ""
        return Picture(quality, compression, frame_rate,
                       f"quality {quality}, compression {compression}, at most {frame_rate} frames/s ({why})")
    for floor, q, c, f in PICTURE_STEPS:
        if link.down_mbps >= floor:
            break
    quality = quality if "quality" in chosen else q
    compression = compression if "compression" in chosen else c
    frame_rate = frame_rate if "frame_rate" in chosen else f
    return Picture(quality, compression, frame_rate,
                   f"quality {quality}, compression {compression}, at most {frame_rate} frames/s for "
                   f"{link.down_mbps:.1f} Mbit/s (-q, -c and --frame-rate, or the config file, choose them yourself)")
