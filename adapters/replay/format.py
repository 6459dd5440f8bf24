"""The scenario format: one JSON object per line (JSONL), documented in ``scenarios/README.md``.

A scenario is what the service saw and did, in the order it handled it,
plus what a human expects of it:

=============  ================================================================
``meta``       first line: name, platform, policy, start epoch, xferd version
``frame``      a raw PBX frame as received (``text``), or the same frame shown
               as JSON (``json``) when it re-encodes to exactly those bytes
               (Webex: a signed webhook delivery's body)
``control``    an API request: ``start`` a transfer, or an operator op
``request``    a PBX HTTP request the service made, with its answer
``snapshot``   a reconciliation snapshot (``call/query``) the engine was fed
``supervise``  a supervisor's call action the engine was told of (monitor,
               park, hang-up: ``engine.supervision``)
``end``        the recording stopped (timers due later never fired)
``expect``     an expectation: a PBX ``request``, a ``final`` state, a
               request that must ``never`` be made
=============  ================================================================

Every timed line carries ``at``: seconds since ``meta.start``.  Lines are in
the order the service handled them, which is what replay follows; ``at`` is
the time the service stamped on it.

Why one line per thing: a scenario must read like an incident log and diff
like code.  Why JSON frames are re-encoded only when that is byte-exact: a
replay must feed the parser exactly what the PBX sent, or it would test a
different input.  Validation is pydantic (one model per kind, unknown keys
refused), and every problem is one line naming ``file:line``.

Reading keeps Python's cyclic garbage collector off (:func:`collector_paused`):
a long recording is millions of small objects that all stay alive, and each
collection triggered while they are built walks all those built before it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from engine.model import Action, Policy
from engine.rules import RuleSet

KINDS = ("meta", "frame", "control", "request", "snapshot", "end", "expect", "ask", "supervise")

Offset = Annotated[float, Field(ge=0)]
Text = Annotated[str, Field(min_length=1)]
_POLICY_FIELDS = frozenset(f.name for f in dataclasses.fields(Policy))
_POLICY = TypeAdapter(Policy)


class ScenarioError(Exception):
    """A scenario file cannot be used; ``str()`` is one line naming ``file:line``."""


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Meta(_Line):
    kind: Literal["meta"]
    format: Literal[1]
    name: str | None = None
    description: str = ""
    #: Replay parses frames and classifies requests the way this platform's adapter does.
    platform: Literal["yeastar", "webex"]
    #: Platform settings replay needs besides the policy (Webex: ``events``, ``user_number``).
    pbx: dict[str, Any] = Field(default_factory=dict)
    #: The service's ``[policy]`` (engine defaults); absent keys take the engine's defaults.
    policy: dict[str, Any] = Field(default_factory=dict)
    start: float
    xferd: str | None = None
    #: routing rules the service ran with: a rules file's content as JSON (see adapters.service.rules)
    rules: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _policy(self) -> Meta:
        policy_of(self.policy)
        return self

    def engine_policy(self) -> Policy:
        return policy_of(self.policy)


class FrameLine(_Line):
    kind: Literal["frame"]
    at: Offset
    text: str | None = None
    frame: dict[str, Any] | None = Field(default=None, alias="json")
    #: with ``json``: the frame's ``msg`` was a JSON object, not a JSON-encoded string
    msg_object: bool = False

    @model_validator(mode="after")
    def _one_form(self) -> FrameLine:
        if (self.text is None) == (self.frame is None):
            raise ValueError("give exactly one of text or json")
        if self.msg_object and self.frame is None:
            raise ValueError("msg_object only goes with json")
        return self

    def raw(self) -> str:
        """The frame exactly as the PBX sent it."""
        if self.frame is None:
            assert self.text is not None
            return self.text
        obj = dict(self.frame)
        if not self.msg_object and "msg" in obj:
            obj["msg"] = compact(obj["msg"])
        return compact(obj)


class StartBody(_Line):
    """``POST /v1/transfers`` (contract §3.1), as the engine received it."""

    type: Literal["attended", "blind"] = "attended"
    channel_id: Text | None = None
    extension: Text | None = None
    number: Text
    dial_permission: Text | None = None
    #: per-transfer overrides of the ``meta`` policy
    policy: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _policy(self) -> StartBody:
        if self.policy:
            policy_of(self.policy)
        return self


class ControlLine(_Line):
    kind: Literal["control"]
    at: Offset
    op: Literal["start", "complete", "abort", "swap", "threeway"]
    transfer: Text
    body: StartBody | None = None
    #: the engine's refusal code when the service answered 4xx (``not_allowed`` …)
    rejected: str | None = None

    @model_validator(mode="after")
    def _body(self) -> ControlLine:
        if (self.op == "start") != (self.body is not None):
            raise ValueError("a start carries a body; an operator op does not")
        return self


class SuperviseLine(_Line):
    """A supervisor's call action as the engine received it (see ``engine.supervision``).

    ``monitor``: extension ``monitor`` listens to leg ``channel_id`` in ``mode``
    (``session`` ties it to the ``call/listen`` answer that follows); ``park`` /
    ``hangup`` of leg ``channel_id``.  ``rejected``: the engine's refusal code.
    """

    kind: Literal["supervise"]
    at: Offset
    action: Literal["monitor", "park", "hangup"]
    channel_id: Text | None = None
    monitor: Text | None = None
    mode: Literal["listen", "whisper", "barge"] | None = None
    session: Text | None = None
    rejected: str | None = None

    @model_validator(mode="after")
    def _fields(self) -> SuperviseLine:
        if self.action == "monitor" and (self.session is None or self.mode is None):
            raise ValueError("a monitor carries a session and a mode")
        if self.action != "monitor" and self.channel_id is None:
            raise ValueError(f"a {self.action} names its channel_id")
        return self


class RequestLine(_Line):
    kind: Literal["request"]
    at: Offset
    endpoint: Text
    body: dict[str, Any] = Field(default_factory=dict)
    answer: dict[str, Any] | None = None
    #: ``ok`` / ``refused`` (non-zero errcode) / ``unknown`` (may have acted) / ``error`` (never reached)
    result: Literal["ok", "refused", "unknown", "error"]
    seconds: float | None = None
    #: the HTTP status, where the platform's errors are HTTP statuses (Webex)
    status: int | None = None
    #: a throttled answer's ``Retry-After``, in seconds (Webex)
    retry_after: float | None = None


class MemberModel(_Line):
    kind: Literal["extension", "inbound", "outbound"]
    number: str
    channel_id: Text
    status: Text


class CallModel(_Line):
    call_id: Text
    members: list[MemberModel]


class SnapshotLine(_Line):
    kind: Literal["snapshot"]
    at: Offset
    calls: list[CallModel]


class AskLine(_Line):
    """The answer a routing rule's ``ask`` URL gave (``answer``), or why none came (``error``)."""

    kind: Literal["ask"]
    at: Offset
    ask_id: Text
    answer: dict[str, Any] | None = None
    error: str = ""


class RuleExpect(_Line):
    """Matches what a routing rule did (``engine.model.RuleNotice``); absent fields match anything."""

    name: Text
    outcome: Literal["fired", "shadow", "delayed", "asked", "blocked", "skipped", "error"]
    call_id: Text | None = None


class EndLine(_Line):
    kind: Literal["end"]
    at: Offset


class RequestPattern(_Line):
    """Matches a PBX request the engine made; absent fields match anything."""

    transfer: Text | None = None
    action: Action
    number: Text | None = None
    channel_id: Text | None = None


class FinalExpect(_Line):
    transfer: Text
    state: Literal["idle", "consulting", "swapped", "threeway", "completed", "aborted"]
    reason: str | None = None


class ExpectLine(_Line):
    kind: Literal["expect"]
    request: RequestPattern | None = None
    #: consecutive request expectations sharing a step may happen in any order among themselves
    step: int | str | None = None
    final: FinalExpect | None = None
    never: RequestPattern | None = None
    #: with ``never``: how many matching requests are still fine
    max: Annotated[int, Field(ge=0)] = 0
    rule: RuleExpect | None = None
    #: with ``rule``: exactly how many times the rule did that
    count: Annotated[int, Field(ge=0)] = 1

    @model_validator(mode="after")
    def _one(self) -> ExpectLine:
        given = [name for name in ("request", "final", "never", "rule") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of request, final, never or rule")
        if self.step is not None and self.request is None:
            raise ValueError("step only goes with request")
        if self.max and self.never is None:
            raise ValueError("max only goes with never")
        return self


Input: TypeAlias = FrameLine | ControlLine | RequestLine | SnapshotLine | AskLine | SuperviseLine
Line: TypeAlias = Meta | Input | EndLine | ExpectLine
_LINE: TypeAdapter[Line] = TypeAdapter(Annotated[Line, Field(discriminator="kind")])


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario: inputs in file order, then what is expected."""

    path: Path
    meta: Meta
    inputs: tuple[Input, ...]
    end: float | None = None
    expected: tuple[tuple[RequestPattern, ...], ...] = ()  # steps, in order
    finals: tuple[FinalExpect, ...] = ()
    never: tuple[tuple[RequestPattern, int], ...] = field(default=())
    rules_expected: tuple[tuple[RuleExpect, int], ...] = ()
    #: ``meta.rules`` compiled (None: the scenario carries no rules)
    ruleset: RuleSet | None = None

    @property
    def name(self) -> str:
        return self.meta.name or self.path.stem


def policy_of(data: Mapping[str, Any]) -> Policy:
    """A :class:`Policy` from its dict form (``Policy.as_dict``); ValueError names the problem."""
    unknown = sorted(set(data) - _POLICY_FIELDS)
    if unknown:
        raise ValueError(f"unknown policy key {unknown[0]!r}")
    try:
        return _POLICY.validate_python(dict(data))
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None


def compact(value: Any) -> str:
    """JSON the way the PBX and the recorder write it: no spaces, UTF-8 kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dump_line(line: Line) -> str:
    """One line of a scenario file (no newline): kind first, absent fields left out."""
    return compact(line.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True))


def frame_line(at: float, text: str) -> FrameLine:
    """The most readable form of a frame that still gives back ``text`` exactly."""
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and compact(obj) == text:
        msg = obj.get("msg")
        if isinstance(msg, str):
            try:
                decoded = json.loads(msg)
            except ValueError:
                decoded = None
            if decoded is not None and compact(decoded) == msg:
                return FrameLine.model_validate({"kind": "frame", "at": at, "json": {**obj, "msg": decoded}})
        else:
            shown = {"kind": "frame", "at": at, "json": obj, "msg_object": "msg" in obj}
            return FrameLine.model_validate(shown)
    return FrameLine(kind="frame", at=at, text=text)


def parse_line(text: str) -> Line:
    """One line; ValueError with a one-line reason.

    A line pydantic accepts straight from its text is taken as is: decoding and validating in
    one pass costs a third less than ``json.loads`` then validating the objects, and for every
    line both accept the result is the same (same JSON values — floats, big integers, ``NaN``
    alike; same validation).  Anything it refuses — a bad line, but also JSON that only
    ``json.loads`` takes, such as an escaped lone surrogate or very deep nesting — goes the
    reference way below, which decides and words the error, so what is accepted and every
    message are exactly those of ``json.loads`` and the line models.
    """
    try:
        return _LINE.validate_json(text)
    except ValueError:  # ValidationError, or a str that does not encode to UTF-8
        pass
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    try:
        return _LINE.validate_python(obj)
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None


def read(path: str | Path) -> Scenario:
    """Parse and validate a scenario file; :class:`ScenarioError` names ``file:line``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(f"{path}: cannot read: {reason}") from None
    return parse(path, text.splitlines())


@contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """Keep the cyclic garbage collector off while scenarios are built; as it was afterwards.

    Why: every object of a scenario stays alive until the scenario is dropped, so each
    collection triggered while reading walks every object read so far, in vain — reading a
    200,000-frame file cost 23 µs a line with the collector on, 8 µs with it off.  Nothing is
    lost: scenario objects hold no reference cycles, so reference counting frees them.

    ``freeze``: on success, move every object alive to the permanent generation
    (:func:`gc.freeze`) before the collector is back on.  Without it, the first collections
    after reading still walk the new objects (two or three times, generation by generation),
    and every full collection during the replay walks them again.  It is for a caller that owns
    the process for a while (the ``replay`` command), which calls :func:`gc.unfreeze` when done.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if enabled:
            gc.enable()


def parse(path: Path, lines: Iterable[str]) -> Scenario:
    """A scenario file's lines, validated; :class:`ScenarioError` names ``file:line``."""
    with collector_paused():
        return _parse(path, lines)


def _parse(path: Path, lines: Iterable[str]) -> Scenario:
    meta: Meta | None = None
    inputs: list[Input] = []
    end: float | None = None
    steps: list[tuple[RequestPattern, ...]] = []
    last_step: object = None
    finals: list[FinalExpect] = []
    never: list[tuple[RequestPattern, int]] = []
    rules_expected: list[tuple[RuleExpect, int]] = []
    # ``file:line`` is formatted only when there is an error to name (it cost ~2% of reading a line).
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = parse_line(text)
        except ValueError as exc:
            raise ScenarioError(f"{path}:{number}: {exc}") from None
        if meta is None:
            if not isinstance(line, Meta):
                raise ScenarioError(
                    f"{path}:{number}: the first line must be the meta line, not {line.kind!r}"
                )
            meta = line
            continue
        if isinstance(line, Meta):
            raise ScenarioError(f"{path}:{number}: a second meta line")
        if end is not None and not isinstance(line, ExpectLine):
            raise ScenarioError(f"{path}:{number}: a {line.kind} line after the end line")
        if isinstance(line, EndLine):
            end = line.at
        elif isinstance(line, ExpectLine):
            if line.request is not None:
                if line.step is not None and line.step == last_step and steps:
                    steps[-1] = (*steps[-1], line.request)
                else:
                    steps.append((line.request,))
                last_step = line.step
                continue
            if line.final is not None:
                finals.append(line.final)
            elif line.never is not None:
                never.append((line.never, line.max))
            elif line.rule is not None:
                rules_expected.append((line.rule, line.count))
        else:
            inputs.append(line)
        last_step = None
    if meta is None:
        raise ScenarioError(f"{path}: empty scenario (no meta line)")
    return Scenario(
        path,
        meta,
        tuple(inputs),
        end,
        tuple(steps),
        tuple(finals),
        tuple(never),
        tuple(rules_expected),
        _ruleset(path, meta),
    )


def _ruleset(path: Path, meta: Meta) -> RuleSet | None:
    """``meta.rules`` compiled with the service's own loader (a bad rule: ScenarioError naming it)."""
    if meta.rules is None:
        return None
    from adapters.service.rules import RulesError, compile_data  # only scenarios with rules need it

    try:
        return compile_data(meta.rules, "", f"{path}:1: meta.rules")
    except RulesError as exc:
        raise ScenarioError(str(exc).replace("rules error in ", "", 1)) from None


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Scenario files named by ``paths`` (files, or folders searched for ``*.jsonl``)."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files = sorted(path.rglob("*.jsonl"))
            if not files:
                raise ScenarioError(f"{path}: no *.jsonl scenario in this folder")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise ScenarioError(f"{path}: no such file or folder")
    return found


def _first_error(exc: ValidationError) -> str:
    """pydantic's first complaint as ``where: what`` (never quoting the input)."""
    error = exc.errors(include_url=False, include_input=False)[0]
    # The discriminator's own tag is noise in the path: ("frame", "at") -> "at".
    loc = [str(part) for part in error["loc"]]
    if loc and loc[0] in KINDS:
        loc = loc[1:]
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {message}" if loc else message
