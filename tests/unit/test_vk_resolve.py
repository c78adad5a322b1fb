"""What a pod references is resolved like the kubelet does it: env, envFrom, $(VAR) in env,
command and args, Secret/ConfigMap/downwardAPI/projected volumes with items and modes, tokens."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kod import errors, wire
from vk_bridge.resolve import (
    NodeFacts,
    Resolver,
    UnresolvedReference,
    field_value,
    format_map,
    go_quote,
    resource_value,
    service_env,
)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text if isinstance(text, bytes) else text.encode()).decode()


class DictRefs:
    """`References` over dictionaries (the API boundary, faked for the unit level)."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.svcs: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.claims: dict[str, dict[str, Any]] = {}

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.secrets.get(f"{namespace}/{name}")

    async def config_map(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.config_maps.get(f"{namespace}/{name}")

    async def service_account_token(self, namespace: str, service_account: str, **kw: Any) -> str:
        self.token_requests.append({"namespace": namespace, "sa": service_account, **kw})
        return f"token-for-{service_account}"

    async def services(self, namespace: str) -> Sequence[Mapping[str, Any]]:
        return [s for s in self.svcs if s["metadata"]["namespace"] in (namespace, "default")]

    async def persistent_volume_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.claims.get(f"{namespace}/{name}")


NODE = NodeFacts(name="desktop-x", host_ips=("10.0.0.5",), allocatable={"cpu": "8", "memory": "16Gi"})


def pod(containers: list[dict[str, Any]], *, volumes: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p1", "namespace": "ns1", "uid": "uid-1",
            "labels": {"app": "web", "tier": "front"}, "annotations": {"note": 'say "hi"\n'},
        },
        "spec": {"nodeName": "desktop-x", "serviceAccountName": "builder", "containers": containers, "volumes": volumes or [], **spec},
    }


@pytest.fixture
def refs() -> DictRefs:
    r = DictRefs()
    r.config_maps["ns1/cfg"] = {"data": {"color": "blue", "size": "L", "multi": "line1\nline2\n"}, "binaryData": {"blob": b64(b"\x00\xff")}}
    r.secrets["ns1/creds"] = {"data": {"user": b64("admin"), "pass": b64("s3cr3t!"), "key.pem": b64(b"-----BEGIN-----\n")}}
    return r


async def resolve(refs: DictRefs, p: dict[str, Any]) -> wire.PodCreateRequest:
    return await Resolver(refs, NODE, enable_service_links_default=True).pod_create_request(p)


def env_of(req: wire.PodCreateRequest, name: str = "c") -> dict[str, str]:
    container = next(c for c in req.containers if c.name == name)
    return {e.name: e.value for e in container.env}


async def test_env_sources_resolve_like_the_kubelet(refs: DictRefs) -> None:
    p = pod([{
        "name": "c", "image": "busybox",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "env": [
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "pass"}}},
            {"name": "GREETING", "value": "$(COLOR)-$(CFG_size)-$(UNDEFINED)-$$(COLOR)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "REF_NOT_EXPANDED", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "multi"}}},
            {"name": "EMPTY", "value": ""},
            {"name": "user", "value": "override"},
        ],
        "resources": {"limits": {"memory": "64Mi"}},
    }])
    env = env_of(await resolve(refs, p))
    assert env["CFG_color"] == "blue" and env["CFG_size"] == "L"
    assert env["COLOR"] == "blue"
    assert env["PASSWORD"] == "s3cr3t!"
    assert env["GREETING"] == "blue-L-$(UNDEFINED)-$(COLOR)"
    assert (env["POD"], env["NS"], env["NODE"], env["HOST_IP"], env["APP"], env["SA"]) == (
        "p1", "ns1", "desktop-x", "10.0.0.5", "web", "builder")
    assert env["MEM"] == "64"
    assert env["CPU"] == "8"  # no limit: the node's allocatable, like the kubelet
    assert env["REF_NOT_EXPANDED"] == "line1\nline2\n"
    assert env["EMPTY"] == ""
    assert env["user"] == "override"  # env wins over envFrom
    assert env["key.pem"] == "-----BEGIN-----\n"


async def test_command_and_args_expand_with_the_final_environment(refs: DictRefs) -> None:
    p = pod([{
        "name": "c", "image": "busybox",
        "env": [{"name": "WHO", "value": "world"}],
        "command": ["/bin/sh", "-c", "echo $(WHO) $$(WHO) $(NOPE)"],
        "args": ["$(WHO)"],
    }, {"name": "d", "image": "busybox", "args": ["only", "args"]}, {"name": "e", "image": "busybox"}])
    req = await resolve(refs, p)
    c, d, e = req.containers
    assert c.command == ["/bin/sh", "-c", "echo world $(WHO) $(NOPE)"] and c.args == ["world"]
    assert d.command is None and d.args == ["only", "args"]
    assert e.command is None and e.args is None  # the image's ENTRYPOINT/CMD apply


async def test_init_containers_are_resolved_too(refs: DictRefs) -> None:
    p = pod([{"name": "c", "image": "busybox"}], initContainers=[{"name": "i", "image": "busybox", "env": [{"name": "A", "value": "1"}]}])
    req = await resolve(refs, p)
    assert [c.name for c in req.containers] == ["i", "c"]
    assert env_of(req, "i")["A"] == "1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}], 'configmap "missing" not found'),
        ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}], 'secret "missing" not found'),
        ([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nokey"}}}], "couldn't find key nokey in ConfigMap ns1/cfg"),
        ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nokey"}}}], "couldn't find key nokey in Secret ns1/creds"),
    ],
)
async def test_missing_references_keep_the_pod_waiting_with_the_kubelets_message(
    refs: DictRefs, env: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(UnresolvedReference) as info:
        await resolve(refs, pod([{"name": "c", "image": "busybox", "env": env}]))
    assert info.value.reason == "CreateContainerConfigError"
    assert message in info.value.message


async def test_optional_missing_references_leave_the_variable_unset(refs: DictRefs) -> None:
    p = pod([{
        "name": "c", "image": "busybox",
        "envFrom": [{"configMapRef": {"name": "missing", "optional": True}}],
        "env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k", "optional": True}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nokey", "optional": True}}},
        ],
    }])
    env = env_of(await resolve(refs, p))
    assert "A" not in env and "B" not in env


async def test_secret_and_config_map_volumes_with_items_and_modes(refs: DictRefs) -> None:
    p = pod([{"name": "c", "image": "busybox"}], volumes=[
        {"name": "cm-all", "configMap": {"name": "cfg", "defaultMode": 0o600}},
        {"name": "cm-items", "configMap": {"name": "cfg", "items": [{"key": "color", "path": "sub/c.txt", "mode": 0o400}]}},
        {"name": "sec", "secret": {"secretName": "creds", "items": [{"key": "pass", "path": "password"}]}},
        {"name": "opt", "secret": {"secretName": "missing", "optional": True}},
        {"name": "scratch", "emptyDir": {}},
    ])
    req = await resolve(refs, p)
    vols = {v.name: v for v in req.volumes}
    assert set(vols) == {"cm-all", "cm-items", "sec", "opt"}  # emptyDir needs no resolution
    files = {f.path: f for f in vols["cm-all"].files}
    assert vols["cm-all"].defaultMode == 0o600
    assert base64.b64decode(files["multi"].data) == b"line1\nline2\n"
    assert base64.b64decode(files["blob"].data) == b"\x00\xff"  # binaryData byte for byte
    [item] = vols["cm-items"].files
    assert (item.path, item.mode, base64.b64decode(item.data)) == ("sub/c.txt", 0o400, b"blue")
    [pw] = vols["sec"].files
    assert (pw.path, base64.b64decode(pw.data)) == ("password", b"s3cr3t!")
    assert vols["sec"].defaultMode == 0o644
    assert vols["opt"].files == []


async def test_volume_item_with_a_missing_key_is_refused_unless_optional(refs: DictRefs) -> None:
    vol = {"name": "v", "configMap": {"name": "cfg", "items": [{"key": "nokey", "path": "x"}]}}
    with pytest.raises(UnresolvedReference) as info:
        await resolve(refs, pod([{"name": "c", "image": "busybox"}], volumes=[vol]))
    assert info.value.reason == "ContainerCreating" and info.value.event_reason == "FailedMount"
    vol["configMap"]["optional"] = True
    req = await resolve(refs, pod([{"name": "c", "image": "busybox"}], volumes=[vol]))
    assert req.volumes[0].files == []


async def test_projected_service_account_volume_gets_token_ca_and_namespace(refs: DictRefs) -> None:
    refs.config_maps["ns1/kube-root-ca.crt"] = {"data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}}
    vol = {
        "name": "kube-api-access-abcde",
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }
    req = await resolve(refs, pod([{"name": "c", "image": "busybox"}], volumes=[vol]))
    files = {f.path: base64.b64decode(f.data).decode() for f in req.volumes[0].files}
    assert files == {"token": "token-for-builder", "ca.crt": "-----BEGIN CERTIFICATE-----\n", "namespace": "ns1"}
    assert req.volumes[0].defaultMode == 0o644
    [tr] = refs.token_requests
    assert tr == {"namespace": "ns1", "sa": "builder", "audiences": [], "expiration_seconds": 3607, "pod_name": "p1", "pod_uid": "uid-1"}


async def test_downward_api_volume_renders_labels_and_annotations_like_the_kubelet(refs: DictRefs) -> None:
    vol = {"name": "info", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "requests.memory", "divisor": "1Ki"}},
    ]}}
    p = pod([{"name": "c", "image": "busybox", "resources": {"requests": {"memory": "1Mi"}}}], volumes=[vol])
    req = await resolve(refs, p)
    files = {f.path: base64.b64decode(f.data).decode() for f in req.volumes[0].files}
    assert files["labels"] == 'app="web"\ntier="front"'
    assert files["annotations"] == 'note="say \\"hi\\"\\n"'
    assert files["mem"] == "1024"


def test_go_quote_and_format_map() -> None:
    assert go_quote('a"b\\c\td') == '"a\\"b\\\\c\\td"'
    assert go_quote("é\x01") == '"é\\x01"'
    assert format_map({"b": "2", "a": "1"}) == 'a="1"\nb="2"'


@pytest.mark.parametrize(
    ("resource", "limits", "divisor", "expected"),
    [
        ("limits.cpu", {"cpu": "250m"}, None, "1"),  # rounded up to whole cores
        ("limits.cpu", {"cpu": "250m"}, "1m", "250"),
        ("limits.cpu", {"cpu": "1500m"}, "500m", "3"),
        ("limits.memory", {"memory": "1Gi"}, "1Mi", "1024"),
        ("limits.memory", {"memory": "1G"}, "1Mi", "954"),
        ("limits.memory", {}, "1Gi", "16"),  # defaults to node allocatable
    ],
)
def test_resource_field_values(resource: str, limits: dict[str, str], divisor: str | None, expected: str) -> None:
    container = {"name": "c", "resources": {"limits": limits}}
    ref = {"resource": resource, **({"divisor": divisor} if divisor else {})}
    assert resource_value({"spec": {"containers": [container]}}, ref, container=container, node=NODE) == expected


def test_unsupported_field_path_is_invalid_input() -> None:
    with pytest.raises(errors.InvalidInput):
        field_value(pod([]), "spec.nope", node=NODE)


def test_service_links_follow_the_kubelet() -> None:
    services = [
        {"metadata": {"name": "kubernetes", "namespace": "default"},
         "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}},
        {"metadata": {"name": "my-db", "namespace": "ns1"},
         "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 5432}, {"name": "metrics", "port": 9187, "protocol": "TCP"}]}},
        {"metadata": {"name": "headless", "namespace": "ns1"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
        {"metadata": {"name": "other", "namespace": "ns2"}, "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}},
    ]
    env = service_env(services, "ns1", True)
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["KUBERNETES_SERVICE_PORT_HTTPS"] == "443"
    assert env["KUBERNETES_PORT"] == "tcp://10.96.0.1:443"
    assert env["MY_DB_SERVICE_HOST"] == "10.96.0.7" and env["MY_DB_SERVICE_PORT"] == "5432"
    assert env["MY_DB_SERVICE_PORT_METRICS"] == "9187"
    assert env["MY_DB_PORT_9187_TCP_ADDR"] == "10.96.0.7" and env["MY_DB_PORT_5432_TCP_PROTO"] == "tcp"
    assert not any(k.startswith(("HEADLESS", "OTHER")) for k in env)
    no_links = service_env(services, "ns1", False)
    assert "KUBERNETES_SERVICE_HOST" in no_links and "MY_DB_SERVICE_HOST" not in no_links


async def test_service_variables_are_in_env_and_usable_in_expansion(refs: DictRefs) -> None:
    refs.svcs = [{"metadata": {"name": "kubernetes", "namespace": "default"},
                  "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}}]
    p = pod([{"name": "c", "image": "busybox", "env": [{"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST)"}]}],
            enableServiceLinks=False)
    env = env_of(await resolve(refs, p))
    assert env["API"] == "https://10.96.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"


async def test_claims_are_confirmed_with_their_uid_and_a_missing_one_waits(refs: DictRefs) -> None:
    vols = [{"name": "home", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "again", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}]
    p = pod([{"name": "c", "image": "i"}], volumes=vols)
    with pytest.raises(UnresolvedReference) as info:
        await resolve(refs, p)
    assert 'persistentvolumeclaim "data" not found' in str(info.value) and info.value.event_reason == "FailedMount"
    refs.claims["ns1/data"] = {"metadata": {"name": "data", "uid": "claim-uid-1"}}
    req = await resolve(refs, p)
    assert req.claims == [wire.ClaimRef(name="data", uid="claim-uid-1")]
    refs.claims["ns1/data"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    with pytest.raises(UnresolvedReference, match="is being deleted"):
        await resolve(refs, p)
