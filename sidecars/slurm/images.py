"""Image trees for the jobs: a local Docker image, exported once (`docker export` of a created,
never started container) into `<work_dir>/images/<image id>/rootfs`, with its config (env,
entrypoint, cmd, working dir) beside it. Trees are immutable and shared by every pod of the
image (each pod gets its own hard-linked copy: staging). No registry is involved: the image must
be in the local engine, as `imagePullPolicy: IfNotPresent`/`Never` pods expect.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

from kod import errors
from sidecars.slurm.jobscript import ImageConfig
from sidecars.slurm.slurmcli import run

#: A burst of pods of one image asks the engine once: what a name points to is re-read after this.
INSPECT_TTL_SECONDS = 10.0


class ImageCache:
    def __init__(self, root: Path, docker_url: str, *, timeout: float = 300.0) -> None:
        self.root = root
        self.host = docker_url
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._inspected: dict[str, tuple[float, dict]] = {}

    def _docker(self, *args: str) -> list[str]:
        return ["docker", "--host", self.host, *args]

    async def _inspect(self, image: str) -> dict:
        async with self._locks.setdefault(f"name:{image}", asyncio.Lock()):  # concurrent creates ask once
            cached = self._inspected.get(image)
            if cached and time.monotonic() - cached[0] < INSPECT_TTL_SECONDS:
                return cached[1]
            return await self._inspect_now(image)

    async def _inspect_now(self, image: str) -> dict:
        try:
            out = await run(self._docker("image", "inspect", image), timeout=60)
        except errors.Unavailable as exc:
            raise errors.InvalidInput(f"image {image} is not in the local Docker engine: {exc}",
                                      hint=f"docker build or load {image} on this machine") from exc
        info = json.loads(out)[0]
        self._inspected[image] = (time.monotonic(), info)
        return info

    async def ensure(self, image: str) -> ImageConfig:
        """The image's tree and config, exported now if this image id has none yet."""
        info = await self._inspect(image)
        image_id = info["Id"].split(":")[-1][:24]
        cfg = info.get("Config") or {}
        config = ImageConfig(
            rootfs=self.root / image_id / "rootfs",
            env=tuple(cfg.get("Env") or ()),
            entrypoint=tuple(cfg.get("Entrypoint") or ()),
            cmd=tuple(cfg.get("Cmd") or ()),
            working_dir=cfg.get("WorkingDir") or "",
        )
        done = self.root / image_id / "complete"
        if done.exists():
            return config
        lock = self._locks.setdefault(image_id, asyncio.Lock())
        async with lock:
            if not done.exists():
                await self._export(image, self.root / image_id)
                done.write_text(json.dumps({"image": image, "id": info["Id"]}) + "\n")
        return config

    async def _export(self, image: str, target: Path) -> None:
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rootfs").mkdir(parents=True, mode=0o755)
        cid = (await run(self._docker("create", "--label", "kod.io/slurm-export=1", image, "/"), timeout=60)).strip()
        try:
            proc = await asyncio.create_subprocess_shell(
                f"docker --host {self.host} export {cid} | tar -C {tmp / 'rootfs'} --numeric-owner -xf -",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout)
            if proc.returncode != 0:
                raise errors.Unavailable(f"docker export of {image} failed: {err.decode(errors='replace')}")
        finally:
            await run(self._docker("rm", "-f", cid), timeout=60)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
