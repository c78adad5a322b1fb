"""One error vocabulary for the whole project.

Every component raises these; `kod.http` maps them to HTTP status codes on the server side and
back to these exceptions on the client side, so a `NotFound` raised in the Docker sidecar arrives
as a `NotFound` in the virtual kubelet. Messages are written for the person who reads them: say
what is wrong and, where it helps, what to do next.
"""

from __future__ import annotations

from typing import ClassVar


class KodError(Exception):
    """Base of the vocabulary. `status` is the HTTP status the error maps to."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "Internal"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: What the reader can do about it ("run `python -m localenv up`"), shown after the message.
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidInput(KodError):
    """The request or the user's input is malformed or out of range. Never retried."""

    status = 400
    code = "InvalidInput"


class Unauthorized(KodError):
    """No credentials, or wrong ones."""

    status = 401
    code = "Unauthorized"


class Forbidden(KodError):
    """Understood, authenticated, and refused: e.g. a pod that breaks the desktop's policy."""

    status = 403
    code = "Forbidden"


class NotFound(KodError):
    """The named object does not exist (or no longer does)."""

    status = 404
    code = "NotFound"


class Conflict(KodError):
    """The object exists in a state that conflicts with the request (e.g. same name, other uid)."""

    status = 409
    code = "Conflict"


class Unavailable(KodError):
    """A dependency (Docker engine, API server, a sidecar) cannot be reached now. Retryable."""

    status = 503
    code = "Unavailable"


class Internal(KodError):
    """A bug or an unexpected failure. The message never carries secrets."""

    status = 500
    code = "Internal"


#: code -> class, for turning an error body back into the exception that produced it.
BY_CODE: dict[str, type[KodError]] = {
    cls.code: cls
    for cls in (InvalidInput, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, Internal)
}

#: status -> class, for error bodies that do not carry a known code (e.g. a proxy's 502).
BY_STATUS: dict[int, type[KodError]] = {cls.status: cls for cls in BY_CODE.values()}


def from_status(status: int, message: str, code: str | None = None) -> KodError:
    """Build the vocabulary's exception for an HTTP error answer."""
    cls = BY_CODE.get(code or "") or BY_STATUS.get(status)
    if cls is None:
        cls = Unavailable if status in (429, 502, 504) or status >= 500 else InvalidInput
    return cls(message)


def is_retryable(exc: BaseException) -> bool:
    """True for errors worth retrying with backoff: unavailability, not bad input or policy."""
    return isinstance(exc, (Unavailable, ConnectionError, TimeoutError))
