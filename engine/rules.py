"""Automated call-routing rules: transfers started by the engine itself, from the call's facts.

Theory of operation
===================

A rules file is an ordered list of rules (:class:`Rule`), each *on* a trigger,
*if* a condition (:mod:`engine.conditions`, CEL), *then* an action: an
attended or blind transfer to a number, or *ask* a URL which number.  The
:class:`RuleEngine` is fed from inside :class:`engine.engine.Engine`, by the
very events that feed the transfers, so rules replay exactly like transfers
do: no clock, no I/O, same events in, same decisions out.

Triggers
    ``call.answered`` — an extension's leg starts talking (from ringing, or
    first seen talking); ``call.ringing`` — an extension's leg starts ringing;
    ``call.held`` — an extension's leg goes on hold; ``transfer.ended`` — a
    transfer reached a final state (to chain rules: "when the attended
    transfer to sales was aborted, blind-transfer the caller to the queue").
    Legs restored from a reconciliation snapshot trigger nothing: when they
    changed is unknown.

Evaluation order
    Rules are indexed by trigger and, when a rule names ``extensions``, by the
    extension whose leg changed, so a frame no rule is about costs one dict
    lookup.  The candidates are tried in file order; the first that matches
    wins and evaluation stops, unless it says ``continue = true``.  A rule in
    **shadow** mode is evaluated, counted and logged with what it would send,
    sends nothing and never stops evaluation (the rules after it behave as if
    it were not there: Envoy's shadow policies).  A condition that fails at
    run time (a missing field, a type error) counts an error on its rule,
    which is skipped.

Once per call and trigger
    A rule fires at most once per (rule, call, trigger): the decision is
    remembered before anything is sent, and the transfer it starts carries it
    (``Transfer.rule``), so it is written ahead with the transfer's first
    save and restored after a restart (:meth:`RuleEngine.restore`).  A
    duplicated or reordered frame that re-triggers finds the mark and is
    ``blocked``.  Transfer ids are derived from (rule, trigger, call), so even
    a lost mark could not start a second transfer under another id.

Safety
    A matching rule is *blocked* (counted, logged, nothing sent) when it
    already fired for this call and trigger; when a leg of the call takes part
    in an active transfer; when the call was already transferred by rules
    ``max_auto_transfers`` times (loop guard); when the target is a number the
    call was already transferred *from* (no ping-pong); when the rule's rate
    limit (``rate_count`` per ``rate_per_s`` seconds, event time) is spent.

Delays are timers
    ``after_s`` arms a timer (``StartTimer`` whose transfer id starts with
    :data:`TIMER_PREFIX`); when it fires, the rule fires only if the trigger's
    leg is still in the same call and no transfer is active on it — else it is
    ``skipped`` ("the call ended / moved on").

``ask`` is a command
    An ``ask`` rule emits :class:`~engine.model.AskRule`; the runtime POSTs the
    facts (timeout, retries) and feeds the answer back as
    :class:`~engine.model.RuleAnswered`.  ``{"skip": true}``, a failure or a
    malformed answer skips the rule (a failure counts an error): the call is
    never left waiting on it.  Checks are made again when the answer comes.

Every transfer a rule starts says ``initiated_by = "rule:<name>"`` and opens
its history with the rule's decision.  Counters per rule (evaluated, matched,
fired, shadow, blocked, skipped, errors) live here and survive a reload of
the rules (kept by name).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, Protocol

import cel

from engine.calendars import DAYS, Calendar
from engine.conditions import FACTS, Condition, Template
from engine.model import (
    RINGING_STATUSES,
    TALKING_STATUSES,
    AskRule,
    Command,
    RuleAnswered,
    RuleNotice,
    StartTimer,
    TransferRequested,
    TransferType,
)
from engine.registry import CALLEE_RINGING, CallRegistry, Leg, LegChange

#: ``TimerFired.transfer_id`` of a rule's delay starts with this.
TIMER_PREFIX = "rule-timer:"
#: How long (event seconds) decisions about a call are kept after it ended.
FORGET_AFTER_S = 300.0
#: Fields of a transfer policy a rule (or an ``ask`` answer) may set.
POLICY_FIELDS = {
    "on_answer": ("complete", "threeway", "hold"),
    "answer_delay_s": float,
    "no_answer_timeout_s": float,
    "on_transferor_hangup": ("complete", "abort"),
    "fallback_numbers": list,
}

Mode = Literal["enforce", "shadow"]
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class TransferAction:
    """``then = {attended|blind = "<number template>", policy = {…}}``."""

    type: TransferType
    number: Template
    policy: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AskAction:
    """``then = {ask = "<url>", timeout_s, retries, backoff_s}``."""

    url: str
    timeout_s: float = 2.0
    retries: int = 1
    backoff_s: float = 0.2


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    on: str
    action: TransferAction | AskAction
    condition: Condition | None = None
    zone: tzinfo = UTC
    zone_name: str = "UTC"
    enabled: bool = True
    mode: Mode = "enforce"
    after_s: float = 0.0
    continue_: bool = False
    #: only when the triggering extension (call.*) / the transferor (transfer.ended) is one of these
    extensions: frozenset[str] = frozenset()
    rate_count: int = 0  # 0: no rate limit
    rate_per_s: float = 60.0

    def fields(self) -> dict[str, frozenset[str] | None]:
        """Facts this rule reads (its condition and its number template)."""
        out: dict[str, frozenset[str] | None] = {}
        parts = [self.condition.fields if self.condition else {}]
        if isinstance(self.action, TransferAction):
            parts.append(self.action.number.fields)
        for part in parts:
            for root, wanted in part.items():
                have = out.get(root, frozenset())
                out[root] = None if wanted is None or have is None else have | wanted
        return out


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A loaded rules file: rules in order, calendars by name, the loop guard."""

    rules: tuple[Rule, ...] = ()
    calendars: Mapping[str, Calendar] = field(default_factory=dict)
    max_auto_transfers: int = 3


@dataclass(slots=True)
class Counters:
    evaluated: int = 0
    matched: int = 0
    fired: int = 0
    shadow: int = 0
    blocked: int = 0
    skipped: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "evaluated": self.evaluated,
            "matched": self.matched,
            "fired": self.fired,
            "shadow": self.shadow,
            "blocked": self.blocked,
            "skipped": self.skipped,
            "errors": self.errors,
        }


class View(Protocol):
    """What the rule engine reads from the engine that hosts it."""

    registry: CallRegistry

    def active_transfer(self, channel_id: str) -> str | None: ...
    def other_party(self, leg: Leg) -> Leg | None: ...


class Ended(Protocol):
    """The parts of a final transfer ``transfer.ended`` rules read (:class:`engine.transfer.Transfer`)."""

    id: str
    type: TransferType
    reason: str | None
    initiated_by: str
    numbers: list[str]
    attempt: int
    original_call_id: str | None
    transferor_channel: str | None
    transferor_number: str | None
    transferee_channel: str | None
    transferee_number: str | None
    rule: dict[str, Any] | None

    @property
    def state(self) -> str: ...
    @property
    def number(self) -> str: ...


@dataclass(slots=True)
class _Pending:
    """A decision waiting for its delay or its URL's answer."""

    rule: Rule
    trigger: str
    call_id: str
    channel: str  # the leg that must still be in the call
    transfer_id: str
    request: TransferRequested | None  # None for ask: the answer gives it
    facts: dict[str, Any]


@dataclass(slots=True)
class _Trigger:
    """One occurrence of a trigger, and its facts (built lazily, field by field)."""

    name: str
    at: float
    call_id: str
    leg: Leg | None = None  # call.*: the leg that changed
    change: LegChange | None = None
    transfer: Ended | None = None  # transfer.ended
    facts: dict[str, Any] = field(default_factory=dict)
    contexts: dict[str, cel.Context] = field(default_factory=dict)  # by zone name


class RuleEngine:
    """The rules of one engine; see the module docstring."""

    def __init__(self, ruleset: RuleSet, *, dry_run: bool = False, id_prefix: str = "") -> None:
        """``dry_run``: a firing rule only says what it would send (``xferd rules test``)."""
        self.dry_run = dry_run
        self.id_prefix = id_prefix
        self.counters: dict[str, Counters] = {}
        self._decided: dict[tuple[str, str, str], float] = {}  # (rule, call, trigger) -> when
        self._decided_by_call: dict[str, set[tuple[str, str, str]]] = {}
        self._gone: dict[str, float] = {}  # call ids with decisions whose call ended -> when
        self._history: dict[str, list[dict[str, Any]]] = {}  # channel -> transfers its call went through
        self._pending: dict[str, _Pending] = {}
        self._fires: dict[str, deque[float]] = {}
        self.ruleset = RuleSet()
        self._index: dict[str, tuple[list[Rule], dict[str, list[Rule]]]] = {}
        self._order: dict[str, int] = {}
        self.replace(ruleset)

    # ------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------

    def replace(self, ruleset: RuleSet) -> None:
        """Take a new rules file (hot reload).  Decisions, counters and pending delays are kept."""
        self.ruleset = ruleset
        index: dict[str, tuple[list[Rule], dict[str, list[Rule]]]] = {}
        for rule in ruleset.rules:
            self.counters.setdefault(rule.name, Counters())
            if not rule.enabled:
                continue
            anyone, by_ext = index.setdefault(rule.on, ([], {}))
            if rule.extensions:
                for ext in rule.extensions:
                    by_ext.setdefault(ext, []).append(rule)
            else:
                anyone.append(rule)
        self._index = index
        self._order = {rule.name: i for i, rule in enumerate(ruleset.rules)}
        # Facts each (trigger, zone) may need: the union over its rules, computed once.
        wanted: dict[tuple[str, str], dict[str, frozenset[str] | None]] = {}
        for rule in ruleset.rules:
            if rule.enabled:
                union = wanted.setdefault((rule.on, rule.zone_name), {})
                for root, fields in rule.fields().items():
                    have = union.get(root, frozenset())
                    union[root] = None if fields is None or have is None else have | fields
        self._wanted = wanted

    def restore(self, marker: Mapping[str, Any], transfer: Ended | None = None) -> None:
        """A decision persisted with its transfer: remember it (and the call's history) after a restart."""
        key = (str(marker.get("rule")), str(marker.get("call_id")), str(marker.get("trigger")))
        self._remember(key, float(marker.get("at") or 0.0))
        if transfer is not None:
            self.created(transfer)

    # ------------------------------------------------------------------
    # triggers
    # ------------------------------------------------------------------

    def changes(
        self, at: float, changes: Iterable[LegChange], view: View
    ) -> tuple[list[TransferRequested], list[Command]]:
        """Leg changes of a PBX event (not of a snapshot)."""
        requests: list[TransferRequested] = []
        out: list[Command] = []
        index = self._index
        for change in changes:
            status = change.status
            if status == "BYE":
                self._left(at, change, view, out)
                continue
            if change.kind != "extension" or not index:
                continue
            old = change.old_status
            if status in TALKING_STATUSES:
                # From ringing (RING/EARLYMEDIA) or first seen talking; ALERT → ANSWER is the
                # extension's own outgoing call being answered, not the extension answering.
                trigger = "call.answered" if old is None or old in CALLEE_RINGING else None
            elif status == "HOLD":
                trigger = "call.held" if old != "HOLD" else None
            elif status in CALLEE_RINGING:
                trigger = "call.ringing" if old is None or old not in RINGING_STATUSES else None
            else:
                trigger = None
            if trigger is None:
                continue
            found = index.get(trigger)
            if found is None:
                continue
            candidates = self._candidates(found, change.number)
            if not candidates:
                continue
            leg = view.registry.leg(change.channel_id)
            if leg is None:
                continue
            occurrence = _Trigger(trigger, at, change.call_id, leg=leg, change=change)
            self._evaluate(occurrence, candidates, view, requests, out)
        return requests, out

    def ended(self, at: float, transfer: Ended, view: View) -> tuple[list[TransferRequested], list[Command]]:
        """A transfer reached a final state: update the call's history, then ``transfer.ended`` rules."""
        for entry in self._entries(transfer):
            entry["state"] = transfer.state
            entry["reason"] = transfer.reason or ""
        requests: list[TransferRequested] = []
        out: list[Command] = []
        found = self._index.get("transfer.ended")
        if found is None:
            return requests, out
        candidates = self._candidates(found, transfer.transferor_number or "")
        if not candidates:
            return requests, out
        call_id = transfer.original_call_id or ""
        for channel in (transfer.transferee_channel, transfer.transferor_channel):
            leg = view.registry.leg(channel or "")
            if leg is not None:
                call_id = leg.call_id
                break
        occurrence = _Trigger("transfer.ended", at, call_id, transfer=transfer)
        self._evaluate(occurrence, candidates, view, requests, out)
        return requests, out

    def timer(self, at: float, pending_id: str, view: View) -> tuple[list[TransferRequested], list[Command]]:
        """A rule's ``after_s`` delay expired."""
        pending = self._pending.pop(pending_id, None)
        if pending is None or pending.request is None:
            return [], []
        return self._fire_later(at, pending, pending.request, view)

    def answered(self, event: RuleAnswered, view: View) -> tuple[list[TransferRequested], list[Command]]:
        """The answer of an ``ask`` rule's URL."""
        pending = self._pending.pop(event.ask_id, None)
        if pending is None:
            return [], []
        rule, at = pending.rule, event.at
        counters = self.counters.setdefault(rule.name, Counters())
        notice = _notice_of(pending, at)
        if event.answer is None:
            counters.errors += 1
            url = rule.action.url if isinstance(rule.action, AskAction) else ""
            return [], [notice("error", f"ask {url}: {event.error}")]
        problem, request = self._answer_request(pending, event.answer, at, view)
        if request is None:
            if problem == "skip":
                counters.skipped += 1
                return [], [notice("skipped", "the URL answered skip")]
            counters.errors += 1
            return [], [notice("error", f"the URL's answer: {problem}")]
        return self._fire_later(at, pending, request, view)

    # ------------------------------------------------------------------
    # what the engine reports back
    # ------------------------------------------------------------------

    def created(self, transfer: Ended) -> None:
        """A transfer (any: API, console, rule) started: it joins its call's history."""
        entry = {
            "id": transfer.id,
            "number": transfer.number,
            "type": transfer.type,
            "from": transfer.transferor_number or "",
            "initiated_by": transfer.initiated_by,
            "state": transfer.state,
            "reason": transfer.reason or "",
        }
        for channel in (transfer.transferor_channel, transfer.transferee_channel):
            if channel:
                history = self._history.setdefault(channel, [])
                if all(item["id"] != transfer.id for item in history):
                    history.append(entry)

    def refused(self, request: TransferRequested, code: str, detail: str) -> RuleNotice:
        """The engine refused a rule's transfer (the call moved on meanwhile)."""
        rule = request.initiated_by.removeprefix("rule:")
        self.counters.setdefault(rule, Counters()).skipped += 1
        marker = request_marker(request)
        return RuleNotice(
            request.at, rule, "skipped", marker.get("trigger", ""), marker.get("call_id", ""),
            detail=f"the engine refused the transfer: {code}: {detail}", transfer_id=request.transfer_id,
        )  # fmt: skip

    # ------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------

    def _candidates(self, found: tuple[list[Rule], dict[str, list[Rule]]], number: str) -> list[Rule]:
        anyone, by_ext = found
        named = by_ext.get(number)
        if not named:
            return anyone
        if not anyone:
            return named
        order = self._order
        return sorted([*anyone, *named], key=lambda rule: order[rule.name])

    def _evaluate(
        self,
        occurrence: _Trigger,
        candidates: list[Rule],
        view: View,
        requests: list[TransferRequested],
        out: list[Command],
    ) -> None:
        for rule in candidates:
            counters = self.counters.setdefault(rule.name, Counters())
            counters.evaluated += 1
            if rule.condition is not None:
                try:
                    matched = rule.condition.evaluate(self._context(occurrence, rule, view))
                except Exception as exc:  # a missing field, a type CEL cannot compare: the rule is skipped
                    counters.errors += 1
                    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    if isinstance(exc, KeyError):
                        detail = f"no field {exc.args[0]!r}" if exc.args else "missing field"
                    out.append(self._notice(occurrence, rule, "error", f"if: {detail}"))
                    continue
                if not matched:
                    continue
            counters.matched += 1
            self._act(occurrence, rule, view, requests, out)
            if rule.mode == "enforce" and not rule.continue_:
                return

    def _act(
        self,
        occurrence: _Trigger,
        rule: Rule,
        view: View,
        requests: list[TransferRequested],
        out: list[Command],
    ) -> None:
        counters = self.counters[rule.name]
        facts = self._facts(occurrence, rule.fields(), view)
        request: TransferRequested | None = None
        if isinstance(rule.action, TransferAction):
            try:
                number = rule.action.number.render(facts)
            except (KeyError, TypeError) as exc:
                counters.errors += 1
                out.append(self._notice(occurrence, rule, "error", f"then: number: {exc}"))
                return
            request = self._request(occurrence, rule, rule.action.type, number, rule.action.policy, view)
            if request is None:
                counters.blocked += 1
                out.append(self._notice(occurrence, rule, "blocked", "no party to transfer in the call"))
                return
        why = self._blocked(occurrence, rule, request, view)
        shown = _shown(request)
        if rule.mode == "shadow":
            counters.shadow += 1
            detail = f"would be blocked: {why}" if why else _would(rule, request)
            out.append(self._notice(occurrence, rule, "shadow", detail, request=shown))
            return
        if why:
            counters.blocked += 1
            out.append(self._notice(occurrence, rule, "blocked", why, request=shown))
            return
        key = (rule.name, occurrence.call_id, occurrence.name)
        self._remember(key, occurrence.at)
        if rule.rate_count:
            self._fires.setdefault(rule.name, deque()).append(occurrence.at)
        transfer_id = self._transfer_id(rule, occurrence)
        channel = occurrence.leg.channel_id if occurrence.leg is not None else self._party_channel(occurrence)
        if isinstance(rule.action, AskAction):
            pending = _Pending(rule, occurrence.name, occurrence.call_id, channel, transfer_id, None, {})
            pending.facts = self._facts(occurrence, None, view)
            self._delay_or_ask(occurrence, rule, pending, out)
            return
        assert request is not None
        if rule.after_s > 0:
            pending = _Pending(
                rule, occurrence.name, occurrence.call_id, channel, transfer_id, request, facts
            )
            self._delay_or_ask(occurrence, rule, pending, out)
            return
        self._fire(occurrence.at, rule, occurrence.name, occurrence.call_id, request, requests, out)

    def _delay_or_ask(self, occurrence: _Trigger, rule: Rule, pending: _Pending, out: list[Command]) -> None:
        self._pending[pending.transfer_id] = pending
        if rule.after_s > 0:
            out.append(StartTimer(TIMER_PREFIX + pending.transfer_id, "after", occurrence.at + rule.after_s))
            out.append(
                self._notice(
                    occurrence, rule, "delayed", f"fires in {rule.after_s:g} s if the call is still there"
                )
            )
            return
        action = rule.action
        assert isinstance(action, AskAction)
        out.append(
            AskRule(
                pending.transfer_id,
                rule.name,
                action.url,
                pending.facts,
                action.timeout_s,
                action.retries,
                action.backoff_s,
            )
        )
        out.append(self._notice(occurrence, rule, "asked", action.url))

    def _fire_later(
        self, at: float, pending: _Pending, request: TransferRequested, view: View
    ) -> tuple[list[TransferRequested], list[Command]]:
        """A delayed or asked decision: fire if the call is still as it was."""
        notice = _notice_of(pending, at)
        counters = self.counters.setdefault(pending.rule.name, Counters())
        leg = view.registry.leg(pending.channel)
        if leg is None or leg.call_id != pending.call_id:
            counters.skipped += 1
            return [], [notice("skipped", "the call ended or moved on before the rule could fire")]
        why = self._active(pending.call_id, view) or self._loop(pending.rule, pending.call_id, request, view)
        if why:
            counters.blocked += 1
            return [], [notice("blocked", why)]
        requests: list[TransferRequested] = []
        out: list[Command] = []
        request = _restamp(request, at)
        self._fire(at, pending.rule, pending.trigger, pending.call_id, request, requests, out)
        return requests, out

    def _fire(
        self,
        at: float,
        rule: Rule,
        trigger: str,
        call_id: str,
        request: TransferRequested,
        requests: list[TransferRequested],
        out: list[Command],
    ) -> None:
        self.counters[rule.name].fired += 1
        if not self.dry_run:
            requests.append(request)
        out.append(
            RuleNotice(
                at,
                rule.name,
                "fired",
                trigger,
                call_id,
                rule.mode,
                _would(rule, request),
                request.transfer_id,
                _shown(request),
            )
        )

    def _request(
        self,
        occurrence: _Trigger,
        rule: Rule,
        type_: str,
        number: str,
        policy: Mapping[str, Any],
        view: View,
    ) -> TransferRequested | None:
        """The transfer a rule asks for: attended from the extension's leg (call.*) or the
        transferor (transfer.ended); blind moving the other party (the caller)."""
        party: str | None
        if occurrence.transfer is not None:
            ended = occurrence.transfer
            party = ended.transferor_channel if type_ == "attended" else ended.transferee_channel
            if party is None or view.registry.leg(party) is None:
                return None
        else:
            assert occurrence.leg is not None
            if type_ == "attended":
                party = occurrence.leg.channel_id
            else:
                other = view.other_party(occurrence.leg)
                party = other.channel_id if other is not None else None
            if party is None:
                return None
        marker = {
            "rule": rule.name,
            "trigger": occurrence.name,
            "call_id": occurrence.call_id,
            "at": occurrence.at,
            "decision": {"type": type_, "number": number, "policy": dict(policy)},
        }
        return TransferRequested(
            at=occurrence.at,
            transfer_id=self._transfer_id(rule, occurrence),
            number=number,
            type="blind" if type_ == "blind" else "attended",
            channel_id=party,
            policy=dict(policy) or None,
            initiated_by=f"rule:{rule.name}",
            rule=marker,
        )

    def _answer_request(
        self, pending: _Pending, answer: Mapping[str, Any], at: float, view: View
    ) -> tuple[str, TransferRequested | None]:
        """An ``ask`` answer → the transfer it names, or why not (``skip`` when it says so)."""
        if answer.get("skip") is True:
            return "skip", None
        number = answer.get("number")
        type_ = answer.get("type", "attended")
        if not isinstance(number, str) or not number.strip() or len(number) > 64:
            return "number: a non-empty string of at most 64 characters is required", None
        if type_ not in ("attended", "blind"):
            return "type: 'attended' or 'blind'", None
        unknown = sorted(set(answer) - {"number", "type", "policy", "skip"})
        if unknown:
            return f"unknown field {unknown[0]!r}", None
        policy, problem = check_policy(answer.get("policy") or {})
        if problem:
            return f"policy.{problem}", None
        leg = view.registry.leg(pending.channel)
        if leg is None:
            return "the call ended", None
        occurrence = _Trigger(pending.trigger, at, pending.call_id, leg=leg)
        request = self._request(occurrence, pending.rule, str(type_), number.strip(), policy, view)
        if request is None:
            return "no party to transfer in the call", None
        return "", request

    def _blocked(
        self, occurrence: _Trigger, rule: Rule, request: TransferRequested | None, view: View
    ) -> str:
        """Why the safety rules say no ("" when they do not)."""
        if (rule.name, occurrence.call_id, occurrence.name) in self._decided:
            return f"already fired for call {occurrence.call_id} on {occurrence.name}"
        if rule.rate_count:
            fires = self._fires.get(rule.name)
            while fires and fires[0] <= occurrence.at - rule.rate_per_s:
                fires.popleft()
            if fires is not None and len(fires) >= rule.rate_count:
                return f"rate limit: {rule.rate_count} in {rule.rate_per_s:g} s"
        return self._active(occurrence.call_id, view) or self._loop(rule, occurrence.call_id, request, view)

    def _active(self, call_id: str, view: View) -> str:
        for leg in view.registry.calls.get(call_id, {}).values():
            busy = view.active_transfer(leg.channel_id)
            if busy is not None:
                return f"the call has an active transfer ({busy})"
        return ""

    def _loop(self, rule: Rule, call_id: str, request: TransferRequested | None, view: View) -> str:
        history = self._call_history(call_id, view)
        auto = sum(1 for entry in history if str(entry["initiated_by"]).startswith("rule:"))
        limit = self.ruleset.max_auto_transfers
        if auto >= limit:
            return (
                f"loop guard: the call was already transferred by rules {auto} times "
                f"(max_auto_transfers {limit})"
            )
        if request is not None:
            for entry in history:
                if entry["from"] and _same_number(entry["from"], request.number):
                    return f"loop guard: the call was already transferred from {request.number}"
        return ""

    def _call_history(self, call_id: str, view: View) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for channel in view.registry.calls.get(call_id, {}):
            for entry in self._history.get(channel, ()):
                seen.setdefault(entry["id"], entry)
        return list(seen.values())

    def _entries(self, transfer: Ended) -> list[dict[str, Any]]:
        out = []
        for channel in (transfer.transferor_channel, transfer.transferee_channel):
            for entry in self._history.get(channel or "", ()):
                if entry["id"] == transfer.id:
                    out.append(entry)
        return out

    def _left(self, at: float, change: LegChange, view: View, out: list[Command]) -> None:
        """A leg hung up: forget its history; once its call is gone, let its decisions age out."""
        if self._history:
            self._history.pop(change.channel_id, None)
        call_id = change.call_id
        if call_id in self._decided_by_call and call_id not in view.registry.calls:
            self._gone.setdefault(call_id, at)
        if self._gone:
            self._prune(at)

    def _prune(self, at: float) -> None:
        for call_id, since in list(self._gone.items()):
            if at - since < FORGET_AFTER_S:
                break
            del self._gone[call_id]
            for key in self._decided_by_call.pop(call_id, ()):
                self._decided.pop(key, None)

    def _remember(self, key: tuple[str, str, str], at: float) -> None:
        self._decided[key] = at
        self._decided_by_call.setdefault(key[1], set()).add(key)

    def _transfer_id(self, rule: Rule, occurrence: _Trigger) -> str:
        """Derived from (rule, trigger, call): the same decision can never start two transfers."""
        call = _SAFE.sub("_", occurrence.call_id)[:64]
        return f"{self.id_prefix}{rule.name}.{occurrence.name.split('.', 1)[1]}.{call}"

    def _party_channel(self, occurrence: _Trigger) -> str:
        ended = occurrence.transfer
        if ended is None:
            return ""
        return ended.transferee_channel or ended.transferor_channel or ""

    def _notice(
        self,
        occurrence: _Trigger,
        rule: Rule,
        outcome: str,
        detail: str = "",
        request: Mapping[str, Any] | None = None,
    ) -> RuleNotice:
        transfer_id = request.get("transfer_id") if request else None
        return RuleNotice(
            occurrence.at, rule.name, outcome, occurrence.name, occurrence.call_id, rule.mode, detail,
            str(transfer_id) if transfer_id else None, request,
        )  # fmt: skip

    # -- facts ---------------------------------------------------------------

    def _context(self, occurrence: _Trigger, rule: Rule, view: View) -> cel.Context:
        """One CEL context per trigger and zone, holding the fields the candidates read."""
        context = occurrence.contexts.get(rule.zone_name)
        if context is None:
            wanted = self._wanted.get((occurrence.name, rule.zone_name), {})
            facts = self._facts(occurrence, wanted, view, zone=(rule.zone, rule.zone_name))
            context = occurrence.contexts[rule.zone_name] = cel.Context(variables=facts)
        return context

    def _facts(
        self,
        occurrence: _Trigger,
        wanted: Mapping[str, frozenset[str] | None] | None,
        view: View,
        zone: tuple[tzinfo, str] = (UTC, "UTC"),
    ) -> dict[str, Any]:
        """The facts ``wanted`` (root → fields; None: everything) for this trigger."""
        cache = occurrence.facts
        roots = ("trigger", "leg", "call", "now", "calendars", "transfer")
        out: dict[str, Any] = {}
        for root in roots:
            if wanted is not None and root not in wanted:
                continue
            fields = wanted.get(root) if wanted is not None else None
            if root == "trigger":
                out[root] = occurrence.name
            elif root == "leg" and occurrence.change is not None:
                out[root] = self._pick(cache, "leg", fields, lambda f: _leg_fact(occurrence, f))
            elif root == "call":
                out[root] = self._pick(cache, "call", fields, lambda f: self._call_fact(occurrence, f, view))
            elif root == "transfer" and occurrence.transfer is not None:
                out[root] = self._pick(
                    cache, "transfer", fields, lambda f: _transfer_fact(occurrence.transfer, f)
                )
            elif root == "now":
                now = _now(occurrence.at, *zone)
                out[root] = now if fields is None else {name: now[name] for name in fields}
            elif root == "calendars":
                calendars = self.ruleset.calendars
                names = fields if fields is not None else calendars.keys()
                out[root] = {
                    name: calendars[name].status(occurrence.at) for name in names if name in calendars
                }
        return out

    @staticmethod
    def _pick(cache: dict[str, Any], root: str, fields: frozenset[str] | None, get: Any) -> dict[str, Any]:
        names = fields if fields is not None else FACTS[root].keys()
        values: dict[str, Any] = {}
        for name in names:
            key = f"{root}.{name}"
            if key not in cache:
                cache[key] = get(name)
            values[name] = cache[key]
        return values

    def _call_fact(self, occurrence: _Trigger, name: str, view: View) -> Any:
        legs = list(view.registry.calls.get(occurrence.call_id, {}).values())
        if name == "id":
            return occurrence.call_id
        if name == "members":
            return [
                {"kind": leg.kind, "number": leg.number, "status": leg.status, "channel": leg.channel_id}
                for leg in legs
            ]
        if name == "extensions":
            return [leg.number for leg in legs if leg.kind == "extension"]
        if name == "up_s":
            first = min((leg.created for leg in legs), default=occurrence.at)
            return int(max(0.0, occurrence.at - first))
        if name == "transfers":
            return [dict(entry) for entry in self._call_history(occurrence.call_id, view)]
        if name == "auto_transfers":
            history = self._call_history(occurrence.call_id, view)
            return sum(1 for entry in history if str(entry["initiated_by"]).startswith("rule:"))
        trunk = next((leg for leg in legs if leg.kind != "extension"), None)
        if name == "trunk":
            return trunk.trunk if trunk is not None else ""
        if name == "direction":
            return "internal" if trunk is None else trunk.kind
        if name == "answered_by":
            if occurrence.name == "call.answered" and occurrence.leg is not None:
                return occurrence.leg.number
            talking = [leg for leg in legs if leg.kind == "extension" and leg.status in TALKING_STATUSES]
            return talking[0].number if talking else ""
        ordered = sorted(legs, key=lambda leg: leg.created)
        if name == "caller":
            if trunk is not None and trunk.kind == "inbound":
                return trunk.number
            if trunk is not None:
                return trunk.peer or next((leg.number for leg in ordered if leg.kind == "extension"), "")
            return ordered[0].number if ordered else ""
        # called
        if trunk is not None and trunk.kind == "inbound":
            return trunk.peer or next((leg.number for leg in ordered if leg.kind == "extension"), "")
        if trunk is not None:
            return trunk.number
        return ordered[-1].number if len(ordered) > 1 else ""


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------


def _leg_fact(occurrence: _Trigger, name: str) -> str:
    change = occurrence.change
    assert change is not None
    if name == "kind":
        return change.kind
    if name == "number":
        return change.number
    if name == "status":
        return change.status
    if name == "old_status":
        return change.old_status or ""
    return change.channel_id


def _transfer_fact(transfer: Ended | None, name: str) -> Any:
    assert transfer is not None
    values: dict[str, Any] = {
        "id": transfer.id,
        "state": transfer.state,
        "reason": transfer.reason or "",
        "number": transfer.number,
        "type": transfer.type,
        "initiated_by": transfer.initiated_by,
        "rule": (transfer.rule or {}).get("rule", ""),
        "transferor": transfer.transferor_number or "",
        "transferee": transfer.transferee_number or "",
        "attempts": transfer.attempt + 1,
    }
    return values[name]


def _now(at: float, zone: tzinfo, zone_name: str) -> dict[str, Any]:
    local = datetime.fromtimestamp(at, UTC).astimezone(zone)
    return {
        "weekday": local.isoweekday(),
        "day": DAYS[local.weekday()],
        "hour": local.hour,
        "minute": local.minute,
        "date": local.date().isoformat(),
        "time": f"{local.hour:02d}:{local.minute:02d}",
        "zone": zone_name,
    }


def _same_number(a: str, b: str) -> bool:
    from engine.engine import numbers_match  # the engine's own comparison (import here: no cycle)

    return numbers_match(a, b)


def _shown(request: TransferRequested | None) -> dict[str, Any] | None:
    """What a rule's transfer request says, for notices and ``rules test``."""
    if request is None:
        return None
    return {
        "transfer_id": request.transfer_id,
        "type": request.type,
        "channel_id": request.channel_id,
        "number": request.number,
        "policy": dict(request.policy or {}),
    }


def _would(rule: Rule, request: TransferRequested | None) -> str:
    if request is None:
        return f"ask {rule.action.url}" if isinstance(rule.action, AskAction) else ""
    return f"{request.type} transfer of {request.channel_id} to {request.number}"


def _restamp(request: TransferRequested, at: float) -> TransferRequested:
    marker = dict(request_marker(request))
    marker["at"] = at
    return TransferRequested(
        at=at,
        transfer_id=request.transfer_id,
        number=request.number,
        type=request.type,
        channel_id=request.channel_id,
        policy=request.policy,
        initiated_by=request.initiated_by,
        rule=marker,
    )


def _notice_of(pending: _Pending, at: float) -> Any:
    def notice(outcome: str, detail: str) -> RuleNotice:
        return RuleNotice(
            at, pending.rule.name, outcome, pending.trigger, pending.call_id, pending.rule.mode, detail,
            pending.transfer_id,
        )  # fmt: skip

    return notice


def request_marker(request: TransferRequested) -> Mapping[str, Any]:
    """The rule decision a rule's :class:`TransferRequested` carries, or {}."""
    return request.rule or {}


def check_policy(policy: object) -> tuple[dict[str, Any], str]:
    """Validate a rule's (or an ask answer's) policy overrides: (policy, "") or ({}, "field: problem")."""
    if not isinstance(policy, Mapping):
        return {}, "policy: a table of overrides"
    out: dict[str, Any] = {}
    for key, value in policy.items():
        kind = POLICY_FIELDS.get(key)
        if kind is None:
            return {}, f"{key}: unknown field"
        if isinstance(kind, tuple):
            if value not in kind:
                return {}, f"{key}: one of {', '.join(kind)}"
            out[key] = value
        elif kind is float:
            if (
                type(value) not in (int, float)
                or value < 0
                or value > 3600
                or (key == "no_answer_timeout_s" and value <= 0)
            ):
                return {}, f"{key}: seconds between 0 and 3600"
            out[key] = float(value)
        else:
            if (
                not isinstance(value, list)
                or len(value) > 10
                or not all(isinstance(v, str) and v.strip() for v in value)
            ):
                return {}, f"{key}: a list of at most 10 numbers"
            out[key] = [v.strip() for v in value]
    return out, ""
