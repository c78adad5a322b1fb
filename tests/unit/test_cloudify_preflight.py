"""The checks before anything is created: which nodes may run the app, images, the virtual node,
and whether node addresses answer (real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from cloudify import preflight as p
from cloudify.options import session_options
from cloudify.settings import CloudifySettings
from kod import errors, labels


def node(name: str, *, virtual_of: str | None = None, ready: bool = True, images: tuple[str, ...] = (),
         taints: list[dict[str, Any]] | None = None, labels_: dict[str, str] | None = None,
         address: str = "10.0.0.1", gpu: str | None = None) -> p.NodeView:
    lbl = dict(labels_ or {})
    if virtual_of:
        lbl.update({labels.NODE_TYPE: labels.VIRTUAL_KUBELET, labels.DESKTOP_OF: virtual_of})
    return p.NodeView.of({
        "metadata": {"name": name, "labels": lbl},
        "spec": {"taints": taints or []},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "images": [{"names": [f"docker.io/{i}"]} for i in images],
            "allocatable": {"nvidia.com/gpu": gpu} if gpu else {},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        },
    })


def check(nodes: list[p.NodeView], app: str = "firefox", run_mode: str = "pod", **settings: Any) -> p.Preflight:
    s = CloudifySettings(run_mode=run_mode, **settings)  # type: ignore[arg-type]
    pre = p.Preflight(latency=0.01, nodes=nodes)
    p.check(pre, session_options(app, s, run_mode_given=True), s, "alice", app_image=s.image(app))
    return pre


def test_the_app_goes_to_a_real_node_with_its_image_and_the_viewer_to_the_users_virtual_node() -> None:
    nodes = [
        node("worker", images=("kod/firefox:0.1.0",)),
        node("laptop", images=("kod/firefox:0.1.0",)),
        node("vn-bob", virtual_of="bob"),
        node("vn-alice", virtual_of="alice"),
        node("tainted", images=("kod/firefox:0.1.0",), taints=[{"key": "x", "effect": "NoSchedule"}]),
        node("down", images=("kod/firefox:0.1.0",), ready=False),
    ]
    pre = check(nodes, user_node="laptop")
    assert [n.name for n in pre.app_nodes] == ["worker"]
    assert pre.virtual_node is not None and pre.virtual_node.name == "vn-alice"


@pytest.mark.parametrize(
    ("nodes", "kwargs", "error", "fragment"),
    [
        ([node("vn", virtual_of="alice")], {}, errors.Unavailable, "no node of the cluster may run firefox"),
        ([node("w"), node("vn", virtual_of="alice")], {}, errors.NotFound, "image kod/firefox:0.1.0 is on no node"),
        ([node("w", images=("kod/firefox:0.1.0",))], {}, errors.Unavailable, "no virtual node for user 'alice'"),
        ([node("w", images=("kod/firefox:0.1.0",)), node("vn", virtual_of="alice", ready=False)], {}, errors.Unavailable, "not ready"),
        ([node("w", images=("kod/cuda-blender:0.1.0",))], {"app": "cuda-blender", "run_mode": "docker"}, errors.Unavailable, "needs nvidia.com/gpu"),
    ],
)
def test_a_session_that_cannot_start_is_refused_before_anything_is_created(nodes, kwargs, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        check(nodes, **kwargs)


def test_of_several_virtual_nodes_this_desktops_is_chosen() -> None:
    nodes = [node("desktop-other", virtual_of="alice"), node("desktop-my-host", virtual_of="alice"),
             node("vn-bench", virtual_of="alice")]
    assert p.find_virtual_node(nodes, "alice", hostname="My_Host").name == "desktop-my-host"  # type: ignore[union-attr]
    assert p.find_virtual_node(nodes, "alice", name="vn-bench").name == "vn-bench"  # type: ignore[union-attr]
    assert p.find_virtual_node(nodes, "alice", name="missing") is None
    assert p.find_virtual_node(nodes, "bob") is None


def test_docker_and_native_modes_need_no_virtual_node_and_images_can_be_pulled() -> None:
    assert check([node("w", images=("kod/firefox:0.1.0",))], run_mode="docker").virtual_node is None
    assert check([node("w")], run_mode="native", check_images=False).app_nodes
    assert check([node("w", images=("kod/cuda-blender:0.1.0",), gpu="1")], app="cuda-blender", run_mode="docker").app_nodes


def test_containers_do_not_count_loopback_node_addresses() -> None:
    nodes = [node("a", address="127.0.0.1"), node("b", address="10.1.2.3")]
    assert p.candidate_addresses(nodes, from_container=True) == ["10.1.2.3", "a", "b"]
    assert p.candidate_addresses(nodes, from_container=False)[:2] == ["127.0.0.1", "10.1.2.3"]


@contextlib.contextmanager
def silent_listener(address: str) -> Iterator[int]:
    """A port at `address` whose listener's backlog is full, so it drops new SYNs (no answer, as
    behind a firewall); yields the port."""
    full = socket.socket()
    full.bind((address, 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex((address, port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, full]:
            sock.close()


async def test_an_address_that_accepts_or_refuses_is_reachable() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert await p.reachable("127.0.0.1", port)
    listener.close()
    assert await p.reachable("127.0.0.1", port)  # refused: the address is there
    # A listener whose backlog is full drops new SYNs: no answer within the probe's timeout.
    with silent_listener("127.0.0.1") as port:
        await asyncio.sleep(0.05)
        assert not await p.reachable("127.0.0.1", port, timeout=0.3)


async def test_the_node_address_chosen_is_one_where_the_node_port_probe_gets_an_answer() -> None:
    # "far" (127.0.0.2) drops the probe's SYN, as a firewall would; "near" (127.0.0.1) listens
    # on the same port.
    with silent_listener("127.0.0.2") as port:
        listener = socket.socket()
        listener.bind(("127.0.0.1", port))
        listener.listen()
        await asyncio.sleep(0.05)
        try:
            nodes = [node("far", address="127.0.0.2"), node("near", address="127.0.0.1")]
            assert await p.pick_node_address(nodes, from_container=False, port=port) == "127.0.0.1"
            assert await p.pick_node_address(nodes[:1], from_container=False, port=port) in (None, "far")
        finally:
            listener.close()
