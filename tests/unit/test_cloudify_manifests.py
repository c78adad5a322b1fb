"""The session's Kubernetes objects, as data: placement, exposure, secrets split, ownership."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloudify import manifests as m
from cloudify.credentials import Credentials, KeyPair
from cloudify.names import SessionNames
from cloudify.options import session_options
from cloudify.settings import CloudifySettings
from kod import apps, labels

CREDS = Credentials(
    client=KeyPair(private="CLIENT-PRIVATE", public="ssh-ed25519 CLIENTPUB kod-viewer"),
    host=KeyPair(private="HOST-PRIVATE", public="ssh-ed25519 HOSTPUB kod-app"),
    vnc_password="pw123456",
)
JOB = {"metadata": {"name": "kod-firefox-abc", "uid": "uid-1"}}


def plan(app: str = "firefox", **overrides: object) -> m.SessionPlan:
    settings = CloudifySettings(**overrides)  # type: ignore[arg-type]
    options = session_options(app, settings, run_mode_given=False)
    names = SessionNames(session="abc12345", app=options.app, user="alice", namespace="kod-alice")
    return m.SessionPlan(names=names, options=options, settings=settings, credentials=CREDS,
                         now=datetime(2030, 1, 1, tzinfo=UTC), desktop_host="desk")


def decode(secret: dict, key: str) -> str:
    import base64

    return base64.b64decode(secret["data"][key]).decode()


def test_the_app_is_a_job_that_expires_and_never_lands_on_a_desktop() -> None:
    job = m.app_job(plan(user_node="my-laptop"))
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 12 * 3600
    assert spec["ttlSecondsAfterFinished"] == m.FINISHED_TTL_SECONDS
    pod = spec["template"]["spec"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert {"key": labels.NODE_TYPE, "operator": "NotIn", "values": [labels.VIRTUAL_KUBELET]} in term["matchExpressions"]
    assert {"key": labels.DESKTOP_OF, "operator": "DoesNotExist"} in term["matchExpressions"]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "NotIn", "values": ["my-laptop"]}]
    assert "tolerations" not in pod
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert job["metadata"]["labels"][labels.SESSION] == "abc12345"
    assert spec["template"]["metadata"]["labels"][labels.ROLE] == "app"
    assert labels.EXPIRES_AT in job["metadata"]["annotations"]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"protocol": "novnc"}, {"secure": False}, {"secure": False, "protocol": "novnc"}],
    ids=["default", "novnc", "insecure", "insecure-novnc"],
)
def test_only_ssh_is_ever_published_and_vnc_stays_on_the_pods_localhost(overrides: dict) -> None:
    p = plan(**overrides)
    assert p.options.secure is (overrides.get("secure", True))
    service = m.app_service(p, m.owner_reference(JOB), node_port=True)
    assert [x["name"] for x in service["spec"]["ports"]] == ["ssh"]  # never VNC on every node's address
    assert service["spec"]["type"] == "NodePort"
    container = m.app_job(p)["spec"]["template"]["spec"]["containers"][0]
    assert [x["name"] for x in container["ports"]] == ["ssh"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[apps.ENV_ENCRYPT] == "1"  # the app: VNC and noVNC on 127.0.0.1 only
    assert m.app_service(p, m.owner_reference(JOB), node_port=False)["spec"]["type"] == "ClusterIP"


def test_in_clear_mode_the_viewer_finds_vnc_at_the_port_forward_not_the_node() -> None:
    p = plan(secure=False)
    target = m.Target("10.0.0.1", 30022, vnc_port=39401, vnc_host="172.17.0.1")
    env = m.viewer_env(p, target, display=":0", pulse_socket=None, secret_dir="/s", xauthority=None)
    assert env[apps.ENV_ENCRYPT] == "0" and env[apps.ENV_TARGET_HOST] == "10.0.0.1"
    assert (env[apps.ENV_TARGET_VNC_HOST], env[apps.ENV_TARGET_VNC_PORT]) == ("172.17.0.1", "39401")
    secure = m.viewer_env(plan(), m.Target("10.0.0.1", 30022), display=":0", pulse_socket=None, secret_dir="/s",
                          xauthority=None)
    assert secure[apps.ENV_ENCRYPT] == "1" and apps.ENV_TARGET_VNC_PORT not in secure


def test_the_session_is_split_into_the_apps_and_the_viewers_secret_and_each_pod_mounts_only_its_own() -> None:
    p = plan()
    owner = m.owner_reference(JOB)
    app, viewer_secret = m.app_secret(p, owner), m.viewer_secret(p, owner, xauthority=b"cookie")
    assert app["metadata"]["name"] == "kod-firefox-abc12345" and viewer_secret["metadata"]["name"] == "kod-firefox-abc12345-viewer"
    assert set(app["data"]) == {m.K_AUTHORIZED_KEYS, m.K_HOST_KEY, m.K_VNC_PASSWORD}
    assert decode(app, m.K_AUTHORIZED_KEYS).strip() == CREDS.client.public
    assert decode(app, m.K_HOST_KEY) == CREDS.host.private
    # The viewer's side holds no host private key, in no key: only the pinned public key.
    assert set(viewer_secret["data"]) == {m.K_CLIENT_KEY, m.K_KNOWN_HOSTS, m.K_VNC_PASSWORD, m.K_XAUTHORITY}
    assert not any(CREDS.host.private in decode(viewer_secret, k) for k in viewer_secret["data"])
    assert decode(viewer_secret, m.K_KNOWN_HOSTS) == f"* {CREDS.host.public}\n"
    assert decode(viewer_secret, m.K_CLIENT_KEY) == CREDS.client.private
    assert decode(app, m.K_VNC_PASSWORD) == decode(viewer_secret, m.K_VNC_PASSWORD) == CREDS.vnc_password
    assert not any(CREDS.client.private in decode(app, k) for k in app["data"])
    job_volume = m.app_job(p)["spec"]["template"]["spec"]["volumes"][0]["secret"]
    assert job_volume["secretName"] == app["metadata"]["name"]
    assert {i["key"] for i in job_volume["items"]} == {m.K_AUTHORIZED_KEYS, m.K_HOST_KEY, m.K_VNC_PASSWORD}
    viewer = m.viewer_pod(p, owner, m.Target("10.0.0.1", 30022, 30059), node="vn", display=":0",
                          pulse_dir="/run/user/1/kod/pulse", with_xauthority=True)
    secrets = [v["secret"] for v in viewer["spec"]["volumes"] if "secret" in v]
    assert [s["secretName"] for s in secrets] == [viewer_secret["metadata"]["name"]]  # the viewer's only
    assert {i["key"] for i in secrets[0]["items"]} == {m.K_CLIENT_KEY, m.K_KNOWN_HOSTS, m.K_VNC_PASSWORD, m.K_XAUTHORITY}
    assert app["metadata"]["ownerReferences"][0]["uid"] == viewer_secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert viewer_secret["metadata"]["labels"][labels.ROLE] == "viewer"


def test_the_viewer_runs_only_on_the_users_virtual_node_without_privileges() -> None:
    viewer = m.viewer_pod(plan(), m.owner_reference(JOB), m.Target("10.0.0.1", 30022, 30059), node="vn-alice",
                          display=":0", pulse_dir="/run/user/1/kod/pulse", with_xauthority=False)
    spec = viewer["spec"]
    assert spec["nodeName"] == "vn-alice"
    assert spec["nodeSelector"] == {labels.NODE_TYPE: labels.VIRTUAL_KUBELET, labels.DESKTOP_OF: "alice"}
    assert spec["tolerations"] == [{"key": labels.VIRTUAL_NODE_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    assert not spec.get("hostNetwork") and not spec.get("hostIPC") and not spec.get("hostPID")
    container = spec["containers"][0]
    assert container["securityContext"]["privileged"] is False
    assert sorted(v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v) == ["/run/user/1/kod/pulse", "/tmp/.X11-unix"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[apps.ENV_TARGET_HOST] == "10.0.0.1"
    assert env[apps.ENV_TARGET_SSH_PORT] == "30022"
    assert env[apps.ENV_TARGET_VNC_PORT] == "30059"
    assert env[apps.ENV_PULSE_SOCKET] == f"{m.VIEWER_PULSE_DIR}/native"
    assert env[apps.ENV_QUALITY] == "5" and env[apps.ENV_COMPRESSION] == "2"
    assert "XAUTHORITY" not in env
    assert viewer["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert viewer["metadata"]["labels"][labels.ROLE] == "viewer"


def test_persistence_mounts_the_users_volume_on_the_apps_settings() -> None:
    p = plan(persist=True)
    pod = m.app_job(p)["spec"]["template"]["spec"]
    mounts = [vm for vm in pod["containers"][0]["volumeMounts"] if vm["name"] == m.DATA_VOLUME]
    assert mounts == [
        {"name": "data", "mountPath": f"/home/kod/{path}", "subPath": path} for path in apps.APPS["firefox"].persist_paths
    ]
    assert ".config/mozilla" in apps.APPS["firefox"].persist_paths  # where Firefox ESR keeps its profile
    assert pod["volumes"][-1]["persistentVolumeClaim"]["claimName"] == "kod-alice-firefox-data"
    init = pod["initContainers"][0]
    assert init["command"][-3:] == ["/data/.config/mozilla", "/data/.mozilla", "/data/Downloads"]
    claim = m.data_claim(p)
    assert claim["metadata"]["name"] == "kod-alice-firefox-data"
    assert labels.SESSION not in claim["metadata"]["labels"]  # it belongs to no session
    assert "ownerReferences" not in claim["metadata"]
    assert "initContainers" not in m.app_job(plan())["spec"]["template"]["spec"]


def test_gpu_apps_ask_for_the_gpu() -> None:
    container = m.app_job(plan("cuda-blender"))["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == "kod/cuda-blender:0.1.0"


def test_the_frame_rate_ceiling_goes_to_the_apps_x_server() -> None:
    def frame_rate(p: m.SessionPlan) -> str:
        container = m.app_job(p)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"]}[apps.ENV_FRAME_RATE]

    assert frame_rate(plan()) == str(apps.MAX_FRAME_RATE)
    assert frame_rate(plan(frame_rate=12)) == "12"
