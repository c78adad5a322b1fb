"""What the benchmarks share: a result file says when, on which commit and under which load it was
measured, and holds only what that run measured; the cluster's node-monitor timing is read from
the controller-manager's command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import results
from bench.cluster_facts import DEFAULT_GRACE_SECONDS, from_argv, go_duration


def test_a_result_is_stamped_with_date_commit_and_load(tmp_path: Path) -> None:
    run = results.Run("demo_bench", results_dir=tmp_path)
    path = run.write({"sequential": {"p50": 0.1}})
    data = json.loads(path.read_text())
    stamp = data["stamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp["date"])
    assert re.fullmatch(r"[0-9a-f]{40}", stamp["commit"]["id"]) and isinstance(stamp["commit"]["dirty"], bool)
    assert len(stamp["load_average"]["start"]) == 3 and len(stamp["load_average"]["end"]) == 3
    assert data["sequential"] == {"p50": 0.1}


def test_a_part_that_did_not_run_is_not_carried_over_from_an_earlier_file(tmp_path: Path) -> None:
    results.Run("demo_bench", results_dir=tmp_path).write({"sequential": {"p50": 0.1}, "burst": {"ratio_median": 1.2}})
    path = results.Run("demo_bench", results_dir=tmp_path).write({"sequential": {"p50": 0.2}})
    assert set(json.loads(path.read_text())) == {"stamp", "sequential"}


def test_quoted_figures_say_so_and_a_payload_cannot_forge_the_stamp(tmp_path: Path) -> None:
    q = results.quoted("seeds/001, section 7.2.2", {"pod": 14.329}, "mean of 3 runs")
    assert q["quoted_not_measured"] is True and q["source"] == "seeds/001, section 7.2.2"
    with pytest.raises(ValueError, match="stamp"):
        results.Run("demo_bench", results_dir=tmp_path).write({"stamp": {}})


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h0m0s", 3600.0)])
def test_go_durations_are_read_like_go_does(text: str, seconds: float) -> None:
    assert go_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "s", "30 s", "-5s"])
def test_a_value_that_is_not_a_go_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        go_duration(text)


def test_the_node_monitor_timing_comes_from_the_flags_or_the_defaults() -> None:
    given = from_argv(["kube-controller-manager", "--node-monitor-grace-period=30s", "--node-monitor-period", "2s"], "here")
    assert (given.grace_seconds, given.period_seconds, given.source) == (30.0, 2.0, "here")
    assert given.not_ready_bound(slack_seconds=5) == 37.0
    default = from_argv(["kube-controller-manager", "--v=1"], "there")
    assert default.grace_seconds == DEFAULT_GRACE_SECONDS and "default" in default.source
