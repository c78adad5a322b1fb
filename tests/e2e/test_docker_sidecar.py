"""The Docker sidecar against the real Docker engine, through its HTTP API: what a user of the
virtual node sees (phases, exit codes, logs, files, refusals) and what is left in Docker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from kod import errors, wire
from kod.http import ApiClient
from sidecars.docker.app import create_app
from sidecars.docker.settings import DockerSidecarSettings, RestartSettings
from tests.e2e.docker_sidecar_support import (
    ENTRYPOINT_IMAGE,
    PAUSE,
    TESTBOX,
    SidecarClient,
    b64,
    build_test_images,
    container,
    status_of,
    terminated,
)

pytestmark = pytest.mark.e2e

TOKEN = "e2e-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def sidecar_images(docker_engine: Any, localenv_config: Any) -> None:
    build_test_images(docker_engine, localenv_config)


def sidecar_settings(name: str, **extra: Any) -> DockerSidecarSettings:
    values: dict[str, Any] = {
        "restart": RestartSettings(initial_seconds=1, max_seconds=2),
        "default_grace_period_seconds": 5,
        "ready_timeout_seconds": 30,
        **extra,
    }
    return DockerSidecarSettings(name=name, token=SecretStr(TOKEN), infra_image=PAUSE, **values)


@pytest.fixture
async def sidecar(sidecar_images: None, docker_engine: Any, aiohttp_server: Any) -> AsyncIterator[SidecarClient]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    server = await aiohttp_server(create_app(sidecar_settings(name)))
    api = ApiClient(f"http://127.0.0.1:{server.port}", TOKEN, timeout=60)
    client = SidecarClient(api=api, name=name, namespace=f"ns-{name}", docker=docker_engine)
    client.server = server  # type: ignore[attr-defined]
    yield client
    await client.cleanup()
    await api.close()


# ------------------------------------------------------------------ exit codes and logs


async def test_echo_then_exit_0_succeeds_and_its_output_is_in_the_logs(sidecar: SidecarClient) -> None:
    req = sidecar.request("echo", [container("main", "echo hello from the desktop node")])
    first = await sidecar.create(req)
    # The answer comes once the pod is set up and its container started (or already done).
    assert first.phase in ("Pending", "Running", "Succeeded") and first.podIP and first.uid == req.pod.metadata.uid
    st = await sidecar.phase("echo", "Succeeded", "Failed")
    assert st.phase == "Succeeded"
    term = terminated(st, "main")
    assert term is not None and term.exitCode == 0 and term.reason == "Completed"
    assert term.startedAt is not None and term.finishedAt is not None and term.finishedAt >= term.startedAt
    assert await sidecar.logs("echo", "main") == "hello from the desktop node\n"
    # Create is idempotent on the uid: same pod, no second container.
    again = await sidecar.create(req)
    assert again.uid == req.pod.metadata.uid and again.phase == "Succeeded"
    assert len(sidecar.containers(req.pod.metadata.uid)) == 2  # infra + main


async def test_exit_3_fails_with_exit_code_3(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("three", [container("main", "echo about to fail >&2; exit 3")]))
    st = await sidecar.phase("three", "Succeeded", "Failed")
    term = terminated(st, "main")
    assert st.phase == "Failed" and term is not None and term.exitCode == 3 and term.reason == "Error"
    assert await sidecar.logs("three", "main") == "about to fail\n"


async def test_log_options_tail_limit_timestamps_since(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("lines", [container("main", "for i in 1 2 3 4 5; do echo line $i; done")]))
    await sidecar.phase("lines", "Succeeded")
    assert await sidecar.logs("lines", "main", tailLines=2) == "line 4\nline 5\n"
    assert await sidecar.logs("lines", "main", limitBytes=9) == "line 1\nli"
    stamped = (await sidecar.logs("lines", "main", timestamps=True)).splitlines()
    assert len(stamped) == 5 and stamped[0].endswith(" line 1") and stamped[0][:4].isdigit() and "T" in stamped[0]
    assert await sidecar.logs("lines", "main", sinceSeconds=3600) != ""
    future = "2099-01-01T00:00:00Z"
    assert await sidecar.logs("lines", "main", sinceTime=future) == ""
    with pytest.raises(errors.NotFound):
        await sidecar.logs("lines", "nope")
    with pytest.raises(errors.InvalidInput, match="previous terminated container"):
        await sidecar.logs("lines", "main", previous=True)


async def test_logs_follow_streams_lines_as_they_are_printed(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("talker", [container("main", "echo line 1; sleep 3; echo line 2")]))
    await sidecar.phase("talker", "Running", "Succeeded")
    path = f"/v1/pods/{sidecar.namespace}/talker/containers/main/logs"
    chunks: list[tuple[float, bytes]] = []
    start = time.monotonic()
    async for chunk in sidecar.api.stream("GET", path, params={"follow": True}):
        if chunk:
            chunks.append((time.monotonic() - start, chunk))
    text = b"".join(c for _, c in chunks).decode()
    assert text == "line 1\nline 2\n"
    # "line 1" arrived on its own, well before the container printed "line 2" and ended.
    assert chunks[0][1] == b"line 1\n"
    assert chunks[-1][0] - chunks[0][0] > 1.5


# ------------------------------------------------------------------ the pod: network, volumes, order


async def test_two_containers_share_an_empty_dir_and_localhost(sidecar: SidecarClient) -> None:
    server = container("server", "echo shared-bytes > /data/f && exec httpd -f -p 8080 -h /data",
                       volumeMounts=[{"name": "data", "mountPath": "/data"}])
    client = container(
        "client",
        "until wget -q -O /tmp/got http://localhost:8080/f 2>/dev/null; do sleep 0.2; done; cat /tmp/got /data/f; "
        "stat -f -c %T /fast; id -u; echo written > /fast/by-1000 && echo ok; hostname",
        volumeMounts=[{"name": "data", "mountPath": "/data"}, {"name": "fast", "mountPath": "/fast"}],
        securityContext={"runAsUser": 1000},
    )
    req = sidecar.request("duo", [server, client],
                          volumes=[{"name": "data", "emptyDir": {}}, {"name": "fast", "emptyDir": {"medium": "Memory"}}])
    await sidecar.create(req)
    st = await sidecar.wait("duo", lambda s: terminated(s, "client") is not None)
    assert terminated(st, "client").exitCode == 0  # type: ignore[union-attr]
    assert st.phase == "Running"  # the server keeps running
    out = (await sidecar.logs("duo", "client")).splitlines()
    assert out == ["shared-bytes", "shared-bytes", "tmpfs", "1000", "ok", "duo"]


async def test_config_map_and_secret_volumes_are_right_byte_for_byte(sidecar: SidecarClient) -> None:
    every_byte = bytes(range(256))
    volumes = [
        {"name": "sec", "secret": {"secretName": "s", "defaultMode": 0o400,
                                   "items": [{"key": "bin", "path": "blob.bin"}, {"key": "k", "path": "deep/er/key", "mode": 0o440}]}},
        {"name": "cm", "configMap": {"name": "c", "items": [{"key": "app.conf", "path": "app.conf"}, {"key": "x", "path": "x.sh", "mode": 0o755}]}},
    ]
    resolved = [
        {"name": "sec", "defaultMode": 0o400, "files": [
            {"path": "blob.bin", "data": b64(every_byte)},
            {"path": "deep/er/key", "data": b64(b"s3cr3t\n"), "mode": 0o440}]},
        {"name": "cm", "defaultMode": 0o644, "files": [
            {"path": "app.conf", "data": b64(b"a = 1\nb = \xc3\xa9\n")},
            {"path": "x.sh", "data": b64(b"#!/bin/sh\necho run\n"), "mode": 0o755}]},
    ]
    script = (
        "base64 -w0 /s/blob.bin; echo; cat /s/deep/er/key; "
        "stat -L -c '%n %a' /s/blob.bin /s/deep/er/key /c/app.conf /c/x.sh /etc/app.conf; "
        "base64 -w0 /etc/app.conf; echo; /c/x.sh; "
        "stat -f -c %T /s; touch /s/new 2>/dev/null && echo writable || echo read-only"
    )
    main = container("main", script, volumeMounts=[
        {"name": "sec", "mountPath": "/s"}, {"name": "cm", "mountPath": "/c"},
        {"name": "cm", "mountPath": "/etc/app.conf", "subPath": "app.conf"}])
    await sidecar.create(sidecar.request("vols", [main], contents=resolved, volumes=volumes))
    st = await sidecar.phase("vols", "Succeeded", "Failed")
    assert st.phase == "Succeeded", st
    lines = (await sidecar.logs("vols", "main")).splitlines()
    assert lines[0] == b64(every_byte)
    assert lines[1] == "s3cr3t"
    assert lines[2:7] == ["/s/blob.bin 400", "/s/deep/er/key 440", "/c/app.conf 644", "/c/x.sh 755", "/etc/app.conf 644"]
    assert lines[7] == b64(b"a = 1\nb = \xc3\xa9\n")
    assert lines[8:] == ["run", "tmpfs", "read-only"]
    # Once the pod is finished its infra container stops, and the secrets' tmpfs is gone with it.
    deadline = time.monotonic() + 30
    while any(c.status != "exited" for c in sidecar.containers(st.uid) if c.labels.get("io.kod.role") == "infra"):
        assert time.monotonic() < deadline, "the infra container of a finished pod keeps running"
        await asyncio.sleep(0.2)
    (mem,) = [v for v in sidecar.volumes(st.uid) if v.attrs["Labels"].get("io.kod.volume.kind") == "mem"]
    left = sidecar.docker.containers.run(TESTBOX, ["ls", "-A", "/m"], volumes={mem.name: {"bind": "/m", "mode": "ro"}},
                                         remove=True, labels={"io.kod.sidecar": sidecar.name})
    assert left == b""


async def test_three_init_containers_run_in_order_before_the_main_one(sidecar: SidecarClient) -> None:
    inits = [container(f"init-{i}", f"echo init-{i} >> /work/order; sleep 0.3",
                       volumeMounts=[{"name": "work", "mountPath": "/work"}]) for i in (1, 2, 3)]
    main = container("main", "echo main >> /work/order; cat /work/order", volumeMounts=[{"name": "work", "mountPath": "/work"}])
    await sidecar.create(sidecar.request("inits", [main], initContainers=inits,
                                         volumes=[{"name": "work", "emptyDir": {}}]))
    st = await sidecar.phase("inits", "Succeeded", "Failed")
    assert st.phase == "Succeeded"
    assert await sidecar.logs("inits", "main") == "init-1\ninit-2\ninit-3\nmain\n"
    ends = [terminated(st, f"init-{i}") for i in (1, 2, 3)]
    main_term = terminated(st, "main")
    assert all(t is not None and t.exitCode == 0 and t.reason == "Completed" for t in ends)
    # Each one started after the previous one finished.
    order = [*ends, main_term]
    for before, after in zip(order, order[1:]):
        assert before.finishedAt <= after.startedAt  # type: ignore[union-attr,operator]


async def test_failing_init_container_fails_the_pod_and_the_main_one_never_runs(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("badinit", [container("main", "echo should not run")],
                                         initContainers=[container("init", "exit 7")]))
    st = await sidecar.phase("badinit", "Failed", "Succeeded")
    assert st.phase == "Failed" and terminated(st, "init").exitCode == 7  # type: ignore[union-attr]
    assert status_of(st, "main").state.waiting is not None
    assert len(sidecar.containers(st.uid)) == 2  # infra + init: nothing else was created
    # The finished pod's infra container is stopped (its tmpfs, with any secrets, is gone).
    deadline = time.monotonic() + 30
    while any(c.status != "exited" for c in sidecar.containers(st.uid) if c.labels.get("io.kod.role") == "infra"):
        assert time.monotonic() < deadline, "the infra container of a failed pod keeps running"
        await asyncio.sleep(0.2)
    after = await sidecar.get("badinit")
    assert after.phase == "Failed" and after.reason is None


async def test_memory_limit_exceeded_gives_oom_killed(sidecar: SidecarClient) -> None:
    hog = container("hog", "tail /dev/zero", resources={"limits": {"memory": "32Mi"}})
    await sidecar.create(sidecar.request("hog", [hog]))
    st = await sidecar.phase("hog", "Failed", "Succeeded")
    term = terminated(st, "hog")
    assert st.phase == "Failed" and term is not None and term.reason == "OOMKilled" and term.exitCode == 137


@pytest.mark.parametrize(
    ("command", "args", "output"),
    [
        (None, None, "image-entrypoint image-cmd"),
        (None, ["from", "args"], "image-entrypoint from args"),
        (["/bin/echo", "from-command"], None, "from-command"),
        (["/bin/echo", "from-command"], ["and", "args"], "from-command and args"),
    ],
)
async def test_entrypoint_and_cmd_combine_with_command_and_args_like_a_kubelet(sidecar, command, args, output) -> None:
    c: dict[str, Any] = {"name": "main", "image": ENTRYPOINT_IMAGE}
    if command is not None:
        c["command"] = command
    if args is not None:
        c["args"] = args
    await sidecar.create(sidecar.request("ep", [c]))
    st = await sidecar.phase("ep", "Succeeded", "Failed")
    assert st.phase == "Succeeded"
    assert await sidecar.logs("ep", "main") == output + "\n"


async def test_env_working_dir_and_resolved_command_are_applied(sidecar: SidecarClient) -> None:
    c = container("main", None, workingDir="/tmp", command=["ignored"])
    resolved = [{"name": "main", "command": ["sh", "-c"], "args": ['echo "$GREETING $WHO from $(pwd)"'],
                 "env": [{"name": "GREETING", "value": "hi"}, {"name": "WHO", "value": "nobody"},
                         {"name": "WHO", "value": "kubelet"}]}]
    await sidecar.create(sidecar.request("env", [c], resolved=resolved))
    await sidecar.phase("env", "Succeeded")
    assert await sidecar.logs("env", "main") == "hi kubelet from /tmp\n"


async def test_start_error_is_reported_like_a_kubelet(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("noexec", [container("main", None, command=["/no/such/binary"])]))
    st = await sidecar.phase("noexec", "Failed", "Succeeded")
    term = terminated(st, "main")
    assert st.phase == "Failed" and term is not None and term.reason == "StartError" and term.exitCode == 128
    assert "no such file" in (term.message or "").lower() or "not found" in (term.message or "").lower()


async def test_run_as_non_root_with_a_root_image_waits_with_a_config_error(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("root", [container("main", "id", securityContext={"runAsNonRoot": True})]))
    st = await sidecar.wait("root", lambda s: status_of(s, "main").state.waiting is not None
                            and status_of(s, "main").state.waiting.reason == "CreateContainerConfigError")
    assert "runAsNonRoot" in (status_of(st, "main").state.waiting.message or "")  # type: ignore[union-attr]
    assert st.phase == "Pending"


# ------------------------------------------------------------------ restarts


async def test_crash_loop_restarts_with_back_off_count_and_last_state(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("crash", [container("main", "echo run; exit 1")], restartPolicy="Always"))
    st = await sidecar.wait("crash", lambda s: status_of(s, "main").restartCount >= 3)
    cs = status_of(st, "main")
    assert st.phase == "Running"
    assert cs.lastState.terminated is not None and cs.lastState.terminated.exitCode == 1
    assert await sidecar.logs("crash", "main", previous=True) == "run\n"
    backoff = await sidecar.wait("crash", lambda s: (status_of(s, "main").state.waiting is not None
                                                     and status_of(s, "main").state.waiting.reason == "CrashLoopBackOff"))
    assert "back-off" in (status_of(backoff, "main").state.waiting.message or "")  # type: ignore[union-attr]
    # The kubelet keeps the current and the previous run only.
    mains = [c for c in sidecar.containers(st.uid) if c.labels.get("io.kod.role") == "main"]
    assert len(mains) <= 2


async def test_on_failure_restarts_until_success(sidecar: SidecarClient) -> None:
    script = "test -f /state/second && echo done && exit 0; touch /state/second; exit 4"
    c = container("main", script, volumeMounts=[{"name": "state", "mountPath": "/state"}])
    await sidecar.create(sidecar.request("retry", [c], restartPolicy="OnFailure",
                                         volumes=[{"name": "state", "emptyDir": {}}]))
    st = await sidecar.phase("retry", "Succeeded", "Failed")
    cs = status_of(st, "main")
    assert st.phase == "Succeeded" and cs.restartCount == 1
    assert cs.lastState.terminated is not None and cs.lastState.terminated.exitCode == 4


# ------------------------------------------------------------------ delete


async def test_delete_removes_every_object_but_the_claims_volume(sidecar: SidecarClient) -> None:
    vols = [{"name": "scratch", "emptyDir": {}}, {"name": "sec", "secret": {"secretName": "s"}},
            {"name": "home", "persistentVolumeClaim": {"claimName": "home"}}]
    writer = container("main", "echo kept > /home/file; exec sleep 3600", volumeMounts=[
        {"name": "scratch", "mountPath": "/scratch"}, {"name": "sec", "mountPath": "/sec"},
        {"name": "home", "mountPath": "/home"}])
    req = sidecar.request("keeper", [writer], contents=[{"name": "sec", "files": [{"path": "k", "data": b64(b"v")}]}],
                          volumes=vols)
    await sidecar.create(req)
    await sidecar.phase("keeper", "Running")
    uid = req.pod.metadata.uid
    assert len(sidecar.containers(uid)) == 2 and len(sidecar.volumes(uid)) == 2  # mem + disk
    started = time.monotonic()
    final = await sidecar.delete("keeper", grace=0)
    assert time.monotonic() - started < 10
    assert final.phase == "Failed" and terminated(final, "main") is not None
    assert sidecar.containers(uid) == [] and sidecar.volumes(uid) == []
    claim = [v for v in sidecar.volumes() if v.attrs["Labels"].get("io.kod.pvc.claim") == "home"]
    assert len(claim) == 1
    with pytest.raises(errors.NotFound):
        await sidecar.delete("keeper")
    # The claim's data outlives the pod.
    reader = container("main", "cat /home/file", volumeMounts=[{"name": "home", "mountPath": "/home"}])
    await sidecar.create(sidecar.request("reader", [reader], volumes=[vols[2]]))
    await sidecar.phase("reader", "Succeeded")
    assert await sidecar.logs("reader", "main") == "kept\n"


async def test_graceful_delete_sends_term_first_and_kills_after_the_grace_period(sidecar: SidecarClient) -> None:
    polite = container("main", 'trap "echo got TERM; exit 0" TERM; echo ready; while true; do sleep 0.1; done')
    stubborn = container("main", 'trap "" TERM; echo ready; while true; do sleep 0.1; done')
    await sidecar.create(sidecar.request("polite", [polite], restartPolicy="Always"))
    await sidecar.create(sidecar.request("stubborn", [stubborn], restartPolicy="Always"))
    await sidecar.phase("polite", "Running")
    await sidecar.phase("stubborn", "Running")
    await sidecar.wait("stubborn", lambda s: status_of(s, "main").state.running is not None)
    t0 = time.monotonic()
    polite_final, stubborn_final = await asyncio.gather(sidecar.delete("polite", grace=30), sidecar.delete("stubborn", grace=2))
    elapsed = time.monotonic() - t0
    assert terminated(polite_final, "main").exitCode == 0 and polite_final.phase == "Succeeded"  # type: ignore[union-attr]
    assert terminated(stubborn_final, "main").exitCode == 137  # type: ignore[union-attr]
    assert 1.5 < elapsed < 20


async def test_a_second_delete_with_a_shorter_grace_period_cuts_it_short(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("slow", [container("main", 'trap "" TERM; while true; do sleep 0.1; done')]))
    await sidecar.wait("slow", lambda s: status_of(s, "main").state.running is not None)
    t0 = time.monotonic()
    first = asyncio.ensure_future(sidecar.delete("slow", grace=60))
    await asyncio.sleep(0.5)  # let the first delete start its graceful stop
    second = await sidecar.delete("slow", grace=0)
    assert (await first).uid == second.uid
    assert time.monotonic() - t0 < 20
    assert sidecar.containers(second.uid) == []


# ------------------------------------------------------------------ policy and images


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"containers": [container("main", "id", securityContext={"privileged": True})]},
         "spec.containers[0].securityContext.privileged"),
        ({"containers": [container("main", "ls /host", volumeMounts=[{"name": "root", "mountPath": "/host"}])],
          "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "spec.volumes[0].hostPath.path"),
        ({"containers": [container("main", "id")], "hostPID": True}, "spec.hostPID"),
    ],
)
async def test_refused_pods_get_a_clear_reason_and_nothing_is_created(sidecar: SidecarClient, spec, field) -> None:
    req = wire.PodCreateRequest.model_validate(
        {"pod": {"metadata": {"name": "bad", "namespace": sidecar.namespace, "uid": str(uuid.uuid4())}, "spec": spec}}
    )
    with pytest.raises(errors.Forbidden) as info:
        await sidecar.create(req)
    assert field in str(info.value) and "desktop policy" in str(info.value)
    assert sidecar.containers() == [] and sidecar.volumes() == []
    with pytest.raises(errors.NotFound):
        await sidecar.get("bad")


async def test_the_desktops_x_socket_directory_is_mounted_by_default(sidecar: SidecarClient, desktop: Any) -> None:
    # /tmp/.X11-unix is on the default allow-list. The desktop's X server (the `desktop` fixture)
    # makes it and puts its socket there, so the outcome never depends on what ran before; a
    # missing allowed path is tested by test_a_create_error_is_retried_until_its_cause_goes_away.
    socket = f"X{desktop.display.lstrip(':')}"
    c = container("main", f"test -S /x11/{socket} && echo sees {socket}",
                  volumeMounts=[{"name": "x11", "mountPath": "/x11", "readOnly": True}],
                  securityContext={"runAsUser": 1000})  # pods with host paths run as non-root
    await sidecar.create(sidecar.request("x11", [c], volumes=[{"name": "x11", "hostPath": {"path": "/tmp/.X11-unix", "type": "DirectoryOrCreate"}}]))
    st = await sidecar.phase("x11", "Succeeded", "Failed")
    assert st.phase == "Succeeded" and await sidecar.logs("x11", "main") == f"sees {socket}\n"


async def test_missing_image_waits_with_a_clear_reason_and_starts_once_built(sidecar: SidecarClient) -> None:
    ref = f"kod-test/later:{uuid.uuid4().hex[:8]}"
    await sidecar.create(sidecar.request("later", [{"name": "main", "image": ref, "command": ["echo", "finally"]}]))
    st = await sidecar.wait("later", lambda s: status_of(s, "main").state.waiting is not None
                            and status_of(s, "main").state.waiting.reason == "ErrImageNeverPull")
    assert st.phase == "Pending" and ref in (status_of(st, "main").state.waiting.message or "")  # type: ignore[union-attr]
    repo, tag = ref.split(":")
    sidecar.docker.images.get(TESTBOX).tag(repo, tag)
    try:
        st = await sidecar.phase("later", "Succeeded", "Failed")
        assert st.phase == "Succeeded" and await sidecar.logs("later", "main") == "finally\n"
    finally:
        await sidecar.delete("later")
        sidecar.docker.images.remove(ref)


# ------------------------------------------------------------------ the watch and restarts of the sidecar


async def test_watch_streams_status_changes_with_increasing_versions_then_deleted(sidecar: SidecarClient) -> None:
    events: list[wire.WatchEvent] = []

    async def follow() -> None:
        async for line in sidecar.api.lines("/v1/watch"):
            event = wire.WatchEvent.model_validate_json(line)
            events.append(event)
            if event.type == "DELETED":
                return

    watcher = asyncio.ensure_future(follow())
    await sidecar.create(sidecar.request("watched", [container("main", "echo hi")]))
    await sidecar.phase("watched", "Succeeded")
    await sidecar.delete("watched")
    await asyncio.wait_for(watcher, 30)
    assert events[0].type == "SYNC"
    mine = [e.pod for e in events if e.pod is not None and e.pod.name == "watched"]
    versions = [p.version for p in mine]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    phases = [p.phase for p in mine]
    assert phases[-1] == "Succeeded"  # the DELETED event carries the final status
    assert events[-1].type == "DELETED" and events[-1].pod is not None and events[-1].pod.name == "watched"


async def test_a_restarted_sidecar_adopts_its_pods_without_duplicates(
    sidecar: SidecarClient, aiohttp_server: Any
) -> None:
    req = sidecar.request("long", [container("main", "exec sleep 3600")], restartPolicy="Always")
    await sidecar.create(req)
    running = await sidecar.wait("long", lambda s: status_of(s, "main").state.running is not None)
    await sidecar.server.close()  # type: ignore[attr-defined]
    server = await aiohttp_server(create_app(sidecar_settings(sidecar.name)))
    api = ApiClient(f"http://127.0.0.1:{server.port}", TOKEN, timeout=60)
    old_api, sidecar.api = sidecar.api, api
    await old_api.close()
    st = await sidecar.get("long")
    assert st.phase == "Running"
    assert status_of(st, "main").containerID == status_of(running, "main").containerID
    again = await sidecar.create(req)  # the virtual kubelet re-creates what it knows: 200, nothing new
    assert again.uid == req.pod.metadata.uid
    assert len(sidecar.containers(req.pod.metadata.uid)) == 2
    assert st.version >= running.version


async def test_ping_reports_the_engines_capacity(sidecar: SidecarClient) -> None:
    info = await sidecar.api.request("GET", "/v1/ping", model=wire.NodeInfo)
    assert int(info.capacity["cpu"]) >= 1 and info.capacity["memory"].endswith("Ki") and info.capacity["pods"] == "110"
    assert info.sidecars[0].ok and info.sidecars[0].name == sidecar.name
    assert json.loads(info.model_dump_json())["version"].startswith("kod-docker-sidecar/")


# ------------------------------------------------------------------ more of the pod spec


async def test_active_deadline_fails_the_pod_and_stops_it(sidecar: SidecarClient) -> None:
    await sidecar.create(sidecar.request("deadline", [container("main", "exec sleep 3600")],
                                         restartPolicy="Always", activeDeadlineSeconds=2,
                                         terminationGracePeriodSeconds=1))
    st = await sidecar.wait("deadline", lambda s: s.reason == "DeadlineExceeded"
                            and terminated(s, "main") is not None)
    assert st.phase == "Failed" and "deadline" in (st.message or "")


async def test_a_restartable_init_container_runs_beside_the_main_one_and_stops_after_it(sidecar: SidecarClient) -> None:
    helper = container("helper", "echo helper-up > /shared/flag; exec sleep 3600", restartPolicy="Always",
                       volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
    main = container("main", "cat /shared/flag", volumeMounts=[{"name": "shared", "mountPath": "/shared"}])
    await sidecar.create(sidecar.request("sidecars", [main], initContainers=[helper], terminationGracePeriodSeconds=1,
                                         volumes=[{"name": "shared", "emptyDir": {}}]))
    st = await sidecar.phase("sidecars", "Succeeded", "Failed", timeout=60)
    assert st.phase == "Succeeded"
    assert terminated(st, "helper") is not None  # stopped once the main container was done
    assert await sidecar.logs("sidecars", "main") == "helper-up\n"


async def test_shared_process_namespace_hostname_and_host_aliases(sidecar: SidecarClient) -> None:
    sleeper = container("sleeper", "exec sleep 3600")
    looker = container("looker", "until ps | grep -v grep | grep -q 'sleep 3600'; do sleep 0.1; done; echo sees-sleep; "
                       "hostname; grep -w desktop.example /etc/hosts | cut -f1")
    await sidecar.create(sidecar.request("pids", [sleeper, looker], shareProcessNamespace=True, hostname="h-one",
                                         hostAliases=[{"ip": "10.1.2.3", "hostnames": ["desktop.example"]}]))
    st = await sidecar.wait("pids", lambda s: terminated(s, "looker") is not None)
    assert terminated(st, "looker").exitCode == 0  # type: ignore[union-attr]
    assert (await sidecar.logs("pids", "looker")).split() == ["sees-sleep", "h-one", "10.1.2.3"]


async def test_sub_path_of_a_claim_and_of_an_empty_dir(sidecar: SidecarClient) -> None:
    c = container("main", "echo one > /docs/a; echo two > /cache/b; ls /whole/Documents; cat /whole/Documents/a; "
                  "stat -c %a /cache",
                  volumeMounts=[{"name": "home", "mountPath": "/docs", "subPath": "Documents"},
                                {"name": "home", "mountPath": "/whole"},
                                {"name": "scratch", "mountPath": "/cache", "subPath": "cache/x"}],
                  securityContext={"runAsUser": 1000})
    await sidecar.create(sidecar.request("subpaths", [c], volumes=[
        {"name": "home", "persistentVolumeClaim": {"claimName": f"home-{uuid.uuid4().hex[:6]}"}},
        {"name": "scratch", "emptyDir": {}}]))
    st = await sidecar.phase("subpaths", "Succeeded", "Failed")
    assert st.phase == "Succeeded", await sidecar.logs("subpaths", "main")
    assert (await sidecar.logs("subpaths", "main")).split() == ["a", "one", "777"]


async def test_a_create_error_is_retried_until_its_cause_goes_away(sidecar: SidecarClient) -> None:
    import shutil
    from pathlib import Path

    host_dir = Path(f"/run/kod/pulse/t-{uuid.uuid4().hex[:8]}")  # an allowed host path (/run/kod/pulse/*)
    c = container("main", "ls /snd", volumeMounts=[{"name": "snd", "mountPath": "/snd", "readOnly": True}],
                  securityContext={"runAsUser": 1000})
    await sidecar.create(sidecar.request("later-dir", [c], volumes=[{"name": "snd", "hostPath": {"path": str(host_dir)}}]))
    st = await sidecar.wait("later-dir", lambda s: status_of(s, "main").state.waiting is not None
                            and status_of(s, "main").state.waiting.reason == "CreateContainerError")
    assert str(host_dir) in (status_of(st, "main").state.waiting.message or "")  # type: ignore[union-attr]
    host_dir.mkdir(parents=True)
    try:
        (host_dir / "native").write_text("")
        st = await sidecar.phase("later-dir", "Succeeded", "Failed", timeout=60)
        assert st.phase == "Succeeded" and await sidecar.logs("later-dir", "main") == "native\n"
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
