"""interlink's GET /v1/stats: every sidecar's pods in one report, the machine's figures from the
first sidecar that measured them; a sidecar that does not measure (404) adds nothing, one that is
down is named in `errors` and the others are still served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from interlink.app import create_app
from kod import wire
from tests.unit.interlink_fake_sidecar import AUTH, FakeSidecar, interlink_settings

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class MeasuringSidecar:
    """A real server with the sidecar's /v1/stats (and an empty watch, so interlink's link is happy)."""

    def __init__(self, name: str, pods: list[str], *, node_cpu: int | None) -> None:
        self.name, self.token = name, f"{name}-token"
        node = wire.NodeUsage(time=NOW, cpu=wire.CpuUsage(usageCoreNanoSeconds=node_cpu)) if node_cpu is not None else None
        self.report = wire.UsageReport(node=node, pods=[
            wire.PodUsage(namespace="ns", name=p, uid=f"uid-{p}", time=NOW) for p in pods
        ], errors=[f"{name} could not read one"] if not pods else [])
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def stats(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {self.token}"
        return web.Response(text=self.report.model_dump_json(), content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/stats", self.stats)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def sidecars() -> AsyncIterator[list[Any]]:
    a = MeasuringSidecar("docker", ["web", "db"], node_cpu=None)
    b = MeasuringSidecar("docker2", [], node_cpu=7)
    plain, down = FakeSidecar("slurm"), FakeSidecar("down")
    for s in (a, b, plain, down):
        await s.start()
    await down.stop()
    yield [a, b, plain, down]
    for s in (a, b, plain):
        await s.stop()


async def test_stats_merges_the_sidecars_and_names_what_failed(aiohttp_client: Any, sidecars: list[Any]) -> None:
    client = await aiohttp_client(create_app(interlink_settings(*sidecars)))
    resp = await client.get("/v1/stats", headers=AUTH)
    assert resp.status == 200
    got = wire.UsageReport.model_validate(await resp.json())
    assert [p.name for p in got.pods] == ["web", "db"]
    assert got.node is not None and got.node.cpu is not None and got.node.cpu.usageCoreNanoSeconds == 7
    assert any("'docker2'" in e and "could not read one" in e for e in got.errors)
    assert any("'down'" in e for e in got.errors)
    assert not any("'slurm'" in e for e in got.errors)  # not offered is not an error


async def test_stats_needs_the_token(aiohttp_client: Any, sidecars: list[Any]) -> None:
    client = await aiohttp_client(create_app(interlink_settings(*sidecars)))
    assert (await client.get("/v1/stats")).status == 401
