"""cloudify's settings: defaults < config file < KOD_CLOUDIFY_* < flags; the desktop facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudify import settings as s
from kod import errors


def test_file_then_environment_then_flags_override_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cloudify.toml"
    path.write_text('quality = 7\ncompression = 4\nsecure = true\nnamespace = "apps"\n')
    env = {"KOD_CLOUDIFY_COMPRESSION": "6", "KOD_CLOUDIFY_RUN_MODE": "docker"}
    got = s.load(path=path, environ=env, overrides={"secure": False, "timeout": None})
    assert (got.quality, got.compression, got.secure, got.namespace, got.run_mode) == (7, 6, False, "apps", "docker")
    assert got.timeout == s.DEFAULT_TIMEOUT_SECONDS  # a flag not given (None) keeps the lower layers


@pytest.mark.parametrize(
    ("content", "env", "fragment"),
    [
        ("quality = 12\n", {}, "quality"),
        ("", {"KOD_CLOUDIFY_TIMEOUT": "-1"}, "timeout"),
        ("geometry = 'big'\n", {}, "geometry"),
        ("run_mode = 'vm'\n", {}, "run_mode"),
        ("quality = [\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_name_the_culprit(tmp_path: Path, content: str, env: dict[str, str], fragment: str) -> None:
    path = tmp_path / "cloudify.toml"
    path.write_text(content)
    with pytest.raises(errors.InvalidInput) as exc:
        s.load(path=path, environ=env)
    assert fragment in str(exc.value)


def test_login_names_become_label_values(tmp_path: Path) -> None:
    host = s.HostEnv(home=tmp_path, login="Jean Dupont@corp")
    assert s.user_name(s.CloudifySettings(), host) == "Jean-Dupont-corp"
    assert s.user_name(s.CloudifySettings(user="alice"), host) == "alice"
    with pytest.raises(errors.InvalidInput):
        s.user_name(s.CloudifySettings(), s.HostEnv(home=tmp_path, login="@@@"))


def test_kubeconfig_is_found_in_the_usual_order_and_is_never_the_local_admins(tmp_path: Path) -> None:
    admin = tmp_path / ".local/share/kod/cluster/admin.kubeconfig"
    admin.parent.mkdir(parents=True)
    admin.write_text("x")
    host = s.HostEnv(home=tmp_path, login="u")
    assert s.kubeconfig_path(s.CloudifySettings(), host) is None
    local = tmp_path / ".local/share/kod/cluster/users/u.kubeconfig"
    local.parent.mkdir(parents=True)
    local.write_text("x")
    assert s.kubeconfig_path(s.CloudifySettings(), host) == local
    # The user's name (setting) picks the user's file.
    assert s.kubeconfig_path(s.CloudifySettings(user="bob"), host) is None
    home = tmp_path / ".kube/config"
    home.parent.mkdir()
    home.write_text("x")
    assert s.kubeconfig_path(s.CloudifySettings(), host) == home
    named = tmp_path / "named"
    named.write_text("x")
    assert s.kubeconfig_path(s.CloudifySettings(), s.HostEnv(home=tmp_path, login="u", kubeconfig=str(named))) == named
    assert s.kubeconfig_path(s.CloudifySettings(kubeconfig="/explicit"), host) == Path("/explicit")


def test_the_sessions_namespace_is_the_users_own_unless_set() -> None:
    assert s.namespace(s.CloudifySettings(), "alice") == "kod-alice"
    assert s.namespace(s.CloudifySettings(), "Jean-Dupont_corp") == "kod-jean-dupont-corp"
    assert s.namespace(s.CloudifySettings(namespace="team"), "alice") == "team"
    with pytest.raises(ValueError, match="DNS-1123 label"):
        s.CloudifySettings(namespace="Not/A/Namespace")


def test_host_env_reads_the_desktop_facts() -> None:
    host = s.HostEnv.from_environ({"HOME": "/home/u", "DISPLAY": ":1", "XAUTHORITY": "/x", "XDG_RUNTIME_DIR": "/run/user/1"})
    assert (host.display, host.xauthority, host.xdg_runtime_dir) == (":1", "/x", "/run/user/1")
    assert host.environ["DISPLAY"] == ":1"
