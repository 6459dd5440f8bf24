"""Webex access tokens that renew themselves: an integration's OAuth tokens.

Theory of operation
-------------------
Webex call control needs a *user's* token.  A personal access token from the
developer portal lasts 12 hours; a service uses an **integration**: the user
authorizes it once (authorization-code grant, ``xferd webex authorize``),
which yields a refresh token (about 90 days, renewed by use) and short-lived
access tokens (about 14 days) obtained from it at
``POST <base_url>/access_token`` with ``grant_type=refresh_token``.

Every request asks a :class:`TokenSource` for the access token to send.
:class:`StaticToken` is the configured ``access_token`` as it is.
:class:`OAuthTokens` keeps one access token and:

* **renews it before expiry**: a background task refreshes once
  :data:`RENEW_FRACTION` of its lifetime has passed;
* **renews it once on a 401** (:meth:`OAuthTokens.renew`): the client then
  retries the refused request once — a 401 means Webex refused before
  acting, so the retry can never double an operation.  Concurrent renewals
  share one refresh, and a request refused with a token that has already
  been replaced just retries with the new one;
* **keeps the latest refresh token in the store** (:class:`~adapters.base.
  CredentialStore`): whether Webex changes the refresh-token string on use
  is unconfirmed, so whatever the last answer returned is saved at once and
  used on the next start.  The store also keeps the access token and its
  expiry, so a restart does not refresh needlessly.  A ``refresh_token`` in
  the config is the seed of that chain: the stored token wins while it
  descends from the configured one (the store remembers a fingerprint of its
  seed); a *different* configured token means the admin put in a new one,
  and it wins;
* **degrades instead of dying**: a refresh Webex refuses (400/401: the grant
  was revoked or expired) sets :attr:`~OAuthTokens.problem` — a sentence for
  ``/healthz`` saying what to do — and the service answers transfers 503
  until a refresh works again.  Refused, it re-reads the store every few
  seconds and tries again only when the store holds a *different* refresh
  token (``xferd webex authorize`` writes one): no restart, and no hammering
  Webex with a token it refused.  A refresh that fails for a passing reason
  (network, 5xx) is retried with back-off and only becomes a problem once the
  access token has expired.

Token values never leave this module except as the ``Authorization`` header
of a request: they are not logged, not put in exceptions, and reach the
observer (hence recordings) masked as ``***``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import structlog

from adapters.base import Clock, CredentialStore, FatalPbxError, Observer

log = structlog.get_logger(__name__)

#: The credential kind xferd stores for a Webex integration (``credentials.kind``).
CREDENTIAL_KIND = "webex_oauth"
#: Refresh once this fraction of the access token's lifetime has passed.
RENEW_FRACTION = 0.8
#: Scopes xferd asks for: list calls, and act on them.
SCOPES = ("spark:calls_read", "spark:calls_write")
MASK = "***"
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0
#: A stored access token with less time left than this is refreshed at start instead.
_STORED_MIN_S = 60.0


class TokenSource(Protocol):
    """Where a Webex client gets the access token it sends."""

    @property
    def problem(self) -> str | None:
        """Why no usable token can be had right now (a sentence for ``/healthz``), or None."""

    async def token(self) -> str:
        """An access token to send now.  Raises :class:`TokenUnavailable`."""

    async def renew(self, rejected: str) -> bool:
        """Webex answered 401 to a request sent with ``rejected``: get another
        token.  True when a different token is now available (retry once)."""


class TokenUnavailable(Exception):
    """No access token can be had now; ``str()`` says why (never a secret)."""


class StaticToken:
    """The configured ``access_token``: sent as is, never renewed."""

    problem: str | None = None

    def __init__(self, value: str) -> None:
        self._value = value

    async def token(self) -> str:
        return self._value

    async def renew(self, rejected: str) -> bool:
        return False


def fingerprint(token: str) -> str:
    """A stable, irreversible name for a refresh token (to tell a configured token from its successors)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token answer gave: both tokens and when each expires (epoch seconds)."""

    access_token: str
    expires_at: float
    refresh_token: str
    refresh_expires_at: float | None

    def stored(self, seed: str | None) -> dict[str, Any]:
        """The form kept in the credential store."""
        return {
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "refresh_token": self.refresh_token,
            "refresh_expires_at": self.refresh_expires_at,
            "seed": seed,
        }


class TokenRefused(Exception):
    """The token endpoint refused the grant (400/401): ``str()`` is Webex's reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TokenEndpoint:
    """``POST <base_url>/access_token``: one exchange per call, reported to the observer masked."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        observer: Observer | None = None,
        clock: Clock = time.time,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._observer = observer or Observer()
        self._clock = clock
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def refresh(self, refresh_token: str) -> Grant:
        return await self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def exchange_code(self, code: str, redirect_uri: str) -> Grant:
        """The authorization-code grant of ``xferd webex authorize``."""
        return await self._grant(
            {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        )

    async def _grant(self, fields: dict[str, str]) -> Grant:
        """One token request.  Raises :class:`TokenRefused` (400/401) or
        :class:`TokenUnavailable` (anything else: network, 5xx, a bad answer)."""
        form = {**fields, "client_id": self.client_id, "client_secret": self._client_secret}
        shown = {
            key: MASK if key in ("client_secret", "refresh_token", "code") else v for key, v in form.items()
        }
        started = time.monotonic()
        result, answer, status = "error", None, None
        try:
            try:
                response = await self._http.post(self.token_url, data=form)
            except httpx.HTTPError as exc:
                result = "unknown"
                raise TokenUnavailable(f"token endpoint unreachable ({type(exc).__name__})") from None
            status = response.status_code
            body = _json(response)
            answer = {k: MASK if k in ("access_token", "refresh_token") else v for k, v in body.items()}
            if status in (400, 401):
                result = "refused"
                raise TokenRefused(status, _reason(body, response))
            if not response.is_success:
                result = "unknown" if status >= 500 else "refused"
                raise TokenUnavailable(f"token endpoint answered HTTP {status}: {_reason(body, response)}")
            grant = self._parse(body)
            result = "ok"
            return grant
        finally:
            self._observer.pbx_request(
                "/access_token", shown, answer, result, time.monotonic() - started, status=status
            )

    def _parse(self, body: dict[str, Any]) -> Grant:
        access, refresh = body.get("access_token"), body.get("refresh_token")
        expires_in = body.get("expires_in")
        if not isinstance(access, str) or not access or not isinstance(expires_in, int | float):
            raise TokenUnavailable("token endpoint answered without access_token/expires_in")
        if not isinstance(refresh, str) or not refresh:
            raise TokenUnavailable("token endpoint answered without refresh_token")
        now = self._clock()
        refresh_in = body.get("refresh_token_expires_in")
        return Grant(
            access_token=access,
            expires_at=now + float(expires_in),
            refresh_token=refresh,
            refresh_expires_at=now + float(refresh_in) if isinstance(refresh_in, int | float) else None,
        )


class OAuthTokens:
    """A :class:`TokenSource` for an integration (see the module docstring).

    ``on_problem`` is called with the new :attr:`problem` whenever it changes
    (None: solved), so the adapter can take the link down or bring it back.
    """

    def __init__(
        self,
        endpoint: TokenEndpoint,
        *,
        refresh_token: str | None,
        store: CredentialStore | None,
        clock: Clock = time.time,
        renew_fraction: float = RENEW_FRACTION,
        retry_first_s: float = _RETRY_FIRST_S,
        retry_max_s: float = _RETRY_MAX_S,
    ) -> None:
        self._endpoint = endpoint
        self._configured = refresh_token
        self._store = store
        self._clock = clock
        self._fraction = renew_fraction
        self._retry_first_s = retry_first_s
        self._retry_max_s = retry_max_s
        self._grant: Grant | None = None
        self._issued_at = 0.0
        self._refresh_token: str | None = None
        self._seed: str | None = None
        self._refused: str | None = None  # the refresh token Webex refused, until another one is found
        self._problem: str | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.on_problem: Callable[[str | None], None] = lambda problem: None

    @property
    def problem(self) -> str | None:
        return self._problem

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        """Pick the newest refresh token, get an access token if the stored
        one will not do, and start renewing in the background.

        Raises :class:`~adapters.base.FatalPbxError` when there is no refresh
        token at all, or Webex refuses it: only an admin can fix that (and
        ``xferd run`` says how).  A token endpoint that cannot be reached is
        not fatal: the renewer keeps trying and :attr:`problem` says why.
        """
        stored = await self._load()
        if self._refresh_token is None:
            raise FatalPbxError(
                "no Webex refresh token: set pbx.refresh_token, or run "
                "`xferd webex authorize --config PATH` once to store one"
            )
        if stored is not None and stored.expires_at - self._clock() > _STORED_MIN_S:
            self._set_grant(stored, issued_at=None)
        else:
            try:
                await self._refresh_once()
            except TokenRefused as refused:
                raise FatalPbxError(_refused_sentence(refused)) from None
            except TokenUnavailable as exc:
                self._set_problem(f"cannot get a Webex access token: {exc}; retrying")
        self._task = asyncio.create_task(self._renewer())

    async def close(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._inflight = None
        await self._endpoint.aclose()

    # -- TokenSource -----------------------------------------------------

    async def token(self) -> str:
        grant = self._grant
        if grant is not None and grant.expires_at > self._clock():
            return grant.access_token
        # No token, or it expired before the renewer could replace it.
        if not await self._refresh_shared():
            raise TokenUnavailable(self._problem or "no Webex access token")
        assert self._grant is not None
        return self._grant.access_token

    async def renew(self, rejected: str) -> bool:
        grant = self._grant
        if grant is not None and grant.access_token != rejected:
            return True  # already replaced while that request was under way
        log.info("webex_token_rejected", action="refreshing once, then retrying the request once")
        return await self._refresh_shared()

    # -- internals -------------------------------------------------------

    async def _load(self) -> Grant | None:
        """Choose the refresh token to use; return the stored grant when it belongs to it."""
        configured = self._configured
        value = await self._store.load() if self._store is not None else None
        seed = fingerprint(configured) if configured else None
        stored_rt = value.get("refresh_token") if value else None
        if value is None or not isinstance(stored_rt, str) or not stored_rt:
            self._refresh_token, self._seed = configured, seed
            return None
        descends = configured is None or value.get("seed") == seed or stored_rt == configured
        if not descends:
            log.info(
                "webex_refresh_token_from_config", why="the config names a token the store did not start from"
            )
            self._refresh_token, self._seed = configured, seed
            return None
        self._refresh_token, self._seed = stored_rt, value.get("seed") if configured is None else seed
        access, expires_at = value.get("access_token"), value.get("expires_at")
        if isinstance(access, str) and access and isinstance(expires_at, int | float):
            refresh_expires = value.get("refresh_expires_at")
            return Grant(
                access, float(expires_at), stored_rt,
                float(refresh_expires) if isinstance(refresh_expires, int | float) else None,
            )  # fmt: skip
        return None

    async def _newer_in_store(self) -> bool:
        """Whether the store now holds a refresh token other than the one Webex
        refused (``xferd webex authorize`` ran, or another instance renewed)."""
        if self._store is None:
            return False
        try:
            value = await self._store.load()
        except Exception as exc:  # a locked store: try again at the next round
            log.warning("webex_token_store_unreadable", error=type(exc).__name__, detail=str(exc)[:200])
            return False
        stored_rt = value.get("refresh_token") if value else None
        if isinstance(stored_rt, str) and stored_rt and stored_rt != self._refused:
            self._refresh_token = stored_rt
            self._seed = value.get("seed") if value else None
            return True
        return False

    async def _refresh_shared(self) -> bool:
        """One refresh shared by every caller that needs it now; True on success."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._refresh_guarded())
        return await asyncio.shield(self._inflight)

    async def _refresh_guarded(self) -> bool:
        if self._refused is not None and not await self._newer_in_store():
            return False  # Webex refused this token: only a new one can help
        try:
            await self._refresh_once()
        except TokenRefused as refused:
            self._refused_now(refused)
            return False
        except TokenUnavailable as exc:
            self._unavailable(str(exc))
            return False
        return True

    async def _refresh_once(self) -> None:
        """Refresh now; keep and store the answer.  Raises what the endpoint raises."""
        assert self._refresh_token is not None
        grant = await self._endpoint.refresh(self._refresh_token)
        self._set_grant(grant, issued_at=self._clock())
        self._refused = None
        if self._store is not None:
            try:
                await self._store.save(grant.stored(self._seed))
            except Exception as exc:  # the token is good; losing it only costs a refresh at the next start
                log.error("webex_token_not_stored", error=type(exc).__name__, detail=str(exc)[:200])
        log.info("webex_token_renewed", expires_in_s=round(grant.expires_at - self._clock()))
        self._set_problem(None)
        self._wake.set()

    def _set_grant(self, grant: Grant, *, issued_at: float | None) -> None:
        self._grant = grant
        self._refresh_token = grant.refresh_token
        # A stored grant's issue time is unknown: count its lifetime from now, so it is
        # renewed once RENEW_FRACTION of what is left has passed.
        self._issued_at = issued_at if issued_at is not None else self._clock()

    def _refused_now(self, refused: TokenRefused) -> None:
        if self._refused != self._refresh_token:
            log.error("webex_refresh_refused", status=refused.status, reason=refused.reason[:200])
        self._refused = self._refresh_token
        self._set_problem(_refused_sentence(refused))

    def _unavailable(self, why: str) -> None:
        log.warning("webex_refresh_failed", error=why)
        grant = self._grant
        if grant is None or grant.expires_at <= self._clock():
            self._set_problem(f"cannot renew the Webex access token: {why}; retrying")

    def _set_problem(self, problem: str | None) -> None:
        if problem != self._problem:
            self._problem = problem
            self._wake.set()  # the renewer waits for the due time: now it must retry instead
            self.on_problem(problem)

    def _renew_at(self) -> float:
        grant = self._grant
        if grant is None:
            return self._clock()
        return self._issued_at + (grant.expires_at - self._issued_at) * self._fraction

    async def _renewer(self) -> None:
        """Refresh when due.  After a failure, wait before trying again: with
        back-off for a passing failure; refused, a short fixed interval, each
        try only reading the store until it holds another refresh token."""
        delay = self._retry_first_s
        renewed = False
        while True:
            if self._problem is None and self._refused is None:
                # Never renew more often than retry_first_s, whatever lifetime Webex grants.
                wait = max(self._renew_at() - self._clock(), self._retry_first_s if renewed else 0.0)
                if wait > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()  # a 401-driven refresh moved the due time
                    renewed = False
                    continue
            renewed = await self._refresh_shared()
            if renewed:
                delay = self._retry_first_s
                continue
            grant = self._grant
            if grant is not None and grant.expires_at <= self._clock() and self._problem is None:
                self._unavailable("the access token expired before it could be renewed")
            if self._refused is not None:
                await asyncio.sleep(self._retry_first_s)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)


def token_url(base_url: str) -> str:
    """The token endpoint of the Webex API at ``base_url`` (``…/v1/access_token``)."""
    return base_url.rstrip("/") + "/access_token"


def authorize_url(base_url: str) -> str:
    """The consent page of the Webex API at ``base_url`` (``…/v1/authorize``)."""
    return base_url.rstrip("/") + "/authorize"


def integration(
    base_url: str,
    client_id: str,
    client_secret: str,
    refresh_token: str | None,
    store: CredentialStore | None,
    observer: Observer | None = None,
) -> OAuthTokens:
    """The renewing tokens of the integration ``client_id`` on the Webex API at ``base_url``."""
    endpoint = TokenEndpoint(token_url(base_url), client_id, client_secret, observer=observer)
    return OAuthTokens(endpoint, refresh_token=refresh_token, store=store)


def _refused_sentence(refused: TokenRefused) -> str:
    return (
        f"Webex refused the refresh token (HTTP {refused.status}: {refused.reason}): "
        "run `xferd webex authorize --config PATH` to authorize xferd again"
    )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _reason(body: dict[str, Any], response: httpx.Response) -> str:
    for key in ("error_description", "message", "error"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:200]
    return response.reason_phrase or f"HTTP {response.status_code}"
