"""`kod-interlink` as a user runs it: config file, environment, token file, unix socket, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from interlink.main import build_parser
from interlink.settings import ENV_PREFIX, InterlinkSettings
from kod import errors
from kod.http import ApiClient
from kod.settings import load_settings
from kod.wire import NodeInfo, WatchEvent
from tests.unit.interlink_fake_sidecar import FakeSidecar, wait_for

SCRIPT = Path(sys.executable).with_name("kod-interlink")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def test_help_names_every_setting_and_its_environment_variable() -> None:
    text = build_parser().format_help()
    for name, field in InterlinkSettings.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            for inner in sub.model_fields:
                assert f"{ENV_PREFIX}{name.upper()}__{inner.upper()}" in text
        else:
            assert f"{ENV_PREFIX}{name.upper()}" in text
    assert "--config" in text and "--socket" in text


async def test_the_service_runs_on_a_private_socket_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    fake = FakeSidecar("docker", token="side")
    await fake.start()
    sock = tmp_path / "run" / "interlink.sock"
    token_file = tmp_path / "secrets" / "interlink.token"
    side_token = tmp_path / "secrets" / "docker.token"
    side_token.parent.mkdir(mode=0o700)
    side_token.write_text("side\n")
    side_token.chmod(0o600)
    config = tmp_path / "interlink.toml"
    config.write_text(
        f'token_file = "{token_file}"\n'
        f"[listen]\nsocket = \"{sock}\"\n"
        f'[[sidecars]]\nname = "docker"\nurl = "{fake.url}"\ntoken_file = "{side_token}"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT), "--config", str(config), env=_env(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for(sock.exists, timeout=20, what="the socket")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # created on first start
        api = ApiClient(f"unix://{sock}", token_file.read_text().strip())
        try:
            info = await api.request("GET", "/v1/ping", model=NodeInfo)
            assert [h.name for h in info.sidecars] == ["docker"] and info.sidecars[0].ok
            with pytest.raises(errors.Unauthorized):
                await ApiClient(f"unix://{sock}", "wrong").request("GET", "/v1/ping")
        finally:
            await api.close()
        # Streams are open when the signal comes: a watch and a log that follows a quiet container.
        fake.add_pod("default", "quiet", "u-quiet")
        watcher = ApiClient(f"unix://{sock}", token_file.read_text().strip())
        lines = watcher.lines("/v1/watch")
        assert b'"SYNC"' in await anext(lines)
        follow = watcher.stream("GET", "/v1/pods/default/quiet/containers/main/logs", params={"follow": True})
        follow_task = asyncio.create_task(anext(follow, b"<end>"))
        await wait_for(lambda: fake.open_log_streams == 1, what="the log stream to open")
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        proc.send_signal(signal.SIGTERM)
        rest = [WatchEvent.model_validate_json(line) async for line in lines]  # the watch ends cleanly
        assert all(e.type in ("STATUS", "HEARTBEAT") for e in rest)
        with pytest.raises(errors.Unavailable):  # the follower is cut, not ended as if complete
            await follow_task
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert loop.time() - signalled < 1.5  # nobody waited for the shutdown timeout
        await watcher.close()
        await wait_for(lambda: fake.open_log_streams == 0, what="the sidecar's log stream to close")
        assert not sock.exists()
        _, err = await proc.communicate()
        assert b"interlink shutting down" in err
        assert token_file.read_text().strip().encode() not in err  # the token is never logged
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake.stop()


def test_a_token_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    token_file.chmod(0o644)
    env = {**_env(tmp_path), f"{ENV_PREFIX}TOKEN_FILE": str(token_file), f"{ENV_PREFIX}LISTEN__PORT": "0"}
    result = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"chmod 600 {token_file}" in result.stderr


@pytest.mark.parametrize(
    ("config", "env", "needle"),
    [
        ("[listen\n", {}, "not valid TOML"),
        ("[listen]\nport = 70000\n", {}, "listen.port"),
        ("", {f"{ENV_PREFIX}SIDECARS": '[{"name": "a", "url": "ftp://x"}]'}, "must start with http://"),
        ("", {f"{ENV_PREFIX}SIDECARS": '[{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]'}, "repeated: a"),
        ("", {f"{ENV_PREFIX}SIDECARS": "[]"}, "sidecars"),
        ("surprise = 1\n", {}, "surprise"),
    ],
)
def test_bad_settings_exit_2_saying_what_is_wrong(tmp_path: Path, config: str, env: dict[str, str], needle: str) -> None:
    path = tmp_path / "interlink.toml"
    path.write_text(config)
    result = subprocess.run([str(SCRIPT), "--config", str(path), "--print-config"], env={**_env(tmp_path), **env},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = tmp_path / "interlink.toml"
    path.write_text('[listen]\nport = 3001\nhost = "127.0.0.2"\n[[sidecars]]\nname = "file"\nurl = "http://f:1"\n')
    env = {
        f"{ENV_PREFIX}LISTEN__PORT": "3002",
        f"{ENV_PREFIX}SIDECARS": '[{"name": "gpu", "url": "unix:///run/gpu.sock", "match": {"runtime_class": "nvidia"}},'
        ' {"name": "docker", "url": "http://127.0.0.1:4000"}]',
    }
    settings = load_settings(InterlinkSettings, path, env_prefix=ENV_PREFIX, environ=env, overrides={"listen": {"port": 3003}})
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.2", 3003)
    assert [s.name for s in settings.sidecars] == ["gpu", "docker"]
    assert settings.sidecars[0].match.runtime_class == "nvidia" and settings.sidecars[1].match.catch_all
