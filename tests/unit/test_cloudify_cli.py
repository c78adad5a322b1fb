"""cloudify's command line: flags, validation before anything happens, help, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudify import main as cli
from cloudify.options import session_options
from cloudify.settings import load
from kod import errors


@pytest.fixture(autouse=True)
def _keep_logging_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """cloudify's main configures logging for the whole process (to the captured stderr of one
    test): leave the test process's logging alone."""
    monkeypatch.setattr(cli, "configure", lambda **_: None)


def run(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    # A kubeconfig that points nowhere: any attempt to reach a cluster would fail loudly.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: x, user: u}}]\n"
        "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in list(__import__("os").environ):
        if name.startswith("KOD_CLOUDIFY_"):
            monkeypatch.delenv(name)
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chrome"], "unknown app 'chrome'"),
        (["-q", "12", "firefox"], "the quality must be from 0 to 9, not 12"),
        (["-q", "high", "firefox"], "the quality must be a whole number from 0 to 9"),
        (["-c", "10", "firefox"], "the compression must be from 0 to 9, not 10"),
        (["-t", "0", "firefox"], "the timeout must be a positive number of seconds"),
        (["-t", "-5", "firefox"], "the timeout must be a positive number of seconds"),
        (["-p", "rdp", "firefox"], "invalid choice: 'rdp'"),
        (["-r", "vm", "firefox"], "invalid choice: 'vm'"),
        (["-p", "novnc", "-r", "docker", "firefox"], "-p novnc cannot be used with -r docker"),
        (["stop"], "name the sessions to stop, or give --all"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message_and_exit_2(argv, message, tmp_path, monkeypatch, capsys) -> None:
    code, out, err = run(argv, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert message in err
    # Refused before anything: not even a session record was written.
    assert not (tmp_path / "state" / "kod" / "sessions").exists() or not any((tmp_path / "state" / "kod" / "sessions").iterdir())


def test_help_lists_every_option_with_examples(tmp_path, monkeypatch, capsys) -> None:
    code, out, _ = run(["run", "--help"], tmp_path, monkeypatch, capsys)
    assert code == 0
    for flag in ("-s, --secure", "-t SECONDS, --timeout", "-p {vnc,novnc}", "-q 0-9, --quality", "-c 0-9, --compression",
                 "-v, --persist", "-r {pod,docker,native}", "--timings", "examples:", "cloudify -q 7 -t 10 -s firefox"):
        assert flag in out
    code, out, _ = run(["--help"], tmp_path, monkeypatch, capsys)
    assert code == 0
    for command in ("apps", "sessions", "stop", "gc", "uninstall", "cloudify.toml"):
        assert command in out


def test_app_without_a_command_is_run() -> None:
    assert cli.with_default_command(["firefox"]) == ["run", "firefox"]
    assert cli.with_default_command(["-s", "-q", "7", "firefox"]) == ["run", "-s", "-q", "7", "firefox"]
    assert cli.with_default_command(["ps"]) == ["ps"]
    assert cli.with_default_command(["--help"]) == ["--help"]


def test_apps_lists_the_catalog_as_json(tmp_path, monkeypatch, capsys) -> None:
    import json

    code, out, _ = run(["apps", "--json"], tmp_path, monkeypatch, capsys)
    assert code == 0
    apps = {a["name"]: a for a in json.loads(out)}
    assert set(apps) == {"firefox", "libreoffice", "blender", "cuda-blender"}
    assert apps["firefox"]["image"] == "kod/firefox:0.1.0"
    assert apps["cuda-blender"]["needs"] == ["nvidia.com/gpu"]


def test_unreachable_cluster_without_a_local_app_is_a_clear_error(tmp_path, monkeypatch, capsys) -> None:
    # No desktop needed for -r native -p novnc; the cluster at 127.0.0.1:9 refuses connections.
    monkeypatch.setenv("KOD_CLOUDIFY_LOCAL_COMMANDS", '{"firefox": ["no-such-program-kod"]}')
    code, out, err = run(["-r", "native", "-p", "novnc", "-t", "3", "firefox"], tmp_path, monkeypatch, capsys)
    assert code == 1
    assert "cannot reach the cluster, and firefox is not installed here" in err


def test_novnc_without_a_run_mode_implies_native() -> None:
    settings = load(path=Path("/nonexistent"), environ={}, overrides={"protocol": "novnc"})
    opts = session_options("firefox", settings, run_mode_given=False)
    assert opts.run_mode == "native"
    with pytest.raises(errors.InvalidInput):
        session_options("firefox", load(path=Path("/nonexistent"), environ={}, overrides={"protocol": "novnc", "run_mode": "pod"}), run_mode_given=True)
