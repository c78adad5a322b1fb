"""An in-memory Docker engine for the runtime's unit tests: containers (created, running, exited),
volumes, files written with put_archive, images, and a log of every mutating call.

It fakes the one boundary the runtime has (the Engine API); everything above it is the real
runtime. What needs real containers is tested against the real engine in tests/e2e."""

from __future__ import annotations

import asyncio
import copy
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from sidecars.docker import naming
from sidecars.docker.engine import EngineError

ZERO = "0001-01-01T00:00:00Z"


def now() -> str:
    """The engine's clock, in its format."""
    return datetime.now(timezone.utc).isoformat()


def _matches(labels: dict[str, str], filters: list[str]) -> bool:
    for f in filters:
        key, _, value = f.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


class FakeEngine:
    """Just enough of the Engine API for the pod runtime, in memory."""

    def __init__(self, images: tuple[str, ...] = ("kod/pause:3.10", "img")) -> None:
        self.containers_: dict[str, dict[str, Any]] = {}
        self.volumes_: dict[str, dict[str, Any]] = {}
        #: container id -> paths written into it (and the volumes it mounts)
        self.files: dict[str, set[str]] = {}
        self.images = set(images)
        self.networks: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        #: Operation ("create", "start", "stop", "archive") -> an event the operation waits for first: a
        #: test holds a set-up or a stop half-way with it; "start:main" holds the start of the pods'
        #: main containers on the engine's side.
        self.gates: dict[str, asyncio.Event] = {}
        #: "start:<role>" in `gates` holds a start engine-side instead: these are those starts.
        self._engine_side: set[asyncio.Future[None]] = set()
        #: Container id -> how many times its process was started.
        self.runs: dict[str, int] = {}
        #: The pods' processes end as soon as they start (`echo hello`), with exit code 0.
        self.exit_at_once = False
        #: Answers `exec_run` (probes, hooks): (container id, argv) -> (exit code, output); an
        #: exception it raises is raised (TimeoutError: the command timed out).
        self.exec_handler: Callable[[str, list[str]], tuple[int, bytes]] = lambda cid, cmd: (0, b"")
        #: (container id, path) -> the bytes of a file in it (what GET .../archive serves).
        self.file_data: dict[tuple[str, str], bytes] = {}
        #: container id -> its log output (what `logs` serves, multiplexed as stdout).
        self.log_data: dict[str, bytes] = {}

    def crashed_copy(self) -> FakeEngine:
        """The engine as a new sidecar process finds it after a kill -9 of the old one: the same
        objects, and none of the old process's calls still under way."""
        other = FakeEngine(tuple(self.images))
        other.containers_ = copy.deepcopy(self.containers_)
        other.volumes_ = copy.deepcopy(self.volumes_)
        other.files = copy.deepcopy(self.files)
        other.networks = copy.deepcopy(self.networks)
        return other

    def of_pod(self, uid: str) -> list[dict[str, Any]]:
        return [c for c in self.containers_.values() if c["Labels"].get("io.kod.pod.uid") == uid]

    async def _gate(self, op: str) -> None:
        gate = self.gates.get(op)
        if gate is not None:
            await gate.wait()

    # ---- seeding -------------------------------------------------------------------------

    def add_container(self, name: str, labels: dict[str, str], state: str = "running", *,
                      mounts: list[dict[str, Any]] | None = None, exit_code: int = 0,
                      network_mode: str = "bridge") -> str:
        cid = uuid.uuid4().hex * 2
        self.containers_[cid] = {"Id": cid, "Name": "/" + name, "Labels": dict(labels), "State": state,
                                 "ExitCode": exit_code, "Mounts": mounts or [], "NetworkMode": network_mode,
                                 "StartedAt": now() if state != "created" else ZERO,
                                 "FinishedAt": now() if state == "exited" else ZERO}
        self.files[cid] = set()
        return cid

    def exit(self, cid: str, code: int) -> None:
        """The container's process ended with `code`."""
        self.containers_[cid].update(State="exited", ExitCode=code, FinishedAt=now())

    def by_name(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.containers_.values() if c["Name"] == "/" + name), None)

    def _get(self, ref: str) -> dict[str, Any]:
        c = self.containers_.get(ref) or self.by_name(ref)
        if c is None:
            raise EngineError(404, f"No such container: {ref}")
        return c

    # ---- the API ---------------------------------------------------------------------------

    async def events(self, filters: dict[str, list[str]]) -> AsyncIterator[dict[str, Any]]:
        """Subscribed, then silent (tests drive the runtime by its calls)."""
        yield {"Type": "kod.subscribed"}
        await asyncio.Event().wait()

    async def version(self) -> dict[str, Any]:
        return {"Version": "fake"}

    async def info(self) -> dict[str, Any]:
        return {"NCPU": 2, "MemTotal": 2**30}

    async def containers(self, label_filters: list[str]) -> list[dict[str, Any]]:
        return [{"Id": c["Id"], "Names": [c["Name"]], "Labels": c["Labels"], "State": c["State"],
                 "Mounts": [{"Destination": m["Target"], "Name": m["Source"],
                             "Source": self.volumes_.get(m["Source"], {}).get("Mountpoint", "")}
                            for m in c["Mounts"]]}
                for c in self.containers_.values() if _matches(c["Labels"], label_filters)]

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        c = self._get(ref)
        return {"Id": c["Id"], "Name": c["Name"], "Image": "sha256:img",
                "Config": {"Labels": c["Labels"]}, "HostConfig": {"NetworkMode": c["NetworkMode"]},
                "State": {"Status": c["State"], "Running": c["State"] == "running", "ExitCode": c["ExitCode"],
                          "StartedAt": c["StartedAt"], "FinishedAt": c["FinishedAt"]},
                "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.9"}}}}

    async def create_container(self, name: str, body: dict[str, Any]) -> str:
        await self._gate("create")
        self.calls.append(f"create {name}")
        if self.by_name(name) is not None:
            raise EngineError(409, f'Conflict. The container name "/{name}" is already in use')
        if body["Image"] not in self.images:
            raise EngineError(404, f"No such image: {body['Image']}")
        host = body.get("HostConfig") or {}
        return self.add_container(name, body["Labels"], "created", mounts=host.get("Mounts"),
                                  network_mode=host.get("NetworkMode", "bridge"))

    async def start_container(self, ref: str) -> None:
        c = self._get(ref)
        held = self.gates.get(f"start:{c['Labels'].get(naming.ROLE, '')}")
        if held is not None:
            # The request reached the engine, which carries it out even if its caller gives up
            # (as dockerd does with a start whose HTTP client went away).
            task = asyncio.ensure_future(self._start_when(held, ref))
            self._engine_side.add(task)
            task.add_done_callback(self._engine_side.discard)
            await asyncio.shield(task)
            return
        await self._gate("start")
        self._start(ref)

    async def _start_when(self, gate: asyncio.Event, ref: str) -> None:
        await gate.wait()
        self._start(ref)

    def _start(self, ref: str) -> None:
        self.calls.append(f"start {ref}")
        c = self._get(ref)
        if c["State"] == "running":
            return  # dockerd: 304, nothing happens
        # Started again after it ended, the process runs a second time (dockerd restarts it).
        self.runs[c["Id"]] = self.runs.get(c["Id"], 0) + 1
        c["State"], c["StartedAt"] = "running", now()
        if self.exit_at_once and c["Labels"].get(naming.ROLE) != "infra":
            self.exit(c["Id"], 0)

    async def stop_container(self, ref: str, grace_seconds: int) -> None:
        self.calls.append(f"stop {ref} {grace_seconds}")
        await self._gate("stop")
        c = self._get(ref)
        if c["State"] == "running":
            self.exit(c["Id"], 143)

    async def kill_container(self, ref: str, signal: str = "SIGKILL") -> None:
        self.calls.append(f"kill {ref}")
        c = self._get(ref)
        if c["State"] == "running":  # else the engine says 409, which Engine.kill_container ignores
            self.exit(c["Id"], 137)

    async def remove_container(self, ref: str) -> None:
        self.calls.append(f"remove {ref}")
        c = self.containers_.get(ref) or self.by_name(ref)
        if c is not None:
            del self.containers_[c["Id"]]

    async def rename_container(self, ref: str, name: str) -> None:
        self.calls.append(f"rename {ref} {name}")
        self._get(ref)["Name"] = "/" + name

    async def put_archive(self, ref: str, path: str, tar: bytes) -> None:
        await self._gate("archive")
        self.calls.append(f"archive {ref}")
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            self.files[self._get(ref)["Id"]].update(f"{path}/{m.name.rstrip('/')}" for m in t.getmembers())

    async def exec_run(self, ref: str, cmd: list[str], *, timeout: float) -> tuple[int, bytes]:
        self.calls.append(f"exec {ref} {' '.join(cmd)}")
        c = self._get(ref)
        if c["State"] != "running":
            raise EngineError(409, f"Container {ref} is not running")
        return self.exec_handler(c["Id"], list(cmd))

    async def _call(self, method: str, path: str, *, params: dict[str, str] | None = None, raw: bool = False,
                    **_: Any) -> Any:
        """The plumbing, for GET /containers/{id}/archive only (termination messages)."""
        parts = path.split("/")
        assert method == "GET" and len(parts) == 4 and parts[3] == "archive" and params and raw, path
        cid = self._get(unquote(parts[2]))["Id"]
        data = self.file_data.get((cid, params["path"]))
        if data is None:
            raise EngineError(404, f"Could not find the file {params['path']} in container {cid}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(params["path"].rsplit("/", 1)[-1])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return {}, buf.getvalue()

    async def logs(self, ref: str, params: dict[str, str]) -> AsyncIterator[bytes]:
        data = self.log_data.get(self._get(ref)["Id"], b"")
        lines = data.splitlines(keepends=True)
        if "tail" in params:
            lines = lines[-int(params["tail"]):] if int(params["tail"]) else []
        yield b""
        for line in lines:
            yield bytes([1, 0, 0, 0]) + len(line).to_bytes(4, "big") + line

    async def stat_path(self, ref: str, path: str) -> dict[str, Any] | None:
        return {"name": path, "mode": 0} if path in self.files.get(self._get(ref)["Id"], set()) else None

    async def inspect_network(self, name: str) -> dict[str, Any]:
        found = self.networks.get(name) or next((n for n in self.networks.values() if n["Id"] == name), None)
        if found is None:
            raise EngineError(404, f"network {name} not found")
        return found

    async def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create network {body['Name']}")
        if body["Name"] in self.networks:
            raise EngineError(409, f"network with name {body['Name']} already exists")
        self.networks[body["Name"]] = {"Id": f"net{len(self.networks)}", "Name": body["Name"],
                                       "Labels": dict(body.get("Labels") or {}), "Options": dict(body.get("Options") or {}),
                                       "Containers": {}}
        return self.networks[body["Name"]]

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        if ref not in self.images:
            raise EngineError(404, f"No such image: {ref}")
        return {"Id": f"sha256:{ref}", "Config": {"Entrypoint": None, "Cmd": ["sh"], "User": ""}}

    async def create_volume(self, name: str, labels: dict[str, str], driver_opts: dict[str, str] | None = None) -> dict[str, Any]:
        self.calls.append(f"volume {name}")
        v = self.volumes_.setdefault(name, {"Name": name, "Labels": dict(labels), "Mountpoint": f"/var/lib/docker/volumes/{name}/_data"})
        return dict(v)

    async def inspect_volume(self, name: str) -> dict[str, Any]:
        if name not in self.volumes_:
            raise EngineError(404, f"no such volume: {name}")
        return dict(self.volumes_[name])

    async def volumes(self, label_filters: list[str]) -> list[dict[str, Any]]:
        return [dict(v) for v in self.volumes_.values() if _matches(v["Labels"], label_filters)]

    async def remove_volume(self, name: str, *, force: bool = True) -> None:
        self.calls.append(f"remove-volume {name}")
        # Like the engine: a volume any container (running or not) mounts is in use.
        if not force and any(m.get("Source") == name for c in self.containers_.values() for m in c["Mounts"]):
            raise EngineError(409, f"remove {name}: volume is in use")
        self.volumes_.pop(name, None)
