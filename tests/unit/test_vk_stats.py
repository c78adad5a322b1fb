"""`kubectl top` of the virtual node: a sidecar's readings (cgroup files, /proc, Docker's stats
answer) become the kubelet's Summary API and /metrics/resource with the kubelet's names, labels,
units and timestamps (what metrics-server decodes); the kubelet API serves them only to callers
allowed nodes/stats and nodes/metrics; interlink merges its sidecars' reports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kod import wire
from kod.kube import KubeClient
from kod.kube_config import Connection
from sidecars.docker.usage import CLOCK_TICKS, Cgroups, from_docker_stats, read_meminfo, read_proc_stat
from tests.unit.test_vk_kubelet_api import FakeAuthApi, Pki, Setup
from vk_bridge import stats
from vk_bridge.certs import ServingCert, server_ssl_context
from vk_bridge.kubelet_api import Authenticator, create_app, start_server, subresource_for
from vk_bridge.provider import InterLinkProvider

T0 = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
STARTED = T0 - timedelta(minutes=5)


def report(*, cpu_ns: int = 3_000_000_000, at: datetime = T0, errors: list[str] | None = None) -> wire.UsageReport:
    """A burner (3 s of CPU) and a holder (64 MiB working set) in one pod, and the machine."""
    return wire.UsageReport(
        node=wire.NodeUsage(
            time=at, startTime=T0 - timedelta(hours=1), cpu=wire.CpuUsage(usageCoreNanoSeconds=100 * cpu_ns),
            memory=wire.MemoryUsage(usageBytes=8 << 30, workingSetBytes=6 << 30, availableBytes=10 << 30),
            fs=wire.FsUsage(capacityBytes=100 << 30, availableBytes=60 << 30, usedBytes=40 << 30, inodes=1000, inodesFree=900),
        ),
        pods=[wire.PodUsage(
            namespace="team-a", name="top", uid="u-1", startTime=STARTED, time=at,
            containers=[
                wire.ContainerUsage(name="burn", startTime=STARTED, time=at, cpu=wire.CpuUsage(usageCoreNanoSeconds=cpu_ns),
                                    memory=wire.MemoryUsage(usageBytes=1 << 20, workingSetBytes=512 << 10, rssBytes=256 << 10)),
                wire.ContainerUsage(name="hold", startTime=STARTED, time=at, cpu=wire.CpuUsage(usageCoreNanoSeconds=10_000_000),
                                    memory=wire.MemoryUsage(usageBytes=80 << 20, workingSetBytes=64 << 20, rssBytes=64 << 20)),
            ],
        )],
        errors=errors or [],
    )


# --- the Summary API ------------------------------------------------------------------------


def test_the_summary_carries_node_and_container_figures_with_times() -> None:
    body = stats.summary(report(), node_name="desktop", rates=stats.CpuRates())
    node = body["node"]
    assert node["nodeName"] == "desktop" and node["startTime"] == "2026-12-02T11:00:00Z"
    assert node["cpu"] == {"time": "2026-12-02T12:00:00Z", "usageCoreNanoSeconds": 300_000_000_000}
    assert node["memory"]["workingSetBytes"] == 6 << 30 and node["memory"]["availableBytes"] == 10 << 30
    assert node["fs"]["inodesUsed"] == 100 and node["runtime"]["imageFs"]["capacityBytes"] == 100 << 30
    (pod,) = body["pods"]
    assert pod["podRef"] == {"name": "top", "namespace": "team-a", "uid": "u-1"}
    burn, hold = pod["containers"]
    assert burn["name"] == "burn" and burn["startTime"] == "2026-12-02T11:55:00Z"
    assert burn["cpu"]["usageCoreNanoSeconds"] == 3_000_000_000 and "usageNanoCores" not in burn["cpu"]
    assert hold["memory"] == {"time": "2026-12-02T12:00:00Z", "usageBytes": 80 << 20, "workingSetBytes": 64 << 20,
                              "rssBytes": 64 << 20}
    # The pod is the sum of its containers.
    assert pod["cpu"]["usageCoreNanoSeconds"] == 3_010_000_000
    assert pod["memory"]["workingSetBytes"] == (64 << 20) + (512 << 10)
    json.dumps(body)  # JSON-ready


def test_usage_nano_cores_is_the_rate_between_two_readings() -> None:
    rates = stats.CpuRates()
    stats.summary(report(cpu_ns=3_000_000_000), node_name="d", rates=rates)
    later = stats.summary(report(cpu_ns=5_000_000_000, at=T0 + timedelta(seconds=2)), node_name="d", rates=rates)
    burn = later["pods"][0]["containers"][0]
    assert burn["cpu"]["usageNanoCores"] == 1_000_000_000  # 2 s of CPU in 2 s: one core
    assert later["node"]["cpu"]["usageNanoCores"] == 100_000_000_000


def test_a_restarted_container_starts_its_rate_afresh() -> None:
    rates = stats.CpuRates()
    assert rates.rate(("u", "c", "run1"), T0, 10**9) is None
    assert rates.rate(("u", "c", "run1"), T0 + timedelta(seconds=1), 2 * 10**9) == 10**9
    assert rates.rate(("u", "c", "run2"), T0 + timedelta(seconds=2), 10**6) is None  # a new run, not a negative rate
    assert rates.rate(("u", "c", "run2"), T0 + timedelta(seconds=3), 10**6 // 2) is None  # counter went back: no rate


# --- /metrics/resource ----------------------------------------------------------------------


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float, int | None]]]:
    """The Prometheus text format, parsed strictly enough to catch a malformed line."""
    out: dict[str, list[tuple[dict[str, str], float, int | None]]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in ("HELP", "TYPE"), line
            continue
        head, _, rest = line.partition("} ") if "{" in line else line.partition(" ")
        name, _, raw = head.partition("{")
        labels = dict(kv.split("=", 1) for kv in raw.split(",")) if raw else {}
        labels = {k: json.loads(v) for k, v in labels.items()}
        parts = rest.split()
        assert len(parts) in (1, 2), line
        out.setdefault(name, []).append((labels, float(parts[0]), int(parts[1]) if len(parts) == 2 else None))
    return out


def test_resource_metrics_have_the_kubelets_names_labels_units_and_timestamps() -> None:
    text = stats.resource_metrics(report())
    got = samples(text)
    ms = int(T0.timestamp() * 1000)
    assert got["node_cpu_usage_seconds_total"] == [({}, 300.0, ms)]
    assert got["node_memory_working_set_bytes"] == [({}, float(6 << 30), ms)]
    burn = {"container": "burn", "namespace": "team-a", "pod": "top"}
    assert (burn, 3.0, ms) in got["container_cpu_usage_seconds_total"]
    assert ({**burn, "container": "hold"}, float(64 << 20), ms) in got["container_memory_working_set_bytes"]
    assert (burn, STARTED.timestamp(), None) in got["container_start_time_seconds"]
    assert got["pod_cpu_usage_seconds_total"] == [({"namespace": "team-a", "pod": "top"}, 3.01, ms)]
    assert got["pod_memory_working_set_bytes"] == [({"namespace": "team-a", "pod": "top"}, float((64 << 20) + (512 << 10)), ms)]
    assert got["scrape_error"] == [({}, 0.0, None)] and got["resource_scrape_error"] == [({}, 0.0, None)]
    assert "# TYPE container_cpu_usage_seconds_total counter" in text
    assert "# TYPE node_memory_working_set_bytes gauge" in text


def test_a_reading_that_failed_sets_scrape_error_and_odd_names_are_escaped() -> None:
    r = report(errors=["pod team-a/x container y: gone"])
    r.pods[0].containers[0].name = 'we"ird\\'
    got = samples(stats.resource_metrics(r))
    assert got["scrape_error"] == [({}, 1.0, None)]
    assert any(labels["container"] == 'we"ird\\' for labels, _, _ in got["container_cpu_usage_seconds_total"])


def test_an_empty_report_still_lists_every_family() -> None:
    text = stats.resource_metrics(wire.UsageReport())
    for family in ("node_cpu_usage_seconds_total", "container_memory_working_set_bytes", "pod_cpu_usage_seconds_total",
                   "container_start_time_seconds", "scrape_error"):
        assert f"# TYPE {family} " in text


# --- where the sidecar reads the figures ------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_files_give_cpu_time_and_the_working_set(tmp_path: Path) -> None:
    cid = "abc123"
    _write(tmp_path / "cpuacct/docker" / cid / "cpuacct.usage", "2500000000\n")
    _write(tmp_path / "memory/docker" / cid / "memory.usage_in_bytes", "104857600\n")
    _write(tmp_path / "memory/docker" / cid / "memory.stat",
           "cache 50\ntotal_rss 41943040\ntotal_inactive_file 20971520\ntotal_pgfault 7\ntotal_pgmajfault 1\n")
    cg = Cgroups(root=tmp_path)
    dirs = cg.find(cid)
    assert dirs is not None
    cpu, memory = cg.read(dirs)  # type: ignore[misc]
    assert cpu.usageCoreNanoSeconds == 2_500_000_000
    assert (memory.usageBytes, memory.workingSetBytes, memory.rssBytes) == (100 << 20, 80 << 20, 40 << 20)
    assert (memory.pageFaults, memory.majorPageFaults) == (7, 1)
    assert cg.find("other") is None


def test_cgroup_v2_files_and_a_custom_parent_found_through_the_process(tmp_path: Path) -> None:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    _write(root / "cgroup.controllers", "cpu memory\n")
    d = root / "kod-home-docker" / "c1"
    _write(d / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n")
    _write(d / "memory.current", "3000\n")
    _write(d / "memory.stat", "anon 1000\ninactive_file 500\n")
    _write(proc / "42" / "cgroup", "0::/kod-home-docker/c1\n")
    cg = Cgroups(root=root, proc=proc)
    assert cg.find("c1") is None  # not under Docker's default parent
    dirs = cg.from_pid(42)
    assert dirs == (d, d)
    cpu, memory = cg.read(dirs)  # type: ignore[misc, arg-type]
    assert cpu.usageCoreNanoSeconds == 1_500_000_000
    assert (memory.usageBytes, memory.workingSetBytes, memory.rssBytes) == (3000, 2500, 1000)


def test_a_container_gone_between_finding_and_reading_is_none(tmp_path: Path) -> None:
    cg = Cgroups(root=tmp_path)
    assert cg.read((tmp_path / "gone", tmp_path / "gone")) is None


def test_dockers_stats_answer_gives_the_same_figures() -> None:
    cpu, memory = from_docker_stats({
        "cpu_stats": {"cpu_usage": {"total_usage": 123456789}},
        "memory_stats": {"usage": 1000, "stats": {"total_inactive_file": 300, "total_rss": 600}},
    })
    assert cpu is not None and cpu.usageCoreNanoSeconds == 123456789
    assert memory is not None and (memory.workingSetBytes, memory.rssBytes) == (700, 600)
    assert from_docker_stats({}) == (None, None)


def test_the_machines_cpu_is_busy_time_and_its_memory_excludes_inactive_file_pages(tmp_path: Path) -> None:
    _write(tmp_path / "stat", "cpu  100 20 30 1000 50 5 5 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nbtime 1764676800\n")
    busy, boot = read_proc_stat(tmp_path / "stat")
    ticks = 100 + 20 + 30 + 5 + 5 + 10  # idle and iowait are not use
    assert busy == ticks * 1_000_000_000 // CLOCK_TICKS
    assert boot == datetime.fromtimestamp(1764676800, UTC)
    _write(tmp_path / "meminfo", "MemTotal: 1000 kB\nMemFree: 200 kB\nMemAvailable: 600 kB\n"
                                 "Inactive(file): 300 kB\nAnonPages: 250 kB\n")
    memory = read_meminfo(tmp_path / "meminfo")
    assert memory is not None
    assert (memory.usageBytes, memory.workingSetBytes, memory.rssBytes, memory.availableBytes) == (
        800 * 1024, 500 * 1024, 250 * 1024, 600 * 1024)
    assert read_meminfo(tmp_path / "missing") is None


# --- the kubelet API: authorized as nodes/stats and nodes/metrics -------------------------------


@pytest.mark.parametrize(("path", "sub"), [("/stats/summary", "stats"), ("/metrics/resource", "metrics")])
def test_paths_map_to_the_kubelets_subresources(path: str, sub: str) -> None:
    assert subresource_for(path) == sub


class StatsInterLink:
    """interlink's /v1/stats (and nothing else) with a report the test sets."""

    def __init__(self) -> None:
        self.report: wire.UsageReport | None = report()
        self.app = web.Application()
        self.app.router.add_get("/v1/stats", self.stats)

    async def stats(self, request: web.Request) -> web.Response:
        if self.report is None:
            return web.json_response({"code": "Unavailable", "message": "no sidecar", "status": 503}, status=503)
        return web.Response(text=self.report.model_dump_json(), content_type="application/json")


class _NoStats:
    """A provider without the optional extra."""

    async def get_pod_status(self, namespace: str, name: str) -> wire.PodStatus:
        raise AssertionError("not called")


@pytest.fixture
async def api(tmp_path: Path, aiohttp_server: Callable[..., Any]) -> AsyncIterator[tuple[Setup, StatsInterLink]]:
    pki = Pki(tmp_path)
    auth_api, interlink = FakeAuthApi(), StatsInterLink()
    auth_api.allowed |= {("alice", "stats")}  # alice: nodes/metrics and nodes/stats; bob neither
    api_server: TestServer = await aiohttp_server(auth_api.app)
    il_server: TestServer = await aiohttp_server(interlink.app)
    kube = KubeClient(Connection(host=str(api_server.make_url("")).rstrip("/"), ssl_context=None, authorization=lambda: None), backoff=())
    provider = InterLinkProvider(str(il_server.make_url("")), "t", backoff=())
    crt, key = pki.issue("serving", "system:node:vnode", "system:nodes", server=True)
    app = create_app(provider=provider, kube=kube, auth=Authenticator(kube, "vnode"))
    runner, port = await start_server(app, "127.0.0.1", 0, server_ssl_context(ServingCert(crt, key), pki.ca_pem))
    yield Setup(f"https://127.0.0.1:{port}", pki, auth_api, interlink, None), interlink  # type: ignore[arg-type]
    await runner.cleanup()
    await provider.close()
    await kube.close()


@pytest.mark.parametrize(
    ("token", "path", "status", "subresource"),
    [
        (None, "/stats/summary", 401, None),
        ("forged-token", "/stats/summary", 401, None),
        ("weak-token", "/stats/summary", 403, "stats"),
        ("weak-token", "/metrics/resource", 403, "metrics"),
        ("good-token", "/stats/summary", 200, "stats"),
        ("good-token", "/metrics/resource", 200, "metrics"),
    ],
)
async def test_usage_is_served_only_to_callers_allowed_its_subresource(
    api: tuple[Setup, StatsInterLink], token: str | None, path: str, status: int, subresource: str | None
) -> None:
    setup, _ = api
    got, headers, body = await setup.get_full(path, token=token)
    assert got == status, body
    if status != 200:
        assert json.loads(body)["kind"] == "Status"
    if subresource:
        assert setup.auth_api.reviews[-1]["resourceAttributes"]["subresource"] == subresource
    if path == "/stats/summary" and status == 200:
        assert json.loads(body)["node"]["nodeName"] == "vnode"
    if path == "/metrics/resource" and status == 200:
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'container_cpu_usage_seconds_total{container="burn",namespace="team-a",pod="top"} 3 ' in body


async def test_an_unavailable_runtime_is_a_503_status_and_no_extra_is_a_501(
    api: tuple[Setup, StatsInterLink], tmp_path: Path, aiohttp_server: Callable[..., Any]
) -> None:
    setup, interlink = api
    interlink.report = None
    got, body = await setup.get("/metrics/resource", token="good-token")
    assert got == 503 and json.loads(body)["code"] == 503
    kube = KubeClient(Connection(host="http://127.0.0.1:9", ssl_context=None, authorization=lambda: None), backoff=())
    app = create_app(provider=_NoStats(), kube=kube, auth=Authenticator(kube, "vnode"))  # type: ignore[arg-type]

    app.middlewares.pop()  # authentication is tested above; here only the missing extra
    client_server: TestServer = await aiohttp_server(app)
    async with aiohttp.ClientSession() as s, s.get(str(client_server.make_url("/stats/summary"))) as r:
        assert r.status == 501 and (await r.json())["kind"] == "Status"
    await kube.close()


async def test_a_scrape_of_metrics_resource_gives_the_next_summary_its_rate(api: tuple[Setup, StatsInterLink]) -> None:
    setup, interlink = api
    interlink.report = report(cpu_ns=3_000_000_000)
    assert (await setup.get("/metrics/resource", token="good-token"))[0] == 200
    interlink.report = report(cpu_ns=4_000_000_000, at=T0 + timedelta(seconds=4))
    status, body = await setup.get("/stats/summary", token="good-token")
    assert status == 200
    burn = json.loads(body)["pods"][0]["containers"][0]
    assert burn["cpu"]["usageNanoCores"] == 250_000_000  # 1 s of CPU in 4 s


class StubEngine:
    """The two engine calls the usage reader may make: inspect (for the pid) and one-shot stats."""

    def __init__(self, stats: dict[str, dict[str, Any]]) -> None:
        self.stats = stats
        self.asked: list[str] = []

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        return {"State": {"Pid": 0}}

    async def container_stats(self, ref: str) -> dict[str, Any]:
        from sidecars.docker.engine import EngineError

        self.asked.append(ref)
        if ref not in self.stats:
            raise EngineError(404, f"No such container: {ref}")
        return self.stats[ref]


def _run(cid: str, state: str = "running") -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(id=cid, state=state, started_at=STARTED)


def _pod_state(name: str, runs: dict[str, Any], *, deleting: bool = False) -> Any:
    from types import SimpleNamespace

    slots = {c: SimpleNamespace(latest=run) for c, run in runs.items()}
    return SimpleNamespace(namespace="ns", name=name, uid=f"uid-{name}", slots=slots, infra=None, created=STARTED,
                           deleting=deleting)


async def test_the_sidecar_reads_cgroups_falls_back_to_docker_and_names_what_it_could_not_read(tmp_path: Path) -> None:
    from sidecars.docker.usage import Usage

    _write(tmp_path / "cpuacct/docker/c-cg/cpuacct.usage", "7000000000\n")
    _write(tmp_path / "memory/docker/c-cg/memory.usage_in_bytes", "2048\n")
    engine = StubEngine({"c-api": {"cpu_stats": {"cpu_usage": {"total_usage": 5}}, "memory_stats": {"usage": 10, "stats": {}}}})
    usage = Usage(engine, Cgroups(root=tmp_path, proc=tmp_path / "proc"))  # type: ignore[arg-type]
    pods = [
        _pod_state("web", {"cg": _run("c-cg"), "api": _run("c-api"), "gone": _run("c-gone"), "done": _run("c-done", "exited")}),
        _pod_state("leaving", {"x": _run("c-cg")}, deleting=True),
        _pod_state("waiting", {"x": None}),
    ]
    got = await usage.report(pods, data_root=str(tmp_path))
    (web_pod,) = got.pods
    by_name = {c.name: c for c in web_pod.containers}
    assert set(by_name) == {"cg", "api"}
    assert by_name["cg"].cpu is not None and by_name["cg"].cpu.usageCoreNanoSeconds == 7_000_000_000
    assert by_name["api"].memory is not None and by_name["api"].memory.workingSetBytes == 10
    assert engine.asked == ["c-api", "c-gone"]  # the cgroup files were enough for c-cg
    assert len(got.errors) == 1 and "container gone" in got.errors[0]
    assert got.node is not None and got.node.fs is not None
