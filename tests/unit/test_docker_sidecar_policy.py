"""The desktop policy and the structural validation of create requests (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from kod import errors, wire
from sidecars.docker import policy, validation
from sidecars.docker.ceilings import Ceilings
from sidecars.docker.settings import DockerSidecarSettings, HostPathEntry, LimitsSettings, PolicySettings

CEILINGS = Ceilings.resolve(LimitsSettings(), node_memory=8 * 2**30, node_cpu_millis=4000)
POLICY = policy.Rules(PolicySettings(), CEILINGS)


def rules(**policy_settings: Any) -> policy.Rules:
    return policy.Rules(PolicySettings(**policy_settings), CEILINGS)


def pod(spec: dict[str, Any] | None = None, **container: Any) -> wire.Pod:
    c = {"name": "c", "image": "kod/testbox:0.1.0", **container}
    base: dict[str, Any] = {"containers": [c]}
    base.update(spec or {})
    return wire.Pod.model_validate({"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "spec": base})


@pytest.mark.parametrize(
    ("p", "field"),
    [
        (pod(securityContext={"privileged": True}), "spec.containers[0].securityContext.privileged"),
        (pod({"hostNetwork": True}), "spec.hostNetwork"),
        (pod({"hostPID": True}), "spec.hostPID"),
        (pod({"hostIPC": True}), "spec.hostIPC"),
        (pod({"hostUsers": False}), "spec.hostUsers"),
        (pod(ports=[{"containerPort": 80, "hostPort": 8080}]), "spec.containers[0].ports[0].hostPort"),
        (pod(securityContext={"capabilities": {"add": ["NET_ADMIN"]}}), "spec.containers[0].securityContext.capabilities.add"),
        (pod(securityContext={"capabilities": {"add": ["CAP_SYS_ADMIN"]}}), "spec.containers[0].securityContext.capabilities.add"),
        (pod(securityContext={"allowPrivilegeEscalation": True}), "spec.containers[0].securityContext.allowPrivilegeEscalation"),
        (pod(securityContext={"procMount": "Unmasked"}), "spec.containers[0].securityContext.procMount"),
        (pod(securityContext={"seccompProfile": {"type": "Unconfined"}}), "spec.containers[0].securityContext.seccompProfile.type"),
        (pod({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}), "spec.securityContext.seccompProfile.type"),
        (pod(securityContext={"appArmorProfile": {"type": "Unconfined"}}), "spec.containers[0].securityContext.appArmorProfile.type"),
        (pod({"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}}), "spec.securityContext.sysctls"),
        (pod(volumeDevices=[{"name": "d", "devicePath": "/dev/xvda"}]), "spec.containers[0].volumeDevices"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix/../../etc"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/dev/sda", "type": "BlockDevice"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix/"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp//.X11-unix"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix/X0", "type": "Socket"}}]}),
         "spec.volumes[0].hostPath.path"),  # below an allowed path
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/run/kod/pulse/s1/native"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/dev/dri/card0"}}]}), "spec.volumes[0].hostPath.path"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix", "type": "Socket"}}]},
             volumeMounts=[{"name": "h", "mountPath": "/x", "readOnly": True}]), "spec.volumes[0].hostPath.type"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix"}}]},
             volumeMounts=[{"name": "h", "mountPath": "/x"}]), "spec.containers[0].volumeMounts[0].readOnly"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix"}}], "securityContext": {"runAsUser": 0}}),
         "spec.securityContext.runAsUser"),
        (pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix"}}]}, securityContext={"runAsUser": 0}),
         "spec.containers[0].securityContext.runAsUser"),
        (pod(securityContext={"capabilities": {"add": ["NET_RAW"]}}), "spec.containers[0].securityContext.capabilities.add"),
        (pod(securityContext={"capabilities": {"add": ["ALL"]}}), "spec.containers[0].securityContext.capabilities.add"),
        (pod(resources={"limits": {"memory": "9Gi"}}), "spec.containers[0].resources.limits.memory"),
        (pod(resources={"requests": {"cpu": "5"}}), "spec.containers[0].resources.requests.cpu"),
        (pod({"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}), "spec.volumes[0]"),
        (
            pod({"initContainers": [{"name": "i", "image": "x", "securityContext": {"privileged": True}}]}),
            "spec.initContainers[0].securityContext.privileged",
        ),
        (
            pod({"volumes": [{"name": "x", "hostPath": {"path": "/tmp/.X11-unix"}}]},
                volumeMounts=[{"name": "x", "mountPath": "/x", "mountPropagation": "Bidirectional"}]),
            "spec.containers[0].volumeMounts[0].mountPropagation",
        ),
        (
            pod({"volumes": [{"name": "x", "hostPath": {"path": "/tmp/.X11-unix"}}]},
                volumeMounts=[{"name": "x", "mountPath": "/x", "subPath": "X0", "readOnly": True}]),
            "spec.containers[0].volumeMounts[0].subPath",
        ),
        (pod(resources={"limits": {"hugepages-2Mi": "2Mi"}}), "spec.containers[0].resources.limits[hugepages-2Mi]"),
    ],
)
def test_policy_refuses_with_the_offending_field(p: wire.Pod, field: str) -> None:
    violations = policy.check(p, POLICY)
    assert field in [v.field for v in violations], violations
    assert all(v.message for v in violations)


@pytest.mark.parametrize(
    "p",
    [
        pod(),
        pod(securityContext={"capabilities": {"add": ["NET_BIND_SERVICE", "chown"], "drop": ["ALL"]}}),
        pod(securityContext={"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 1000,
                             "seccompProfile": {"type": "RuntimeDefault"}, "procMount": "Default"}),
        pod({"volumes": [{"name": "x11", "hostPath": {"path": "/tmp/.X11-unix", "type": "Directory"}}]},
            volumeMounts=[{"name": "x11", "mountPath": "/tmp/.X11-unix", "readOnly": True}]),
        pod({"volumes": [{"name": "x11", "hostPath": {"path": "/tmp/.X11-unix", "type": "DirectoryOrCreate"}}]}),
        pod({"volumes": [{"name": "pulse", "hostPath": {"path": "/run/kod/pulse"}}]}),
        pod({"volumes": [{"name": "pulse", "hostPath": {"path": "/run/kod/pulse/session-1"}}]}),
        pod({"volumes": [{"name": "dri", "hostPath": {"path": "/dev/dri"}}]}, volumeMounts=[{"name": "dri", "mountPath": "/dev/dri"}]),
        pod({"volumes": [{"name": "x11", "hostPath": {"path": "/tmp/.X11-unix"}}], "securityContext": {"runAsUser": 1000}}),
        pod(ports=[{"containerPort": 5900}], resources={"limits": {"nvidia.com/gpu": "1", "memory": "1Gi"}}),
        pod(resources={"limits": {"memory": "8Gi", "cpu": "4"}}),
        pod({"volumes": [{"name": "e", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "s"}},
                         {"name": "cm", "configMap": {"name": "cm"}}, {"name": "p", "projected": {"sources": []}},
                         {"name": "d", "downwardAPI": {"items": []}},
                         {"name": "pvc", "persistentVolumeClaim": {"claimName": "data"}}]}),
    ],
)
def test_policy_admits_what_the_desktop_allows(p: wire.Pod) -> None:
    assert policy.check(p, POLICY) == []


def test_policy_reports_every_violation_at_once() -> None:
    p = pod({"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
            securityContext={"privileged": True})
    fields = {v.field for v in policy.check(p, POLICY)}
    assert fields == {"spec.hostNetwork", "spec.volumes[0].hostPath.path", "spec.containers[0].securityContext.privileged"}


def test_allow_lists_are_settings() -> None:
    custom = rules(
        host_paths=[HostPathEntry(path="/srv/share", writable=True), HostPathEntry(path="/opt/data"),
                    HostPathEntry(path="/run/user/1000/pulse/native", type="socket", owners=[1000])],
        allowed_capabilities=["cap_sys_ptrace", "NET_RAW"], allow_gpus=False,
    )
    assert policy.check(pod({"volumes": [{"name": "h", "hostPath": {"path": "/srv/share"}}]}), custom) == []
    assert policy.check(pod({"volumes": [{"name": "h", "hostPath": {"path": "/srv/share/a"}}]}), custom)  # not below
    assert policy.check(pod({"volumes": [{"name": "h", "hostPath": {"path": "/tmp/.X11-unix"}}]}), custom)
    assert policy.check(pod({"volumes": [{"name": "h", "hostPath": {"path": "/dev/dri"}}]}), custom)
    sock = pod({"volumes": [{"name": "h", "hostPath": {"path": "/run/user/1000/pulse/native", "type": "Socket"}}]},
               volumeMounts=[{"name": "h", "mountPath": "/p", "readOnly": True}])
    assert policy.check(sock, custom) == []
    assert policy.check(pod(securityContext={"capabilities": {"add": ["SYS_PTRACE", "NET_RAW"]}}), custom) == []
    assert policy.check(pod(resources={"limits": {"nvidia.com/gpu": "1"}}), custom)
    ro_ok = pod({"volumes": [{"name": "d", "hostPath": {"path": "/opt/data"}}]},
                volumeMounts=[{"name": "d", "mountPath": "/d", "readOnly": True}])
    rw = pod({"volumes": [{"name": "d", "hostPath": {"path": "/opt/data"}}]},
             volumeMounts=[{"name": "d", "mountPath": "/d"}])
    assert policy.check(ro_ok, custom) == []
    assert [v.field for v in policy.check(rw, custom)] == ["spec.containers[0].volumeMounts[0].readOnly"]


@pytest.mark.parametrize(
    ("setting", "p"),
    [
        ("allow_unconfined_seccomp", pod(securityContext={"seccompProfile": {"type": "Unconfined"}})),
        ("allow_unconfined_apparmor", pod(securityContext={"appArmorProfile": {"type": "Unconfined"}})),
        ("allow_unmasked_proc_mount", pod(securityContext={"procMount": "Unmasked"})),
        ("allow_privilege_escalation", pod(securityContext={"allowPrivilegeEscalation": True})),
        ("allow_root_with_host_paths",
         pod({"volumes": [{"name": "x", "hostPath": {"path": "/tmp/.X11-unix"}}], "securityContext": {"runAsUser": 0}})),
    ],
)
def test_each_loosening_is_one_named_setting_and_warned_about(setting: str, p: wire.Pod) -> None:
    assert policy.check(p, POLICY)
    assert policy.check(p, rules(**{setting: True})) == []
    assert len(policy.loosenings(DockerSidecarSettings(policy=PolicySettings(**{setting: True})))) == 1
    assert policy.loosenings(DockerSidecarSettings()) == []


def test_a_writable_host_path_is_a_loosening_too() -> None:
    s = DockerSidecarSettings(policy=PolicySettings(host_paths=[HostPathEntry(path="/srv/x", writable=True)]))
    assert policy.loosenings(s) == ["host path /srv/x may be mounted read-write: pods can leave files there for other "
                                    "pods and local users"]


def test_where_the_sidecar_cannot_stage_host_paths_and_writable_sub_paths_are_refused() -> None:
    off = policy.Rules(PolicySettings(), CEILINGS, no_staging="it runs as uid 10001, not root")
    host = pod({"volumes": [{"name": "x", "hostPath": {"path": "/tmp/.X11-unix"}}]})
    [v] = policy.check(host, off)
    assert v.field == "spec.volumes[0].hostPath.path" and "uid 10001" in v.message
    sub = pod({"volumes": [{"name": "e", "emptyDir": {}}]}, volumeMounts=[{"name": "e", "mountPath": "/e", "subPath": "a"}])
    [v] = policy.check(sub, off)
    assert v.field == "spec.containers[0].volumeMounts[0].subPath"
    content = pod({"volumes": [{"name": "c", "configMap": {"name": "c"}}]},
                  volumeMounts=[{"name": "c", "mountPath": "/c", "subPath": "k"}])
    assert policy.check(content, off) == []  # the sidecar's own read-only contents: by path, safely


def test_old_allow_list_settings_say_what_replaced_them() -> None:
    with pytest.raises(ValueError, match="policy.host_paths"):
        PolicySettings.model_validate({"allowed_host_paths": ["/tmp/.X11-unix"]})


def _request(spec: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    base_spec: dict[str, Any] = {"containers": [{"name": "c", "image": "img"}]}
    base_spec.update(spec or {})
    return {"pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "spec": base_spec}, **extra}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_request({"containers": [{"name": "c", "image": "i"}, {"name": "c", "image": "i"}]}), "used twice"),
        (_request({"containers": [{"name": "Bad_Name", "image": "i"}]}), "DNS-1123 label"),
        (_request({"containers": [{"name": "c", "image": " "}]}), "image is empty"),
        (_request({"containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}),
         "not a volume of the pod"),
        (_request({"volumes": [{"name": "e", "emptyDir": {}}],
                   "containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "e", "mountPath": "rel"}]}]}),
         "must be absolute"),
        (_request({"volumes": [{"name": "e", "emptyDir": {}}],
                   "containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "e", "mountPath": "/x", "subPath": "../up"}]}]}),
         "must be relative"),
        (_request({"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "lots"}}}]}),
         "not a Kubernetes quantity"),
        (_request({"volumes": [{"name": "s", "secret": {"secretName": "s"}}]}), "contents are missing"),
        (_request(volumes=[{"name": "ghost", "files": []}]), "not a volume of the pod"),
        (_request(containers=[{"name": "other"}]), "not a container of the pod"),
        (_request({"volumes": [{"name": "e", "emptyDir": {"medium": "HugePages"}}]}), "not supported"),
        (_request({"initContainers": [{"name": "i", "image": "i", "restartPolicy": "Never"}]}), "restartPolicy"),
        ({"pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "u/1"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
         "metadata.uid"),
    ],
)
def test_validation_names_the_problem(body: dict[str, Any], needle: str) -> None:
    request = wire.PodCreateRequest.model_validate(body)
    with pytest.raises(errors.InvalidInput) as info:
        validation.validate(request)
    assert needle in str(info.value)


def test_optional_secret_may_come_without_contents() -> None:
    body = _request({"volumes": [{"name": "s", "secret": {"secretName": "s", "optional": True}}]})
    validation.validate(wire.PodCreateRequest.model_validate(body))
