"""What the sidecar asks Docker for: argv, resources, users, security (pure functions)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from kod import wire
from sidecars.docker import bodies, naming
from sidecars.docker.commands import resolve_argv
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.record import PodRecord
from sidecars.docker.settings import DockerSidecarSettings, LimitsSettings, PolicySettings
from sidecars.docker.volumes import ContainerMounts

SETTINGS = DockerSidecarSettings(name="t", token="x")
CEILINGS = Ceilings.resolve(LimitsSettings(), node_memory=8 * 2**30, node_cpu_millis=4000)
IMAGE = bodies.ImageInfo(id="sha256:1", entrypoint=["/bin/echo", "ep"], cmd=["cmd"], user="")


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        (None, None, ["/bin/echo", "ep", "cmd"]),
        ([], [], ["/bin/echo", "ep", "cmd"]),
        (None, ["a", "b"], ["/bin/echo", "ep", "a", "b"]),
        (["sh", "-c", "x"], None, ["sh", "-c", "x"]),
        (["sh", "-c"], ["x"], ["sh", "-c", "x"]),
    ],
)
def test_command_and_args_combine_with_entrypoint_and_cmd_like_a_kubelet(command, args, argv) -> None:
    assert resolve_argv(["/bin/echo", "ep"], ["cmd"], command, args) == argv


def test_image_without_entrypoint_runs_its_cmd_or_the_args() -> None:
    assert resolve_argv(None, ["sh"], None, None) == ["sh"]
    assert resolve_argv(None, ["sh"], None, ["ls"]) == ["ls"]
    assert resolve_argv(None, None, None, None) == []


def record(container: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
           resolved: list[dict[str, Any]] | None = None) -> PodRecord:
    c = {"name": "app", "image": "img", **(container or {})}
    s: dict[str, Any] = {"containers": [c], **(spec or {})}
    req = wire.PodCreateRequest.model_validate(
        {"pod": {"metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "labels": {"kod.io/session": "s1"}}, "spec": s},
         "containers": resolved or []}
    )
    return PodRecord.from_request(req)


def body_of(rec: PodRecord, image: bodies.ImageInfo = IMAGE, settings: DockerSidecarSettings = SETTINGS) -> dict[str, Any]:
    return bodies.container_body(
        rec, rec.pod.spec.containers[0], role="main", attempt=2, infra_id="infra1", image=image,
        mounts=ContainerMounts(), settings=settings, ceilings=CEILINGS,
    )


def test_container_joins_the_pods_namespaces_and_is_labelled() -> None:
    body = body_of(record(spec={"shareProcessNamespace": True}))
    hc = body["HostConfig"]
    assert hc["NetworkMode"] == "container:infra1" and hc["IpcMode"] == "container:infra1"
    assert hc["PidMode"] == "container:infra1"
    assert "Hostname" not in body  # shared with the infra container
    labels = body["Labels"]
    assert labels[naming.ROLE] == "main" and labels[naming.ATTEMPT] == "2" and labels["io.kod.container.name"] == "app"
    assert labels["io.kod.pod.uid"] == "u-1" and labels["io.kod.session"] == "s1" and labels[naming.SIDECAR] == "t"
    assert hc["SecurityOpt"] == ["no-new-privileges:true"] and hc["RestartPolicy"] == {"Name": "no"}
    assert hc["LogConfig"]["Type"] == "json-file"


def test_resolved_command_args_and_env_are_used_last_duplicate_wins() -> None:
    rec = record({"command": ["ignored"]}, resolved=[{"name": "app", "command": ["run"], "args": ["--x=$(A)"],
                                                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"},
                                                             {"name": "A", "value": "3"}]}])
    body = body_of(rec)
    assert body["Entrypoint"] == ["run", "--x=$(A)"] and body["Cmd"] == []
    assert body["Env"] == ["A=3", "B=2"]


def test_no_new_privileges_unless_the_policy_allows_escalation_and_the_pod_asks() -> None:
    asks = record({"securityContext": {"allowPrivilegeEscalation": True}})
    lenient = DockerSidecarSettings(name="t", token="x", policy=PolicySettings(allow_privilege_escalation=True))
    assert body_of(asks, settings=lenient)["HostConfig"]["SecurityOpt"] == []
    assert body_of(record(), settings=lenient)["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
    assert body_of(asks)["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]


def test_resources_map_to_cgroup_settings_like_the_kubelet() -> None:
    rec = record({"resources": {"limits": {"memory": "64Mi", "cpu": "500m", "nvidia.com/gpu": "1"},
                                "requests": {"memory": "32Mi", "cpu": "250m"}}})
    hc = body_of(rec)["HostConfig"]
    assert hc["Memory"] == hc["MemorySwap"] == 64 * 2**20
    assert hc["MemoryReservation"] == 32 * 2**20
    assert hc["NanoCpus"] == 500_000_000
    assert hc["CpuShares"] == 256
    assert hc["DeviceRequests"] == [{"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]
    assert body_of(record())["HostConfig"]["CpuShares"] == bodies.MIN_SHARES
    # A limit without a request: the request defaults to the limit.
    assert body_of(record({"resources": {"limits": {"cpu": "1"}}}))["HostConfig"]["CpuShares"] == 1024


def test_a_container_without_limits_gets_the_desktops_defaults_and_every_one_a_process_limit() -> None:
    hc = body_of(record())["HostConfig"]
    assert (hc["Memory"], hc["MemorySwap"], hc["NanoCpus"], hc["PidsLimit"]) == (2**30, 2**30, 1_000_000_000, 1024)
    # A request above the default limit: the request is the limit (what the pod asked for).
    hc = body_of(record({"resources": {"requests": {"memory": "3Gi", "cpu": "1500m"}}}))["HostConfig"]
    assert (hc["Memory"], hc["NanoCpus"]) == (3 * 2**30, 1_500_000_000)
    custom = DockerSidecarSettings(name="t", token="x", limits=LimitsSettings(default_memory="256Mi", pids=64))
    rec = record()
    body = bodies.container_body(rec, rec.pod.spec.containers[0], role="main", attempt=0, infra_id="i", image=IMAGE,
                                 mounts=ContainerMounts(), settings=custom,
                                 ceilings=Ceilings.resolve(custom.limits, node_memory=None, node_cpu_millis=None))
    assert (body["HostConfig"]["Memory"], body["HostConfig"]["PidsLimit"]) == (256 * 2**20, 64)


def test_capabilities_are_the_kept_set_never_the_engines_default() -> None:
    hc = body_of(record())["HostConfig"]
    assert hc["CapDrop"] == ["ALL"]
    assert hc["CapAdd"] == sorted(["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "NET_BIND_SERVICE", "KILL"])
    for gone in ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SYS_CHROOT", "SETPCAP"):
        assert gone not in hc["CapAdd"]
    dropped = body_of(record({"securityContext": {"capabilities": {"drop": ["KILL", "cap_chown"]}}}))["HostConfig"]
    assert "KILL" not in dropped["CapAdd"] and "CHOWN" not in dropped["CapAdd"] and "SETUID" in dropped["CapAdd"]
    added = body_of(record({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_RAW"]}}}))["HostConfig"]
    assert added["CapAdd"] == ["NET_RAW"]  # only reaches Docker when the policy allowed the add
    assert body_of(record({"securityContext": {"capabilities": {"drop": ["ALL"]}}}))["HostConfig"]["CapAdd"] is None


def test_seccomp_apparmor_and_proc_stay_dockers_defaults_unless_loosened_and_asked() -> None:
    asks = record({"securityContext": {"seccompProfile": {"type": "Unconfined"}, "appArmorProfile": {"type": "Unconfined"},
                                       "procMount": "Unmasked"}})
    strict = body_of(asks)["HostConfig"]
    assert strict["SecurityOpt"] == ["no-new-privileges:true"] and "MaskedPaths" not in strict
    loose = DockerSidecarSettings(name="t", token="x", policy=PolicySettings(
        allow_unconfined_seccomp=True, allow_unconfined_apparmor=True, allow_unmasked_proc_mount=True))
    hc = body_of(asks, settings=loose)["HostConfig"]
    assert hc["SecurityOpt"] == ["no-new-privileges:true", "seccomp=unconfined", "apparmor=unconfined"]
    assert hc["MaskedPaths"] == [] and hc["ReadonlyPaths"] == []
    assert body_of(record(), settings=loose)["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
    pod_level = record(spec={"securityContext": {"seccompProfile": {"type": "Unconfined"}}})
    assert "seccomp=unconfined" in body_of(pod_level, settings=loose)["HostConfig"]["SecurityOpt"]


def test_nvidia_variables_reach_only_containers_granted_gpus() -> None:
    env = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"},
           {"name": "A", "value": "1"}]
    plain = record(resolved=[{"name": "app", "env": env}])
    assert body_of(plain)["Env"] == ["A=1"]
    gpu = record({"resources": {"limits": {"nvidia.com/gpu": "1"}}}, resolved=[{"name": "app", "env": env}])
    assert body_of(gpu)["Env"] == ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=all", "A=1"]
    no_gpus = DockerSidecarSettings(name="t", token="x", policy=PolicySettings(allow_gpus=False))
    assert body_of(gpu, settings=no_gpus)["Env"] == ["A=1"]


@pytest.mark.parametrize(
    ("image_user", "sc", "needle"),
    [("", {}, "would run as root"), ("kod", {}, "not numeric"), ("1000", {"runAsUser": 0}, "would run as root")],
)
def test_a_pod_with_host_paths_never_runs_a_root_container(image_user: str, sc: dict[str, Any], needle: str) -> None:
    image = bodies.ImageInfo(id="i", entrypoint=None, cmd=["sh"], user=image_user)
    host = {"volumes": [{"name": "x11", "hostPath": {"path": "/tmp/.X11-unix"}}]}
    with pytest.raises(bodies.ConfigError, match=needle):
        body_of(record({"securityContext": sc}, spec=host), image=image)
    assert body_of(record({"securityContext": {"runAsUser": 1000}}, spec=host), image=image)["User"] == "1000"
    assert body_of(record({"securityContext": sc}), image=image) is not None  # no host path: as the image says
    lenient = DockerSidecarSettings(name="t", token="x", policy=PolicySettings(allow_root_with_host_paths=True))
    body_of(record({"securityContext": sc}, spec=host), image=image, settings=lenient)


def test_security_context_users_groups_and_capabilities() -> None:
    rec = record(
        {"securityContext": {"runAsUser": 1000, "capabilities": {"add": ["cap_net_bind_service"], "drop": ["ALL"]},
                             "readOnlyRootFilesystem": True}},
        spec={"securityContext": {"runAsGroup": 2000, "fsGroup": 3000, "supplementalGroups": [4000]}},
    )
    body = body_of(rec)
    hc = body["HostConfig"]
    assert body["User"] == "1000:2000"
    assert hc["GroupAdd"] == ["4000", "3000"]
    assert hc["CapAdd"] == ["NET_BIND_SERVICE"] and hc["CapDrop"] == ["ALL"]  # drop ALL, then the add
    assert hc["ReadonlyRootfs"] is True
    assert body_of(record())["User"] == ""  # the image's user


@pytest.mark.parametrize(
    ("image_user", "sc", "message"),
    [
        ("", {"runAsNonRoot": True}, "image will run as root"),
        ("kod", {"runAsNonRoot": True}, "non-numeric user (kod)"),
        ("1000", {"runAsNonRoot": True, "runAsUser": 0}, "runAsUser breaks non-root policy"),
    ],
)
def test_run_as_non_root_is_enforced_like_the_kubelet(image_user, sc, message) -> None:
    image = bodies.ImageInfo(id="i", entrypoint=None, cmd=["sh"], user=image_user)
    with pytest.raises(bodies.ConfigError) as info:
        body_of(record({"securityContext": sc}), image=image)
    assert message in info.value.message


def test_run_as_non_root_accepts_a_numeric_non_root_user() -> None:
    image = bodies.ImageInfo(id="i", entrypoint=None, cmd=["sh"], user="1000:1000")
    assert body_of(record({"securityContext": {"runAsNonRoot": True}}), image=image)["User"] == ""


def test_nothing_to_run_is_a_config_error() -> None:
    with pytest.raises(bodies.ConfigError, match="no command"):
        body_of(record(), image=bodies.ImageInfo(id="i", entrypoint=None, cmd=None, user=""))


def test_infra_container_holds_hostname_aliases_and_the_record() -> None:
    rec = record(spec={"hostname": "h1", "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a", "b"]}]})
    created = datetime(2026, 1, 2, tzinfo=timezone.utc)
    body = bodies.infra_body(rec, SETTINGS, mounts=[], created=created, network="kod-t-pods")
    assert body["Hostname"] == "h1" and body["HostConfig"]["NetworkMode"] == "kod-t-pods"
    assert body["HostConfig"]["ExtraHosts"] == ["a:10.0.0.1", "b:10.0.0.1"]
    assert body["HostConfig"]["IpcMode"] == "shareable" and body["HostConfig"]["CapDrop"] == ["ALL"]
    assert PodRecord.load(body["Labels"][naming.RECORD]) == rec
    assert datetime.fromisoformat(body["Labels"][naming.CREATED]) == created
    long_name = record()
    long_name.pod.metadata.name = "x" * 70
    assert bodies.pod_hostname(long_name.pod) == "x" * 63
