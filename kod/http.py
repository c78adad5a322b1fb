"""HTTP plumbing shared by interlink, the sidecars and their clients.

Server side: `error_middleware` turns the `kod.errors` vocabulary (and pydantic validation errors,
and malformed JSON) into `ErrorBody` answers with the right status, never a 500 for bad input;
`request_id_middleware` reads or creates `X-Request-Id` and puts it in the logging context;
`bearer_auth_middleware` checks the token in constant time.

Client side: `ApiClient`, the one client of the InterLink API (vk_bridge towards interlink,
interlink towards its sidecars, tests, benchmarks): JSON or raw-bytes bodies with the token and the
current request id, error answers turned back into the vocabulary's exceptions, streamed
answers (`Stream`) read chunk by chunk or line by line (`kod.lines`), and the WebSockets of
exec, attach and port-forward (`ApiClient.websocket`, framed by `kod.streams`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from kod import errors
from kod.lines import MAX_LINE_BYTES, read_chunks, split_lines
from kod.log import get_logger, new_request_id, request_id_var
from kod.wire import REQUEST_ID_HEADER, STREAM_ERROR_CODE_HEADER, STREAM_ERROR_HEADER, ErrorBody

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


#: What a client sends as its bearer token: the token itself, None (no auth), or a function that
#: reads it (called before the first request, by `ApiClient.reload_token()`, and again after a
#: 401), for a token that the peer creates or rotates while the client runs.
TokenSource = str | None | Callable[[], str | None]


class Stream:
    """A streamed answer, open: its headers, then its body chunk by chunk or line by line.

    A body cut in the middle (the peer went away), a stream silent for longer than `idle_seconds`,
    and a stream closed by `close()` while it is read all raise `Unavailable`: a stream never
    looks complete when it is not. Leaving the `ApiClient.open` block closes the connection, and
    so the peer's side of the stream.
    """

    def __init__(self, response: aiohttp.ClientResponse, where: str) -> None:
        self._response = response
        self._closed = False
        #: Names the stream in messages ("the stream of sidecar 'docker' at ... (/v1/watch)").
        self.where = where

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def chunks(self, *, idle_seconds: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, in the peer's chunks (a proxy forwards them as they are)."""
        try:
            async for chunk in read_chunks(self._response.content, idle_seconds):
                yield chunk
        except TimeoutError as exc:
            raise errors.Unavailable(f"{self.where} stayed silent for {idle_seconds:g} s") from exc
        # A payload error is a stream cut in the middle (the peer went away): as unavailable as a
        # connection that never opened, and not an aiohttp detail for the caller to know.
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if self._closed:
                raise errors.Unavailable(f"{self.where} was closed") from exc
            raise errors.Unavailable(f"{self.where} broke: {str(exc) or type(exc).__name__}") from exc
        if self._closed:
            raise errors.Unavailable(f"{self.where} was closed")

    def lines(self, *, idle_seconds: float | None = None, max_line_bytes: int = MAX_LINE_BYTES) -> AsyncIterator[bytes]:
        """The body's non-empty lines, without their newline (NDJSON), with no fixed line-size
        limit but `max_line_bytes` (`kod.lines`); a last line without a newline is dropped: it
        is an event cut in the middle."""
        return split_lines(self.chunks(idle_seconds=idle_seconds), max_line_bytes=max_line_bytes)

    def close(self) -> None:
        """Close the connection now (shutdown); a reader of this stream gets `Unavailable`."""
        self._closed = True
        self._response.close()


class ApiClient:
    """The client of the InterLink API (interlink, or a sidecar): vk_bridge's provider, interlink's
    links to its sidecars, the tests and the benchmarks all use this one.

    `base_url` is http(s)://host:port or unix:///path/to.sock; `name` names the peer in messages
    ("sidecar 'docker'"). Every request carries the bearer token and the current request id
    (`X-Request-Id`). Error answers come back as the vocabulary's exceptions (the ErrorBody's code,
    else the status); a peer that cannot be reached, is too slow, sends a malformed body or cuts a
    stream is `Unavailable` (with `unreachable_hint` when it cannot be reached). A 401 raises what
    `on_refused_token()` returns, when given: for a proxy, a refused token is its own
    misconfiguration, not its caller's, and passing the 401 on would send the operator to the
    wrong token. The caller owns the lifetime (`close()`).
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        timeout: float = 30.0,
        name: str | None = None,
        unreachable_hint: str | None = None,
        on_refused_token: Callable[[], errors.KodError] | None = None,
    ) -> None:
        self.url = base_url.rstrip("/")
        self.name = name
        connector: aiohttp.BaseConnector | None = None
        base = self.url
        if base.startswith("unix://"):
            connector = aiohttp.UnixConnector(path=base[len("unix://"):])
            base = "http://localhost"
        self.base_url = base
        # No total timeout on the session: streams (logs, watch) live as long as they need; calls
        # pass their own. Connecting must be quick, though.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 10.0), sock_read=None),
        )
        self._timeout = timeout
        self._unreachable_hint = unreachable_hint
        self._on_refused_token = on_refused_token
        self._load_token = token if callable(token) else None
        self._token = None if callable(token) else token
        self._token_loaded = not callable(token)

    async def close(self) -> None:
        await self._session.close()

    @property
    def _who(self) -> str:
        return f"{self.name} at {self.url}" if self.name else self.url

    def reload_token(self) -> None:
        """Read the token again (when it comes from a function): before each reconnect of a
        long-lived stream, so that a token created or rotated by the peer is picked up. Raises
        what the function raises."""
        if self._load_token is not None:
            self._token = self._load_token()
            self._token_loaded = True

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers of every request: the token and the current request id."""
        if not self._token_loaded:
            self.reload_token()
        h: dict[str, str] = {}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        rid = request_id_var.get()
        if rid:
            h[REQUEST_ID_HEADER] = rid
        if extra:
            h.update(extra)
        return h

    async def call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: BaseModel | None = None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, M]:
        """One JSON exchange: (status, the parsed answer). `body` is a model to send, `data` raw
        JSON bytes (a proxy forwards a body as it received it, so fields it does not model still
        reach the next hop). A malformed answer is `Unavailable`; errors raise the vocabulary."""
        status, raw = await self._exchange(method, path, body=body, data=data, params=params, timeout=timeout)
        try:
            return status, model.model_validate_json(raw)
        except ValidationError as exc:
            raise errors.Unavailable(
                f"{self.name or self.url} sent a malformed {model.__name__} for {method} {path}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        model: type[M] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request; returns the parsed model (None without `model`). See `call`."""
        if model is None:
            await self._exchange(method, path, body=body, data=data, params=params, timeout=timeout)
            return None
        return (await self.call(method, path, model, body=body, data=data, params=params, timeout=timeout))[1]

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None,
        data: bytes | None,
        params: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> tuple[int, bytes]:
        if body is not None:
            data = body.model_dump_json(exclude_none=True, by_alias=True).encode()
        seconds = timeout or self._timeout
        headers = self.headers({"Content-Type": "application/json"} if data is not None else None)
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                data=data,
                params=_clean_params(params),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as resp:
                status, raw = resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc
        except TimeoutError as exc:
            raise errors.Unavailable(f"{self.name or self.url}: {method} {path} took longer than {seconds:g} s") from exc
        if status >= 400:
            raise self._error(status, raw)
        return status, raw

    @asynccontextmanager
    async def open(
        self, path: str, *, params: Mapping[str, Any] | None = None, method: str = "GET"
    ) -> AsyncIterator[Stream]:
        """A request whose answer the caller streams (logs, watch). An error answer raises before
        anything is yielded; leaving the block closes the connection. Errors of the caller's own
        block (e.g. its own client went away) pass through unchanged."""
        headers = self.headers()
        try:
            resp = await self._session.request(method, self.base_url + path, params=_clean_params(params), headers=headers)
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc
        try:
            if resp.status >= 400:
                try:
                    raw = await resp.read()
                except aiohttp.ClientError as exc:
                    raise self._unreachable(exc) from exc
                raise self._error(resp.status, raw)
            yield Stream(resp, f"the stream from {self._who} ({path})")
        finally:
            resp.close()

    async def stream(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[bytes]:
        """A streamed answer chunk by chunk (logs). Raises before the first chunk on an error
        answer, and `Unavailable` when the stream is cut."""
        async with self.open(path, params=params, method=method) as stream:
            async for chunk in stream.chunks():
                yield chunk

    async def lines(
        self, path: str, *, params: Mapping[str, Any] | None = None, idle_seconds: float | None = None
    ) -> AsyncIterator[bytes]:
        """A streamed answer line by line (NDJSON), see `Stream.lines`."""
        async with self.open(path, params=params) as stream:
            async for line in stream.lines(idle_seconds=idle_seconds):
                yield line

    async def websocket(
        self, path: str, *, params: Sequence[tuple[str, str]] | Mapping[str, Any] | None = None,
        max_msg_size: int = 4 * 1024 * 1024, heartbeat: float | None = 30.0,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket (the streams of `kod.streams`: exec, attach, port-forward) with the
        token and the request id. A refused upgrade raises the vocabulary's error, its message
        read from the refusal's headers (`kod.streams.refusal`); the caller closes the socket."""
        query = list(params.items()) if isinstance(params, Mapping) else list(params or ())
        try:
            return await self._session.ws_connect(
                self.base_url + path, params=[(k, str(v)) for k, v in query], headers=self.headers(),
                compress=0, max_msg_size=max_msg_size, autoping=True, heartbeat=heartbeat,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401 and self._on_refused_token is not None:
                raise self._on_refused_token() from exc
            message = unquote((exc.headers or {}).get(STREAM_ERROR_HEADER, "")) or f"{self._who} refused the stream: {exc.message}"
            raise errors.from_status(exc.status or 503, message, (exc.headers or {}).get(STREAM_ERROR_CODE_HEADER)) from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> errors.Unavailable:
        detail = str(exc) or type(exc).__name__
        return errors.Unavailable(f"{self._who} cannot be reached: {detail}", hint=self._unreachable_hint)

    def _error(self, status: int, raw: bytes) -> errors.KodError:
        if status == 401:
            if self._load_token is not None:
                self._token_loaded = False  # read it again before the next request
            if self._on_refused_token is not None:
                return self._on_refused_token()
        try:
            body = ErrorBody.model_validate_json(raw)
            return errors.from_status(status, body.message, body.error)
        except ValidationError:
            text = raw.decode("utf-8", "replace").strip()[:300] or f"HTTP {status}"
            return errors.from_status(status, f"{self.name or self.url} answered {status}: {text}")


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
