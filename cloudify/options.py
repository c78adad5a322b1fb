"""The options of one session, validated before anything is created.

Flags, the config file and the environment all end up in `CloudifySettings`; `SessionOptions`
is the part that describes one run, checked as a whole (e.g. noVNC needs the browser, so it
implies the native run mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from kod import apps, errors

from cloudify.settings import CloudifySettings, Protocol, RunMode


@dataclass(frozen=True)
class SessionOptions:
    app: apps.App
    run_mode: RunMode
    protocol: Protocol
    secure: bool
    timeout: float
    quality: int
    compression: int
    frame_rate: int
    persist: bool

    @property
    def forwards_vnc(self) -> bool:
        """Clear mode (--insecure) with VNC: the viewer reaches VNC without SSH, through cloudify's
        port-forward (the app pod serves it on its localhost only, never on a NodePort)."""
        return not self.secure and self.protocol == "vnc"

    @property
    def forwards_novnc(self) -> bool:
        """Clear mode with noVNC: the browser reaches noVNC through cloudify's port-forward."""
        return not self.secure and self.protocol == "novnc"


def find_app(name: str) -> apps.App:
    """The catalog entry of `name`, or InvalidInput listing the apps there are."""
    app = apps.APPS.get(name)
    if app is None:
        raise errors.InvalidInput(
            f"unknown app {name!r}",
            hint=f"the apps are: {', '.join(sorted(apps.APPS))} (`cloudify apps` describes them)",
        )
    return app


def session_options(app_name: str, settings: CloudifySettings, *, run_mode_given: bool) -> SessionOptions:
    """Combine the app and the settings (flags already merged in) into checked options.
    noVNC is shown by the desktop's browser, so it runs in native mode: implied when no run mode
    was given, an error when another one was."""
    app = find_app(app_name)
    run_mode = settings.run_mode
    if settings.protocol == "novnc" and run_mode != "native":
        if run_mode_given:
            raise errors.InvalidInput(
                f"-p novnc cannot be used with -r {run_mode}: the browser on your desktop is the viewer",
                hint="use -p novnc -r native, or -p vnc",
            )
        run_mode = "native"
    return SessionOptions(
        app=app,
        run_mode=run_mode,
        protocol=settings.protocol,
        secure=settings.secure,
        timeout=settings.timeout,
        quality=settings.quality,
        compression=settings.compression,
        frame_rate=settings.frame_rate,
        persist=settings.persist,
    )
