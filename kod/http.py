"""HTTP plumbing shared by interlink, the sidecars and their clients.

Server side: `error_middleware` turns the `kod.errors` vocabulary (and pydantic validation errors,
and malformed JSON) into `ErrorBody` answers with the right status, never a 500 for bad input;
`request_id_middleware` reads or creates `X-Request-Id` and puts it in the logging context;
`bearer_auth_middleware` checks the token in constant time.

Client side: `ApiClient` sends JSON with the token and the current request id, and turns error
answers back into the vocabulary's exceptions.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from kod import errors
from kod.log import get_logger, new_request_id, request_id_var
from kod.wire import REQUEST_ID_HEADER, ErrorBody

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

log = get_logger(__name__)


def error_response(exc: errors.KodError) -> web.Response:
    body = ErrorBody(error=exc.code, message=str(exc), requestId=request_id_var.get())
    return web.json_response(body.model_dump(exclude_none=True), status=exc.status)


def validation_message(exc: ValidationError) -> str:
    """A one-line, human message from a pydantic error: 'spec.containers.0.name: Field required'."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own 404/405 for unknown routes: answer in our body format too.
        return error_response(errors.from_status(exc.status, exc.reason or "error"))
    except errors.KodError as exc:
        if exc.status >= 500:
            log.warning("request failed", error=exc.code, message=str(exc), path=request.path)
        return error_response(exc)
    except ValidationError as exc:
        return error_response(errors.InvalidInput(validation_message(exc)))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error_response(errors.InvalidInput(f"request body is not valid JSON: {exc}"))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled error", path=request.path)
        return error_response(errors.Internal("internal error; see the service's log"))


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get(REQUEST_ID_HEADER) or new_request_id()
    token = request_id_var.set(rid[:64])
    try:
        response = await handler(request)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = rid[:64]
        return response
    finally:
        request_id_var.reset(token)


def bearer_auth_middleware(token: str | None, *, open_paths: frozenset[str] = frozenset()) -> Any:
    """Require `Authorization: Bearer <token>` on every path but `open_paths`.
    `token=None` disables auth (only for unix sockets whose file mode protects them)."""
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.path not in open_paths:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not given:
                raise errors.Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
            if not hmac.compare_digest(given.strip().encode(), expected):
                raise errors.Unauthorized("wrong bearer token")
        return await handler(request)

    return middleware


async def read_model(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body; malformed input raises InvalidInput (400)."""
    raw = await request.read()
    if not raw:
        raise errors.InvalidInput("request body is empty; expected JSON")
    return model.model_validate_json(raw)


def json_model(model: BaseModel, *, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json(exclude_none=True, by_alias=True),
        status=status,
        content_type="application/json",
    )


def parse_query(request: web.Request, model: type[M]) -> M:
    """Typed query options: ?follow=true&tailLines=10 -> model. Bad values raise InvalidInput."""
    data: dict[str, Any] = {}
    for key, value in request.query.items():
        if key not in model.model_fields:
            raise errors.InvalidInput(f"unknown query parameter {key!r}")
        if value.lower() in ("true", "false", "1", "0") and _is_bool_field(model, key):
            data[key] = value.lower() in ("true", "1")
        else:
            data[key] = value
    return model.model_validate(data)


def _is_bool_field(model: type[BaseModel], key: str) -> bool:
    return model.model_fields[key].annotation is bool


class ApiClient:
    """A small JSON client for the InterLink API (interlink or a sidecar).

    `base_url` is http://host:port or unix:///path/to.sock. Errors come back as the vocabulary's
    exceptions; connection failures as `Unavailable`. The caller owns the lifetime (`close()`).
    """

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0) -> None:
        connector: aiohttp.BaseConnector | None = None
        if base_url.startswith("unix://"):
            connector = aiohttp.UnixConnector(path=base_url[len("unix://"):])
            base_url = "http://localhost"
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=None)
        )
        self._timeout = timeout

    async def close(self) -> None:
        await self._session.close()

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        h: dict[str, str] = {}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        rid = request_id_var.get()
        if rid:
            h[REQUEST_ID_HEADER] = rid
        if extra:
            h.update(extra)
        return h

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: Mapping[str, Any] | None = None,
        model: type[M] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request; returns the parsed model (or None). Raises the vocabulary's errors."""
        data = body.model_dump_json(exclude_none=True, by_alias=True) if body is not None else None
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                data=data,
                params=_clean_params(params),
                headers=self.headers({"Content-Type": "application/json"} if data else None),
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error_from(resp.status, raw)
                if model is None:
                    return None
                return model.model_validate_json(raw)
        except aiohttp.ClientConnectionError as exc:
            raise errors.Unavailable(f"cannot reach {self.base_url}: {exc}") from exc
        except TimeoutError as exc:
            raise errors.Unavailable(f"{method} {path} timed out after {timeout or self._timeout}s") from exc

    async def stream(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a response body chunk by chunk (logs, watch). Raises before the first chunk on
        an error answer."""
        try:
            async with self._session.request(
                method, self.base_url + path, params=_clean_params(params), headers=self.headers()
            ) as resp:
                if resp.status >= 400:
                    raise _error_from(resp.status, await resp.read())
                async for chunk in resp.content.iter_any():
                    yield chunk
        # A payload error is a stream cut in the middle (the server went away): as unavailable
        # as a connection that never opened, and not an aiohttp detail for the caller to know.
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise errors.Unavailable(f"stream from {self.base_url}{path} broke: {exc}") from exc

    async def lines(self, path: str, *, params: Mapping[str, Any] | None = None) -> AsyncIterator[bytes]:
        """Stream a response line by line (NDJSON)."""
        try:
            async with self._session.get(
                self.base_url + path, params=_clean_params(params), headers=self.headers()
            ) as resp:
                if resp.status >= 400:
                    raise _error_from(resp.status, await resp.read())
                async for line in resp.content:
                    if line.strip():
                        yield line
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise errors.Unavailable(f"stream from {self.base_url}{path} broke: {exc}") from exc


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _error_from(status: int, raw: bytes) -> errors.KodError:
    try:
        body = ErrorBody.model_validate_json(raw)
        return errors.from_status(status, body.message, body.error)
    except ValidationError:
        text = raw.decode("utf-8", "replace").strip()[:300] or f"HTTP {status}"
        return errors.from_status(status, text)
