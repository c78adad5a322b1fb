"""The proving ground's router firewall (localenv.netlab.Netlab.ruleset), read as rules: what it lets
a new connection do in each variant and state. The e2e tests (tests/e2e/test_home_node.py) check
the real effect of the "api" variant; these cover every variant and switch without a machine."""

from __future__ import annotations

from pathlib import Path

from localenv import netlab
from localenv.settings import LocalEnvSettings

CLUSTER = "192.0.2.2"


def lab(tmp_path: Path, **state: object) -> netlab.Netlab:
    return netlab.Netlab(settings=LocalEnvSettings(data_dir=tmp_path), cluster_address=CLUSTER,
                         state=netlab.LinkState(**state))  # type: ignore[arg-type]


def chains(rules: str) -> tuple[dict[str, str], list[list[str]], list[list[str]]]:
    """Policies ("FILTER:INPUT" -> "DROP"), and the nat and filter rules, each as its words."""
    policies: dict[str, str] = {}
    table, nat, flt = "", [], []
    for line in rules.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            policies[f"{table}:{name}"] = policy
        elif line.startswith("-A"):
            (nat if table == "nat" else flt).append(line.split())
    return policies, nat, flt


def new_forwards(flt: list[list[str]]) -> list[list[str]]:
    """The FORWARD rules that accept connections that are not replies."""
    return [r for r in flt if r[1] == "FORWARD" and "ESTABLISHED,RELATED" not in r]


def test_by_default_nothing_is_forwarded_or_accepted(tmp_path: Path) -> None:
    policies, _, flt = chains(lab(tmp_path).ruleset())
    assert policies["filter:FORWARD"] == "DROP" and policies["filter:INPUT"] == "DROP"
    # Nothing from the cluster side starts a connection: every accepting FORWARD rule is LAN -> WAN.
    t = netlab.Topology()
    for rule in new_forwards(flt):
        assert rule[rule.index("-i") + 1] == t.lan_router_if and rule[rule.index("-o") + 1] == t.wan_router_if


def test_the_api_variant_reaches_only_the_control_plane(tmp_path: Path) -> None:
    lab_ = lab(tmp_path)
    _, nat, flt = chains(lab_.ruleset())
    ports = {r[r.index("--dport") + 1] for r in new_forwards(flt)}
    assert ports == {str(lab_.apiserver_port), str(lab_.tunnel_port)}
    assert all(r[r.index("-d") + 1] == f"{CLUSTER}/32" for r in new_forwards(flt))
    assert [r for r in nat if "MASQUERADE" in r], "the desktop's connections are not NATed"
    assert not [r for r in nat if "REDIRECT" in r], "plain NAT goes through no proxy"


def test_the_nodeports_variant_adds_the_nodeport_range(tmp_path: Path) -> None:
    _, _, flt = chains(lab(tmp_path, variant="nodeports").ruleset())
    lo, hi = netlab.Topology().node_ports
    assert f"{lo}:{hi}" in {r[r.index("--dport") + 1] for r in new_forwards(flt)}


def test_the_home_link_and_a_slow_api_send_the_control_plane_through_toxiproxy(tmp_path: Path) -> None:
    for state in ({"home": True}, {"slow_api": 2.0}):
        lab_ = lab(tmp_path, **state)
        _, nat, flt = chains(lab_.ruleset())
        redirected = {r[r.index("--dport") + 1]: r[r.index("--to-ports") + 1] for r in nat if "REDIRECT" in r}
        assert redirected == {str(port): str(proxy) for port, proxy in lab_.delayed_ports().values()}, state
        # The router itself accepts the desktop's connections to those proxy ports, and only those.
        accepted = [r for r in flt if r[1] == "INPUT" and "--dports" in r]
        assert [r[r.index("--dports") + 1] for r in accepted] == [
            ",".join(str(p) for _, p in lab_.delayed_ports().values())]
