"""The link decides, visibly: round trips and throughput measured against a small real HTTP server
that answers like the API server's /version and /openapi/v2 (the one boundary faked here; the
proving ground's e2e tests use the real API server behind NAT and a home link), then the choice
between the cluster and the local app, and the picture, each with its reason in words."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from cloudify import fallback, link
from cloudify.settings import CloudifySettings, load
from kod import errors
from kod.kube import KubeClient
from kod.kube_config import Connection

WAIT = 10.0


class SlowServer:
    """/version after `delay` s; /openapi/v2: `size` bytes at `mbps` Mbit/s (paced in chunks)."""

    def __init__(self, *, delay: float = 0.0, mbps: float = 80.0, size: int = 2 * 2**20) -> None:
        self.delay, self.mbps, self.size = delay, mbps, size
        self.encodings: list[str] = []
        self.sent: list[tuple[float, int]] = []  # (monotonic time, bytes written so far)
        app = web.Application()
        app.router.add_get("/version", self.version)
        app.router.add_get("/openapi/v2", self.openapi)
        self.app = app

    def sent_mbps(self, *, upto: int) -> float:
        """What the server really sent, in Mbit/s, from the client's warm-up to `upto` bytes."""
        (t0, n0) = next(m for m in self.sent if m[1] >= link.THROUGHPUT_WARMUP_BYTES)
        (t1, n1) = next(m for m in self.sent if m[1] >= upto)
        return (n1 - n0) * 8 / (t1 - t0) / 1e6

    async def version(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        return web.json_response({"gitVersion": "v1.35.8"})

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        self.encodings.append(request.headers.get("Accept-Encoding", ""))
        resp = web.StreamResponse()
        resp.content_length = self.size
        await resp.prepare(request)
        chunk = 16 * 1024
        for sent in range(0, self.size, chunk):
            await resp.write(b"x" * min(chunk, self.size - sent))
            self.sent.append((time.monotonic(), sent + min(chunk, self.size - sent)))
            await asyncio.sleep(chunk * 8 / (self.mbps * 1e6))
        return resp


@pytest.fixture
async def serve(aiohttp_server):  # type: ignore[no-untyped-def]
    clients: list[KubeClient] = []

    async def start(server: SlowServer) -> KubeClient:
        srv = await aiohttp_server(server.app)
        kube = KubeClient(Connection(host=str(srv.make_url("")).rstrip("/")), backoff=(), timeout=WAIT)
        clients.append(kube)
        return kube

    yield start
    for kube in clients:
        await kube.close()


async def test_round_trips_are_the_delay_of_small_requests(serve) -> None:  # type: ignore[no-untyped-def]
    kube = await serve(SlowServer(delay=0.05))
    rtts = await link.round_trips(kube, samples=3, timeout=WAIT)
    assert len(rtts) == 3 and all(0.05 <= r < 0.5 for r in rtts)


async def test_round_trips_stop_early_once_one_is_over_the_limit(serve) -> None:  # type: ignore[no-untyped-def]
    kube = await serve(SlowServer(delay=0.3))
    rtts = await link.round_trips(kube, samples=3, timeout=WAIT, stop_over=0.15)
    assert len(rtts) == 1 and rtts[0] >= 0.3


async def test_a_small_request_without_answer_in_time_is_unavailable(serve) -> None:  # type: ignore[no-untyped-def]
    kube = await serve(SlowServer(delay=2.0))
    with pytest.raises(errors.Unavailable):
        await link.round_trips(kube, samples=1, timeout=0.3)


@pytest.mark.parametrize("mbps", [8.0, 40.0])
async def test_throughput_is_the_rate_of_an_uncompressed_answer(serve, mbps: float) -> None:  # type: ignore[no-untyped-def]
    server = SlowServer(mbps=mbps)
    kube = await serve(server)
    measured = await link.throughput(kube, max_bytes=1024 * 1024, max_seconds=3.0)
    assert measured is not None
    # The server paces itself: never faster than `mbps`, slower when its loop is late (a busy
    # machine). What it really sent over the measured bytes is what the client must find.
    rate = server.sent_mbps(upto=1024 * 1024)
    assert 0.75 * rate < measured < 1.33 * rate, (measured, rate)
    assert measured < 1.15 * mbps, measured
    assert server.encodings == ["identity"]


async def test_throughput_stops_reading_at_its_time_bound(serve) -> None:  # type: ignore[no-untyped-def]
    server = SlowServer(mbps=2.0, size=8 * 2**20)  # 8 MiB at 2 Mbit/s: 34 s to read all
    kube = await serve(server)
    loop = asyncio.get_running_loop()
    start = loop.time()
    measured = await link.throughput(kube, max_bytes=8 * 2**20, max_seconds=1.0)
    assert loop.time() - start < 2.5
    assert server.sent[-1][1] < 2**20, "the server was made to send far more than a second's worth"
    assert measured is not None and measured < 2.5, measured
    rate = server.sent_mbps(upto=server.sent[-1][1])
    assert 0.75 * rate < measured < 1.33 * rate, (measured, rate)


async def test_no_throughput_from_an_answer_too_small_to_tell(serve) -> None:  # type: ignore[no-untyped-def]
    kube = await serve(SlowServer(size=20_000))
    assert await link.throughput(kube) is None


async def test_a_lan_is_not_probed_for_throughput(serve) -> None:  # type: ignore[no-untyped-def]
    server = SlowServer(delay=0.0)
    kube = await serve(server)
    measured = await link.measure(kube, answer=0.01, settings=CloudifySettings(), local_app=True)
    assert measured.is_lan and measured.down_mbps is None and server.encodings == []
    assert "LAN" in measured.describe()


async def test_a_wan_is_probed_when_it_matters(serve) -> None:  # type: ignore[no-untyped-def]
    server = SlowServer(delay=0.03, mbps=20.0)
    kube = await serve(server)
    measured = await link.measure(kube, answer=0.1, settings=CloudifySettings(), local_app=False)
    assert not measured.is_lan and measured.down_mbps is not None
    # ...but not when the user chose the picture and the app could not run here anyway.
    server.encodings.clear()
    chosen = load(path=None, environ={}, overrides={"quality": 6, "compression": 3, "frame_rate": 20})
    measured = await link.measure(kube, answer=0.1, settings=chosen, local_app=False)
    assert measured.down_mbps is None and server.encodings == []
    # Two of the three chosen: the third is still fitted to the link, so it is measured.
    partly = load(path=None, environ={}, overrides={"quality": 6, "compression": 3})
    assert (await link.measure(kube, answer=0.1, settings=partly, local_app=False)).down_mbps is not None


@pytest.mark.parametrize(
    ("measured", "local_app", "local", "fragment"),
    [
        (link.Link(answer=0.1, rtts=(0.044, 0.045, 0.046), down_mbps=18.0), True, False, "running in the cluster"),
        (link.Link(answer=0.1, rtts=(0.3,)), True, True, "over the 150 ms limit"),
        (link.Link(answer=0.1, rtts=(0.3,)), False, False, "not installed here"),
        (link.Link(answer=0.1, rtts=(0.05, 0.05, 0.05), down_mbps=0.9), True, True, "under the 2 Mbit/s minimum"),
    ],
)
def test_the_verdict_says_what_was_measured_and_why(measured: link.Link, local_app: bool, local: bool,
                                                     fragment: str) -> None:
    verdict = fallback.judge(measured, CloudifySettings(), local_app=local_app)
    assert verdict.local is local
    assert fragment in verdict.reason
    assert f"round trip {measured.rtt * 1000:.0f} ms" in verdict.reason


def test_the_limits_are_settings() -> None:
    measured = link.Link(answer=0.1, rtts=(0.3,))
    assert not fallback.judge(measured, CloudifySettings(max_rtt_ms=400), local_app=True).local
    slow = link.Link(answer=0.1, rtts=(0.05,), down_mbps=5.0)
    assert fallback.judge(slow, CloudifySettings(min_mbps=10), local_app=True).local


def test_the_picture_fits_the_link_unless_the_user_chose_it() -> None:
    lan = link.Link(answer=0.01, rtts=(0.001,))
    home = link.Link(answer=0.1, rtts=(0.045,), down_mbps=19.0)
    thin = link.Link(answer=0.1, rtts=(0.045,), down_mbps=4.0)
    defaults = load(path=None, environ={})

    def fitted(measured: link.Link, settings: CloudifySettings) -> tuple[int, int, int]:
        got = link.picture(measured, settings)
        return got.quality, got.compression, got.frame_rate

    assert fitted(lan, defaults) == (5, 2, 60)
    home_picture = link.picture(home, defaults)
    assert fitted(home, defaults) == (2, 6, 12) and "19.0 Mbit/s" in home_picture.why
    assert "at most 12 frames/s" in home_picture.why
    assert fitted(thin, defaults) == (1, 9, 8)
    # What the user set stays: a flag, the environment or the config file.
    assert fitted(home, load(path=None, environ={}, overrides={"quality": 8})) == (8, 6, 12)
    assert fitted(home, load(path=None, environ={"KOD_CLOUDIFY_COMPRESSION": "1"})) == (2, 1, 12)
    assert fitted(home, load(path=None, environ={"KOD_CLOUDIFY_FRAME_RATE": "30"})) == (2, 6, 30)
    everything = load(path=None, environ={}, overrides={"quality": 7, "compression": 0, "frame_rate": 25})
    assert link.picture(home, everything) == link.Picture(7, 0, 25, "quality 7, compression 0, at most 25 frames/s (as you set them)")

