"""Who did what when: a replay's timeline as text or as a Mermaid sequence diagram.

An integrator reading an incident wants the conversation between three
parties — the API client, xferd and the PBX — in time order, with xferd's own
decisions (state changes, timers, divergences) as notes.  The text form is
for a terminal; the Mermaid form renders on GitHub, in GitLab and in most
wikis without any tool.

The words of each row (:func:`describe`, :func:`event_text`, :func:`change_text` …) are
shared with the running service's per-transfer journal
(:mod:`adapters.service.journal`, ``GET /v1/transfers/{id}/timeline``): the console tells
the same story as ``xferd replay --timeline``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.model import CallEnded, CallFailed, CallUpdated, Event, Member, PbxRequest, RequestFinished

PARTICIPANTS = ("client", "xferd", "PBX")
_ENTITIES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;"}
_SPECIAL = re.compile("[#;<>]")


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of a timeline: ``source`` tells ``dest`` something (``dest`` None: a note)."""

    at: float
    source: str
    dest: str | None
    text: str


# -- words for humans -----------------------------------------------------------------


def describe(request: PbxRequest) -> str:
    """A request xferd makes: ``complete t1 → 2005 (PJSIP/2000-…)``."""
    text = f"{request.action} {request.transfer_id}"
    if request.number:
        text += f" → {request.number}"
    return f"{text} ({request.channel_id})"


def short(request: PbxRequest) -> str:
    text = f"{request.action} {request.transfer_id}"
    return f"{text} → {request.number}" if request.number else text


def answer_text(request: PbxRequest, result: RequestFinished) -> str:
    """The PBX's answer to ``request``: ``ok for start t1 → 2005 (call_id 42)``."""
    detail = f" (call_id {result.call_id})" if result.call_id else ""
    if result.outcome == "refused":
        code = f" errcode {result.errcode}:" if result.errcode else ""
        detail = f":{code} {result.errmsg}"
    return f"{result.outcome} for {short(request)}{detail}"


def start_text(
    transfer_id: str, channel_id: str | None, extension: str | None, number: str, type_: str
) -> str:
    """A client's request to start a transfer."""
    party = channel_id or f"extension {extension}"
    return f"start {transfer_id}: {party} → {number} ({type_})"


def change_text(transfer_id: str, entry: Mapping[str, Any]) -> str:
    """One entry of a transfer's ``history``: ``t1: consulting → completed (policy)``."""
    return f"{transfer_id}: {entry['from']} → {entry['to']} ({entry['trigger']})"


def timer_text(transfer_id: str, tag: str) -> str:
    return f"{transfer_id}: {tag.split('#', 1)[0]} timer fired"


def _members(members: Iterable[Member]) -> str:
    return ", ".join(f"{m.number or '?'} {m.status} ({m.channel_id})" for m in members) or "no members"


#: The Yeastar event that tells each kind of change, as the timeline names it.
YEASTAR_CODES: dict[type, str] = {CallUpdated: "30011 ", CallEnded: "30012 ", CallFailed: "30015 "}


def event_text(event: Event, codes: dict[type, str] = YEASTAR_CODES) -> str:
    """An engine event as a timeline row; ``codes``: the platform's name for each kind."""
    code = codes.get(type(event), "")
    if isinstance(event, CallUpdated):
        return f"{code}call {event.call_id}: {_members(event.members)}"
    if isinstance(event, CallEnded):
        return f"{code}call {event.call_id} ended"
    if isinstance(event, CallFailed):
        return f"{code}call {event.call_id} failed: {event.reason or 'no reason'}"
    return type(event).__name__


# -- renderings ---------------------------------------------------------------------


def text(entries: Iterable[Entry]) -> str:
    """One line per entry: ``  +1.234 s  PBX -> xferd   what``."""
    lines = []
    for entry in entries:
        who = f"{entry.source} -> {entry.dest}" if entry.dest else f"{entry.source}"
        lines.append(f"  {entry.at:+10.3f} s  {who:<16} {entry.text}")
    return "\n".join(lines) + ("\n" if lines else "")


def mermaid(entries: Iterable[Entry], title: str | None = None) -> str:
    """A Mermaid ``sequenceDiagram``: messages between participants, notes over xferd."""
    lines = ["sequenceDiagram"]
    if title:
        lines.append(f"    title {_escape(title)}")
    lines += [f"    participant {name}" for name in PARTICIPANTS]
    for entry in entries:
        label = _escape(f"+{entry.at:.3f} s {entry.text}")
        if entry.dest is None:
            lines.append(f"    Note over {entry.source}: {label}")
        else:
            lines.append(f"    {entry.source}->>{entry.dest}: {label}")
    return "\n".join(lines) + "\n"


def _escape(label: str) -> str:
    """Mermaid reads ``#…;`` as an entity and ``;`` as a line break, ``<``/``>`` as HTML: escape them."""
    return _SPECIAL.sub(lambda match: _ENTITIES[match.group()], label)
