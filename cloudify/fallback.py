"""Running the app on the desktop itself, when the cluster is away or too slow and the app is
installed here (the original's behaviour: "depending on the connection quality and on the pod
availability, the application will be executed in the Cloud or in the local user computer")."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping

from kod.apps import App

from cloudify.settings import CloudifySettings


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
