"""Projected service-account tokens, cached and refreshed as the kubelet's token manager does.

    tokens = TokenManager(request, refresh_fraction=0.8, max_age_seconds=86400)
    token = await tokens.get(key)       # a cached token, or a new TokenRequest when it is due
    tokens.forget(pod_uid)              # the pod is gone: its tokens are dropped

A token is requested again (through the TokenRequest API, bound to the pod) once
`refresh_fraction` of its lifetime has passed, or at `max_age_seconds` at the latest, each minus
a jitter of up to 10 s (the kubelet's requiresRefresh: 80 % and 24 h). The lifetime is what the
API server granted (the answer's spec.expirationSeconds and status.expirationTimestamp), not
what was asked for. Until then the same token is returned, so resolving a pod's volumes again
costs no request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: The kubelet's jitter on refresh times, so that many tokens are not refreshed at once.
MAX_JITTER_SECONDS = 10.0


@dataclass(frozen=True)
class TokenKey:
    """What a token is for: one projected source of one pod."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expiration_seconds: int
    pod_name: str
    pod_uid: str


@dataclass(frozen=True)
class Token:
    """A token and when it expires (Unix time), with the lifetime the API server granted."""

    token: str
    expires_at: float
    lifetime_seconds: float

    @property
    def issued_at(self) -> float:
        return self.expires_at - self.lifetime_seconds


Request = Callable[[TokenKey], Awaitable[Token]]


class TokenManager:
    """Caches tokens per `TokenKey` and says when each is due (see the module docstring)."""

    def __init__(
        self, request: Request, *, refresh_fraction: float = 0.8, max_age_seconds: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time, jitter: Callable[[], float] | None = None,
    ) -> None:
        self._request = request
        self.refresh_fraction = refresh_fraction
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._jitter = jitter or (lambda: random.random() * MAX_JITTER_SECONDS)
        self._tokens: dict[TokenKey, Token] = {}

    def requires_refresh(self, token: Token) -> bool:
        """The kubelet's rule: past the max age, or past `refresh_fraction` of the lifetime."""
        now, jitter = self._clock(), self._jitter()
        if now > token.issued_at + self.max_age_seconds - jitter:
            return True
        return now > token.issued_at + token.lifetime_seconds * self.refresh_fraction - jitter

    async def get(self, key: TokenKey) -> str:
        """The cached token for `key`, or a new one when there is none or it is due."""
        cached = self._tokens.get(key)
        if cached is None or self.requires_refresh(cached):
            cached = self._tokens[key] = await self._request(key)
        return cached.token

    def forget(self, pod_uid: str) -> None:
        """Drop the tokens of a pod that is gone."""
        for key in [k for k in self._tokens if k.pod_uid == pod_uid]:
            del self._tokens[key]

    def pods(self) -> set[str]:
        """The pods that have cached tokens."""
        return {k.pod_uid for k in self._tokens}
