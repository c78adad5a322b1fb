"""One sidecar as interlink sees it: its settings, its client (`kod.http.ApiClient`) and the
health of its status stream.

The client is configured for a proxy: the token is read from the sidecar's token file (again
before every reconnect of the status stream and after a 401, so a sidecar that created or
rotated its token is picked up without restarting interlink); a 401 from the sidecar is
interlink's misconfiguration, so it is reported as `Unavailable` naming the token to fix, never
passed on as the caller's 401. Bodies are forwarded as the bytes interlink received.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kod import errors
from kod.http import ApiClient
from kod.tokens import resolve_token
from kod.watch_follow import LinkHealth

from interlink.settings import SidecarSettings


@dataclass
class Sidecar:
    """A configured sidecar. `api` is opened in the app's cleanup context and closed there."""

    settings: SidecarSettings
    api: ApiClient
    health: LinkHealth = field(default_factory=LinkHealth)

    @property
    def name(self) -> str:
        return self.settings.name


def open_sidecar(settings: SidecarSettings) -> Sidecar:
    """The sidecar with its client (call on the running loop)."""

    def token() -> str | None:
        try:
            return resolve_token(settings.token, settings.token_file)
        except errors.KodError as exc:
            # interlink's own configuration is wrong, not the caller's request: 503, not 400.
            raise errors.Unavailable(f"no token for sidecar {settings.name!r}: {exc}") from exc

    api = ApiClient(
        settings.url,
        token,
        timeout=settings.timeout_seconds,
        name=f"sidecar {settings.name!r}",
        unreachable_hint="check that the sidecar is running (`kod-docker-sidecar`) and the url in interlink's config",
        on_refused_token=lambda: errors.Unavailable(
            f"sidecar {settings.name!r} refused interlink's token",
            hint="make token_file of this sidecar in interlink's config hold the sidecar's token",
        ),
    )
    return Sidecar(settings=settings, api=api)
