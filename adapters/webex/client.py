"""A thin httpx client for the handful of Webex Calling requests xferd makes.

Why not ``wxc_sdk``: we need eight calls, and its ``transfer()`` parses the
204 of an attended transfer as a body and raises although the transfer
happened — the one request we must never misreport.  A small client also lets
us classify every failure by what it means for a phone call:

* ``refused`` — Webex answered 4xx: it did not act (429/423 are retried here,
  within a budget, because the server refused *before* acting);
* ``unknown`` — the request may have reached Webex and been acted on (timeout
  after sending, connection lost mid-request, 5xx): the engine must reconcile
  from the PBX's view, never resend blindly;
* ``unreachable`` — the request never left (connection refused, DNS, TLS): it
  is safe to report as not done.

A 401 means Webex refused the token before acting: the client asks its
:class:`~adapters.webex.oauth.TokenSource` for another one once (an
integration refreshes; a static token cannot) and, if it got one, sends the
request once more.

Every request carries a fresh ``TrackingID`` header (``XFERD_<uuid>``) so a
support case can name it, and the ``trackingId`` of every error response is
logged.  The access token only ever travels in the ``Authorization`` header:
it is never logged, never put in an exception, never passed to the observer.

The retry logic (throttling, the 401 renewal) is the client's; sending one
request is an :class:`Exchange` — HTTP here, recorded answers in a replay
(:mod:`adapters.replay.webex`), so a replay retries exactly as live did.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
import structlog

from adapters.base import Observer
from adapters.webex.oauth import StaticToken, TokenSource, TokenUnavailable

log = structlog.get_logger(__name__)

ErrorKind = Literal["refused", "unknown", "unreachable"]

#: Statuses whose ``Retry-After`` we honour: the server refused before acting.
THROTTLE_STATUSES = frozenset({423, 429})
#: Keys whose values never leave the client (the webhook secret travels in a
#: registration body and comes back in its answer).
_SECRET_KEYS = frozenset({"secret"})
_DEFAULT_RETRY_AFTER_S = 1.0


class WebexError(Exception):
    """A Webex request did not succeed.

    ``kind`` says what the caller may conclude (see the module docstring);
    ``status`` is the HTTP status when Webex answered; ``retry_after`` is set
    for a throttled request the client gave up retrying (or was told not to
    retry), so a poller can stretch its interval.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        tracking_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status
        self.tracking_id = tracking_id
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """How long a throttled request may keep trying.

    Bounded on both counts so an operator's request never hangs for minutes
    behind a rate limit: past the budget the throttling is reported as a
    refusal (errcode 429/423), which is true — Webex did not act.
    """

    max_retries: int = 3
    max_wait_s: float = 30.0


def redact(value: Any) -> Any:
    """``value`` with every secret-bearing key replaced, recursively."""
    if isinstance(value, dict):
        return {k: "***" if k in _SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def retry_after_seconds(header: str | None) -> float:
    """Seconds to wait per a ``Retry-After`` header (delta-seconds or an
    HTTP date); a missing or unreadable header means a short default."""
    if header is None:
        return _DEFAULT_RETRY_AFTER_S
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return _DEFAULT_RETRY_AFTER_S
    return max(0.0, when.timestamp() - time.time())


class Exchange(Protocol):
    """Sends one request and reports it; raises :class:`WebexError` for any failure."""

    async def __call__(
        self, method: str, path: str, body: dict[str, Any] | None, label: str, token: str
    ) -> dict[str, Any] | None: ...

    async def aclose(self) -> None: ...


class HttpExchange:
    """One request over HTTP, reported to the observer (redacted, with its status).

    ``transport`` exists for tests (``httpx.MockTransport``); production uses
    httpx's default transport with ``timeout_s`` on connect/read/write/pool.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        observer: Observer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._observer = observer or Observer()
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __call__(
        self, method: str, path: str, body: dict[str, Any] | None, label: str, token: str
    ) -> dict[str, Any] | None:
        tracking_id = f"XFERD_{uuid.uuid4()}"
        started = time.monotonic()
        result = "error"
        answer: dict[str, Any] | None = None
        status: int | None = None
        retry_after: float | None = None
        try:
            try:
                response = await self._http.request(
                    method,
                    path,
                    json=body,
                    headers={"TrackingID": tracking_id, "Authorization": f"Bearer {token}"},
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise WebexError("unreachable", f"Webex API unreachable ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                result = "unknown"
                raise WebexError(
                    "unknown", f"no answer from Webex after sending ({type(exc).__name__})"
                ) from exc
            status = response.status_code
            answer = _json_object(response)
            if response.is_success:
                result = "ok"
                return answer
            error = _error_from(response, answer)
            retry_after = error.retry_after
            result = "unknown" if error.kind == "unknown" else "refused"
            log.warning(
                "webex_request_failed",
                endpoint=label,
                status=response.status_code,
                message=error.message,
                tracking_id=error.tracking_id,
                request_tracking_id=tracking_id,
            )
            raise error
        finally:
            self._observer.pbx_request(
                label,
                redact(body or {}),
                redact(answer),
                result,
                time.monotonic() - started,
                status=status,
                retry_after=retry_after,
            )


class WebexClient:
    """Sends Webex API requests: throttling retried within a budget, a refused
    token renewed once.

    ``access_token`` is a fixed token or a :class:`TokenSource` (an
    integration's renewing tokens).  ``exchange`` replaces HTTP (a replay);
    ``sleep`` is how it waits out a ``Retry-After``; ``logger`` replaces this
    module's.
    """

    def __init__(
        self,
        base_url: str,
        access_token: str | TokenSource,
        *,
        timeout_s: float = 5.0,
        observer: Observer | None = None,
        budget: RetryBudget = RetryBudget(),
        transport: httpx.AsyncBaseTransport | None = None,
        exchange: Exchange | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        logger: Any = None,
    ) -> None:
        self.tokens: TokenSource = (
            StaticToken(access_token) if isinstance(access_token, str) else access_token
        )
        self._budget = budget
        self._sleep = sleep
        self._log = logger if logger is not None else log
        self._exchange: Exchange = exchange or HttpExchange(
            base_url, timeout_s=timeout_s, observer=observer, transport=transport
        )

    async def aclose(self) -> None:
        await self._exchange.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        retry_throttled: bool = True,
        endpoint: str | None = None,
    ) -> dict[str, Any] | None:
        """Send ``method path`` with JSON ``body``; return the JSON answer
        (None for 204 or an empty body).

        Raises :class:`WebexError`.  A 429/423 is retried after its
        ``Retry-After`` while the :class:`RetryBudget` allows (only when
        ``retry_throttled``); a 401 is retried once if the token source
        renewed the token.  ``endpoint`` is the metric label (defaults to
        ``path``; pass a template when the path holds an id).  No token to
        be had: ``unreachable`` (nothing was sent).
        """
        label = endpoint or path
        waited = 0.0
        attempt = 0
        renewed = False
        while True:
            try:
                token = await self.tokens.token()
            except TokenUnavailable as exc:
                raise WebexError("unreachable", str(exc)) from None
            try:
                return await self._exchange(method, path, body, label, token)
            except WebexError as error:
                if error.status == 401 and not renewed and await self.tokens.renew(token):
                    renewed = True
                    continue
                delay = error.retry_after
                if (
                    delay is None
                    or not retry_throttled
                    or attempt >= self._budget.max_retries
                    or waited + delay > self._budget.max_wait_s
                ):
                    raise
                self._log.info(
                    "webex_throttled_retry", endpoint=label, status=error.status, retry_after_s=delay
                )
                await self._sleep(delay)
                waited += delay
                attempt += 1


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's JSON object, or None (204, empty, not JSON, not an
    object).  A 204 is never parsed: that is the ``wxc_sdk`` transfer bug."""
    if response.status_code == 204 or not response.content:
        return None
    try:
        value = json.loads(response.content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error_from(response: httpx.Response, answer: dict[str, Any] | None) -> WebexError:
    status = response.status_code
    body = answer or {}
    message = str(body.get("message") or response.reason_phrase or f"HTTP {status}")
    tracking_id = body.get("trackingId") or response.headers.get("trackingid")
    retry_after = (
        retry_after_seconds(response.headers.get("retry-after")) if status in THROTTLE_STATUSES else None
    )
    kind: ErrorKind = "unknown" if status >= 500 else "refused"
    return WebexError(
        kind,
        message,
        status=status,
        tracking_id=str(tracking_id) if tracking_id else None,
        retry_after=retry_after,
    )
