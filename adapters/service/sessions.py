"""Console sessions: a browser logs in once with its API token and then uses a cookie.

Theory of operation
===================

The supervisor console is a page served by the service itself.  A browser
must not keep the API token in ``localStorage`` or put it in URLs, so the
page trades it once (``POST /console/login``) for two cookies:

``xferd_session``
    A signed, timestamped value (:mod:`itsdangerous`) naming the user by the
    *hash* of their token, a session id and the session's CSRF token.
    ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` (other sites'
    pages cannot make the browser send it), ``Path=/``, ``Secure`` when the
    login came over https.  Nothing is stored server-side: any process
    holding the signing key can check it.  The user is looked up again on
    every request, so a user removed from the config, or given a new token,
    loses their sessions at the next restart.
``xferd_csrf``
    A random token readable by the page's scripts.  Every state-changing
    request authenticated by the session cookie must repeat it in the
    ``X-CSRF-Token`` header (double submit); the value is also bound into
    the signed session, so a cookie planted by a sibling subdomain does not
    pass.  A cross-site form cannot set a header, so it cannot act.

Bearer-token clients are unaffected: a request with an ``Authorization``
header is authenticated by it alone and needs no CSRF header.

The signing key is ``[api] session_secret`` when configured, otherwise 32
random bytes drawn when the process starts (sessions then end with the
process).  Several instances behind one address (HA) need the same
``session_secret`` so that a session started on one is accepted by another.
Sessions last ``[api] session_ttl_s`` (8 h by default): the signature's
timestamp is checked on every use, and an expired session answers 401 so
that the page sends the user back to the login form.  Logging out clears
the cookies and revokes the session id in this process (other instances
honour the cookie until it expires; the browser no longer has it).

Guessing tokens is slowed per client address (:class:`LoginLimiter`): after
5 failed logins within a minute the next attempts are answered 429 with
``Retry-After`` until the oldest failure is a minute old.  A failed login
answers ``{"error": "login failed"}``, whatever was wrong.  Behind a reverse
proxy the client address is the proxy's unless uvicorn's forwarded-header
handling is configured for it.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from starlette.responses import Response

from adapters.service.roles import Principal, Users, hash_token

SESSION_COOKIE = "xferd_session"
CSRF_COOKIE = "xferd_csrf"
CSRF_HEADER = "x-csrf-token"
#: The body of every refused login, whatever was wrong.
LOGIN_FAILED = {"error": "login failed", "detail": "login failed: the token was not accepted"}
CSRF_WRONG = "CSRF token missing or wrong"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Failed logins per client address allowed within ``LOGIN_WINDOW_S``.
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 60.0
#: What the session of the open API (no token, no users; loopback only) stores as its hash.
_OPEN = "open"


class SessionError(Exception):
    """The session cookie cannot be used: ``status`` 401 (log in again) or 403 (CSRF)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Session:
    """A checked session: who, its CSRF token, its id and when it ends (epoch seconds)."""

    principal: Principal
    csrf: str
    sid: str
    expires_at: float


class Sessions:
    """Issues and checks session cookies for one service process."""

    def __init__(
        self,
        users: Users,
        *,
        secret: str | None = None,
        ttl_s: float = 28800.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.users = users
        self.ttl_s = ttl_s
        self.clock = clock
        key: str | bytes = secret if secret is not None else secrets.token_bytes(32)
        owner = self

        class Signer(TimestampSigner):
            # Timestamps from our clock (tests move it; itsdangerous reads time.time()).
            def get_timestamp(self) -> int:
                return int(owner.clock())

        self._serializer = URLSafeTimedSerializer(key, salt="xferd-console-session", signer=Signer)
        # Logged-out session ids → when they would have expired (pruned as they pass).
        self._revoked: dict[str, float] = {}

    # -- issuing ---------------------------------------------------------------------
    def login(self, token: str) -> tuple[Principal, str, str] | None:
        """``(principal, session cookie value, csrf token)`` for a valid API token, else None."""
        principal = self.users.by_token(token)
        if principal is None:
            return None
        csrf = secrets.token_urlsafe(32)
        payload = {
            "h": _OPEN if self.users.open else hash_token(token),
            "s": secrets.token_urlsafe(12),
            "c": csrf,
        }
        value = self._serializer.dumps(payload)
        return Principal(principal.name, principal.role, "session"), str(value), csrf

    # -- checking --------------------------------------------------------------------
    def check(self, value: str) -> Session:
        """The session a cookie value holds; raises :class:`SessionError` (401) if it is no good."""
        try:
            payload, signed_at = self._serializer.loads(
                value, max_age=math.ceil(self.ttl_s), return_timestamp=True
            )
        except SignatureExpired:
            raise SessionError(401, "unauthorized", "the console session expired; log in again") from None
        except BadSignature:
            raise SessionError(401, "unauthorized", "the session cookie is not valid; log in again") from None
        if not isinstance(payload, dict) or not all(isinstance(payload.get(k), str) for k in "hsc"):
            raise SessionError(401, "unauthorized", "the session cookie is not valid; log in again")
        if payload["s"] in self._revoked:
            raise SessionError(401, "unauthorized", "the console session ended; log in again")
        token_hash = payload["h"]
        found = self.users.by_hash(token_hash) if token_hash != _OPEN or self.users.open else None
        if found is None:
            raise SessionError(
                401, "unauthorized", "the session's user is no longer configured; log in again"
            )
        expires_at = signed_at.timestamp() + self.ttl_s
        return Session(Principal(found.name, found.role, "session"), payload["c"], payload["s"], expires_at)

    @staticmethod
    def check_csrf(session: Session, method: str, header: str | None) -> None:
        """State-changing requests must repeat the session's CSRF token in ``X-CSRF-Token`` (403)."""
        if method.upper() in SAFE_METHODS:
            return
        if not header or not hmac.compare_digest(header.encode(), session.csrf.encode()):
            raise SessionError(
                403, CSRF_WRONG, "send header X-CSRF-Token with the value of the xferd_csrf cookie"
            )

    def revoke(self, session: Session) -> None:
        """Logout: this process refuses the session from now on."""
        now = self.clock()
        for sid in [sid for sid, until in self._revoked.items() if until <= now]:
            del self._revoked[sid]
        self._revoked[session.sid] = session.expires_at

    # -- cookies ---------------------------------------------------------------------
    def set_cookies(self, response: Response, value: str, csrf: str, *, secure: bool) -> None:
        max_age = math.ceil(self.ttl_s)
        response.set_cookie(
            SESSION_COOKIE, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="strict"
        )
        # Readable by the page's scripts: they copy it into X-CSRF-Token.
        response.set_cookie(
            CSRF_COOKIE, csrf, max_age=max_age, path="/", secure=secure, httponly=False, samesite="strict"
        )

    @staticmethod
    def clear_cookies(response: Response, *, secure: bool) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True, samesite="strict")
        response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, httponly=False, samesite="strict")


class LoginLimiter:
    """Failed logins per client address in a sliding window; bounded memory."""

    def __init__(
        self,
        limit: int = LOGIN_FAILURES,
        window_s: float = LOGIN_WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None if it may now."""
        failures = self._recent(client)
        if failures is None or len(failures) < self.limit:
            return None
        return max(0.0, failures[0] + self.window_s - self.clock())

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        if failures is None:
            failures = self._failures[client] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_clients:  # forget the longest-quiet address
                self._failures.popitem(last=False)
        self._failures.move_to_end(client)
        failures.append(self.clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        horizon = self.clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures


def is_https(scope: Any) -> bool:
    """Whether the request came over https (uvicorn sets the scheme; wss for websockets)."""
    return str(scope.get("scheme", "http")) in ("https", "wss")
