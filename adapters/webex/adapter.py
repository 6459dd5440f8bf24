"""The Webex Calling platform adapter: engine requests → call-control
requests, signed webhooks (or polling) → engine events.

Operations (``PbxRequest.action`` → Webex requests, all on the user's calls):

=========  ===========================================================
start      ``hold(callId1)`` then ``dial(number)`` → callId2 (returned as
           ``RequestFinished.call_id``).  If the dial is refused or never
           left, ``resume(callId1)`` first: the transferee is not left on
           hold.  A dial with an unknown outcome is left for the engine to
           reconcile (the consult call may exist).
complete   ``transfer(callId1, callId2)`` → 204 (never parsed).
abort      ``hangup(callId2)`` (404 = already gone, fine), then
           ``resume(callId1)`` if that is the call the user holds.
swap       ``hold`` the active call, ``resume`` the held one.
threeway   refused: Webex Calling has no three-way call control.
blind      ``transfer(callId1, destination)`` (mute transfer) → 201.
hangup     ``hangup(callId)`` — for either leg's channel: on Webex the
           user can only end their own call, which drops the party too.
=========  ===========================================================

Supervisor call actions (:meth:`WebexAdapter.act`, all the user's own, as
the user-level API allows nothing else): ``barge`` — ``bargeIn(target)``,
the user joins a colleague's answered call, a new call of the user's;
``park`` — ``park(callId, destination?)``, the user's call is parked against
``destination`` (the user's own number by default) and ends for the user;
``retrieve`` — ``retrieve(destination)``, the parked call becomes a call of
the user's; ``hangup`` as above.  There is no silent listening, no whisper
and no list of parked calls in that API: ``listen``, ``whisper`` and
``parked`` are not in :attr:`~WebexAdapter.capabilities`.

callId2 comes from the adapter's own per-transfer record of the start
result, so complete/abort/swap do not depend on the engine passing
``target_channel_id``; after a restart (no record) the request's
``target_channel_id`` and the last states seen rebuild it.

Results: 2xx → ``ok``; 4xx → ``refused`` with ``errcode`` = HTTP status and
``errmsg`` = Webex's message (404 also ``gone``: the call no longer
exists — and since we evidently missed its end, the live calls are fetched
first and every tracked call no longer listed is ended, so the engine
reconciles at once instead of waiting for a delivery that may never come);
429/423 are retried after ``Retry-After`` within a bounded budget
first; timeout after sending or 5xx → ``unknown``; a request that never
left → ``refused`` without errcode.  A 401 also takes the link down with
detail ``token expired or invalid``.

Tokens: a static ``access_token``, or an integration's renewing tokens
(:mod:`adapters.webex.oauth`).  While the token source reports a problem (a
refresh Webex refused, an expired token that cannot be renewed) the link is
down with that sentence, whatever individual requests still manage; when a
renewal works again the calls are re-read (a snapshot) and the link comes
back — no restart.

Events: see :mod:`adapters.webex.events` for the call → legs mapping.  A
call state the reference does not name keeps the call's legs as they were;
it is counted (``unmapped_state``) and logged once per call.
Webhook deliveries are checked (``X-Spark-Signature`` before anything is
parsed), then de-duplicated and ordered per callId: a delivery older than
the last one applied for that call (``eventTimestamp``) is stale and
dropped — ``data.state`` is the whole truth, so the newer delivery already
said everything; a delivery that changes no leg is a duplicate.  Both are
counted, never applied.  In poll mode the same per-call logic runs on each
``GET /telephony/calls`` answer, and a call that vanished from it ended.

What a replay needs (:mod:`adapters.replay.webex`): every input that changes
this adapter's state arrives through :meth:`WebexAdapter.accept_delivery`
(a signed delivery) or :meth:`WebexAdapter.listed` /
:meth:`WebexAdapter.listing_failed` (a ``GET /telephony/calls`` taken as the
event source: start-up and polls), and every request goes through the
:class:`~adapters.webex.client.WebexClient`.  The ``GET /telephony/calls``
made for other reasons carry their own endpoint labels (:data:`QUERY`,
:data:`RECONCILE`), so a recording says which answer served what.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from adapters.base import ActionResult, CallAction, Clock, EventSink, FatalPbxError, Observer
from adapters.webex.client import WebexClient, WebexError
from adapters.webex.events import (
    WEBHOOK_PATH,
    WebexCall,
    call_ended,
    call_id_of,
    call_legs,
    engine_legs,
    parse_calls,
    parse_delivery,
)
from adapters.webex.oauth import OAuthTokens
from engine.model import (
    CallsSnapshot,
    CallState,
    CallUpdated,
    Event,
    Member,
    Outcome,
    PbxRequest,
    RequestFinished,
)

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://webexapis.com/v1"
WEBHOOK_NAME = "xferd telephony_calls"
TOKEN_REFUSED = "token expired or invalid"
NO_THREEWAY = "Webex Calling has no three-way call control"
CALLS = "/telephony/calls"
#: Endpoint labels (metrics, recordings) of the other reasons to list the calls.
QUERY = CALLS + " (query)"
RECONCILE = CALLS + " (reconcile)"
#: How many ended callIds are remembered to drop their late deliveries.
_ENDED_MEMORY = 4096
_BOOTSTRAP_MAX_DELAY_S = 30.0
#: Longest state/personality label on the unmapped-states metric (Webex strings are open).
_LABEL_MAX = 32


@dataclass(slots=True)
class _Tracked:
    """What the adapter last applied for one live call: the legs it shows
    (user's leg first) and the Webex state and personality last reported."""

    members: tuple[Member, ...]
    state: str
    personality: str
    outgoing: bool
    answered: bool
    event_seconds: float | None


@dataclass(slots=True)
class _Consult:
    """One attended transfer's two calls, and which one the user holds."""

    original: str
    consult: str | None
    held: str


class _RecentIds:
    """A bounded set: remembers the most recent ``size`` ids."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._ids


class WebexAdapter:
    """Webex Calling for one user (the transferor), as a ``PbxAdapter``.

    Besides the protocol, the control API calls :meth:`handle_webhook` for
    every ``POST /v1/webhooks/webex``.
    """

    platform = "webex"
    capabilities: tuple[str, ...] = ("blind", "attended", "swap", "barge", "park", "retrieve", "hangup")

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        access_token: str | None = None,
        oauth: OAuthTokens | None = None,
        client: WebexClient | None = None,
        webhook_secret: str | None,
        events: Literal["webhook", "poll"] = "webhook",
        public_url: str | None = None,
        webhook_path: str = WEBHOOK_PATH,
        poll_interval_s: float = 2.0,
        user_number: str | None = None,
        observer: Observer | None = None,
        clock: Clock = time.time,
        request_timeout_s: float = 5.0,
        logger: Any = None,
    ) -> None:
        """Exactly one of ``access_token`` (static), ``oauth`` (an integration)
        or ``client`` (a client of its own: a replay) says how requests go.
        ``logger`` replaces this module's (a replay keeps quiet)."""
        if sum(x is not None for x in (access_token, oauth, client)) != 1:
            raise ValueError("give exactly one of access_token, oauth or client")
        self._observer = observer or Observer()
        self._log = logger if logger is not None else log
        self._oauth = oauth
        if client is None:
            tokens = oauth if oauth is not None else access_token
            assert tokens is not None
            client = WebexClient(base_url, tokens, timeout_s=request_timeout_s, observer=self._observer)
        self._client = client
        if oauth is not None:
            oauth.on_problem = self._token_problem
        self._webhook_secret = webhook_secret
        self._mode = events
        self._public_url = public_url
        self._webhook_path = webhook_path  # where this PBX's deliveries go on the control API
        self._poll_interval_s = poll_interval_s
        # Webex call objects never carry the user's own number; without it the
        # user's legs carry "" (the contract resolves a Webex "extension" to
        # the user's single connected call, not by number).
        self._user_number = user_number or ""
        self._clock = clock
        self._sink: EventSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._detail = "not connected yet"
        self._synced = False
        self._webhook_id: str | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._ended = _RecentIds(_ENDED_MEMORY)
        # Calls we asked Webex to end: their end is not a failed attempt.
        self._ending: set[str] = set()
        self._consults: dict[str, _Consult] = {}
        # Calls this adapter dialled (consultations): outgoing whatever they report.
        self._dialled = _RecentIds(_ENDED_MEMORY)
        # Calls whose unmapped state was logged (once per call; the metric counts each).
        self._unmapped_logged = _RecentIds(_ENDED_MEMORY)

    # -- link ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def detail(self) -> str:
        return self._detail

    def _set_link(self, connected: bool, detail: str) -> None:
        if (connected, detail) == (self._connected, self._detail):
            return
        self._connected, self._detail = connected, detail
        self._log.info("webex_link", connected=connected, detail=detail)
        self._observer.link(connected, detail)

    def _link_up_detail(self) -> str:
        if self._mode == "poll":
            return f"polling Webex every {self._poll_interval_s:g} s"
        return "Webex API reachable; events by webhook"

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        retry_throttled: bool = True,
        endpoint: str | None = None,
    ) -> dict[str, Any] | None:
        """Every API call goes through here so the link follows the answers:
        any success means the token works, a 401 means it does not — unless
        the token source reports a problem, which keeps the link down."""
        try:
            answer = await self._client.request(
                method, path, body, retry_throttled=retry_throttled, endpoint=endpoint
            )
        except WebexError as error:
            problem = self._client.tokens.problem
            if problem is not None:
                self._set_link(False, problem)
            elif error.status == 401:
                self._set_link(False, TOKEN_REFUSED)
            raise
        if self._client.tokens.problem is None:
            self._set_link(True, self._link_up_detail())
        return answer

    def _token_problem(self, problem: str | None) -> None:
        """The integration's tokens went bad (``problem``) or recovered (None)."""
        if problem is not None:
            self._set_link(False, problem)
            return
        # Renewed: re-read the calls, which reconciles what changed meanwhile and
        # brings the link back (in webhook mode nothing else would make a request).
        self._synced = False
        if self._sink is not None and self._mode == "webhook" and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._bootstrap_loop())

    # -- lifecycle -------------------------------------------------------

    def attach(self, sink: EventSink) -> None:
        """Deliver events to ``sink`` without starting: a replay feeds the
        inputs itself (:meth:`accept_delivery`, :meth:`listed`)."""
        self._sink = sink

    async def start(self, sink: EventSink) -> None:
        """Fetch the calls (a snapshot for the engine), register the webhook
        if ``public_url`` is set, start polling in poll mode.

        A refused token is fatal; an unreachable Webex is not: webhook mode
        retries the start-up steps in the background, poll mode just polls.
        """
        if self._mode == "webhook" and not self._webhook_secret:
            self._log.warning("webex_webhook_secret_missing", effect="every webhook delivery will be refused")
        if self._oauth is not None:
            await self._oauth.start()
        self._sink = sink
        try:
            done = await self._bootstrap()
        except WebexError as error:
            if error.status == 401 and self._oauth is not None:
                raise FatalPbxError(
                    "Webex refused the integration's access token (HTTP 401): run `xferd webex authorize "
                    "--config PATH` again (scopes spark:calls_read spark:calls_write)"
                ) from None
            if error.status == 401:
                raise FatalPbxError(
                    "Webex refused the access token (HTTP 401): set a valid pbx.access_token"
                ) from None
            raise
        if self._mode == "poll":
            self._task = asyncio.create_task(self._poll_loop())
        elif not done:
            self._task = asyncio.create_task(self._bootstrap_loop())

    async def _bootstrap(self) -> bool:
        """The start-up steps not done yet; True when all are done.  Raises
        :class:`WebexError` only for a 401."""
        try:
            if not self._synced:
                self.listed(await self._request("GET", CALLS))
            if self._mode == "webhook" and self._public_url and self._webhook_id is None:
                await self._register_webhook(self._public_url.rstrip("/") + self._webhook_path)
        except WebexError as error:
            if error.status == 401:
                raise
            self._log.warning("webex_start_incomplete", error=error.message, status=error.status)
            return False
        return True

    async def _bootstrap_loop(self) -> None:
        delay = 1.0
        with contextlib.suppress(WebexError):  # a 401: the link already says why
            while not await self._bootstrap():
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BOOTSTRAP_MAX_DELAY_S)

    async def _register_webhook(self, target_url: str) -> None:
        """Register our ``telephony_calls`` webhook, first deleting those an
        earlier run left for the same URL (they would double every delivery)."""
        listing = await self._request("GET", "/webhooks")
        for hook in (listing or {}).get("items") or []:
            if isinstance(hook, dict) and hook.get("targetUrl") == target_url and hook.get("id"):
                await self._request("DELETE", f"/webhooks/{hook['id']}", endpoint="/webhooks/{id}")
                self._log.info("webex_stale_webhook_deleted", webhook_id=hook["id"])
        body: dict[str, Any] = {
            "name": WEBHOOK_NAME,
            "targetUrl": target_url,
            "resource": "telephony_calls",
            "event": "all",
        }
        if self._webhook_secret:
            body["secret"] = self._webhook_secret
        self._webhook_id = _text(await self._request("POST", "/webhooks", body), "id")
        self._log.info("webex_webhook_registered", webhook_id=self._webhook_id, target_url=target_url)

    async def close(self) -> None:
        """Stop polling, delete our webhook, close the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._webhook_id is not None:
            try:
                await self._request("DELETE", f"/webhooks/{self._webhook_id}", endpoint="/webhooks/{id}")
            except WebexError as error:
                self._log.warning(
                    "webex_webhook_delete_failed", webhook_id=self._webhook_id, error=error.message
                )
            self._webhook_id = None
        await self._client.aclose()
        if self._oauth is not None:
            await self._oauth.close()
        self._set_link(False, "closed")

    # -- polling ---------------------------------------------------------

    async def _poll_loop(self) -> None:
        # start() has just fetched the calls: the first poll is one interval away,
        # not immediate (two GETs back to back would halve the interval).
        delay = self._poll_interval_s if self._synced else 0.0
        while True:
            await asyncio.sleep(delay)
            delay = await self._poll_once()

    async def _poll_once(self) -> float:
        """One poll; returns the seconds to wait before the next.  A
        throttled poll is not retried: the interval stretches instead."""
        try:
            payload = await self._request("GET", CALLS, retry_throttled=False)
        except WebexError as error:
            return self.listing_failed(error)
        if not self._synced:
            self._observer.reconnect()  # back after a loss
        self.listed(payload)
        return self._poll_interval_s

    def listed(self, payload: dict[str, Any] | None) -> None:
        """A ``GET /telephony/calls`` answer taken as the event source: after
        a loss (or at start) a snapshot for the engine and a new baseline;
        otherwise, in poll mode, the changes since the last poll."""
        if self._synced and self._mode == "poll":
            self._apply_poll(payload)
        else:
            # What changed meanwhile is reconciled from a snapshot.
            self._deliver_snapshot(payload)

    def listing_failed(self, error: WebexError) -> float:
        """A poll failed; returns the seconds to wait before the next."""
        if error.retry_after is not None:
            return max(self._poll_interval_s, error.retry_after)
        if error.status != 401 and self._client.tokens.problem is None:
            self._set_link(False, f"Webex API unreachable: {error.message}")
        self._synced = False
        return self._poll_interval_s

    def _apply_poll(self, payload: dict[str, Any] | None) -> None:
        calls = self._parse_calls(payload)
        at = self._clock()
        for call in calls:
            self._observe(call, at)
        listed = {call.call_id for call in calls}
        for call_id in [call_id for call_id in self._tracked if call_id not in listed]:
            tracked = self._tracked[call_id]
            self._end(call_id, at, outgoing=tracked.outgoing, answered=tracked.answered)

    # -- snapshots -------------------------------------------------------

    async def query_calls(self) -> CallsSnapshot | None:
        try:
            payload = await self._request("GET", CALLS, endpoint=QUERY)
        except WebexError:
            return None
        calls = self._parse_calls(payload)
        return CallsSnapshot(at=self._clock(), calls=tuple(self._live_states(calls, baseline=False)))

    def _parse_calls(self, payload: dict[str, Any] | None) -> list[WebexCall]:
        calls, skipped = parse_calls(payload)
        for _ in range(skipped):
            self._observer.bad_frame("bad_call_data", "")
        return calls

    def _live_states(self, calls: list[WebexCall], *, baseline: bool) -> list[CallState]:
        """The engine's view of listed calls (a call with nothing dialled yet
        shows no legs: not a call the engine can see).  ``baseline``: take
        them as what is tracked — poll mode replaces the baseline (the next
        poll diffs against it); webhook mode only adds calls it does not
        track yet, because a delivery applied while the GET was in flight is
        newer than the GET."""
        if baseline and self._mode == "poll":
            previous, self._tracked = self._tracked, {}
        else:
            previous = self._tracked
        states = []
        for call in calls:
            if call.state == "disconnected":
                continue
            tracked = previous.get(call.call_id)
            members = self._legs(call, tracked, report=baseline)
            if baseline and call.call_id not in self._tracked:
                self._track(call, members, tracked, None)
            legs = engine_legs(members)
            if legs:
                states.append(CallState(call_id=call.call_id, members=legs))
        return states

    def _deliver_snapshot(self, payload: dict[str, Any] | None) -> None:
        """Hand the engine the full picture and take it as our baseline."""
        calls = self._parse_calls(payload)
        snapshot = CallsSnapshot(at=self._clock(), calls=tuple(self._live_states(calls, baseline=True)))
        self._synced = True
        self._emit(snapshot)

    # -- webhooks --------------------------------------------------------

    async def handle_webhook(self, body: bytes, signature: str | None) -> int:
        """Take one ``POST /v1/webhooks/webex``; return the HTTP status to answer.

        401 for a missing or wrong signature (checked before parsing, so an
        unauthenticated sender costs one HMAC).  Everything signed gets 204,
        even a delivery we skip: it came from Webex, and a retry would carry
        the same unusable body.
        """
        if not self._signature_ok(body, signature):
            self._observer.bad_frame("bad_signature", "")
            return 401
        if self._sink is None:
            # Not started: the start-up snapshot will cover this call.
            self._observer.bad_frame("not_started", "")
            return 204
        self.accept_delivery(body, self._clock())
        return 204

    def accept_delivery(self, body: bytes, at: float) -> None:
        """A delivery whose signature was checked: recorded (the body holds no
        secret), parsed, applied."""
        self._observer.raw_frame(body.decode("utf-8", "replace"), at)
        parsed = parse_delivery(body)
        if isinstance(parsed, str):
            self._observer.bad_frame(parsed, body[:200].decode("utf-8", "replace"))
            return
        skipped = self._observe(parsed, at)
        if skipped is None:
            self._observer.frame(f"telephony_calls.{parsed.state}")
        else:
            self._observer.bad_frame(skipped, parsed.state)

    def _signature_ok(self, body: bytes, signature: str | None) -> bool:
        if not self._webhook_secret or not signature:
            return False
        expected = hmac.new(self._webhook_secret.encode(), body, hashlib.sha1).hexdigest()
        return hmac.compare_digest(expected.encode(), signature.strip().lower().encode("utf-8", "replace"))

    # -- per-call state --------------------------------------------------

    def _observe(self, call: WebexCall, at: float) -> str | None:
        """Apply one call object (webhook or poll); return why it was skipped,
        or None when applied (or when it changed nothing newer than we had)."""
        if call.call_id in self._ended:
            return "stale"
        tracked = self._tracked.get(call.call_id)
        seconds = call.event_seconds
        last = tracked.event_seconds if tracked is not None else None
        if seconds is not None and last is not None and seconds < last:
            return "stale"
        answered = call.was_answered or (tracked is not None and tracked.answered)
        if call.state == "disconnected":
            outgoing = (
                call.outgoing or (tracked is not None and tracked.outgoing) or call.call_id in self._dialled
            )
            self._end(call.call_id, at, outgoing=outgoing, answered=answered)
            return None
        members = self._legs(call, tracked, report=True)
        if tracked is not None and tracked.members == members:
            # No leg changed: nothing for the engine.  The same instant again is a duplicate delivery.
            duplicate = seconds is not None and seconds == last
            tracked.state, tracked.personality = call.state, call.personality
            tracked.answered = answered
            tracked.event_seconds = seconds if seconds is not None else last
            return "duplicate" if duplicate else None
        self._track(call, members, tracked, seconds)
        legs = engine_legs(members)
        if legs or tracked is not None:
            # A call with no legs yet (click-to-dial ringing the user) is tracked — its end
            # still tells a failed consultation — but shown to the engine only once dialled.
            self._emit(CallUpdated(at=at, call_id=call.call_id, members=legs, full=True))
        return None

    def _legs(self, call: WebexCall, tracked: _Tracked | None, *, report: bool) -> tuple[Member, ...]:
        """The call's legs, user's leg first (:func:`~adapters.webex.events.call_legs`);
        ``report``: count an unmapped combination when it is new for the call, and
        log it once per call."""
        legs = call_legs(
            call,
            self._user_number,
            tracked.members if tracked is not None else None,
            dialled=call.call_id in self._dialled,
        )
        new = tracked is None or (tracked.state, tracked.personality) != (call.state, call.personality)
        if legs.unmapped and report and new:
            state, personality = _label(call.state), _label(call.personality)
            self._observer.unmapped_state(state, personality)
            if call.call_id not in self._unmapped_logged:
                self._unmapped_logged.add(call.call_id)
                self._log.warning(
                    "webex_unmapped_state",
                    call_id=call.call_id,
                    state=state,
                    personality=personality,
                    effect="legs kept as last known; no decision taken on it",
                )
        return legs.members

    def _track(
        self, call: WebexCall, members: tuple[Member, ...], tracked: _Tracked | None, seconds: float | None
    ) -> None:
        outgoing = (
            call.outgoing
            or any(m.kind == "outbound" for m in members)
            or (tracked is not None and tracked.outgoing)
            or call.call_id in self._dialled
        )
        answered = call.was_answered or (tracked is not None and tracked.answered)
        self._tracked[call.call_id] = _Tracked(
            members, call.state, call.personality, outgoing, answered, seconds
        )

    def _end(self, call_id: str, at: float, *, outgoing: bool, answered: bool) -> None:
        self._tracked.pop(call_id, None)
        self._ended.add(call_id)
        ours = call_id in self._ending
        self._ending.discard(call_id)
        for event in call_ended(at, call_id, failed=outgoing and not answered and not ours):
            self._emit(event)
        # Forget transfers whose calls are all over.
        for transfer_id, record in list(self._consults.items()):
            if record.original in self._ended and (record.consult is None or record.consult in self._ended):
                del self._consults[transfer_id]

    def _emit(self, event: Event) -> None:
        if self._sink is not None:
            self._sink(event)

    # -- requests --------------------------------------------------------

    async def execute(self, request: PbxRequest) -> RequestFinished:
        if request.action == "threeway":
            return self._finished(request, "refused", errmsg=NO_THREEWAY)
        handlers: dict[str, Callable[[PbxRequest], Awaitable[str | None]]] = {
            "start": self._start_consult,
            "complete": self._complete,
            "abort": self._abort,
            "swap": self._swap,
            "blind": self._blind,
            "hangup": self._hangup,
        }
        try:
            call_id = await handlers[request.action](request)
        except WebexError as error:
            if error.status == 404:
                await self._reconcile_ended()
            outcome: Outcome = "unknown" if error.kind == "unknown" else "refused"
            return self._finished(
                request, outcome, errcode=error.status, errmsg=error.message, gone=error.status == 404
            )
        return self._finished(request, "ok", call_id=call_id)

    async def _reconcile_ended(self) -> None:
        """Webex says a call we act on is gone, so we missed its end (a lost
        delivery, or a poll not due yet): ask for the live calls and end the
        tracked ones that are no longer there, so the engine hears of it now.

        Only endings are taken from the answer: a listed call's state carries
        no ``eventTimestamp`` and may be older than a delivery applied while
        the GET was in flight.  Likewise only calls tracked *before* the GET
        left may be ended — a call created meanwhile is simply not listed yet.
        Best effort: if Webex cannot be asked, the next poll or snapshot will.
        """
        before = set(self._tracked)
        try:
            payload = await self._request("GET", CALLS, retry_throttled=False, endpoint=RECONCILE)
        except WebexError as error:
            self._log.info("webex_reconcile_skipped", error=error.message, status=error.status)
            return
        self.vanished(before, {call.call_id for call in self._parse_calls(payload)})

    def vanished(self, before: set[str], listed: set[str]) -> None:
        """End the calls tracked ``before`` a listing that no longer lists them."""
        at = self._clock()
        for call_id in sorted(before - listed):
            tracked = self._tracked.get(call_id)
            if tracked is not None:  # a delivery may have ended it while we waited
                self._log.info("webex_call_vanished", call_id=call_id)
                self._end(call_id, at, outgoing=tracked.outgoing, answered=tracked.answered)

    def _finished(
        self,
        request: PbxRequest,
        outcome: Outcome,
        *,
        call_id: str | None = None,
        errcode: int | None = None,
        errmsg: str = "",
        gone: bool = False,
    ) -> RequestFinished:
        return RequestFinished(
            at=self._clock(),
            transfer_id=request.transfer_id,
            request_id=request.request_id,
            outcome=outcome,
            call_id=call_id,
            errcode=errcode,
            errmsg=errmsg,
            gone=gone,
        )

    async def _call_op(self, op: str, call_id: str) -> None:
        await self._request("POST", f"{CALLS}/{op}", {"callId": call_id})

    async def _resume_quietly(self, call_id: str) -> None:
        """Give a held call back after a failed step; a failure here must not
        hide the one being reported."""
        try:
            await self._call_op("resume", call_id)
        except WebexError as error:
            self._log.warning("webex_rollback_resume_failed", call_id=call_id, error=error.message)

    def _consult_for(self, request: PbxRequest) -> _Consult:
        record = self._consults.get(request.transfer_id)
        consult = call_id_of(request.target_channel_id) if request.target_channel_id else None
        if record is None:
            # No start result here (e.g. after a restart): rebuild from the
            # request and the last states Webex reported.
            original = call_id_of(request.channel_id)
            tracked = self._tracked.get(consult) if consult else None
            held = consult if consult and tracked is not None and tracked.state == "held" else original
            record = self._consults[request.transfer_id] = _Consult(original, consult, held)
        elif record.consult is None:
            record.consult = consult
        return record

    async def _start_consult(self, request: PbxRequest) -> str | None:
        if not request.number:
            raise WebexError("refused", "a consult needs a target number")
        original = call_id_of(request.channel_id)
        await self._call_op("hold", original)
        try:
            answer = await self._request("POST", f"{CALLS}/dial", {"destination": request.number})
        except WebexError as error:
            if error.kind != "unknown":  # the dial surely did not happen
                await self._resume_quietly(original)
            raise
        consult = _text(answer, "callId")
        if consult is not None:
            self._dialled.add(consult)
        self._consults[request.transfer_id] = _Consult(original, consult, held=original)
        return consult

    async def _complete(self, request: PbxRequest) -> None:
        record = self._consult_for(request)
        if record.consult is None:
            raise WebexError("refused", "no consult call is known for this transfer")
        await self._ending_request(
            {record.original, record.consult},
            "transfer",
            {"callId1": record.original, "callId2": record.consult},
        )
        self._consults.pop(request.transfer_id, None)

    async def _abort(self, request: PbxRequest) -> None:
        record = self._consult_for(request)
        if record.consult is not None:
            try:
                await self._ending_request({record.consult}, "hangup", {"callId": record.consult})
            except WebexError as error:
                if error.status != 404:  # 404: already gone (busy, hung up) — nothing to end
                    raise
        if record.held == record.original:
            await self._call_op("resume", record.original)
        self._consults.pop(request.transfer_id, None)

    async def _swap(self, request: PbxRequest) -> None:
        record = self._consult_for(request)
        if record.consult is None:
            raise WebexError("refused", "no consult call is known for this transfer")
        active = record.consult if record.held == record.original else record.original
        await self._call_op("hold", active)
        try:
            await self._call_op("resume", record.held)
        except WebexError as error:
            if error.kind != "unknown":
                await self._resume_quietly(active)
            raise
        record.held = active

    async def _blind(self, request: PbxRequest) -> str | None:
        if not request.number:
            raise WebexError("refused", "a blind transfer needs a destination number")
        answer = await self._request(
            "POST",
            f"{CALLS}/transfer",
            {"callId1": call_id_of(request.channel_id), "destination": request.number},
        )
        return _text(answer, "callId")

    async def _hangup(self, request: PbxRequest) -> None:
        call_id = call_id_of(request.channel_id)
        await self._ending_request({call_id}, "hangup", {"callId": call_id})

    async def _ending_request(self, calls: set[str], op: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A request that ends ``calls``: their end will be ours, not a failed
        attempt — unless Webex surely did not act.  Returns Webex's answer."""
        self._ending |= calls
        try:
            return await self._request("POST", f"{CALLS}/{op}", body)
        except WebexError as error:
            if error.kind != "unknown":
                self._ending -= calls
            raise

    # -- supervisor call actions (adapters.base.CallAction) ----------------

    async def act(self, action: CallAction) -> ActionResult:
        """Barge-in, park, retrieve or hang-up for the user; anything else is refused
        with a sentence (see the module docstring).  Outcomes as for :meth:`execute`."""
        handlers: dict[str, Callable[[CallAction], Awaitable[ActionResult]]] = {
            "monitor": self._barge_in,
            "park": self._park,
            "retrieve": self._retrieve,
            "hangup": self._hang_up_call,
        }
        handler = handlers.get(action.kind)
        if handler is None or (action.kind == "monitor" and action.mode != "barge"):
            what = action.mode if action.kind == "monitor" else action.kind
            return ActionResult("refused", errmsg=f"Webex Calling's call-control API has no {what}")
        try:
            return await handler(action)
        except WebexError as error:
            if error.status == 404 and action.kind in ("park", "hangup"):
                await self._reconcile_ended()  # the call is gone: we missed its end
            outcome: Outcome = "unknown" if error.kind == "unknown" else "refused"
            return ActionResult(outcome, errcode=error.status, errmsg=error.message)

    async def _barge_in(self, action: CallAction) -> ActionResult:
        """The user joins colleague ``target``'s answered call (a new call of the user's)."""
        if not action.target:
            raise WebexError("refused", "a barge-in needs the colleague's number")
        answer = await self._request("POST", f"{CALLS}/bargeIn", {"target": action.target})
        return ActionResult("ok", call_id=_text(answer, "callId"))

    async def _park(self, action: CallAction) -> ActionResult:
        """Park the user's call; its end for the user is ours, not a failed attempt."""
        call_id = call_id_of(action.channel_id or "")
        body: dict[str, Any] = {"callId": call_id}
        if action.slot:
            body["destination"] = action.slot
        answer = await self._ending_request({call_id}, "park", body)
        against = (answer or {}).get("parkedAgainst")
        number = against.get("number") if isinstance(against, dict) else None
        return ActionResult("ok", call_id=call_id, slot=number if isinstance(number, str) else action.slot)

    async def _retrieve(self, action: CallAction) -> ActionResult:
        """The call parked against ``slot`` becomes a call of the user's."""
        answer = await self._request("POST", f"{CALLS}/retrieve", {"destination": action.slot})
        return ActionResult("ok", call_id=_text(answer, "callId"), slot=action.slot)

    async def _hang_up_call(self, action: CallAction) -> ActionResult:
        call_id = call_id_of(action.channel_id or "")
        await self._ending_request({call_id}, "hangup", {"callId": call_id})
        return ActionResult("ok", call_id=call_id)


def _label(value: str) -> str:
    """A Webex state or personality as a metric label: bounded, never empty."""
    return value[:_LABEL_MAX] if value else "none"


def _text(answer: dict[str, Any] | None, key: str) -> str | None:
    """A non-empty string field of a Webex answer, or None."""
    value = (answer or {}).get(key)
    return value if isinstance(value, str) and value else None
