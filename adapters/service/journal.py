"""The per-transfer journal: the story ``GET /v1/transfers/{id}/timeline`` tells.

Theory of operation
-------------------
``xferd replay --timeline`` tells an incident as rows — the client asked,
xferd sent a request, the PBX answered or reported a leg, xferd's state
changed, a timer fired.  The console shows the same story for one transfer
of the running service, in the same words (:mod:`adapters.replay.timeline`
holds them for both).

The runtime hands the journal every event it fed together with the commands
the engine answered (one call per event, after deciding; nothing here is on
the decisive path's far side: no I/O, no awaiting).  The journal keeps rows
for the transfers those commands or that event name:

* the event: a client's start/op, the PBX's answer to one of the transfer's
  requests, a timer, or a leg change that moved the transfer;
* the commands: each PBX request, each new ``history`` entry (state change),
  each reconciliation.

Most events change no transfer (a leg of some other call): they cost one
pass over their (usually one) command.  Memory is bounded: the rows of the
last ``transfers`` transfers touched, at most ``rows`` each (the oldest rows
of a very long transfer are dropped, and a marker row says so).

A transfer the journal no longer holds (finished long ago, or before a
restart) is told from what the store keeps: its resource's ``history`` and
its audit entries (who asked what).  A transfer restored after a restart is
told from its history up to the journal's first row, then from the journal.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.replay.timeline import answer_text, change_text, describe, event_text, start_text, timer_text
from engine.model import (
    CallChanged,
    CallEnded,
    CallFailed,
    CallsSnapshot,
    CallUpdated,
    Command,
    Event,
    OperatorRequested,
    PbxRequest,
    QueryCalls,
    RequestFinished,
    RuleNotice,
    TimerFired,
    TransferChanged,
    TransferRequested,
)
from engine.transfer import iso

#: Transfers whose rows are kept (least recently touched forgotten first).
JOURNAL_TRANSFERS = 2048
#: Rows kept per transfer.
JOURNAL_ROWS = 200


@dataclass(slots=True)
class _Story:
    rows: deque[tuple[float, str, str]]
    #: ``history`` entries already told (a TransferChanged carries the whole history).
    told: int = 0
    #: Requests in flight, to say what an answer answers.
    requests: dict[str, PbxRequest] = field(default_factory=dict)
    dropped: int = 0


class Journal:
    """Rows per transfer, for the transfers most recently touched."""

    def __init__(self, *, transfers: int = JOURNAL_TRANSFERS, rows: int = JOURNAL_ROWS) -> None:
        self.max_transfers = transfers
        self.max_rows = rows
        self._stories: OrderedDict[str, _Story] = OrderedDict()

    # -- recording ---------------------------------------------------------------------
    def record(self, event: Event, commands: Sequence[Command]) -> None:
        """What the engine did with ``event`` (called by the runtime after each feed)."""
        concerned: list[str] = []
        for command in commands:
            if type(command) is CallChanged:
                continue  # the commonest command: not about a transfer
            transfer_id = getattr(command, "transfer_id", None)
            if transfer_id and transfer_id not in concerned:
                concerned.append(transfer_id)
        named = getattr(event, "transfer_id", None)
        if (
            named
            and named not in concerned
            and (named in self._stories or isinstance(event, TransferRequested))
        ):
            concerned.append(named)
        if not concerned:
            return
        at = event.at
        for transfer_id in concerned:
            story = self._story(transfer_id)
            said = self._event_row(event, story)
            if said is not None:
                self._add(story, at, *said)
        for command in commands:
            if type(command) is CallChanged:
                continue
            self._command_rows(command, at)

    def _event_row(self, event: Event, story: _Story) -> tuple[str, str] | None:
        if isinstance(event, TransferRequested):
            text = start_text(event.transfer_id, event.channel_id, event.extension, event.number, event.type)
            return "client", f"{text} by {event.initiated_by}"
        if isinstance(event, OperatorRequested):
            return "client", f"{event.op} {event.transfer_id}"
        if isinstance(event, RequestFinished):
            request = story.requests.pop(event.request_id, None)
            if request is None:
                return "answer", f"{event.outcome} for request {event.request_id}"
            return "answer", answer_text(request, event)
        if isinstance(event, TimerFired):
            return "timer", timer_text(event.transfer_id, event.timer)
        if isinstance(event, CallUpdated | CallEnded | CallFailed):
            return "pbx", event_text(event)
        if isinstance(event, CallsSnapshot):
            legs = sum(len(call.members) for call in event.calls)
            return "pbx", f"call/query snapshot: {len(event.calls)} calls, {legs} legs"
        return "client", type(event).__name__

    def _command_rows(self, command: Command, at: float) -> None:
        if isinstance(command, PbxRequest):
            story = self._story(command.transfer_id)
            story.requests[command.request_id] = command
            self._add(story, at, "request", describe(command))
        elif isinstance(command, TransferChanged):
            story = self._story(command.transfer_id)
            history = command.resource.get("history") or []
            for entry in history[story.told :]:
                self._add(story, at, "state", change_text(command.transfer_id, entry))
            story.told = len(history)
        elif isinstance(command, QueryCalls):
            self._add(self._story(command.transfer_id), at, "reconcile", f"reconcile ({command.reason})")
        elif isinstance(command, RuleNotice) and command.transfer_id:
            detail = f": {command.detail}" if command.detail else ""
            text = f"rule {command.rule} {command.outcome} on {command.trigger}{detail}"
            self._add(self._story(command.transfer_id), at, "rule", text)

    def _story(self, transfer_id: str) -> _Story:
        story = self._stories.get(transfer_id)
        if story is None:
            story = self._stories[transfer_id] = _Story(deque(maxlen=self.max_rows))
            while len(self._stories) > self.max_transfers:
                self._stories.popitem(last=False)
        else:
            self._stories.move_to_end(transfer_id)
        return story

    def _add(self, story: _Story, at: float, kind: str, text: str) -> None:
        if len(story.rows) == self.max_rows:
            story.dropped += 1
        story.rows.append((at, kind, text))

    # -- telling -------------------------------------------------------------------------
    def holds(self, transfer_id: str) -> bool:
        return transfer_id in self._stories

    def entries(
        self,
        transfer_id: str,
        resource: Mapping[str, Any] | None,
        audit: Sequence[Mapping[str, Any]] = (),
    ) -> list[dict[str, str]]:
        """The timeline of ``transfer_id``: the journal's rows, told from ``resource`` (its
        ``history``) and ``audit`` where the journal has no rows (before them, or none at all)."""
        story = self._stories.get(transfer_id)
        rows: list[tuple[float, str, str]] = list(story.rows) if story is not None else []
        if story is not None and story.dropped:
            first = rows[0][0]
            rows.insert(0, (first, "note", f"{story.dropped} earlier rows not kept"))
        told_from = rows[0][0] if rows else float("inf")
        earlier: list[tuple[float, str, str]] = []
        if resource is not None and (story is None or not _started_here(story)):
            earlier = [row for row in from_resource(transfer_id, resource, audit) if row[0] < told_from]
        return [{"at": iso(at), "kind": kind, "text": text} for at, kind, text in [*earlier, *rows]]


def _started_here(story: _Story) -> bool:
    return any(kind == "client" and text.startswith("start ") for _, kind, text in story.rows)


def from_resource(
    transfer_id: str, resource: Mapping[str, Any], audit: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[float, str, str]]:
    """A stored transfer's story: who started it, its state changes, what clients asked."""
    rows: list[tuple[float, str, str]] = []
    target = resource.get("target") or {}
    transferor = resource.get("transferor") or {}
    created = _epoch(resource.get("created_at"))
    if created is not None:
        text = start_text(
            transfer_id,
            transferor.get("channel_id"),
            transferor.get("number"),
            str(target.get("number")),
            str(resource.get("type")),
        )
        rows.append((created, "client", f"{text} by {resource.get('initiated_by', 'api')}"))
    for entry in resource.get("history") or []:
        at = _epoch(entry.get("at"))
        if at is not None:
            rows.append((at, "state", change_text(transfer_id, entry)))
    for item in audit:
        at = _epoch(item.get("at"))
        if at is None or str(item.get("action", "")).startswith("transfer.start"):
            continue  # the start is told above
        outcome = item.get("outcome")
        rows.append(
            (at, "client", f"{item.get('action')} by {item.get('actor')} ({item.get('role')}): {outcome}")
        )
    rows.sort(key=lambda row: row[0])  # stable: a start and its first change keep their order
    return rows


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
