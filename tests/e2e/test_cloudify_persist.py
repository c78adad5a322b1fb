"""-v: a setting and a bookmark made in Firefox in one session are there in the next; uninstall
deletes the volume only after an explicit confirmation."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.cloudify_support import Cloudify, cloudify, cloudify_images, keys, type_text, wait_gone  # noqa: F401
from tests.e2e.test_cloudify_session import close_firefox, see_firefox

pytestmark = pytest.mark.e2e

PROFILE = "$(dirname $(ls -dt ~/.config/mozilla/firefox/*/prefs.js ~/.mozilla/firefox/*/prefs.js 2>/dev/null | head -1))"  # the profile in use
BOOKMARKS = (
    f"cp {PROFILE}/places.sqlite /tmp/p.sqlite && python3 -c \"import sqlite3, json; c = sqlite3.connect('/tmp/p.sqlite'); "
    "print(json.dumps(c.execute('select b.title, p.url from moz_bookmarks b join moz_places p on b.fk = p.id').fetchall()))\""
)
TOOLBAR_PREF = f"grep -h browser.toolbars.bookmarks.visibility {PROFILE}/prefs.js || true"


def test_settings_and_bookmarks_survive_the_session(cloudify: Cloudify, desktop: Any) -> None:
    session, window = see_firefox(cloudify, desktop, "persist-1", "-v")
    # Through Firefox itself: bookmark a page (Ctrl+D), show the bookmarks toolbar always (a pref).
    keys(desktop, window.id, "ctrl+l")
    type_text(desktop, window.id, "about:robots\n")
    time.sleep(2)
    keys(desktop, window.id, "ctrl+d", pause=1.5)
    keys(desktop, window.id, "Return", pause=1)
    keys(desktop, window.id, "ctrl+shift+b", "ctrl+shift+b", pause=1)
    desktop.screenshot("cloudify-persist-1-done", region=window.box)
    app = cloudify.app_pod(session.session_id)
    # Firefox writes prefs.js a moment after the change.
    deadline = time.monotonic() + 15
    while "always" not in cloudify.exec_app(app, TOOLBAR_PREF) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "always" in cloudify.exec_app(app, TOOLBAR_PREF)
    assert close_firefox(desktop, window, session) == 0, session.stderr
    assert wait_gone(cloudify, timeout=30) == {}
    assert cloudify.pvcs() == [f"kod-{cloudify.user}-firefox-data"]  # only the volume stays

    session, window = see_firefox(cloudify, desktop, "persist-2", "-v")
    app = cloudify.app_pod(session.session_id)
    assert "always" in cloudify.exec_app(app, TOOLBAR_PREF)
    bookmarks = json.loads(cloudify.exec_app(app, BOOKMARKS))
    assert ["Gort! Klaatu barada nikto!", "about:robots"] in bookmarks
    # And the user sees it: the bookmarks toolbar with the bookmark, in the new session.
    desktop.screenshot("cloudify-persist-2-toolbar", region=window.box)
    assert close_firefox(desktop, window, session) == 0

    # uninstall: without a terminal to confirm, the volume is kept; --yes deletes it.
    kept = cloudify.run("uninstall", stdin="")
    assert kept.returncode == 0 and "kept your volumes" in kept.stdout
    assert cloudify.pvcs() == [f"kod-{cloudify.user}-firefox-data"]
    gone = cloudify.run("uninstall", "--yes")
    assert gone.returncode == 0 and "deleted" in gone.stdout
    deadline = time.monotonic() + 60
    while cloudify.pvcs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cloudify.pvcs() == []
