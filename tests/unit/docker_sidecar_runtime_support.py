"""The docker sidecar's runtime on the in-memory engine (tests/unit/docker_sidecar_fake_engine.py),
shared by the runtime's unit tests: its settings, a started runtime, a bounded wait, and the
`engine` and `rt` fixtures (a test module imports them by name, which is how pytest finds them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from kod.hub import Hub
from sidecars.docker.runtime import Runtime
from sidecars.docker.settings import DockerSidecarSettings
from tests.unit.docker_sidecar_fake_engine import FakeEngine


def settings() -> DockerSidecarSettings:
    # The fake engine has no host file system: staging off (tests/unit/test_docker_sidecar_staging.py
    # and the e2e tests use the real one).
    return DockerSidecarSettings(name="adopt", docker_url="unix:///nonexistent.sock", infra_image="kod/pause:3.10",
                                 ready_timeout_seconds=5, host_access={"mode": "off"})


async def started(engine: FakeEngine) -> Runtime:
    rt = Runtime(settings(), engine, Hub(64))  # type: ignore[arg-type]
    await rt.start()
    await rt.wait_ready()
    return rt


async def within(seconds: float, until: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not until():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), seconds)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def rt(engine: FakeEngine) -> AsyncIterator[Runtime]:
    runtime = await started(engine)
    yield runtime
    await runtime.stop()
