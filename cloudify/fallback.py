"""Running the app on the desktop itself, when the cluster is away or too slow and the app is
installed here (the original's behaviour: "depending on the connection quality and on the pod
availability, the application will be executed in the Cloud or in the local user computer").

The decision (`judge`) is made from the measured link (cloudify.link): the cluster's first
answer within `slow_threshold`, the round trip under `max_rtt_ms`, and, when it was measured, the
downstream rate over `min_mbps`; each outcome comes with its reason in words, which cloudify
prints."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from kod.apps import App

from cloudify.link import Link, duration
from cloudify.settings import CloudifySettings


@dataclass(frozen=True)
class Verdict:
    local: bool
    reason: str


def judge(link: Link, settings: CloudifySettings, *, local_app: bool) -> Verdict:
    """Cluster or local, and why, in words. Local only when the app is installed here (else the
    cluster, with a warning in the reason when the link is poor)."""
    limits = f"the limits: round trip {duration(settings.max_rtt_ms / 1000)}, {settings.min_mbps:g} Mbit/s"
    problem = None
    if link.rtt > settings.max_rtt_ms / 1000:
        problem = f"{link.describe()}: the round trip is over the {duration(settings.max_rtt_ms / 1000)} limit"
    elif link.down_mbps is not None and link.down_mbps < settings.min_mbps:
        problem = f"{link.describe()}: under the {settings.min_mbps:g} Mbit/s minimum"
    if problem and local_app:
        return Verdict(True, problem)
    if problem:
        return Verdict(False, f"{problem}; running in the cluster anyway: the app is not installed here")
    return Verdict(False, f"{link.describe()}: running in the cluster ({limits})")


def local_command(app: App, settings: CloudifySettings) -> list[str] | None:
    """How to run `app` here: the configured command, else the first of its usual command
    names that is installed; None when it is not installed."""
    configured = settings.local_commands.get(app.name)
    if configured:
        return list(configured) if shutil.which(configured[0]) else None
    for name in app.local_commands:
        path = shutil.which(name)
        if path:
            return [path]
    return None


async def run_locally(argv: list[str], env: Mapping[str, str]) -> int:
    """Run the app in the foreground; its exit code. Ctrl-C reaches it too (same process
    group), and cloudify waits for it to end."""
    proc = await asyncio.create_subprocess_exec(*argv, env=dict(env))
    try:
        return await proc.wait()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
        raise
