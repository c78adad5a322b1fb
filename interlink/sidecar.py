"""The HTTP client for one sidecar: JSON calls, raw streams, and the sidecar's errors mapped to
the vocabulary as the virtual kubelet should see them.

Bodies are forwarded as the bytes interlink received (after validating them), so Kubernetes
fields interlink does not model still reach a sidecar that does. The request id of the current
request travels along (`X-Request-Id`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from kod import errors
from kod.log import get_logger, request_id_var
from kod.tokens import resolve_token
from kod.wire import REQUEST_ID_HEADER, ErrorBody

from interlink.settings import SidecarSettings

M = TypeVar("M", bound=BaseModel)
log = get_logger(__name__)

#: Sidecar answers longer than this (in an error body) are cut when quoted.
_QUOTE = 300


class SidecarClient:
    """One sidecar. Open it inside the app's cleanup context and `close()` it there."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.name = settings.name
        connector: aiohttp.BaseConnector | None = None
        base = settings.url
        if base.startswith("unix://"):
            connector = aiohttp.UnixConnector(path=base[len("unix://"):])
            base = "http://sidecar"
        self._base = base
        # No total timeout on the session: streams (logs, watch) live as long as they need;
        # calls pass their own. Connecting must be quick, though.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(settings.timeout_seconds, 10.0)),
        )
        self._token: str | None = None
        self._token_loaded = False

    async def close(self) -> None:
        await self._session.close()

    def reload_token(self) -> None:
        """Re-read the token file (on every reconnect of the watch stream, and after a 401), so a
        sidecar that created or rotated its token is picked up without restarting interlink."""
        try:
            self._token = resolve_token(self.settings.token, self.settings.token_file)
        except errors.KodError as exc:
            # interlink's own configuration is wrong, not the caller's request: 503, not 400.
            raise errors.Unavailable(f"no token for sidecar {self.name!r}: {exc}") from exc
        self._token_loaded = True

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        if not self._token_loaded:
            self.reload_token()
        headers: dict[str, str] = {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        rid = request_id_var.get()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        if extra:
            headers.update(extra)
        return headers

    def _unreachable(self, exc: BaseException) -> errors.Unavailable:
        detail = str(exc) or type(exc).__name__
        return errors.Unavailable(
            f"sidecar {self.name!r} at {self.settings.url} cannot be reached: {detail}",
            hint="check that the sidecar is running (`kod-docker-sidecar`) and the url in interlink's config",
        )

    def _error(self, status: int, raw: bytes) -> errors.KodError:
        if status == 401:
            # The virtual kubelet's token was fine; interlink's token for the sidecar was not.
            # Passing 401 on would send the operator to the wrong token.
            self._token_loaded = False
            return errors.Unavailable(
                f"sidecar {self.name!r} refused interlink's token",
                hint="make token_file of this sidecar in interlink's config hold the sidecar's token",
            )
        try:
            body = ErrorBody.model_validate_json(raw)
            return errors.from_status(status, body.message, body.error)
        except ValidationError:
            text = raw.decode("utf-8", "replace").strip()[:_QUOTE] or f"HTTP {status}"
            return errors.from_status(status, f"sidecar {self.name!r} answered {status}: {text}")

    async def call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, M]:
        """One JSON exchange: (status, parsed body). Errors raise the vocabulary."""
        seconds = timeout or self.settings.timeout_seconds
        try:
            headers = self._headers({"Content-Type": "application/json"} if data is not None else None)
            async with self._session.request(
                method,
                self._base + path,
                data=data,
                params=_query(params),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._error(resp.status, raw)
                try:
                    return resp.status, model.model_validate_json(raw)
                except ValidationError as exc:
                    raise errors.Unavailable(
                        f"sidecar {self.name!r} sent a malformed {model.__name__} for {method} {path}: "
                        f"{str(exc).splitlines()[0]}"
                    ) from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise errors.Unavailable(f"sidecar {self.name!r}: {method} {path} took longer than {seconds:g} s") from exc

    @asynccontextmanager
    async def open(
        self, path: str, *, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose body the caller streams. Error answers raise before anything is yielded;
        leaving the block closes the connection (and so the sidecar's side of the stream).
        Errors of the caller's own block (e.g. its client went away) pass through unchanged."""
        try:
            resp = await self._session.get(self._base + path, params=_query(params), headers=self._headers())
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc
        try:
            if resp.status >= 400:
                try:
                    raw = await resp.read()
                except aiohttp.ClientError as exc:
                    raise self._unreachable(exc) from exc
                raise self._error(resp.status, raw)
            yield resp
        finally:
            resp.close()


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
