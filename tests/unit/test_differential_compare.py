"""The differential harness's comparison (tests/differential/compare.py, known.py) on hand-made
pod JSON: what it keeps of a pod, what it leaves out, and which differences it reports."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.differential import compare, corpus, harness, known
from tests.differential.compare import Difference


def _pod(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Failed",
        "hostIP": "192.0.2.2", "podIP": "10.0.0.7", "startTime": "2026-12-02T10:00:00Z",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "False", "lastTransitionTime": "2026-12-02T10:00:03Z"},
            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-12-02T10:00:00Z"},
            {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": "2026-12-02T10:00:02Z"},
        ],
        "containerStatuses": [{
            "name": "main", "ready": False, "restartCount": 0, "image": "kod/testbox:0.1.0",
            "imageID": "sha256:aaaa", "containerID": "containerd://1234",
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "bye",
                                     "startedAt": "2026-12-02T10:00:01Z", "finishedAt": "2026-12-02T10:00:02Z"}},
            "lastState": {},
        }],
    }
    base.update(status)
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "status": base}


def test_the_view_keeps_what_a_user_sees_and_drops_ids_ips_and_times() -> None:
    v = compare.view(_pod(), {"main": "one\ntwo\nthree\nfour\nfive\nsix\n"}, ["Started", "OOMKilling"])
    assert v == {
        "phase": "Failed",
        "condition.PodReadyToStartContainers": "False",
        "condition.Initialized": "True",
        "condition.Ready": "False:PodFailed",
        "container.main.state": "terminated:OOMKilled:137",
        "container.main.lastState": "none",
        "container.main.restarts": "0",
        "container.main.ready": "False",
        "container.main.message": "bye",
        "logs.main": "one\ntwo\nthree\nfour\nfive",
        "event.Started": "yes",
        "event.OOMKilling": "yes",
    }


def test_the_same_pod_with_other_ids_ips_and_times_shows_no_difference() -> None:
    other = _pod(podIP="10.9.9.9", hostIP="198.51.100.1", startTime="2030-01-01T00:00:00Z")
    st = other["status"]["containerStatuses"][0]
    st["containerID"], st["imageID"] = "docker://ffff", "docker-pullable://x"
    st["state"]["terminated"]["startedAt"] = "2030-01-01T00:00:09Z"
    for c in other["status"]["conditions"]:
        c["lastTransitionTime"] = "2030-01-01T00:00:00Z"
    assert compare.diff(compare.view(_pod()), compare.view(other)) == []


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s.update(phase="Succeeded"), [Difference("phase", "Failed", "Succeeded")]),
    (lambda s: s["containerStatuses"][0]["state"]["terminated"].update(reason="Error"),
     [Difference("container.main.state", "terminated:OOMKilled:137", "terminated:Error:137")]),
    (lambda s: s["containerStatuses"][0]["state"]["terminated"].update(exitCode=1),
     [Difference("container.main.state", "terminated:OOMKilled:137", "terminated:OOMKilled:1")]),
    (lambda s: s["containerStatuses"][0]["state"]["terminated"].pop("message"),
     [Difference("container.main.message", "bye", None)]),
    (lambda s: s["conditions"][2].update(reason="PodCompleted"),
     [Difference("condition.Ready", "False:PodFailed", "False:PodCompleted")]),
    (lambda s: s["conditions"].pop(0), [Difference("condition.PodReadyToStartContainers", "False", None)]),
    (lambda s: s["containerStatuses"][0].update(state={"waiting": {"reason": "ContainerCreating"}}),
     [Difference("container.main.message", "bye", None),
      Difference("container.main.state", "terminated:OOMKilled:137", "waiting:ContainerCreating")]),
], ids=["phase", "reason", "exit-code", "message", "condition-reason", "condition-missing", "state-kind"])
def test_each_change_a_user_would_see_is_a_difference(change: Any, expected: list[Difference]) -> None:
    other = _pod()
    change(other["status"])
    assert compare.diff(compare.view(_pod()), compare.view(other)) == expected


def test_logs_events_and_unreadable_logs_are_compared() -> None:
    real = compare.view(_pod(), {"main": "hello\n"}, ["Pulled", "Started"])
    virtual = compare.view(_pod(), {"main": None}, ["Started", "Unhealthy"])
    assert compare.diff(real, virtual) == [
        Difference("event.Pulled", "yes", None),
        Difference("event.Unhealthy", None, "yes"),
        Difference("logs.main", "hello", compare.NO_LOGS),
    ]


def test_the_pods_namespace_and_uid_are_scrubbed_from_messages_and_logs() -> None:
    pod = _pod()
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'bad (pod: "p_ns(u-1)", container: main)'}}
    v = compare.view(pod, {"main": "in ns\n"})
    assert v["container.main.waitingMessage"] == 'bad (pod: "p_<namespace>(<uid>)", container: main)'
    assert v["logs.main"] == "in <namespace>"


def test_restart_counts_are_bucketed_and_a_cycling_containers_moment_is_not_compared() -> None:
    def cycling(count: int, state: dict[str, Any], ready: bool) -> dict[str, Any]:
        pod = _pod(phase="Running")
        pod["status"]["conditions"][2] = {"type": "Ready", "status": "True" if ready else "False"}
        st = pod["status"]["containerStatuses"][0]
        st.update(restartCount=count, state=state, ready=ready,
                  lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": "last run"}})
        return pod
    a = compare.view(cycling(1, {"running": {}}, True))
    b = compare.view(cycling(4, {"waiting": {"reason": "CrashLoopBackOff"}}, False))
    assert compare.diff(a, b) == []
    assert a["container.main.state"] == compare.CYCLING and a["condition.Ready"] == compare.TIMING
    assert a["container.main.lastState"] == "terminated:Error:1" and a["container.main.message"] == "last run"
    # Just ended, not yet moved to lastState: the run that ended is what lastState reads.
    just_ended = cycling(1, {"terminated": {"exitCode": 1, "reason": "Error", "message": "last run"}}, False)
    just_ended["status"]["containerStatuses"][0]["lastState"] = {}
    assert compare.diff(a, compare.view(just_ended)) == []
    c = compare.view(cycling(0, {"running": {}}, True))
    assert Difference("container.main.restarts", "0", ">=1") in compare.diff(c, a)


def test_known_differences_accept_only_what_they_name_and_stale_ones_are_reported() -> None:
    pulled = Difference("event.Pulled", "yes", None)
    phase = Difference("phase", "Failed", "Succeeded")
    entries = [
        known.Known("*", "event.Pulled", "no image pulls on the virtual node", real="yes", virtual="<absent>"),
        known.Known("oom*", "container.*.state", "an entry that matches nothing"),
        known.Known("other-case", "phase", "a case that did not run"),
    ]
    unexpected, stale = known.check({"oom": [pulled, phase], "env": [pulled]}, entries, ["oom", "env"])
    assert unexpected == [("oom", phase)]
    assert stale == [entries[1]]
    # The value patterns count: the same path with other values is not accepted.
    unexpected, _ = known.check({"env": [Difference("event.Pulled", None, "yes")]}, entries[:1], ["env"])
    assert unexpected == [("env", Difference("event.Pulled", None, "yes"))]


def test_every_known_difference_has_a_reason_and_concerns_a_case_of_the_corpus() -> None:
    names = [c.name for c in corpus.cases()]
    for entry in known.KNOWN:
        assert len(entry.reason) > 20, entry
        assert any(known.fnmatchcase(n, entry.case) for n in names), entry


def test_the_corpus_is_big_enough_and_uses_only_the_test_image() -> None:
    cases = corpus.cases()
    assert len(cases) >= 45
    for case in cases:
        pod = case.pod()
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            assert c["image"] == corpus.IMAGE and c["imagePullPolicy"] in ("Never", "IfNotPresent")


def test_settle_predicates_read_the_pods_state() -> None:
    def case(settle: str) -> corpus.Case:
        return corpus.Case("x", [corpus.sh("main", "true")], settle=settle)
    pod = _pod()
    assert harness.settled(case("terminal"), pod)
    assert not harness.settled(case("ready"), pod)
    assert harness.settled(case("container-done:main"), pod)
    running = copy.deepcopy(pod)
    running["status"].update(phase="Running")
    running["status"]["containerStatuses"][0].update(state={"running": {}}, restartCount=2)
    assert harness.settled(case("restarted"), running) and harness.settled(case("running"), running)
    assert not harness.settled(case("terminal"), running)
    # Finished, but the kubelet has not torn the sandbox down yet: not settled.
    finishing = copy.deepcopy(pod)
    next(c for c in finishing["status"]["conditions"] if c["type"] == "PodReadyToStartContainers")["status"] = "True"
    assert not harness.settled(case("terminal"), finishing)
    waiting = copy.deepcopy(pod)
    waiting["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CreateContainerConfigError"}}
    assert harness.settled(case("waiting:CreateContainerConfigError"), waiting)
    assert not harness.settled(case("waiting:ContainerCreating"), waiting)
