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


def run(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        env: dict[str, str] | None = None) -> tuple[int, str, str]:
    # A kubeconfig that points nowhere: any attempt to reach a cluster would fail loudly.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: x, user: u}}]\n"
        "clusters: [{name: x, cluster: {server: 'https://127.0.0.1:9'}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    kubeconfig.chmod(0o600)  # credentials: cloudify refuses a kubeconfig others may read
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in list(__import__("os").environ):
        if name.startswith("KOD_CLOUDIFY_"):
            monkeypatch.delenv(name)
    # The test's own settings go on after the machine's are cleared (they used to be cleared too).
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
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
                 "-v, --persist", "-r {pod,docker,native}", "--timings", "examples:", "cloudify -q 7 -t 10 firefox",
                 "--insecure", "encrypted by default"):
        assert flag in out
    code, out, _ = run(["--help"], tmp_path, monkeypatch, capsys)
    assert code == 0
    for command in ("apps", "sessions", "stop", "gc", "uninstall", "cloudify.toml"):
        assert command in out


def test_help_says_whose_credentials_and_namespace_cloudify_uses(tmp_path, monkeypatch, capsys) -> None:
    code, out, _ = run(["--help"], tmp_path, monkeypatch, capsys)
    assert code == 0 and "your own credentials" in out and "kod-<user>" in out and "never its admin's" in out
    code, out, _ = run(["run", "--help"], tmp_path, monkeypatch, capsys)
    flat = " ".join(out.split())
    assert "namespace of the sessions (default your own, kod-<user>)" in flat
    assert "~/.local/share/kod/cluster/users/<user>.kubeconfig; never its admin's" in flat


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
    code, out, err = run(["-r", "native", "-p", "novnc", "-t", "3", "firefox"], tmp_path, monkeypatch, capsys,
                         env={"KOD_CLOUDIFY_LOCAL_COMMANDS": '{"firefox": ["no-such-program-kod"]}'})
    assert code == 1
    assert "cannot reach the cluster, and firefox is not installed here" in err


def test_novnc_without_a_run_mode_implies_native() -> None:
    settings = load(path=Path("/nonexistent"), environ={}, overrides={"protocol": "novnc"})
    opts = session_options("firefox", settings, run_mode_given=False)
    assert opts.run_mode == "native"
    with pytest.raises(errors.InvalidInput):
        session_options("firefox", load(path=Path("/nonexistent"), environ={}, overrides={"protocol": "novnc", "run_mode": "pod"}), run_mode_given=True)


def columns_of(text: str, headers: list[str]) -> list[dict[str, str]]:
    """The table a person reads: each row's cells, continuation lines joined, read by where each
    header starts. Fails when a cell runs into the next column (no gap of two spaces before it)."""
    lines = text.rstrip("\n").split("\n")
    starts = [lines[0].index(h) for h in headers]
    rows: list[dict[str, list[str]]] = []
    for line in lines[1:]:
        for start in starts[1:]:
            assert line[start - 2:start].strip() == "", f"a column runs into the next one at {start}: {line!r}"
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        if cells[0]:
            rows.append({h: [] for h in headers})
        for h, cell in zip(headers, cells):
            if cell:
                rows[-1][h].append(cell)
    return [{h: " ".join(parts) for h, parts in row.items()} for row in rows]


@pytest.mark.parametrize("width", [200, 100, 80])
def test_apps_table_keeps_every_column_apart_at_any_terminal_width(width, tmp_path, monkeypatch, capsys) -> None:
    from kod import apps

    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = run(["apps"], tmp_path, monkeypatch, capsys)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= width
    table = columns_of(out, ["APP", "IMAGE", "KEPT WITH -v", "DESCRIPTION"])
    assert [row["APP"] for row in table] == list(apps.APPS)
    for row in table:
        app = apps.APPS[row["APP"]]
        assert row["IMAGE"] == f"kod/{app.image}:0.1.0"
        assert row["KEPT WITH -v"].split() == [f"~/{p}" for p in app.persist_paths]
        assert row["DESCRIPTION"].startswith(app.description)
    assert table[-1]["DESCRIPTION"].endswith("(needs nvidia.com/gpu)")


def test_sessions_table_fits_long_node_names() -> None:
    from datetime import UTC, datetime

    from cloudify.commands import sessions_cmd
    from cloudify.sessions import SessionInfo

    found = [SessionInfo(session="k3x9a0b2", app="libreoffice", user="alice", namespace="kod", run_mode="docker",
                         secure=True, persist="kod-alice-libreoffice", app_phase="Running",
                         app_node="worker-with-a-rather-long-name.example.org", desktop_host="laptop"),
             SessionInfo(session="b2", app="firefox", user="alice", namespace="kod", run_mode="pod",
                         app_phase="Running", app_node="n1", desktop_host="desktop-of-alice")]
    text = sessions_cmd.table(found, datetime.now(UTC), width=100)
    table = columns_of(text, ["SESSION", "APP", "STATE", "MODE", "OPTIONS", "AGE", "NODE", "DESKTOP"])
    assert [(r["SESSION"], r["NODE"], r["DESKTOP"]) for r in table] == [
        ("k3x9a0b2", "worker-with-a-rather-long-name.example.org", "laptop"), ("b2", "n1", "desktop-of-alice")]
    assert table[0]["OPTIONS"] == "secure,persist"


@pytest.mark.parametrize(("argv", "secure"), [
    (["firefox"], True), (["-s", "firefox"], True), (["--secure", "firefox"], True),
    (["--insecure", "firefox"], False), (["-s", "--insecure", "firefox"], False),
])
def test_encryption_is_the_default_and_only_insecure_turns_it_off(argv: list[str], secure: bool) -> None:
    from cloudify import settings as s

    args = cli.build_parser().parse_args(cli.with_default_command(argv))
    assert s.load(path=Path("/nonexistent.toml"), environ={}, overrides=cli.overrides_from(args)).secure is secure


def test_a_kubeconfig_others_can_read_is_refused_with_the_fix(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KOD_CLOUDIFY_LOCAL_COMMANDS", '{"firefox": ["no-such-program-kod"]}')
    kubeconfig = tmp_path / "kubeconfig"
    original = Path.chmod

    def loose(self: Path, mode: int) -> None:  # the fixture's file, left readable by everyone
        original(self, 0o644 if self == kubeconfig else mode)

    monkeypatch.setattr(Path, "chmod", loose)
    code, _, err = run(["-r", "native", "-p", "novnc", "-t", "3", "firefox"], tmp_path, monkeypatch, capsys)
    assert code == 2
    assert f"kubeconfig {kubeconfig} is readable by other users (mode 644)" in err
    assert f"chmod 600 {kubeconfig}" in err
