"""The Slurm commands the sidecar runs (sbatch, squeue, scancel, sinfo), as coroutines.

Every call has a timeout; a command that cannot be run or fails for a reason of Slurm's own
(controller down) raises `errors.Unavailable` with its stderr; sbatch refusing a job for what it
asks (memory, GRES the site lacks) raises `errors.InvalidInput`.
"""

from __future__ import annotations

import asyncio

from kod import errors
from kod.log import get_logger

log = get_logger(__name__)

#: sbatch's messages that mean "this job cannot run here", not "Slurm is down".
_REFUSALS = ("Invalid generic resource", "Requested node configuration is not available", "Invalid account",
             "Invalid partition", "Memory required by task is not available", "More processors requested",
             "Invalid qos", "Job violates accounting/QOS policy",
             # a Slurm job runs as a user of the site: a runAsUser the site does not know is refused
             "Invalid --uid specification", "Invalid --gid specification", "Invalid user id")


async def run(argv: list[str] | tuple[str, ...], *, stdin: bytes | None = None, timeout: float = 30.0) -> str:
    """Run a Slurm command; its stdout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise errors.Unavailable(f"cannot run {argv[0]}: {exc}", hint="install Slurm's client commands") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        if any(r in message for r in _REFUSALS):
            raise errors.InvalidInput(f"{argv[0]} refused the job: {message}")
        raise errors.Unavailable(f"{' '.join(argv[:2])} failed: {message}")
    return out.decode(errors="replace")


async def sbatch(options: tuple[str, ...], script: str, *, timeout: float) -> str:
    """Submit; the job id."""
    out = await run(["sbatch", "--parsable", *options], stdin=script.encode(), timeout=timeout)
    job_id = out.strip().split(";")[0]
    if not job_id.isdigit():
        raise errors.Unavailable(f"sbatch answered {out.strip()!r}, not a job id")
    return job_id


async def scancel(job_id: str, *, signal: str | None = None, batch: bool = False, full: bool = False,
                  timeout: float) -> None:
    """Cancel (or only signal, with `signal`) a job; a job that already ended is no error."""
    argv = ["scancel"]
    if signal:
        argv.append(f"--signal={signal}")
    if batch:
        argv.append("--batch")
    if full:
        argv.append("--full")
    argv.append(job_id)
    try:
        await run(argv, timeout=timeout)
    except errors.Unavailable as exc:
        if "Job/step already completing or completed" in str(exc) or "Invalid job id" in str(exc):
            return
        raise


async def sinfo(partition: str, *, timeout: float) -> list[tuple[int, int, str, str]]:
    """(CPUs, memory MB, GRES, state) of each node of the partition."""
    out = await run(["sinfo", "--noheader", "--Node", f"--partition={partition}", "--format=%c|%m|%G|%t"],
                    timeout=timeout)
    nodes = []
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
            nodes.append((int(parts[0]), int(parts[1]), parts[2], parts[3]))
    return nodes
