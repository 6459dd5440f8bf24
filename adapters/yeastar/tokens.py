"""The access-token lifecycle of the Yeastar OpenAPI.

The PBX allows only a handful of live access tokens per application (past
that, ``get_token`` answers 60002) and blocks the client's IP after five
failed logins (70004).  So this module is deliberately stingy:

* one cached access token, refreshed (``refresh_token``) when 80 % of its
  lifetime has passed, keeping the newest refresh token the PBX returns and
  revoking the replaced access token (whether the PBX keeps it alive after a
  refresh is undocumented);
* ``get_token`` only when there is no token or the refresh was refused, and
  the previous access token is revoked first, so at most one is ever live;
* a credentials failure (-1) or an IP block/allow-list refusal (70004,
  70087) becomes a sticky :class:`~adapters.base.FatalPbxError`: later calls
  raise it again without touching the network, because only an admin can
  fix them and retrying credentials is what gets an IP blocked;
* 60002 (too many tokens) is waited out with a short, bounded backoff.

The token pair outlives the process: with a credential store (the service's
``[store]``, credentials kind :data:`CREDENTIAL_KIND`) every pair the PBX
hands out is saved at once, and a process that starts — after a restart, a
``kill -9``, or on another instance taking the PBX over — *refreshes the
stored pair* instead of logging in, then revokes the stored access token.
A pair it cannot use (refresh refused, another API application's) is
revoked before the one login.  So a crash loop costs no new token per start:
at most one live token, plus one if a process died between the PBX's answer
and the save.  Without a store (tests, tools) the behaviour is as before.

Tokens travel only in the query string (the PBX ignores ``Authorization``);
they and the client secret never appear in logs or messages.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from adapters.base import Clock, CredentialStore, FatalPbxError
from adapters.yeastar.frames import (
    ACCOUNT_IP_BLOCKED,
    FAILURE,
    IP_FORBIDDEN,
    MAX_LIMITATION_EXCEEDED,
    OutcomeUnknown,
    PbxUnreachable,
    YeastarError,
    answer_error,
)

log = structlog.get_logger(__name__)

#: Refresh once this fraction of the access token's lifetime has passed.
REFRESH_FRACTION = 0.8
#: The credential kind the token pair is kept under in the store.
CREDENTIAL_KIND = "yeastar_tokens"

_SECRET_PARAM = re.compile(r"((?:access|refresh)_token=)[^&\s\"'#]+")
_SECRET_KEYS = frozenset({"password", "access_token", "refresh_token"})


def redact(text: str) -> str:
    """``text`` with token values in query strings replaced by ``***``."""
    return _SECRET_PARAM.sub(r"\1***", text)


def redact_json(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a request body or answer with secrets replaced by ``***``."""
    return {k: ("***" if k in _SECRET_KEYS else v) for k, v in data.items()}


class _RedactFilter(logging.Filter):
    """Scrubs tokens from records of libraries that log request URLs
    (httpx at INFO, websockets' handshake at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "_token=" in message:
            record.msg, record.args = redact(message), ()
        return True


_FILTER = _RedactFilter()


def install_log_redaction() -> None:
    """Attach the token scrubber to the loggers that print our URLs (idempotent)."""
    for name in ("httpx", "websockets.client"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class Send(Protocol):
    """One unauthenticated-or-token HTTP exchange with the PBX.

    Returns the decoded JSON answer whatever its ``errcode``; raises
    :class:`PbxUnreachable` / :class:`OutcomeUnknown` for transport trouble.
    """

    async def __call__(
        self, method: str, endpoint: str, *, token: str | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...


def _fatal(err: YeastarError) -> FatalPbxError | None:
    """The admin-facing error for a login refusal no retry can fix."""
    if err.errcode == FAILURE:
        return FatalPbxError(
            "The PBX rejected the API credentials (errcode -1): check the Client ID and Client Secret "
            "on the PBX's API page. Not retrying: 5 failed logins block this client's IP."
        )
    if err.errcode == ACCOUNT_IP_BLOCKED:
        return FatalPbxError(
            "The PBX has blocked this client's IP after failed logins (errcode 70004 ACCOUNT IP BLOCKED): "
            "an administrator must remove it from the PBX's blocked IP list, then fix the credentials."
        )
    if err.errcode == IP_FORBIDDEN:
        return FatalPbxError(
            "The PBX does not allow API access from this client's IP (errcode 70087 IP FORBIDDEN): "
            "an administrator must add it to the allowed IP list on the PBX's API page."
        )
    return None


class TokenManager:
    """Hands out a valid access token, logging in and refreshing as needed.

    Safe for concurrent callers: one lock serialises every token request, so
    concurrent refreshes cannot mint several tokens.
    """

    def __init__(
        self,
        send: Send,
        client_id: str,
        client_secret: str,
        *,
        clock: Clock = time.monotonic,
        busy_retry_delays: Sequence[float] = (1.0, 2.0, 4.0),
        store: CredentialStore | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        """``store``: where the token pair is kept across restarts and instances
        (expiry times there are ``wall_clock`` times; ``clock`` measures lifetimes
        in this process)."""
        self._send = send
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._wall = wall_clock
        self._credentials = store
        #: Whether the stored pair was dealt with (adopted, or found unusable and revoked).
        self._stored_checked = store is None
        self._busy_retry_delays = tuple(busy_retry_delays)
        self._lock = asyncio.Lock()
        self._fatal: FatalPbxError | None = None
        self._access: str | None = None
        self._refresh: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._refresh_expires_at = 0.0

    def refresh_in(self) -> float:
        """Seconds until :meth:`token` will hand out a fresh token (0 if due).

        The event consumer reconnects then, so its socket never outlives the
        token it was opened with.
        """
        return max(0.0, self._refresh_at - self._clock())

    async def token(self) -> str:
        """A valid access token (log in or refresh first if needed).

        Raises :class:`FatalPbxError` when no retry can help, or the
        transport/PBX error that prevented getting one.
        """
        async with self._lock:
            if self._fatal is not None:
                raise self._fatal
            if self._access is not None and self._clock() < self._refresh_at:
                return self._access
            return await self._renew(force=False)

    async def renew(self, stale: str) -> str:
        """The PBX said ``stale`` expired (10004): replace it, unless a
        concurrent caller already did."""
        async with self._lock:
            if self._fatal is not None:
                raise self._fatal
            if self._access is not None and self._access != stale:
                return self._access
            return await self._renew(force=True)

    async def close(self) -> None:
        """Revoke the token so it does not count against the PBX's limit."""
        async with self._lock:
            await self._revoke()

    async def _renew(self, *, force: bool) -> str:
        if not self._stored_checked:
            adopted = await self._adopt_stored()
            if adopted is not None:
                return adopted
        now = self._clock()
        if self._refresh is not None and now < self._refresh_expires_at:
            try:
                answer = await self._send("POST", "refresh_token", body={"refresh_token": self._refresh})
            except (PbxUnreachable, OutcomeUnknown):
                # The current token is still good for a while: use it and try
                # the refresh again on the next call.
                if not force and self._access is not None and now < self._expires_at:
                    return self._access
                raise
            err = answer_error(answer)
            if err is None:
                stale, live = self._access, now < self._expires_at
                access = self._keep(answer, now)
                await self._save()
                if stale is not None and live:
                    await self._del_token(stale)  # one live token, even if the PBX keeps the old one
                return access
            log.warning("yeastar.refresh_refused", errcode=err.errcode, errmsg=err.errmsg)
        await self._revoke()
        return await self._login()

    async def _login(self) -> str:
        body = {"username": self._client_id, "password": self._client_secret}
        delays = iter(self._busy_retry_delays)
        while True:
            now = self._clock()
            answer = await self._send("POST", "get_token", body=body)
            err = answer_error(answer)
            if err is None:
                access = self._keep(answer, now)
                await self._save()
                return access
            fatal = _fatal(err)
            if fatal is not None:
                self._fatal = fatal
                log.error("yeastar.login_fatal", errcode=err.errcode, detail=str(fatal))
                raise fatal
            delay = next(delays, None) if err.errcode == MAX_LIMITATION_EXCEEDED else None
            if delay is None:
                raise err
            log.warning("yeastar.token_limit", errcode=err.errcode, retry_in_s=delay)
            await asyncio.sleep(delay)

    def _keep(self, answer: dict[str, Any], sent_at: float) -> str:
        """Keep a token answer; lifetimes count from when we *asked*, to err early."""
        access, refresh = answer.get("access_token"), answer.get("refresh_token")
        if not isinstance(access, str) or not access:
            raise YeastarError(FAILURE, "token answer without access_token")
        ttl = _seconds(answer.get("access_token_expire_time"), 1800.0)
        self._access = access
        self._refresh = refresh if isinstance(refresh, str) and refresh else None
        self._expires_at = sent_at + ttl
        self._refresh_at = sent_at + ttl * REFRESH_FRACTION
        self._refresh_expires_at = sent_at + _seconds(answer.get("refresh_token_expire_time"), 86400.0)
        return access

    # -- the stored pair ----------------------------------------------------------------
    async def _adopt_stored(self) -> str | None:
        """Refresh the pair a previous process (or instance) stored: the new access token,
        or None when there is none to use (then any still-live stored token was revoked).

        A PBX that cannot be reached leaves the stored pair for the next attempt."""
        stored = await self._load()
        if not stored:
            self._stored_checked = True
            return None
        wall, now = self._wall(), self._clock()
        access, refresh = stored.get("access_token"), stored.get("refresh_token")
        live = isinstance(access, str) and _seconds(stored.get("access_expires_at"), 0.0) > wall
        ours = stored.get("client_id") == self._client_id
        if ours and isinstance(refresh, str) and _seconds(stored.get("refresh_expires_at"), 0.0) > wall:
            answer = await self._send("POST", "refresh_token", body={"refresh_token": refresh})
            err = answer_error(answer)
            if err is None:
                self._stored_checked = True
                token = self._keep(answer, now)
                await self._save()  # before revoking: a crash here leaves the new pair known
                if live:
                    await self._del_token(str(access))
                log.info("yeastar.stored_tokens_refreshed")
                return token
            log.warning("yeastar.stored_refresh_refused", errcode=err.errcode, errmsg=err.errmsg)
        elif not ours:
            log.warning("yeastar.stored_tokens_of_another_application")
        self._stored_checked = True
        if live:
            await self._del_token(str(access))  # a pair we cannot use must not hold one of the 8 slots
        return None

    async def _load(self) -> dict[str, Any] | None:
        assert self._credentials is not None
        try:
            return await self._credentials.load()
        except Exception as exc:  # the store's trouble must not stop the PBX connection
            log.warning("yeastar.stored_tokens_unreadable", error=type(exc).__name__)
            return None

    async def _save(self) -> None:
        """Keep the current pair in the store (best effort: a failed write is logged)."""
        if self._credentials is None or self._access is None:
            return
        now, wall = self._clock(), self._wall()
        value = {
            "client_id": self._client_id,
            "access_token": self._access,
            "refresh_token": self._refresh,
            "access_expires_at": wall + (self._expires_at - now),
            "refresh_expires_at": wall + (self._refresh_expires_at - now),
        }
        try:
            await self._credentials.save(value)
        except Exception as exc:  # the token works; only a restart will log in again
            log.warning("yeastar.tokens_not_stored", error=type(exc).__name__)

    async def _revoke(self) -> None:
        """Forget the current token, revoking it if it may still be live; best effort."""
        access, live = self._access, self._clock() < self._expires_at
        self._access = self._refresh = None
        self._refresh_at = self._expires_at = self._refresh_expires_at = 0.0
        if access is not None and live:
            await self._del_token(access)

    async def _del_token(self, access: str) -> None:
        try:
            await self._send("GET", "del_token", token=access)
        except (PbxUnreachable, OutcomeUnknown) as exc:
            log.info("yeastar.revoke_failed", error=type(exc).__name__)


def _seconds(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and value > 0 else default
