"""The viewer interface the session drives, whatever runs the viewer."""

from __future__ import annotations

from typing import Protocol

from kod import apps, errors

from cloudify.manifests import Target


class Viewer(Protocol):
    """One session's viewer.

    `start` returns as soon as the viewer was asked to start (it retries the connection by itself
    while the app starts, so it may start before the app runs); `wait_running` returns once its
    process runs; `wait_done` once it ended, with its exit code (0: the user closed the window or
    the app ended). `stop` ends it and removes whatever it created; it may be called more than
    once, and before `start`.
    """

    kind: str

    async def start(self, target: Target) -> None: ...

    async def wait_running(self, timeout: float) -> str:
        """Returns a short description of where it runs (for the progress line)."""
        ...

    async def wait_done(self) -> int: ...

    async def stop(self) -> None: ...


#: What the viewer image's exit codes mean (kod.apps), for the user.
VIEWER_FAILURES = {
    apps.VIEWER_EXIT_CONFIG: ("the viewer could not start: its configuration is wrong or it cannot open your X display",
                              "is DISPLAY right, and may the viewer use the X cookie?"),
    apps.VIEWER_EXIT_AUTH: ("the app refused the session's VNC password", "run the app again (a new session)"),
    apps.VIEWER_EXIT_SSH: ("SSH to the app failed (host key mismatch, session key refused or a forward refused)",
                           "run the app again; if it persists, look at the viewer's log below"),
    apps.VIEWER_EXIT_UNREACHABLE: ("the viewer could not reach the app in time",
                                   "raise -t, or try --reach port-forward when node addresses are not reachable from containers"),
}


def viewer_failure(code: int, log_tail: str) -> errors.KodError | None:
    """The error for a viewer's exit code (None for 0: the session ended normally)."""
    if code == 0:
        return None
    message, hint = VIEWER_FAILURES.get(code, (f"the viewer ended with exit code {code}", "see its log below"))
    tail = "\n  viewer log:\n    " + "\n    ".join(log_tail.strip().splitlines()[-10:]) if log_tail.strip() else ""
    return errors.Unavailable(message + tail, hint=hint)
