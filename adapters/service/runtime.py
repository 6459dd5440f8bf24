"""The runtime: the asyncio shell around the pure engine.

Theory of operation
-------------------
Every stimulus — a PBX event from the adapter's sink, an API request, the
result of a PBX request, a timer expiry, a reconciliation snapshot — is fed
to :meth:`Engine.handle` synchronously on the event loop's thread by
:meth:`Runtime.feed`.  There is no queue in front of the engine and no lock:
the loop serialises the feed, so the engine sees one ordered stream and the
live stream publishes changes in the order they were decided.

The commands that come back are executed in two parts:

1. at once: timers become ``loop.call_later``, ``QueryCalls`` a background
   ``query_calls()``, call changes go to the live stream; every
   ``TransferChanged`` becomes a row (resource + ``engine.export``) handed to
   the group commit (:mod:`adapters.service.writeahead`) — the write-ahead
   step: the decisions of one turn of the loop are saved in one transaction;
2. once that commit returned: ``PbxRequest`` goes to that transfer's FIFO
   worker (one transfer's requests run in emission order; transfers run
   concurrently; the feed never waits on the PBX or the store), changes go
   to the live stream and the metrics, and a final transfer is forgotten by
   the engine (the store keeps it).  If the commit was refused, no request
   of the batch is sent: each is reported not sent (``sent=False``) and the
   transfers' state is saved again by a flusher with back-off; a refusal for
   a stale fence (another instance owns the PBX) calls ``on_stale``.

Results of requests and timer expiries come back through :meth:`feed` as
events, like everything else.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, cast

import structlog

from adapters.base import Clock, PbxAdapter
from adapters.service.admission import Admission
from adapters.service.hub import Hub
from adapters.service.journal import Journal
from adapters.service.logs import get_logger
from adapters.service.metrics import Metrics
from adapters.service.store import Fence, Saved, StaleFence, StoreError, TransferStore
from adapters.service.writeahead import WriteAhead, kill_point
from engine.engine import Engine
from engine.model import (
    AskRule,
    CallChanged,
    CancelTimer,
    Command,
    Event,
    Outcome,
    PbxRequest,
    QueryCalls,
    RequestFinished,
    RuleNotice,
    StartTimer,
    TimerFired,
    TransferChanged,
    TransferRequested,
)

log = get_logger("xferd.runtime")

#: Back-off between failed reconciliation queries (seconds).
QUERY_RETRY_FIRST_S = 0.5
QUERY_RETRY_MAX_S = 10.0
#: How many finished transfers' resources a runtime keeps in memory.
RECENT_FINISHED = 1024
#: How far back (seconds) routing rules' "fired" marks are restored at start.
RULE_MARKS_S = 86400.0


class Runtime:
    """Feeds the engine, executes its commands, publishes what changed."""

    #: The per-transfer story for the console's timeline (the service sets it; None: not kept).
    journal: Journal | None = None

    def __init__(
        self,
        engine: Engine,
        adapter: PbxAdapter,
        store: TransferStore,
        metrics: Metrics,
        *,
        clock: Clock = time.time,
        pbx: str = "default",
        hub: Hub | None = None,
        drain_timeout_s: float = 5.0,
        fence: Callable[[], Fence | None] | None = None,
        on_stale: Callable[[], object] | None = None,
        max_pending_transfers: int = 500,
        max_starting_transfers: int = 4,
    ) -> None:
        """``pbx`` names the PBX connection this runtime drives (it tags every
        resource, call and stored row); ``hub`` is the live stream shared with
        the service's other runtimes (a runtime of its own by default).

        ``fence`` returns the proof of ownership every commit carries (None,
        or no callable: a single instance).  ``on_stale`` is called once, when
        a commit is first refused with :class:`StaleFence`: the lease is lost,
        none of that commit's requests was sent (each is reported not sent),
        and from then on this runtime sends nothing and writes nothing (its
        owner stops it; the new owner restores and reconciles).

        ``max_pending_transfers`` and ``max_starting_transfers``: the bound and
        the concurrency of the admission gate new transfers pass
        (:mod:`adapters.service.admission`)."""
        self.engine = engine
        self.adapter = adapter
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.pbx = pbx
        self.hub = hub if hub is not None else Hub(metrics)
        self._drain_timeout_s = drain_timeout_s
        self._on_stale = on_stale
        #: A fenced commit was refused: this runtime acts no more (see ``on_stale``).
        self.stale = False
        #: The group commit every decision is saved through (write-ahead).
        self.wal = WriteAhead(store, fence=fence)
        #: The gate new transfers pass before the engine sees them.
        self.admission = Admission(max_pending_transfers, max_starting_transfers)
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # Per-transfer FIFO of (request, perf_counter when its decisive event was fed).
        self._queues: dict[str, deque[tuple[PbxRequest, float]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, asyncio.Future[RequestFinished]] = {}
        # The last finished transfers' resources (the engine forgets them): readers
        # that just saw a transfer end can read its final state without a store round trip.
        self._finished: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._closing = False
        self._unsaved: set[str] = set()  # transfers whose latest state is not on disk
        self._event_counters: dict[type, Any] = {}  # event type -> labelled counter
        self._ask_client: Any = None  # httpx client of routing rules' ``ask`` (made on first use)

    # -- life cycle ------------------------------------------------------------
    async def start(self) -> None:
        """Restore unfinished transfers, then connect to the PBX.

        Restored transfers are in the engine before the adapter's first
        snapshot arrives, so that snapshot reconciles them with what the PBX
        did while we were away.
        """
        records = await self.store.load_active(self.pbx)
        commands = self.engine.restore(records)
        if records:
            log.info("transfers_restored", count=len(records))
        if self.engine.rules is not None:
            # Rules fire once per call and trigger, restarts included: their marks of the last day.
            since = self.clock() - RULE_MARKS_S
            for mark in await self.store.rule_marks(self.pbx, since):
                self.engine.rules.restore(mark)
        await self.adapter.start(self._sink)
        self._execute(commands, time.perf_counter())

    async def close(self) -> None:
        """Stop deciding, let in-flight PBX requests finish (bounded), end streams, close the adapter."""
        self._closing = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        # Decisions taken so far reach the store (their requests are not sent: closing).
        await self.wal.flush()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._drain_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._ask_client is not None:
            await self._ask_client.aclose()
        await self.adapter.close()

    # -- feeding -----------------------------------------------------------------
    def feed(self, event: Event) -> list[Command]:
        """Hand ``event`` to the engine and execute the resulting commands.

        Raises :class:`engine.errors.Rejected` for refused API requests
        (nothing changed then).  Synchronous: call it on the loop's thread.
        """
        started = time.perf_counter()
        kind = type(event)
        counter = self._event_counters.get(kind)
        if counter is None:
            counter = self._event_counters[kind] = self.metrics.events.labels(kind.__name__)
        counter.inc()
        commands = self.engine.handle(event)
        if self.journal is not None:
            self.journal.record(event, commands)
        if isinstance(event, TransferRequested):
            self.metrics.transfers_started.labels(event.type).inc()
        self._execute(commands, started)
        return commands

    def _sink(self, event: Event) -> None:
        """Where adapters, timers and workers deliver events.  Never raises:
        an engine bug on one event must not stop the stream."""
        try:
            self.feed(event)
        except Exception:
            self.metrics.engine_errors.inc()
            log.exception("engine_error", event=repr(event))

    async def wait_result(self, request_id: str, within_s: float) -> RequestFinished | None:
        """The :class:`RequestFinished` of ``request_id``, or None after ``within_s`` seconds.

        Call it right after :meth:`feed` returned the request (before any other
        ``await``): the worker cannot have finished it yet, so no result is missed.
        """
        future = self._waiters.get(request_id)
        if future is None:
            future = self._waiters[request_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(future), within_s)
        except TimeoutError:
            return None

    def live_transfer(self, transfer_id: str) -> dict[str, Any] | None:
        """The resource of a transfer the engine holds (not final, or just finished), tagged with the PBX."""
        resource = self.engine.transfer(transfer_id)
        return self.tagged(resource) if resource is not None else None

    def live_transfers(self, active_only: bool = False) -> list[dict[str, Any]]:
        return [self.tagged(resource) for resource in self.engine.transfers(active_only)]

    def calls(self) -> list[dict[str, Any]]:
        return [self.tagged(call) for call in self.engine.calls()]

    def transfer(self, transfer_id: str) -> Mapping[str, Any] | None:
        """The resource of a live transfer or one of the last :data:`RECENT_FINISHED` finished ones."""
        return self.live_transfer(transfer_id) or self._finished.get(transfer_id)

    async def fetch(self, transfer_id: str) -> Mapping[str, Any] | None:
        """The resource of a live transfer, or a finished one (from the store if need be)."""
        return self.transfer(transfer_id) or await self.store.get(transfer_id)

    def recent_finished(self) -> list[Mapping[str, Any]]:
        """The last finished transfers, newest first (the console's history)."""
        return list(reversed(self._finished.values()))

    def tagged(self, view: Mapping[str, Any]) -> dict[str, Any]:
        """``view`` (a transfer resource or a call) with the name of this runtime's PBX."""
        tagged = dict(view)
        tagged["pbx"] = self.pbx
        return tagged

    # -- executing commands ------------------------------------------------------
    def _execute(self, commands: Iterable[Command], started: float) -> None:
        """Carry out one batch of the engine's commands (see the module docstring).

        The batch's changed transfers go to the group commit
        (:mod:`adapters.service.writeahead`); what must follow their save —
        PBX requests, publishing the changes, forgetting final transfers —
        runs once the commit returned.  Timers, queries, rule notices and
        call changes do not depend on the save and run now.
        """
        rows: list[Saved] = []
        after: list[Command] = []
        for command in commands:
            if isinstance(command, TransferChanged):
                # The engine built this resource for this command alone: tag it in place.
                cast(dict[str, Any], command.resource)["pbx"] = self.pbx
                export = self.engine.export(command.transfer_id)
                rows.append(Saved(command.transfer_id, command.resource, export, command.final, self.pbx))
                after.append(command)
            elif isinstance(command, PbxRequest):
                after.append(command)
            elif isinstance(command, StartTimer):
                self._start_timer(command)
            elif isinstance(command, CancelTimer):
                self._cancel_timer(command.transfer_id, command.timer)
            elif isinstance(command, QueryCalls):
                log.info("reconcile", transfer_id=command.transfer_id, reason=command.reason)
                self._spawn(self._query())
            elif isinstance(command, RuleNotice):
                self._rule_notice(command)
            elif isinstance(command, AskRule):
                self._spawn(self._ask(command))
            elif isinstance(command, CallChanged) and self.hub:
                # Only build the call's view when someone reads the live stream.
                call = self.engine.call(command.call_id) or {"call_id": command.call_id, "members": []}
                self.hub.publish({"kind": "call", "call": self.tagged(call)}, self.pbx)
        if not after:
            return
        if self.stale:  # the lease is lost: nothing is written or sent any more
            self._after_commit(after, StaleFence(f"pbx {self.pbx}: this instance lost its lease"), started)
            return
        if not rows and not self.wal.pending:
            self._after_commit(after, None, started)  # nothing to save, nothing ahead of it
            return
        urgent = any(isinstance(command, PbxRequest) for command in after)
        self.wal.submit(rows, lambda error: self._after_commit(after, error, started), urgent=urgent)

    def _after_commit(self, after: list[Command], error: StoreError | None, started: float) -> None:
        """The part of a batch that waited for its rows to be durable (or refused: ``error``)."""
        changed = [c.transfer_id for c in after if isinstance(c, TransferChanged)]
        if error is None:
            self._unsaved.difference_update(changed)
        elif isinstance(error, StaleFence):
            self._lost_lease(error)
        else:
            self.metrics.store_errors.inc()
            for transfer_id in dict.fromkeys(changed):
                log.error("store_error", transfer_id=transfer_id, error=str(error))
                self._flush_later(transfer_id)
        if error is None:
            requests = [c.transfer_id for c in after if isinstance(c, PbxRequest)]
            if requests:
                kill_point(requests)  # chaos testing only: a no-op unless armed
        finished: list[str] = []
        for command in after:
            if isinstance(command, PbxRequest):
                if error is not None:
                    self._not_sent(command, str(error))
                else:
                    self._dispatch(command, started)
            elif isinstance(command, TransferChanged):
                self._transfer_changed(command)
                if command.final:
                    finished.append(command.transfer_id)
                    self._finished[command.transfer_id] = command.resource
                    if len(self._finished) > RECENT_FINISHED:
                        self._finished.popitem(last=False)
        if error is not None:
            return  # kept until the store has them: the flusher forgets them then
        for transfer_id in finished:
            if transfer_id in self._unsaved or self.engine.get(transfer_id) is None:
                continue
            self.engine.forget(transfer_id)
            for key in [key for key in self._timers if key[0] == transfer_id]:
                self._cancel_timer(*key)

    def _lost_lease(self, error: StaleFence) -> None:
        """A commit was refused for a stale fence: another instance owns this PBX now."""
        self.metrics.stale_writes.inc()
        if self.stale:
            return
        self.stale = True
        log.error("lost_lease", pbx=self.pbx, error=str(error))
        if self._on_stale is not None:
            try:
                self._on_stale()
            except Exception:
                log.exception("on_stale_failed")

    def _rule_notice(self, notice: RuleNotice) -> None:
        """What a routing rule did: a log line and a live-stream message (counters live in the engine)."""
        log.info(
            "rule",
            rule=notice.rule,
            outcome=notice.outcome,
            mode=notice.mode,
            trigger=notice.trigger,
            call_id=notice.call_id,
            transfer_id=notice.transfer_id,
            detail=notice.detail,
        )
        if self.hub:
            message = {
                "rule": notice.rule,
                "outcome": notice.outcome,
                "mode": notice.mode,
                "trigger": notice.trigger,
                "call_id": notice.call_id,
                "transfer_id": notice.transfer_id,
                "detail": notice.detail,
                "request": dict(notice.request) if notice.request else None,
                "pbx": self.pbx,
            }
            self.hub.publish({"kind": "rule", "rule": message}, self.pbx)

    async def _ask(self, command: AskRule) -> None:
        """A rule's ``ask``: POST its facts, feed the answer (or the failure) back."""
        import httpx

        from adapters.service.rules import ask

        if self._ask_client is None:
            self._ask_client = httpx.AsyncClient(trust_env=False)
        answered = await ask(command, self._ask_client, self.clock)
        if not self._closing:
            self._sink(answered)

    def _transfer_changed(self, command: TransferChanged) -> None:
        resource = command.resource
        log.info(
            "transfer_changed",
            transfer_id=command.transfer_id,
            state=resource.get("state"),
            reason=resource.get("reason"),
            target_status=(resource.get("target") or {}).get("status"),
        )
        if command.final:
            self.metrics.transfers_finished.labels(
                str(resource.get("state")), str(resource.get("reason") or "none")
            ).inc()
        self.hub.publish({"kind": "transfer", "transfer": resource}, self.pbx)

    def _dispatch(self, request: PbxRequest, started: float) -> None:
        if self._closing:
            # Left in flight in the store: the next start reconciles it from the PBX's view.
            log.warning(
                "request_not_sent_shutting_down", transfer_id=request.transfer_id, action=request.action
            )
            return
        log.info(
            "decision",
            transfer_id=request.transfer_id,
            request_id=request.request_id,
            action=request.action,
            channel_id=request.channel_id,
            number=request.number,
        )
        queue = self._queues.get(request.transfer_id)
        if queue is not None:
            queue.append((request, started))
            return
        self._queues[request.transfer_id] = deque([(request, started)])
        self._spawn(self._drain(request.transfer_id))

    async def _drain(self, transfer_id: str) -> None:
        # This task's own context: the adapter's and httpx's log lines about these
        # requests carry the transfer id too.
        structlog.contextvars.bind_contextvars(transfer_id=transfer_id)
        queue = self._queues[transfer_id]
        try:
            while queue:
                request, started = queue.popleft()
                self.metrics.decision_latency.observe(time.perf_counter() - started)
                try:
                    result = await self.adapter.execute(request)
                except Exception as exc:  # the protocol says it never raises; if it does, we can't know
                    log.exception("adapter_error", transfer_id=transfer_id, action=request.action)
                    result = self._result(request, "unknown", f"adapter error: {type(exc).__name__}")
                log.info(
                    "request_finished",
                    transfer_id=transfer_id,
                    request_id=request.request_id,
                    action=request.action,
                    outcome=result.outcome,
                    errcode=result.errcode,
                    errmsg=result.errmsg,
                )
                self._finish(result)
        finally:
            del self._queues[transfer_id]

    def _not_sent(self, request: PbxRequest, why: str) -> None:
        # Sending a decision that is not on disk could repeat it after a restart:
        # report the request as refused instead, after the current batch.
        log.error("request_not_sent", transfer_id=request.transfer_id, action=request.action, why=why)
        result = self._result(request, "refused", f"not sent: {why}", sent=False)
        asyncio.get_running_loop().call_soon(self._finish, result)

    def _result(
        self, request: PbxRequest, outcome: Outcome, errmsg: str, *, sent: bool = True
    ) -> RequestFinished:
        return RequestFinished(
            at=self.clock(),
            transfer_id=request.transfer_id,
            request_id=request.request_id,
            outcome=outcome,
            errmsg=errmsg,
            sent=sent,
        )

    def _finish(self, result: RequestFinished) -> None:
        self._sink(result)
        waiter = self._waiters.pop(result.request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def _start_timer(self, command: StartTimer) -> None:
        if self._closing:
            return
        key = (command.transfer_id, command.timer)
        self._cancel_timer(*key)
        delay = max(0.0, command.at - self.clock())
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key, command.at)

    def _cancel_timer(self, transfer_id: str, timer: str) -> None:
        handle = self._timers.pop((transfer_id, timer), None)
        if handle is not None:
            handle.cancel()

    def _fire(self, key: tuple[str, str], due: float) -> None:
        self._timers.pop(key, None)
        if not self.adapter.connected:
            # Events are not flowing: the facts the timer would decide on may be
            # stale (the target may have answered meanwhile).  Ask the PBX first.
            self._spawn(self._fire_reconciled(key, due))
            return
        self._deliver_timer(key, due)

    def _deliver_timer(self, key: tuple[str, str], due: float) -> None:
        # The loop's monotonic clock may fire a hair before the wall clock reaches
        # ``due``: stamp no earlier than due, so the engine sees the deadline passed.
        self._sink(TimerFired(at=max(self.clock(), due), transfer_id=key[0], timer=key[1]))

    async def _fire_reconciled(self, key: tuple[str, str], due: float) -> None:
        try:
            snapshot = await self.adapter.query_calls()
        except Exception:
            log.exception("query_calls_failed")
            snapshot = None
        if self._closing:
            return
        if snapshot is not None:
            self._sink(snapshot)
        self._deliver_timer(key, due)

    def _flush_later(self, transfer_id: str) -> None:
        """Retry saving ``transfer_id`` until the store takes it (a locked or full
        database must not leave a stale record behind, nor a final transfer
        forgotten before it is on disk)."""
        if transfer_id not in self._unsaved:
            self._unsaved.add(transfer_id)
            self._spawn(self._flush(transfer_id))

    async def _flush(self, transfer_id: str) -> None:
        delay = QUERY_RETRY_FIRST_S
        while transfer_id in self._unsaved and not self._closing:
            await asyncio.sleep(delay)
            delay = min(delay * 2, QUERY_RETRY_MAX_S)
            transfer = self.engine.get(transfer_id)
            if transfer is None:
                self._unsaved.discard(transfer_id)
                return
            if transfer_id not in self._unsaved:  # a later decision's commit saved it meanwhile
                if transfer.final:
                    self.engine.forget(transfer_id)
                return
            # Through the group commit, so it cannot overtake (or be overtaken by) a newer row.
            row = Saved(
                transfer_id, self.tagged(transfer.resource()), transfer.export(), transfer.final, self.pbx
            )
            done: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
            self.wal.submit([row], done.set_result, urgent=True)
            error = await done
            if isinstance(error, StaleFence):
                self._lost_lease(error)
                self._unsaved.discard(transfer_id)  # not ours to save any more
                return
            if error is not None:
                log.warning("store_retry_failed", transfer_id=transfer_id, error=str(error))
                continue
            self._unsaved.discard(transfer_id)
            log.info("store_recovered", transfer_id=transfer_id)
            if transfer.final and self.engine.get(transfer_id) is not None:
                self.engine.forget(transfer_id)

    async def _query(self) -> None:
        """Fetch a reconciliation snapshot; retry with backoff until it comes.

        A transfer whose request outcome is unknown waits for this snapshot,
        so one failed ``call/query`` must not strand it; the adapter's own
        (re)connect snapshot also settles it, whichever comes first.
        """
        delay = QUERY_RETRY_FIRST_S
        while not self._closing:
            try:
                snapshot = await self.adapter.query_calls()
            except Exception:
                log.exception("query_calls_failed")
                snapshot = None
            if snapshot is not None:
                self._sink(snapshot)
                return
            log.info("query_calls_unavailable", retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, QUERY_RETRY_MAX_S)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
