"""interlink's unit tests put interlink in front of fakes: small, real sidecars (bench/fake_sidecar.py,
shared with bench/interlink_overhead.py; its names are re-exported here) and the settings that
route to them.
"""

from __future__ import annotations

from typing import Any

from bench.fake_sidecar import Failure, FakeSidecar, Seen, pod_body, wait_for  # noqa: F401 - the tests' names

CLIENT_TOKEN = "vk-token"
AUTH = {"Authorization": f"Bearer {CLIENT_TOKEN}"}


def interlink_settings(
    *sidecars: FakeSidecar, rules: dict[str, dict[str, Any]] | None = None, sidecar_timeout: float = 2.0, **more: Any
) -> Any:
    """InterlinkSettings routing to the fakes (in the order given), fast heartbeats and backoff;
    each sidecar request times out after `sidecar_timeout` s."""
    from interlink.settings import InterlinkSettings

    rules = rules or {}
    data: dict[str, Any] = {
        "token": CLIENT_TOKEN,
        "create_token": False,
        "sidecars": [
            {"name": s.name, "url": s.url, "token": s.token, "match": rules.get(s.name, {}), "timeout_seconds": sidecar_timeout}
            for s in sidecars
        ],
        "watch": {
            "heartbeat_seconds": 0.2,
            "sidecar_idle_seconds": 1.0,
            "backoff_seconds": [0.05, 0.1],
            "initial_sync_seconds": 2.0,
        },
        "ping_timeout_seconds": 1.0,
    }
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return InterlinkSettings.model_validate(data)
