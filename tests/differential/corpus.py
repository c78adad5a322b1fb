"""The corpus: ordinary pods, built as data, each with the state it settles in.

Every case is a pod spec (without node selection: the harness adds it for each node) using only
the test image, `kod/testbox:0.1.0` (busybox applets, httpd, nc, wget), plus the ConfigMap and
Secret of `SHARED_OBJECTS`. A case's `settle` says when its pod shows what it is about:

- `terminal`: phase Succeeded or Failed, and the sandbox torn down (PodReadyToStartContainers not True);
- `ready`: the Ready condition is True;
- `running`: every container runs (`started`), for pods meant not to become Ready;
- `restarted`: some container (or init container) restarted at least once;
- `waiting:<Reason>`: some container waits with that reason;
- `container-done:<name>`: that container terminated (the others may run on).

`linger` seconds are waited after that before the pod is looked at, so that restarts, probe
failures and events have time to show.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

IMAGE = "kod/testbox:0.1.0"
CONFIG_MAP = "diff-cfg"
SECRET = "diff-sec"

#: The objects pods of the corpus refer to, created in both namespaces beside the pods.
SHARED_OBJECTS: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP},
     "data": {"color": "blue", "size": "XL", "greeting": "hello from a config map\n"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "type": "Opaque",
     "stringData": {"user": "admin", "password": "s3cret"}},
]


@dataclass(frozen=True)
class Case:
    """One pod of the corpus."""

    #: The pod's name (the same on both nodes).
    name: str
    #: `spec.containers`; `image` and `imagePullPolicy` are filled in.
    containers: list[dict[str, Any]]
    #: When the pod shows what it is about (see the module docstring).
    settle: str = "terminal"
    #: Seconds to wait once settled.
    linger: float = 0.0
    #: Other fields of the pod's spec (restartPolicy defaults to Never).
    spec: dict[str, Any] = field(default_factory=dict)
    #: Extra metadata (labels, annotations) of the pod.
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def pod(self) -> dict[str, Any]:
        """The Pod object, without node selection."""
        spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2}
        spec.update(copy.deepcopy(self.spec))
        spec["containers"] = copy.deepcopy(self.containers)
        for c in spec["containers"] + spec.get("initContainers", []):
            c.setdefault("image", IMAGE)
            c.setdefault("imagePullPolicy", "Never")
        meta: dict[str, Any] = {"name": self.name, "labels": dict(self.labels)}
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A container running `sh -c script`."""
    return {"name": name, "command": ["sh", "-c", script], **extra}


def _mount(name: str, path: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": name, "mountPath": path, **extra}]


#: Serves /www on port 8080 (busybox httpd in the foreground).
HTTPD = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"


def _env_cases() -> list[Case]:
    return [
        Case("env-value", [sh("main", 'echo "$GREETING|$PLAIN"', env=[
            {"name": "PLAIN", "value": "plain value"},
            {"name": "GREETING", "value": "$(PLAIN)-expanded-$$(PLAIN)-$(UNDEFINED)"}])]),
        Case("env-fieldref", [sh("main", 'echo "$NAME|$APP|$NOTE|$SA"', env=[
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}])],
            labels={"app": "fieldref"}, annotations={"note": "an annotation"}),
        Case("env-resourcefield", [sh("main", 'echo "$MEM_LIMIT|$CPU_REQ|$CPU_LIMIT"', env=[
            {"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}],
            resources={"requests": {"cpu": "50m", "memory": "16Mi"}, "limits": {"cpu": "250m", "memory": "64Mi"}})]),
        Case("env-configmap-key", [sh("main", 'echo "$COLOR"', env=[
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": CONFIG_MAP, "key": "color"}}}])]),
        Case("env-secret-key", [sh("main", 'echo "$PASSWORD"', env=[
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "password"}}}])]),
        Case("env-from", [sh("main", 'env | grep -E "^(CFG_|user=|password=)" | sort', envFrom=[
            {"configMapRef": {"name": CONFIG_MAP}, "prefix": "CFG_"}, {"secretRef": {"name": SECRET}}])]),
        Case("env-optional-missing", [sh("main", 'echo "[$MISSING]"', env=[
            {"name": "MISSING", "valueFrom": {"configMapKeyRef": {"name": "diff-absent", "key": "k", "optional": True}}}])]),
        Case("env-missing-configmap", [sh("main", "echo never", env=[
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "diff-absent", "key": "k"}}}])],
            settle="waiting:CreateContainerConfigError", linger=3),
        Case("env-missing-key", [sh("main", "echo never", env=[
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": CONFIG_MAP, "key": "absent"}}}])],
            settle="waiting:CreateContainerConfigError", linger=3),
    ]


def _command_cases() -> list[Case]:
    return [
        Case("command-and-args", [{"name": "main", "command": ["echo"], "args": ["one", "two words"]}]),
        Case("args-only", [{"name": "main", "args": ["-c", "echo args replace the image's CMD"]}]),
        Case("command-expansion", [{"name": "main", "command": ["sh", "-c", "echo $(WHO) '$$(WHO)'"],
                                    "env": [{"name": "WHO", "value": "expanded"}]}]),
        Case("never-exit-0", [sh("main", "echo done")]),
        Case("never-exit-3", [sh("main", "echo failing >&2; exit 3")]),
    ]


def _volume_cases() -> list[Case]:
    return [
        Case("emptydir", [sh("main", "echo kept > /data/f && cat /data/f && stat -c %a /data",
                             volumeMounts=_mount("data", "/data"))],
             spec={"volumes": [{"name": "data", "emptyDir": {}}]}),
        Case("emptydir-memory", [sh("main", "awk '$2 == \"/data\" {print $3}' /proc/mounts",
                                    volumeMounts=_mount("data", "/data"))],
             spec={"volumes": [{"name": "data", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}]}),
        Case("configmap-items-modes", [sh("main", "cd /cfg && ls && cat sub/c; echo; stat -L -c '%n %a' sub/c s",
                                          volumeMounts=_mount("cfg", "/cfg"))],
             spec={"volumes": [{"name": "cfg", "configMap": {"name": CONFIG_MAP, "defaultMode": 0o640, "items": [
                 {"key": "color", "path": "sub/c", "mode": 0o600}, {"key": "size", "path": "s"}]}}]}),
        Case("configmap-all-keys", [sh("main", "ls /cfg && cat /cfg/greeting", volumeMounts=_mount("cfg", "/cfg"))],
             spec={"volumes": [{"name": "cfg", "configMap": {"name": CONFIG_MAP}}]}),
        Case("secret-volume", [sh("main", "ls /sec && cat /sec/user; echo; stat -L -c %a /sec/user",
                                  volumeMounts=_mount("sec", "/sec", readOnly=True))],
             spec={"volumes": [{"name": "sec", "secret": {"secretName": SECRET, "defaultMode": 0o400}}]}),
        Case("projected", [sh("main", "ls /p && cat /p/color; echo; cat /p/user; echo; cat /p/name",
                              volumeMounts=_mount("p", "/p"))],
             spec={"volumes": [{"name": "p", "projected": {"sources": [
                 {"configMap": {"name": CONFIG_MAP, "items": [{"key": "color", "path": "color"}]}},
                 {"secret": {"name": SECRET, "items": [{"key": "user", "path": "user"}]}},
                 {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]}),
        Case("downward-api-volume", [sh("main", "cat /info/labels; echo; cat /info/note; echo; cat /info/mem",
                                        volumeMounts=_mount("info", "/info"),
                                        resources={"limits": {"memory": "32Mi"}})],
             labels={"app": "downward", "tier": "test"}, annotations={"note": "downward note"},
             spec={"volumes": [{"name": "info", "downwardAPI": {"items": [
                 {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                 {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['note']"}},
                 {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory",
                                                      "divisor": "1Mi"}}]}}]}),
        Case("volume-missing-configmap", [sh("main", "echo never", volumeMounts=_mount("cfg", "/cfg"))],
             spec={"volumes": [{"name": "cfg", "configMap": {"name": "diff-absent"}}]},
             settle="waiting:ContainerCreating", linger=6),
        Case("volume-optional-missing", [sh("main", "ls -A /cfg | wc -l", volumeMounts=_mount("cfg", "/cfg"))],
             spec={"volumes": [{"name": "cfg", "configMap": {"name": "diff-absent", "optional": True}}]}),
    ]


def _init_cases() -> list[Case]:
    work = {"volumes": [{"name": "work", "emptyDir": {}}]}
    return [
        Case("init-order", [sh("main", "echo main >> /w/order; cat /w/order", volumeMounts=_mount("work", "/w"))],
             spec={**work, "initContainers": [
                 sh(f"init-{i}", f"echo init-{i} >> /w/order", volumeMounts=_mount("work", "/w")) for i in (1, 2, 3)]}),
        Case("init-fails-never", [sh("main", "echo never")],
             spec={"initContainers": [sh("init", "echo init failing; exit 2")]}),
        Case("init-fails-onfailure", [sh("main", "echo never")], settle="restarted", linger=2,
             spec={"restartPolicy": "OnFailure", "initContainers": [sh("init", "echo init failing; exit 2")]}),
        Case("init-sidecar", [sh("main", "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ 2>/dev/null && exit 0; "
                                         "sleep 0.2; done; exit 1")],
             linger=1,
             spec={"initContainers": [sh("proxy", HTTPD, restartPolicy="Always")]}),
    ]


def _restart_cases() -> list[Case]:
    return [
        Case("always-exit-0", [sh("main", "echo run; exit 0")], settle="restarted", linger=3,
             spec={"restartPolicy": "Always"}),
        Case("always-exit-1", [sh("main", "echo run; exit 1")], settle="restarted", linger=3,
             spec={"restartPolicy": "Always"}),
        Case("onfailure-exit-0", [sh("main", "echo run; exit 0")], spec={"restartPolicy": "OnFailure"}),
        Case("onfailure-exit-1", [sh("main", "echo run; exit 1")], settle="restarted", linger=3,
             spec={"restartPolicy": "OnFailure"}),
    ]


def _failure_cases() -> list[Case]:
    return [
        Case("bad-command", [{"name": "main", "command": ["/no/such/binary"]}]),
        Case("bad-command-always", [{"name": "main", "command": ["/no/such/binary"]}], settle="restarted", linger=3,
             spec={"restartPolicy": "Always"}),
        Case("not-executable", [{"name": "main", "command": ["/etc/hostname"]}]),
        Case("oom", [{"name": "main", "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],
                      "resources": {"limits": {"memory": "32Mi"}}}]),
        Case("oom-child", [sh("main", "exec 2>&1; dd if=/dev/zero of=/dev/null bs=200M count=1; echo dd-exit=$?",
                              resources={"limits": {"memory": "32Mi"}})]),
        # Long enough that the container starts well before it on both nodes, even with the whole
        # corpus starting at once on two cores (up to ~30 s there).
        Case("deadline", [sh("main", "echo waiting; sleep 90")], linger=5, spec={"activeDeadlineSeconds": 40}),
        Case("run-as-non-root-refused", [sh("main", "echo never", securityContext={"runAsNonRoot": True})],
             settle="waiting:CreateContainerConfigError", linger=3),
    ]


def _termination_cases() -> list[Case]:
    return [
        Case("termination-message", [sh("main", "printf 'all done' > /dev/termination-log")]),
        Case("termination-message-path", [sh("main", "printf 'custom path' > /tmp/msg; exit 4",
                                             terminationMessagePath="/tmp/msg")]),
        Case("termination-fallback-logs", [sh("main", "echo first; echo last words; exit 1",
                                              terminationMessagePolicy="FallbackToLogsOnError")]),
        Case("termination-fallback-success", [sh("main", "echo fine",
                                                 terminationMessagePolicy="FallbackToLogsOnError")]),
        Case("termination-file-wins", [sh("main", "echo logged; printf 'from file' > /dev/termination-log; exit 1",
                                          terminationMessagePolicy="FallbackToLogsOnError")]),
    ]


def _probe(kind: str, **timing: Any) -> dict[str, Any]:
    """A probe every second; one failure counts. Probes meant to succeed start a second after the
    container and allow for a loaded machine, so that no node sees them fail by chance: 15 s, as
    a Docker exec of `true` took over 5 s on the virtual node while the whole corpus started
    there beside the home suite (every failed probe is an Unhealthy event, which is compared)."""
    base: dict[str, Any] = {"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 1}
    if kind in ("exec-ok", "http", "tcp"):
        base.update(initialDelaySeconds=1, timeoutSeconds=15, failureThreshold=3)
    base.update(timing)
    if kind == "exec-ok":
        return {"exec": {"command": ["true"]}, **base}
    if kind == "exec-fail":
        return {"exec": {"command": ["sh", "-c", "echo probe says no; exit 1"]}, **base}
    if kind == "http":
        return {"httpGet": {"path": "/", "port": 8080}, **base}
    if kind == "http-404":
        return {"httpGet": {"path": "/missing", "port": 8080}, **base}
    if kind == "tcp":
        return {"tcpSocket": {"port": 8080}, **base}
    if kind == "tcp-closed":
        return {"tcpSocket": {"port": 8081}, **base}
    raise ValueError(kind)


def _probe_cases() -> list[Case]:
    return [
        Case("readiness-exec", [sh("main", "sleep 300", readinessProbe=_probe("exec-ok"))], settle="ready"),
        Case("readiness-exec-fails", [sh("main", "sleep 300", readinessProbe=_probe("exec-fail"))],
             settle="running", linger=5),
        Case("readiness-http", [sh("main", HTTPD, readinessProbe=_probe("http"))], settle="ready"),
        Case("readiness-tcp", [sh("main", HTTPD, readinessProbe=_probe("tcp"))], settle="ready"),
        Case("readiness-tcp-closed", [sh("main", HTTPD, readinessProbe=_probe("tcp-closed"))],
             settle="running", linger=5),
        Case("liveness-exec-fails", [sh("main", "sleep 300", livenessProbe=_probe("exec-fail"))],
             settle="restarted", linger=2, spec={"restartPolicy": "Always"}),
        Case("liveness-http-404", [sh("main", HTTPD, livenessProbe=_probe("http-404"))],
             settle="restarted", linger=2, spec={"restartPolicy": "Always"}),
        Case("liveness-http-ok", [sh("main", HTTPD, livenessProbe=_probe("http"), readinessProbe=_probe("http"))],
             settle="ready", linger=4),
        # The startup probe's first look comes after the file exists (no failure to race), and
        # liveness waits for it.
        Case("startup-then-ready", [sh("main", "sleep 1; touch /tmp/up; sleep 300",
                                       startupProbe=_probe("exec-ok", failureThreshold=30, initialDelaySeconds=4) | {
                                           "exec": {"command": ["test", "-f", "/tmp/up"]}},
                                       livenessProbe=_probe("exec-ok"))],
             settle="ready", linger=2),
        Case("startup-fails", [sh("main", "sleep 300", startupProbe=_probe("exec-fail", failureThreshold=2))],
             linger=1),
    ]


def _hook_cases() -> list[Case]:
    shared = {"volumes": [{"name": "shared", "emptyDir": {}}]}
    return [
        Case("poststart-exec", [sh("main", "for i in $(seq 50); do [ -f /tmp/hook ] && break; sleep 0.1; done; cat /tmp/hook",
                                   lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "echo from-poststart > /tmp/hook"]}}})]),
        Case("poststart-fails", [sh("main", "sleep 30",
                                    lifecycle={"postStart": {"exec": {"command": ["sh", "-c", "exit 7"]}}})]),
        Case("prestop-on-liveness-kill", [
            sh("main", "sleep 300", volumeMounts=_mount("shared", "/s"), livenessProbe=_probe("exec-fail"),
               lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "echo prestop-ran >> /s/log"]}}}),
            sh("watch", "until [ -s /s/log ]; do sleep 0.2; done; head -1 /s/log; sleep 300",
               volumeMounts=_mount("shared", "/s"))],
            # 10 s of grace, not the corpus's 2: the hook is a Docker exec on the virtual node, which
            # took over 2 s with the whole corpus starting beside the Slurm suite (FailedPreStopHook).
            settle="restarted", linger=2, spec={**shared, "restartPolicy": "Always", "terminationGracePeriodSeconds": 10}),
    ]


def _multi_container_cases() -> list[Case]:
    return [
        Case("sidecar-pair", [
            sh("server", HTTPD),
            sh("main", "for i in $(seq 50); do wget -qO- http://127.0.0.1:8080/ 2>/dev/null && exit 0; sleep 0.2; done; "
                       "exit 1")],
            settle="container-done:main", linger=2),
        Case("two-containers-one-fails", [sh("ok", "echo fine"), sh("bad", "echo broken; exit 2")]),
        Case("two-containers-both-succeed", [sh("a", "echo a"), sh("b", "echo b")]),
    ]


def _security_cases() -> list[Case]:
    return [
        Case("run-as-user", [sh("main", "id -u; id -g", securityContext={"runAsUser": 1000, "runAsGroup": 3000})]),
        Case("pod-run-as-user", [sh("main", "id -u; touch /tmp/x && echo can-write-tmp")],
             spec={"securityContext": {"runAsUser": 65534, "runAsGroup": 65534}}),
    ]


def cases() -> list[Case]:
    """The whole corpus, in a stable order."""
    out = (_env_cases() + _command_cases() + _volume_cases() + _init_cases() + _restart_cases()
           + _failure_cases() + _termination_cases() + _probe_cases() + _hook_cases()
           + _multi_container_cases() + _security_cases())
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "case names must be unique"
    return out
