"""HTTP client for the Yeastar OpenAPI (``{base_url}/openapi/v1.0/...``).

Every exchange ends in exactly one of four ways, and callers act on which:

* the PBX answered ``errcode`` 0 → the answer is returned;
* the PBX answered a non-zero ``errcode`` → :class:`YeastarError` (or a
  subclass): it received the request and did not act;
* the request never reached the PBX (connect error or timeout, TLS
  failure, an HTTP 4xx from something in front of the API) →
  :class:`PbxUnreachable`: it did not act, trying later is safe;
* it may have reached the PBX but no usable answer came back (read
  timeout, connection dropped after sending, HTTP 5xx, garbage) →
  :class:`OutcomeUnknown`.  Never retried here: a ``call/transfer`` sent
  twice could complete a transfer twice.

The only retry is after 10004 TOKEN EXPIRED, which the PBX answers without
acting: the token is renewed and the request sent once more.

The PBX closes TCP after each response, so the client keeps no idle
connections; reusing one the PBX is closing would turn a harmless race into
an unknown outcome.  Proxies from the environment are ignored
(``trust_env=False``): the token travels in the URL, and the PBX is reached
directly.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx
import structlog

from adapters.base import Clock, CredentialStore, Observer
from adapters.yeastar.frames import (
    OutcomeUnknown,
    PbxUnreachable,
    TlsVerifyError,
    TokenExpiredError,
    answer_error,
)
from adapters.yeastar.tokens import TokenManager, install_log_redaction, redact, redact_json
from engine.model import Op

log = structlog.get_logger(__name__)

API_PATH = "/openapi/v1.0/"


def tls_context(verify_tls: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """The TLS settings for both HTTPS and WSS to the PBX.

    ``ca_file`` trusts a self-signed PBX certificate (system CAs otherwise).
    ``verify_tls=False`` is an explicit, logged opt-out, never a fallback.
    """
    if verify_tls:
        return ssl.create_default_context(cafile=ca_file)
    log.warning("yeastar.tls_unverified", detail="TLS certificate verification of the PBX is disabled")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _unreachable(endpoint: str, exc: Exception) -> PbxUnreachable:
    """Name the cause; a certificate problem gets its own advice."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TlsVerifyError(tls_advice(cause))
        cause = cause.__cause__ or cause.__context__
    return PbxUnreachable(f"{endpoint}: cannot reach the PBX ({type(exc).__name__}: {redact(str(exc))})")


def tls_advice(err: ssl.SSLCertVerificationError) -> str:
    """What to do about an untrusted PBX certificate, in one sentence."""
    return (
        f"The PBX's TLS certificate is not trusted ({err.verify_message or err.reason}): set ca_file to the "
        "CA certificate that signed it, and use the host name the certificate names in base_url."
    )


class YeastarRest:
    """Token-authenticated calls to one PBX.  ``tokens`` is its token manager."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 5.0,
        user_agent: str = "xferd/0.1",
        observer: Observer | None = None,
        clock: Clock = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        busy_retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0),
        credentials: CredentialStore | None = None,
    ) -> None:
        """``ssl_context`` defaults to :func:`tls_context` (verification on).
        ``transport`` replaces the network (tests); TLS and connection limits
        are then the transport's business.  ``credentials``: where the token
        pair is kept across restarts (see :mod:`.tokens`)."""
        install_log_redaction()
        self.base_url = base_url.rstrip("/")
        if transport is None:
            transport = httpx.AsyncHTTPTransport(
                verify=ssl_context or tls_context(),
                limits=httpx.Limits(max_keepalive_connections=0),
                trust_env=False,
            )
        # User-Agent is mandatory: without it the PBX answers 40002.
        self._client = httpx.AsyncClient(
            base_url=self.base_url + API_PATH,
            transport=transport,
            headers={"User-Agent": user_agent},
            timeout=timeout_s,
            trust_env=False,
        )
        self._observer = observer or Observer()
        self.tokens = TokenManager(
            self.send,
            client_id,
            client_secret,
            clock=clock,
            busy_retry_delays=busy_retry_delays,
            store=credentials,
        )

    async def send(
        self,
        method: str,
        endpoint: str,
        *,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One exchange; returns the answer whatever its ``errcode``.

        Raises :class:`PbxUnreachable` or :class:`OutcomeUnknown` (see the
        module docstring).  Reports the exchange, redacted, to the observer.
        """
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token  # the query string is the only place the PBX reads it
        started = time.monotonic()
        answer: dict[str, Any] | None = None
        result = "unknown"
        try:
            try:
                response = await self._client.request(method, endpoint, params=query, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                result = "error"
                raise _unreachable(endpoint, exc) from None
            except httpx.TransportError as exc:
                raise OutcomeUnknown(f"{endpoint}: no answer from the PBX ({type(exc).__name__})") from None
            if 400 <= response.status_code < 500:
                result = "error"
                raise PbxUnreachable(
                    f"{endpoint}: HTTP {response.status_code} (is base_url the PBX's API address?)"
                )
            if response.status_code != 200:
                raise OutcomeUnknown(f"{endpoint}: HTTP {response.status_code} from the PBX")
            try:
                decoded = response.json()
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict) or type(decoded.get("errcode")) is not int:
                # Not a PBX answer (a proxy, another service): never read it as a refusal,
                # least of all as the -1 that means bad credentials.
                raise OutcomeUnknown(f"{endpoint}: the answer is not a PBX answer (no errcode)")
            answer = decoded
            result = "ok" if answer_error(answer) is None else "refused"
            return answer
        finally:
            self._observer.pbx_request(
                endpoint,
                redact_json(body or {}),
                None if answer is None else redact_json(answer),
                result,
                time.monotonic() - started,
            )

    async def call(
        self,
        method: str,
        endpoint: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A token-authenticated request; returns a successful answer.

        Raises :class:`YeastarError` for a non-zero ``errcode``; on 10004 the
        token is renewed and the request sent once more (the PBX did not act).
        """
        token = await self.tokens.token()
        answer = await self.send(method, endpoint, token=token, body=body, params=params)
        err = answer_error(answer)
        if isinstance(err, TokenExpiredError):
            token = await self.tokens.renew(token)
            answer = await self.send(method, endpoint, token=token, body=body, params=params)
            err = answer_error(answer)
        if err is not None:
            raise err
        return answer

    async def transfer_blind(
        self, channel_id: str, number: str, dial_permission: str | None
    ) -> dict[str, Any]:
        """Move member ``channel_id`` to ``number`` at once."""
        return await self.call(
            "POST", "call/transfer", body=_transfer("blind", channel_id, number, dial_permission)
        )

    async def transfer_attended(
        self, channel_id: str, number: str, dial_permission: str | None
    ) -> dict[str, Any]:
        """Transferor ``channel_id`` starts consulting ``number`` (the transferee is held)."""
        return await self.call(
            "POST", "call/transfer", body=_transfer("attended", channel_id, number, dial_permission)
        )

    async def transfer_operate(self, channel_id: str, op: Op) -> dict[str, Any]:
        """The second attended request, on the transferor's ``channel_id``."""
        body = {"type": "attended", "channel_id": channel_id, "attended_operate": op}
        return await self.call("POST", "call/transfer", body=body)

    async def hangup(self, channel_id: str) -> dict[str, Any]:
        return await self.call("POST", "call/hangup", body={"channel_id": channel_id})

    async def hold(self, channel_id: str) -> dict[str, Any]:
        return await self.call("POST", "call/hold", body={"channel_id": channel_id})

    async def unhold(self, channel_id: str) -> dict[str, Any]:
        return await self.call("POST", "call/unhold", body={"channel_id": channel_id})

    # -- supervisor call actions (adapters.base.CallAction) ---------------------------

    async def listen(self, channel_id: str, monitor: str, mode: str) -> dict[str, Any]:
        """Extension ``monitor`` listens to / whispers to / barges into (``mode``) leg ``channel_id``."""
        return await self.call(
            "POST", "call/listen", body={"monitor": monitor, "channel_id": channel_id, "type": mode}
        )

    async def park(self, channel_id: str, slot: str | None) -> dict[str, Any]:
        """Park leg ``channel_id`` (the parked party); the PBX picks an idle slot when none is given."""
        body = {"channel_id": channel_id}
        if slot is not None:
            body["parking_slot"] = slot
        return await self.call("POST", "call/park", body=body)

    async def park_status(self) -> dict[str, Any]:
        return await self.call("GET", "call/park_status")

    async def dial(self, caller: str, callee: str, *, auto_answer: bool = False) -> dict[str, Any]:
        """Ring extension ``caller``, then ``callee`` (a parking slot retrieves the call parked there)."""
        body = {"caller": caller, "callee": callee}
        if auto_answer:
            body["auto_answer"] = "yes"
        return await self.call("POST", "call/dial", body=body)

    async def query(self, **params: str) -> dict[str, Any]:
        """``GET call/query`` with one of ``call_id``, ``extension``, ``type``."""
        return await self.call("GET", "call/query", params=params)

    async def aclose(self) -> None:
        """Revoke the token, then release the HTTP client."""
        try:
            await self.tokens.close()
        finally:
            await self._client.aclose()


def _transfer(kind: str, channel_id: str, number: str, dial_permission: str | None) -> dict[str, Any]:
    body = {"type": kind, "channel_id": channel_id, "number": number}
    if dial_permission is not None:
        body["dial_permission"] = dial_permission
    return body
