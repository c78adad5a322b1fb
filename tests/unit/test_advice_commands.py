"""The advice an error gives names a command that exists: every `python -m localenv ...` command
quoted in the product's sources is one localenv's command line accepts, and the advice for a
missing app image names the command that builds and imports exactly that image. (That this
command then fixes the error against a real cluster: tests/e2e/test_image_advice.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cloudify import preflight
from kod import apps, errors
from localenv import cli, images

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kod", "vk_bridge", "interlink", "sidecars", "cloudify", "localenv")
#: A quoted command: `python -m localenv WORDS`, without placeholders ([...], {...}, a|b, ...).
QUOTED = re.compile(r"`python -m localenv ([^`\[\]{}|.]+)`")


def quoted_commands() -> list[tuple[str, str]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for match in QUOTED.finditer(path.read_text()):
                found.append((str(path.relative_to(ROOT)), match.group(1).strip()))
    return found


def test_the_sources_quote_localenv_commands() -> None:
    assert len(quoted_commands()) > 10


@pytest.mark.parametrize(("where", "command"), quoted_commands())
def test_every_quoted_localenv_command_exists(where: str, command: str) -> None:
    try:
        args = cli.build_parser().parse_args(shlex.split(command))
    except SystemExit:
        pytest.fail(f"{where} advises `python -m localenv {command}`, which localenv does not accept")
    names = {s.name for s in images.specs()}
    assert set(getattr(args, "images", None) or []) <= names, f"{where}: `{command}` names an unknown image"


@pytest.mark.parametrize("app", list(apps.APPS.values()), ids=list(apps.APPS))
def test_a_missing_app_image_is_answered_with_the_command_that_builds_and_imports_it(app: apps.App) -> None:
    with pytest.raises(errors.NotFound) as raised:
        preflight.check(preflight.Preflight(latency=0.1, nodes=[worker(app)]), options(app.name), settings(),
                        "alice", app_image=app.image_ref)
    hint = raised.value.hint or ""
    command = re.search(r"`python -m localenv ([^`]+)`", hint)
    assert command, hint
    args = cli.build_parser().parse_args(shlex.split(command.group(1)))
    assert args.func is cli.cmd_images
    assert args.images == [app.image]
    # That command imports what it builds of this app into the cluster.
    assert app.image in images.session_images()


def test_an_image_of_another_registry_is_not_answered_with_a_local_build() -> None:
    hint = preflight.image_advice("firefox", "registry.example.org/kod/firefox:2")
    assert "localenv" not in hint and "registry.example.org/kod/firefox:2" in hint


def worker(app: apps.App) -> preflight.NodeView:
    """A ready real node that has every image but the app's."""
    return preflight.NodeView.of({
        "metadata": {"name": "worker", "labels": {}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": dict.fromkeys(app.extended_resources, "1"),
                   "images": [{"names": [f"docker.io/{apps.VIEWER_IMAGE}"]}]},
        "spec": {},
    })


def settings():  # type: ignore[no-untyped-def]
    from cloudify.settings import load

    return load(path=Path("/nonexistent"), environ={}, overrides={})


def options(app: str):  # type: ignore[no-untyped-def]
    from cloudify.options import session_options

    return session_options(app, settings(), run_mode_given=True)
