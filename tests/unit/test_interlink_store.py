"""The pod store: the rules that keep pushed status right."""

from __future__ import annotations

import pytest

from interlink.store import PodStore
from kod.hub import Hub
from kod.wire import PodStatus, WatchEvent


def _pod(name: str, uid: str = "u", version: int = 1, phase: str = "Pending") -> PodStatus:
    return PodStatus(namespace="default", name=name, uid=uid, version=version, phase=phase)  # type: ignore[arg-type]


class Recorder(Hub):
    def __init__(self) -> None:
        super().__init__(queue_size=10)
        self.events: list[WatchEvent] = []

    def publish(self, event: WatchEvent) -> None:
        self.events.append(event)


def test_an_answer_newer_than_the_stream_is_not_rolled_back() -> None:
    hub = Recorder()
    store = PodStore(["docker"], hub)
    store.apply_sync("docker", [])
    store.record("docker", _pod("web", version=3, phase="Running"))  # the create answer
    store.apply_status("docker", _pod("web", version=2))  # an older event still in flight
    store.apply_status("docker", _pod("web", version=3, phase="Running"))  # the same, again
    assert [(e.type, e.pod.phase) for e in hub.events if e.pod] == [("STATUS", "Running")]
    assert store.snapshot()[0].version == 3


def test_a_new_incarnation_replaces_the_old_whatever_its_version() -> None:
    hub = Recorder()
    store = PodStore(["docker"], hub)
    store.apply_sync("docker", [_pod("web", uid="old", version=9)])
    store.apply_status("docker", _pod("web", uid="new", version=1))
    assert store.snapshot()[0].uid == "new"
    store.apply_deleted("docker", _pod("web", uid="old"))  # a late DELETED of the old one
    assert [p.uid for p in store.snapshot()] == ["new"]


def test_sync_reports_only_differences_and_marks_the_sidecar_synced() -> None:
    hub = Recorder()
    store = PodStore(["a", "b"], hub)
    store.apply_sync("a", [_pod("x"), _pod("y")])
    assert not store.all_synced.is_set()
    hub.events.clear()
    store.apply_sync("a", [_pod("x"), _pod("z")])
    store.apply_sync("b", [])
    assert sorted((e.type, e.pod.name) for e in hub.events if e.pod) == [("DELETED", "y"), ("STATUS", "z")]
    assert store.all_synced.is_set()
    assert {p.sidecar for p in store.snapshot()} == {"a"}
