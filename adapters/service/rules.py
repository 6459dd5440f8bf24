"""Routing rules, the adapter side: the rules file, the ``ask`` HTTP client, hot reload.

Theory of operation
-------------------
The rules themselves are pure (:mod:`engine.rules`, conditions in
:mod:`engine.conditions`, calendars in :mod:`engine.calendars`).  This module
does what they may not:

* **Load** a rules file (TOML, :func:`load`): validate its shape (unknown keys
  refused), read the IANA zones (I/O), compile every condition and number
  template once, check names and types, calendars, unique rule names.  Any
  problem is :class:`RulesError`, whose text is ONE line naming the file, the
  rule, the field and — for expressions — the line and column in the file::

      rules error in rules.toml: rule "vip": if: unknown field of call 'caler' at line 12 column 9

* **Ask** (:func:`ask`): POST a rule's facts to its URL with a timeout and
  retries with backoff; whatever happens, one
  :class:`~engine.model.RuleAnswered` comes back (an answer, or an error) so
  the rule is decided or skipped, never left hanging.
* **Reload** (:class:`RulesHolder`): the service keeps the path and the loaded
  set; SIGHUP and ``POST /v1/rules/reload`` load the file again and swap it
  into every PBX's engine only if it is valid — a bad file is refused, the
  old rules stay.
"""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from adapters.service.logs import get_logger
from engine.calendars import Calendar, CalendarError, build
from engine.conditions import TRIGGERS, ConditionError, compile_condition, compile_template
from engine.model import AskRule, RuleAnswered
from engine.rules import AskAction, Rule, RuleEngine, RuleSet, TransferAction, check_policy

if TYPE_CHECKING:
    from adapters.service.server import Service

log = get_logger("xferd.rules")

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")]
Number = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S+$")]
Seconds = Annotated[float, Field(ge=0, le=86400, strict=True)]


class RulesError(Exception):
    """A rules file that cannot be used; ``str()`` is one line."""


class _Table(BaseModel):
    # Attribute docstrings are the keys' descriptions in the docs' generated rules-file reference.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


class CalendarTable(_Table):
    """A calendar: weekly opening hours, holidays and closures, evaluated Holiday → Closed → Open."""

    name: Name
    """The calendar's name: conditions read it as `calendars.<name>` (`"open"`, `"closed"`, `"holiday"`)."""
    zone: Annotated[str, Field(min_length=1)]
    """The IANA time zone of its hours and dates (DST moves the hours with the wall clock)."""
    hours: dict[str, list[str]] = Field(default_factory=dict)
    """Weekly opening hours by day (`mon` … `sun`): local `"HH:MM-HH:MM"` ranges, none over midnight."""
    holidays: list[str] = Field(default_factory=list)
    """Holiday dates: `"YYYY-MM-DD"` or `"first..last"`."""
    closed: list[str] = Field(default_factory=list)
    """One-off closures: `"YYYY-MM-DD"` or `"first..last"`."""


class RateLimit(_Table):
    """At most `count` transfers started by the rule per `per_s` seconds."""

    count: Annotated[StrictInt, Field(ge=1, le=100000)]
    """How many transfers the rule may start per window."""
    per_s: Annotated[float, Field(gt=0, le=86400, strict=True)] = 60.0
    """The window, in seconds."""


class ThenTable(_Table):
    """What a rule does: exactly one of `attended`, `blind` or `ask`."""

    attended: Number | None = None
    """Start an attended transfer to this number (a literal or a template such as `"{call.called}"`)."""
    blind: Number | None = None
    """Blind-transfer the other party to this number (a literal or a template)."""
    ask: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    """Ask this URL: xferd POSTs `{"rule", "ask_id", "facts"}` and expects `{"number", "type", "policy"}`
    or `{"skip": true}`."""
    policy: dict[str, Any] = Field(default_factory=dict)
    """The transfer's policy overrides (the keys of `[policy]`)."""
    timeout_s: Annotated[float, Field(gt=0, le=30, strict=True)] = 2.0
    """With `ask`: how long to wait for an answer."""
    retries: Annotated[StrictInt, Field(ge=0, le=5)] = 1
    """With `ask`: how many times to ask again after a failure."""
    backoff_s: Annotated[float, Field(ge=0, le=10, strict=True)] = 0.2
    """With `ask`: the wait before the first retry, doubling after each."""


class RuleTable(_Table):
    """One rule; the first matching rule wins unless it says `continue = true`."""

    name: Name
    """The rule's name, in `initiated_by = "rule:<name>"`, `/v1/rules`, metrics and logs."""
    on: Literal["call.answered", "call.ringing", "call.held", "transfer.ended"]
    """The trigger: an extension's leg starts talking, starts ringing, goes on hold; or a transfer
    reached a final state."""
    then: ThenTable
    """What to do when the rule matches."""
    enabled: StrictBool = True
    """A disabled rule is loaded and checked but never evaluated."""
    mode: Literal["enforce", "shadow"] = "enforce"
    """`shadow`: evaluate, count and log what the rule would send, and send nothing."""
    if_: str | None = Field(default=None, alias="if")
    """A CEL condition, compiled and type-checked at load (no condition: always)."""
    after_s: Seconds = 0.0
    """Delay the rule; dropped if the call ends or moves on meanwhile."""
    continue_: StrictBool = Field(default=False, alias="continue")
    """Go on evaluating the next rules after this one matched."""
    extensions: list[Number] = Field(default_factory=list)
    """Only for these extensions (for `transfer.ended`: the transferor); empty: any."""
    zone: str | None = None
    """The zone of `now` in this rule's condition (default: the file's `zone`)."""
    rate_limit: RateLimit | None = None
    """At most so many transfers started by this rule per window."""


class RulesFile(_Table):
    """The rules file: `[[calendars]]` and an ordered list of `[[rules]]`."""

    zone: str = "UTC"
    """The IANA zone of `now` in conditions (a rule may set its own)."""
    max_auto_transfers: Annotated[StrictInt, Field(ge=0, le=100)] = 3
    """Loop guard: at most this many rule transfers per call."""
    calendars: list[CalendarTable] = Field(default_factory=list)
    """Calendars the conditions can read."""
    rules: list[RuleTable] = Field(default_factory=list)
    """The rules, in order."""


# ----------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------


def load(path: str | Path) -> RuleSet:
    """Read and compile a rules file; :class:`RulesError` (one line) if it cannot be used."""
    return load_with_data(path)[0]


def load_with_data(path: str | Path) -> tuple[RuleSet, dict[str, Any]]:
    """:func:`load`, also returning the file's content as data (what a recording keeps as ``meta.rules``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RulesError(f"rules error in {path}: cannot read the file: {reason}") from None
    return _parse(text, str(path))


def parse(text: str, source: str = "rules") -> RuleSet:
    """Compile the rules file ``text`` (``source`` names it in errors)."""
    return _parse(text, source)[0]


def _parse(text: str, source: str) -> tuple[RuleSet, dict[str, Any]]:
    prefix = f"rules error in {source}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{prefix}: not valid TOML: {exc}") from None
    return compile_data(data, text, prefix), data


def compile_data(data: Mapping[str, Any], text: str, prefix: str) -> RuleSet:
    """Compile already parsed rules (a TOML file's, or a scenario's ``meta.rules``)."""
    try:
        parsed = RulesFile.model_validate(dict(data))
    except ValidationError as exc:
        raise RulesError(f"{prefix}: {_describe(exc, data)}") from None
    default_zone = _zone(parsed.zone, prefix, "zone")
    calendars: dict[str, Calendar] = {}
    for table in parsed.calendars:
        where = f'{prefix}: calendar "{table.name}"'
        if table.name in calendars:
            raise RulesError(f"{where}: name: two calendars have this name")
        zone = _zone(table.zone, where, "zone")
        try:
            calendars[table.name] = build(table.name, zone, table.hours, table.holidays, table.closed)
        except CalendarError as exc:
            raise RulesError(f"{where}: {exc.field}: {exc}") from None
    rules: list[Rule] = []
    names: set[str] = set()
    for index, rule_table in enumerate(parsed.rules):
        where = f'{prefix}: rule "{rule_table.name}"'
        if rule_table.name in names:
            raise RulesError(f"{where}: name: two rules have this name")
        names.add(rule_table.name)
        rules.append(_rule(rule_table, index, text, where, default_zone, parsed.zone, calendars))
    return RuleSet(tuple(rules), calendars, parsed.max_auto_transfers)


def _zone(name: str, where: str, key: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RulesError(
            f"{where}: {key}: unknown time zone {name!r} (an IANA name, e.g. Europe/Paris)"
        ) from None


def _rule(
    table: RuleTable,
    index: int,
    text: str,
    where: str,
    default_zone: ZoneInfo,
    default_zone_name: str,
    calendars: Mapping[str, Calendar],
) -> Rule:
    then = table.then
    targets = [name for name in ("attended", "blind", "ask") if getattr(then, name) is not None]
    if len(targets) != 1:
        raise RulesError(f"{where}: then: give exactly one of attended, blind or ask")
    condition = None
    if table.if_ is not None:
        try:
            condition = compile_condition(table.if_, table.on, calendars)
        except ConditionError as exc:
            line, column = _locate(text, index, "if", table.if_, exc.line, exc.column)
            raise RulesError(f"{where}: if: {exc.message}{_at(line, column)}") from None
    action: TransferAction | AskAction
    if then.ask is not None:
        if then.policy:
            raise RulesError(f"{where}: then.policy: an ask rule's policy comes from the URL's answer")
        action = AskAction(then.ask, then.timeout_s, then.retries, then.backoff_s)
    else:
        kind: Literal["attended", "blind"] = "attended" if then.attended is not None else "blind"
        number = then.attended or then.blind or ""
        try:
            template = compile_template(number, table.on, calendars)
        except ConditionError as exc:
            raise RulesError(f"{where}: then.{kind}: {exc.message} (column {exc.column})") from None
        policy, problem = check_policy(then.policy)
        if problem:
            raise RulesError(f"{where}: then.policy.{problem}")
        action = TransferAction(kind, template, policy)
    zone, zone_name = default_zone, default_zone_name
    if table.zone is not None:
        zone, zone_name = _zone(table.zone, where, "zone"), table.zone
    return Rule(
        name=table.name,
        on=table.on,
        action=action,
        condition=condition,
        zone=zone,
        zone_name=zone_name,
        enabled=table.enabled,
        mode=table.mode,
        after_s=float(table.after_s),
        continue_=table.continue_,
        extensions=frozenset(table.extensions),
        rate_count=table.rate_limit.count if table.rate_limit else 0,
        rate_per_s=float(table.rate_limit.per_s) if table.rate_limit else 60.0,
    )


def _at(line: int | None, column: int | None) -> str:
    return f" at line {line} column {column}" if line is not None else ""


def _locate(
    text: str, index: int, key: str, value: str, line: int, column: int
) -> tuple[int | None, int | None]:
    """File line and column of (``line``, ``column``) within rule ``index``'s ``key`` string.

    TOML parsers keep no positions: find the rule's ``[[rules]]`` block, then
    the key, then where its string starts.  A value written with escapes may
    be off by the escapes' width; None when the file is not laid out that way
    (a scenario's rules, an inline table).
    """
    lines = text.splitlines()
    headers = [i for i, row in enumerate(lines) if re.match(r"^\s*\[\[\s*rules\s*\]\]", row)]
    if index >= len(headers):
        return None, None
    end = headers[index + 1] if index + 1 < len(headers) else len(lines)
    pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=\s*('''|\"\"\"|'|\")")
    for row in range(headers[index], end):
        found = pattern.match(lines[row])
        if found is None:
            continue
        start_col = found.end()  # 0-based column just after the opening quote
        first_row = row
        if found.group(1) in ("'''", '"""') and start_col == len(lines[row]):
            first_row, start_col = row + 1, 0  # a newline right after ''' is not part of the string
        if line == 1:
            return first_row + 1, start_col + column
        return first_row + line, column
    return None, None


def _describe(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """pydantic's first problem, naming the rule (or calendar) by its name and the field."""
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "required"
    elif kind == "literal_error" and loc and loc[-1] == "on":
        message = f"unknown trigger (use {', '.join(TRIGGERS)})"
    elif kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
        message = "lower-case letters, digits, - and _ (at most 48)"
    where = ""
    if len(loc) >= 2 and loc[0] in ("rules", "calendars") and loc[1].isdigit():
        items = data.get(loc[0])
        item = items[int(loc[1])] if isinstance(items, list) and int(loc[1]) < len(items) else None
        name = item.get("name") if isinstance(item, dict) else None
        noun = "rule" if loc[0] == "rules" else "calendar"
        where = f'{noun} "{name}": ' if isinstance(name, str) else f"{noun} {int(loc[1]) + 1}: "
        loc = loc[2:]
    field_name = ".".join(loc) or "top level"
    return f"{where}{field_name}: {message}"


# ----------------------------------------------------------------------------------
# asking a URL
# ----------------------------------------------------------------------------------


async def ask(command: AskRule, client: httpx.AsyncClient, clock: Any = time.time) -> RuleAnswered:
    """POST the rule's facts to its URL; retry with backoff; always one :class:`RuleAnswered`.

    The answer must be a JSON object (``{"number", "type", "policy"}`` or
    ``{"skip": true}``; the engine checks its fields).  A timeout, a
    connection error, a non-2xx status or a body that is not a JSON object is
    a failure: retried ``retries`` times (``backoff_s`` doubling), then
    reported as an error — the rule is skipped and counted, the call goes on.
    """
    body = {"rule": command.rule, "ask_id": command.ask_id, "facts": dict(command.facts)}
    delay = command.backoff_s
    error = ""
    for attempt in range(command.retries + 1):
        if attempt:
            await asyncio.sleep(delay)
            delay *= 2
        try:
            response = await client.post(command.url, json=body, timeout=command.timeout_s)
        except httpx.TimeoutException:
            error = f"no answer within {command.timeout_s:g} s"
            continue
        except httpx.HTTPError as exc:
            error = f"cannot reach the URL: {type(exc).__name__}"
            continue
        if not 200 <= response.status_code < 300:
            error = f"HTTP {response.status_code}"
            continue
        try:
            answer = response.json()
        except ValueError:
            error = "the answer is not JSON"
            continue
        if not isinstance(answer, dict):
            error = "the answer is not a JSON object"
            continue
        return RuleAnswered(clock(), command.ask_id, answer)
    tries = command.retries + 1
    return RuleAnswered(clock(), command.ask_id, None, f"{error} ({tries} tr{'y' if tries == 1 else 'ies'})")


# ----------------------------------------------------------------------------------
# the service's rules: path, loaded set, reload
# ----------------------------------------------------------------------------------


@dataclass
class RulesHolder:
    """The rules file a service runs with, and what loading it gave."""

    path: Path
    ruleset: RuleSet
    #: the file's content as loaded (a recording's ``meta.rules``)
    data: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    reloads: int = 0
    last_error: str | None = None

    @classmethod
    def open(cls, path: Path) -> RulesHolder:
        ruleset, data = load_with_data(path)
        return cls(path, ruleset, data)

    def attach(self, service: Service) -> None:
        """Give every PBX's engine the rules (an id prefix per PBX when there are several)."""
        several = len(service.units) > 1
        for unit in service.units.values():
            engine = unit.runtime.engine
            if engine.rules is None:
                engine.rules = RuleEngine(self.ruleset, id_prefix=f"{unit.name}." if several else "")
            else:
                engine.rules.replace(self.ruleset)

    def reload(self, service: Service) -> RuleSet:
        """Load the file again; swap it in only if valid.  Raises :class:`RulesError` (old rules kept)."""
        try:
            ruleset, self.data = load_with_data(self.path)
        except RulesError as exc:
            self.last_error = str(exc)
            log.error("rules_reload_refused", error=str(exc))
            raise
        self.ruleset = ruleset
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_error = None
        self.attach(service)
        log.info("rules_reloaded", path=str(self.path), rules=len(ruleset.rules))
        return ruleset

    def describe(self, service: Service) -> list[dict[str, Any]]:
        """Every rule with its counters summed over the PBXs (``GET /v1/rules``)."""
        out = []
        for rule in self.ruleset.rules:
            counters: dict[str, int] = {}
            for unit in service.units.values():
                engine_rules = unit.runtime.engine.rules
                found = engine_rules.counters.get(rule.name) if engine_rules is not None else None
                for key, value in (found.as_dict() if found else {}).items():
                    counters[key] = counters.get(key, 0) + value
            out.append({**describe_rule(rule), "counters": counters})
        return out


def describe_rule(rule: Rule) -> dict[str, Any]:
    then: dict[str, Any]
    if isinstance(rule.action, AskAction):
        then = {"ask": rule.action.url, "timeout_s": rule.action.timeout_s, "retries": rule.action.retries}
    else:
        then = {rule.action.type: rule.action.number.text, "policy": dict(rule.action.policy)}
    return {
        "name": rule.name,
        "on": rule.on,
        "enabled": rule.enabled,
        "mode": rule.mode,
        "if": rule.condition.source if rule.condition else None,
        "extensions": sorted(rule.extensions),
        "after_s": rule.after_s,
        "continue": rule.continue_,
        "zone": rule.zone_name,
        "then": then,
    }


class RulesCollector:
    """Prometheus ``xferd_rule_events_total{rule, counter}``, read from the engines' counters at
    scrape time (counting costs the hot path nothing)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the rule names are only known at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "xferd_rule_events",
            "Routing rules: evaluations, matches, firings, …, by rule",
            labels=["rule", "counter"],
        )
        for rule, counter, value in counter_rows(self.service):
            family.add_metric([rule, counter], value)
        yield family


def counter_rows(service: Service) -> Sequence[tuple[str, str, int]]:
    """(rule, counter, value) for every rule any PBX's engine has counted (Prometheus)."""
    totals: dict[tuple[str, str], int] = {}
    for unit in service.units.values():
        engine_rules = unit.runtime.engine.rules
        if engine_rules is None:
            continue
        for name, counters in engine_rules.counters.items():
            for key, value in counters.as_dict().items():
                totals[(name, key)] = totals.get((name, key), 0) + value
    return [(name, key, value) for (name, key), value in sorted(totals.items())]
