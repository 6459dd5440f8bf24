"""Routing rules in the pure engine: triggers, first match, shadow, safety, delays, ask, restore."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adapters.service.rules import RulesError, load, parse
from engine import CallUpdated, Engine, Member, RequestFinished, TimerFired, TransferChanged
from engine.calendars import CalendarError, build
from engine.conditions import ConditionError, compile_condition
from engine.model import AskRule, Command, PbxRequest, RuleAnswered, RuleNotice, StartTimer
from engine.rules import TIMER_PREFIX, RuleEngine

PARIS = ZoneInfo("Europe/Paris")
MONDAY_10 = datetime(2025, 6, 2, 10, 0, tzinfo=PARIS).timestamp()
CALLER = "0612345678"


class World:
    """An engine with rules and a few helpers to ring and answer extensions."""

    def __init__(self, rules: str, at: float = MONDAY_10) -> None:
        self.engine = Engine()
        self.engine.rules = RuleEngine(parse(rules, "test.toml"))
        self.at = at
        self.out: list[Command] = []
        self.calls = 0

    def feed(self, event: Any) -> list[Command]:
        out = self.engine.handle(event)
        self.out.extend(out)
        return out

    def leg(self, call: str, kind: str, number: str, channel: str, status: str) -> list[Command]:
        member = Member(kind, number, channel, status, "stc" if kind != "extension" else "", "0155501000")  # type: ignore[arg-type]
        return self.feed(CallUpdated(self.at, call, (member,)))

    def inbound(self, ext: str = "2000", caller: str = CALLER) -> tuple[str, str, str]:
        self.calls += 1
        call = f"c{self.calls}"
        trunk, channel = f"PJSIP/trunk-{call}", f"PJSIP/{ext}-{call}"
        self.leg(call, "inbound", caller, trunk, "ALERT")
        self.leg(call, "extension", ext, channel, "RING")
        self.leg(call, "extension", ext, channel, "ANSWER")
        self.leg(call, "inbound", caller, trunk, "ANSWERED")
        return call, trunk, channel

    def notices(self, outcome: str | None = None) -> list[RuleNotice]:
        return [c for c in self.out if isinstance(c, RuleNotice) and outcome in (None, c.outcome)]

    def requests(self) -> list[PbxRequest]:
        return [c for c in self.out if isinstance(c, PbxRequest)]

    def counters(self, rule: str) -> dict[str, int]:
        assert self.engine.rules is not None
        return self.engine.rules.counters[rule].as_dict()


RECEPTION_TO_TEAM = """
[[rules]]
name = "reception"
on = "call.answered"
extensions = ["2000"]
then = { attended = "2100", policy = { fallback_numbers = ["2101"] } }
"""


# -- calendars ---------------------------------------------------------------------------


def test_calendar_follows_dst_holiday_then_closed_then_open() -> None:
    office = build(
        "office", PARIS, {"mon": ["09:00-18:00"], "thu": ["09:00-18:00"]},
        holidays=["2025-12-25"], closed=["2025-06-09"],
    )  # fmt: skip
    # 31 March 2025 (after the spring change): 09:30 in Paris is 07:30 UTC.
    assert office.status(datetime.fromisoformat("2025-03-31T07:30:00+00:00").timestamp()) == "open"
    assert office.status(datetime.fromisoformat("2025-03-31T06:30:00+00:00").timestamp()) == "closed"
    # 24 March (winter time): 09:30 in Paris is 08:30 UTC; 07:30 UTC is 08:30, closed.
    assert office.status(datetime.fromisoformat("2025-03-24T07:30:00+00:00").timestamp()) == "closed"
    assert office.status(datetime(2025, 12, 25, 10, tzinfo=PARIS).timestamp()) == "holiday"
    assert office.status(datetime(2025, 6, 9, 10, tzinfo=PARIS).timestamp()) == "closed"
    assert office.status(datetime(2025, 6, 9, 10, tzinfo=PARIS).timestamp() + 7 * 86400) == "open"


@pytest.mark.parametrize(
    ("hours", "holidays", "field", "words"),
    [
        ({"mon": ["18:00-09:00"]}, [], "hours.mon", "ends before it starts"),
        ({"mon": ["09:00-12:00", "11:00-14:00"]}, [], "hours.mon", "overlap"),
        ({"mon": ["9-12"]}, [], "hours.mon", "not a range"),
        ({"monday": ["09:00-12:00"]}, [], "hours", "unknown day"),
        ({}, ["2025-12-24..2025-12-26", "2025-12-26"], "holidays", "overlap"),
        ({}, ["2025-12-26..2025-12-24"], "holidays", "ends before it starts"),
    ],
)
def test_calendar_refuses_inverted_and_overlapping_ranges(
    hours: dict[str, list[str]], holidays: list[str], field: str, words: str
) -> None:
    with pytest.raises(CalendarError) as error:
        build("x", PARIS, hours, holidays)
    assert error.value.field == field and words in str(error.value)


# -- conditions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "words", "line", "column"),
    [
        ('leg.nmber == "2000"', "unknown field of leg 'nmber'", 1, 5),
        ('now.hour > "9"', "type error", 1, 1),
        ('leg.number == "2000" || now.hour > "9"', "type error in 'now.hour > \"9\"'", 1, 25),
        ("call.up_s", "not true or false", 1, 1),
        ('transfer.state == "aborted"', "only known on transfer.ended", 1, 1),
        ('leg.number ==\n  "2000" &&', "syntax error", 2, 12),
        ('calendars.shop == "open"', "unknown calendar 'shop'", 1, 11),
    ],
)
def test_conditions_are_checked_once_with_positions(source: str, words: str, line: int, column: int) -> None:
    with pytest.raises(ConditionError) as error:
        compile_condition(source, "call.answered", ["office"])
    assert words in error.value.message
    assert (error.value.line, error.value.column) == (line, column)


# -- triggers, first match, shadow -----------------------------------------------------------


def test_answer_fires_once_with_the_decision_in_the_history() -> None:
    world = World(RECEPTION_TO_TEAM)
    call, trunk, channel = world.inbound()
    (start,) = world.requests()
    assert (start.action, start.channel_id, start.number) == ("start", channel, "2100")
    assert start.transfer_id == f"reception.answered.{call}"
    changed = next(c for c in world.out if isinstance(c, TransferChanged))
    resource = changed.resource
    assert resource["initiated_by"] == "rule:reception"
    assert resource["transferee"]["channel_id"] == trunk
    assert resource["policy"]["fallback_numbers"] == ["2101"]
    first = resource["history"][0]
    assert first["trigger"] == "rule:reception"
    assert first["rule"]["decision"] == {
        "type": "attended",
        "number": "2100",
        "policy": {"fallback_numbers": ["2101"]},
    }
    # duplicated and reordered: RING again, ANSWER again → blocked, nothing sent
    world.leg(call, "extension", "2000", channel, "RING")
    world.leg(call, "extension", "2000", channel, "ANSWER")
    assert len(world.requests()) == 1
    assert world.counters("reception") | {} == {
        "evaluated": 2, "matched": 2, "fired": 1, "shadow": 0, "blocked": 1, "skipped": 0, "errors": 0,
    }  # fmt: skip


def test_an_extensions_own_outgoing_call_answered_is_not_an_answer() -> None:
    world = World(RECEPTION_TO_TEAM)
    world.leg("c9", "extension", "2000", "PJSIP/2000-9", "ALERT")
    world.leg("c9", "extension", "2000", "PJSIP/2000-9", "ANSWER")
    assert world.requests() == [] and world.counters("reception")["evaluated"] == 0


def test_first_match_wins_unless_continue_and_shadow_never_stops() -> None:
    world = World("""
[[rules]]
name = "try-me"
mode = "shadow"
on = "call.answered"
then = { blind = "6000" }

[[rules]]
name = "vip"
on = "call.answered"
if = 'call.caller == "0698765432"'
then = { attended = "2101" }

[[rules]]
name = "everyone"
on = "call.answered"
if = 'call.direction == "inbound" && call.called == "0155501000" && call.trunk == "stc"'
then = { attended = "{call.answered_by}9" }

[[rules]]
name = "never-reached"
on = "call.answered"
then = { attended = "2999" }
""")
    world.inbound()
    assert [(n.rule, n.outcome) for n in world.notices()] == [("try-me", "shadow"), ("everyone", "fired")]
    assert [r.number for r in world.requests()] == ["20009"]
    assert world.notices("shadow")[0].request == {
        "transfer_id": "try-me.answered.c1", "type": "blind", "channel_id": "PJSIP/trunk-c1",
        "number": "6000", "policy": {},
    }  # fmt: skip
    assert world.counters("never-reached")["evaluated"] == 0


def test_a_run_time_error_counts_and_skips_the_rule() -> None:
    world = World("""
[[rules]]
name = "fragile"
on = "call.answered"
if = 'call.members[5].kind == "inbound"'
then = { attended = "2100" }

[[rules]]
name = "fallback"
on = "call.answered"
then = { attended = "2101" }
""")
    world.inbound()
    assert world.counters("fragile")["errors"] == 1
    assert [r.number for r in world.requests()] == ["2101"]
    (error,) = world.notices("error")
    assert error.rule == "fragile" and error.detail.startswith("if:")


def test_calendar_and_now_in_the_rules_zone() -> None:
    rules = """
zone = "America/New_York"
[[calendars]]
name = "ny"
zone = "America/New_York"
hours = { mon = ["09:00-17:00"] }

[[rules]]
name = "open"
on = "call.answered"
if = 'calendars.ny == "open" && now.day == "mon" && now.hour == 9 && now.zone == "America/New_York"'
then = { attended = "2100" }
"""
    world = World(rules, at=datetime(2025, 6, 2, 9, 15, tzinfo=ZoneInfo("America/New_York")).timestamp())
    world.inbound()
    assert len(world.requests()) == 1
    closed = World(rules, at=datetime(2025, 6, 2, 8, 59, tzinfo=ZoneInfo("America/New_York")).timestamp())
    closed.inbound()
    assert closed.requests() == []


# -- safety ---------------------------------------------------------------------------------


def test_never_on_a_call_with_an_active_transfer() -> None:
    world = World("""
[[rules]]
name = "held"
on = "call.held"
then = { attended = "2300" }
""")
    call, _, channel = world.inbound()
    world.feed(
        __import__("engine").TransferRequested(world.at, "t1", "2100", channel_id=channel)
    )  # an API transfer: the receptionist's leg goes on hold while consulting
    world.leg(call, "extension", "2000", channel, "HOLD")
    (blocked,) = world.notices("blocked")
    assert "active transfer (t1)" in blocked.detail
    assert [r.transfer_id for r in world.requests()] == ["t1"]


def test_loop_guard_caps_auto_transfers_and_never_sends_back() -> None:
    world = World("""
max_auto_transfers = 1
[[rules]]
name = "a"
on = "call.held"
extensions = ["2000"]
then = { blind = "2001" }

[[rules]]
name = "b"
on = "call.held"
extensions = ["2001"]
then = { blind = "2002" }
""")
    call, _, channel = world.inbound()
    world.leg(call, "extension", "2000", channel, "HOLD")
    (blind,) = world.requests()
    world.feed(RequestFinished(world.at, blind.transfer_id, blind.request_id, "ok"))
    # the caller now talks to 2001, in the same call
    world.leg(call, "extension", "2000", channel, "BYE")
    world.leg(call, "extension", "2001", "PJSIP/2001-x", "RING")
    world.leg(call, "extension", "2001", "PJSIP/2001-x", "ANSWER")
    world.leg(call, "extension", "2001", "PJSIP/2001-x", "HOLD")
    (blocked,) = world.notices("blocked")
    assert blocked.rule == "b" and "max_auto_transfers 1" in blocked.detail
    assert len(world.requests()) == 1


def test_never_back_to_a_number_the_call_was_transferred_from() -> None:
    world = World("""
[[rules]]
name = "back"
on = "call.held"
extensions = ["2001"]
then = { blind = "2000" }
""")
    call, trunk, channel = world.inbound()
    world.feed(__import__("engine").TransferRequested(world.at, "t1", "2001", type="blind", channel_id=trunk))
    (blind,) = world.requests()
    world.feed(RequestFinished(world.at, "t1", blind.request_id, "ok"))
    world.leg(call, "extension", "2000", channel, "BYE")
    world.leg(call, "extension", "2001", "PJSIP/2001-x", "ANSWER")
    world.leg(call, "extension", "2001", "PJSIP/2001-x", "HOLD")
    (blocked,) = world.notices("blocked")
    assert "already transferred from 2000" in blocked.detail


def test_rate_limit_on_event_time() -> None:
    world = World("""
[[rules]]
name = "limited"
on = "call.answered"
rate_limit = { count = 2, per_s = 60 }
then = { attended = "2100" }
""")
    for _ in range(3):
        world.inbound(ext=f"20{world.calls:02d}")
    assert len(world.requests()) == 2
    assert "rate limit" in world.notices("blocked")[0].detail
    world.at += 61
    world.inbound(ext="2099")
    assert len(world.requests()) == 3


# -- delays and ask ---------------------------------------------------------------------------


def delayed_world() -> World:
    return World("""
[[rules]]
name = "later"
on = "call.answered"
after_s = 30
then = { attended = "2100" }
""")


def test_a_delay_is_a_timer_and_fires_if_the_call_is_still_there() -> None:
    world = delayed_world()
    call, _, _ = world.inbound()
    (timer,) = [c for c in world.out if isinstance(c, StartTimer)]
    assert timer.transfer_id == TIMER_PREFIX + f"later.answered.{call}" and timer.at == world.at + 30
    assert world.requests() == []
    world.feed(TimerFired(timer.at, timer.transfer_id, timer.timer))
    (start,) = world.requests()
    assert start.number == "2100"


def test_a_delay_is_dropped_when_the_call_ends_first() -> None:
    world = delayed_world()
    call, _, channel = world.inbound()
    (timer,) = [c for c in world.out if isinstance(c, StartTimer)]
    world.leg(call, "extension", "2000", channel, "BYE")
    world.feed(TimerFired(timer.at, timer.transfer_id, timer.timer))
    assert world.requests() == []
    assert "ended or moved on" in world.notices("skipped")[0].detail


ASK = """
[[rules]]
name = "crm"
on = "call.answered"
then = { ask = "http://127.0.0.1:9/route" }
"""


@pytest.mark.parametrize(
    ("answer", "error", "outcome", "number"),
    [
        ({"number": "2101", "type": "blind"}, "", "fired", "2101"),
        ({"skip": True}, "", "skipped", None),
        ({"number": 5}, "", "error", None),
        ({"number": "2101", "policy": {"no_answer_timeout_s": -1}}, "", "error", None),
        (None, "no answer within 2 s (2 tries)", "error", None),
    ],
)
def test_ask_answer_decides(
    answer: dict[str, Any] | None, error: str, outcome: str, number: str | None
) -> None:
    world = World(ASK)
    _, trunk, _ = world.inbound()
    (ask,) = [c for c in world.out if isinstance(c, AskRule)]
    assert ask.facts["call"]["caller"] == CALLER and ask.facts["leg"]["number"] == "2000"
    world.feed(RuleAnswered(world.at + 0.3, ask.ask_id, answer, error))
    assert world.notices()[-1].outcome == outcome
    assert [r.number for r in world.requests()] == ([number] if number else [])
    if number:
        assert world.requests()[0].channel_id == trunk  # blind moves the caller


# -- restart --------------------------------------------------------------------------------


def test_a_restored_mark_blocks_a_second_firing_after_restart() -> None:
    world = World(RECEPTION_TO_TEAM)
    call, trunk, channel = world.inbound()
    (start,) = world.requests()
    export = world.engine.export(start.transfer_id)
    assert export["rule"]["rule"] == "reception"
    # restart: a new engine restores the transfer (and its rule's mark) before frames flow again
    again = World(RECEPTION_TO_TEAM)
    again.engine.restore([export])
    again.leg(call, "inbound", CALLER, trunk, "ANSWERED")
    again.leg(call, "extension", "2000", channel, "RING")
    again.leg(call, "extension", "2000", channel, "ANSWER")
    assert again.requests() == []
    assert "already fired" in again.notices("blocked")[0].detail


def test_hundred_rules_for_other_extensions_are_not_evaluated() -> None:
    rules = "".join(
        f'[[rules]]\nname = "r{i}"\non = "call.answered"\nextensions = ["3{i:03d}"]\n'
        f'if = \'call.caller == "x{i}"\'\nthen = {{ attended = "2100" }}\n'
        for i in range(100)
    )
    world = World(rules)
    world.inbound()
    assert world.engine.rules is not None
    assert sum(c.evaluated for c in world.engine.rules.counters.values()) == 0


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '[[rules]]\nname = "a"\non = "call.answered"\nthen = { attended = "1" }\nbogus = 1\n',
            'rule "a": bogus: unknown field',
        ),
        (
            '[[rules]]\nname = "a"\non = "call.hungup"\nthen = { attended = "1" }\n',
            'rule "a": on: unknown trigger',
        ),
        ('zone = "Mars/Olympus"\n', "zone: unknown time zone 'Mars/Olympus'"),
        (
            '[[rules]]\nname = "a"\non = "call.answered"\nthen = { attended = "1" }\n' * 2,
            'rule "a": name: two rules',
        ),
        (
            '[[rules]]\nname = "a"\non = "call.answered"\nthen = { attended = "1", blind = "2" }\n',
            "exactly one of",
        ),
        (
            '[[calendars]]\nname = "c"\nzone = "UTC"\nhours = { mon = ["10:00-09:00"] }\n',
            'calendar "c": hours.mon',
        ),
        (
            '[[rules]]\nname = "a"\non = "call.answered"\nthen = { attended = "{call.nope}" }\n',
            "unknown placeholder",
        ),
        (
            '[[rules]]\nname = "a"\non = "call.answered"\n'
            'if = """\ncall.caller == 1 &&\n  leg.nope == "x"\n"""\nthen = { attended = "1" }\n',
            "rule \"a\": if: unknown field of leg 'nope' (known: channel, kind, number, old_status, status)"
            + " at line 6 column 7",
        ),
    ],
)
def test_a_bad_rules_file_is_one_line_naming_the_rule_and_field(text: str, words: str) -> None:
    with pytest.raises(RulesError) as error:
        parse(text, "bad.toml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("rules error in bad.toml: ")
    assert words in message


def test_the_readme_shows_the_example_rules_file_and_it_compiles() -> None:
    root = Path(__file__).resolve().parents[2]
    example = (root / "examples" / "rules.toml").read_text()
    assert example.strip() in (root / "README.md").read_text()
    ruleset = load(root / "examples" / "rules.toml")
    assert "office" in ruleset.calendars and len(ruleset.rules) == 5
