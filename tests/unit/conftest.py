"""Unit tests never change the host's network: the Docker sidecar's host commands (iptables, ip)
go to a recorder instead (tests of sidecars/docker/network.py read it)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sidecars.docker import network


class HostCommands:
    """What the sidecar would have run on the host; answers 0 (or `fail` for matching commands)."""

    def __init__(self) -> None:
        self.argv: list[list[str]] = []
        self.fail: dict[str, tuple[int, str]] = {}

    async def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.argv.append(list(argv))
        line = " ".join(argv)
        for needle, answer in self.fail.items():
            if needle in line:
                return answer
        return 0, ""


@pytest.fixture(autouse=True)
def host_commands(monkeypatch: pytest.MonkeyPatch) -> HostCommands:
    recorder = HostCommands()
    monkeypatch.setattr(network, "run_command", recorder)
    monkeypatch.setattr(network, "have_command", lambda name: True)  # the recorder stands in for every tool
    # The pins are netlink requests, not commands: recorded as lines of their own.
    monkeypatch.setattr(network, "pin_address", lambda bridge, ip, mac: recorder.argv.append(["pin", bridge, ip, mac]))
    monkeypatch.setattr(network, "pin_port", lambda index, mac: recorder.argv.append(["pin-port", str(index), mac]))
    return recorder
