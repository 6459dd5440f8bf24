"""Write the routing-rule scenarios of the library (``rules-*.jsonl``).

Usage (from the project root)::

    python scenarios/generate_rules.py

Why composed rather than recorded live like the rest of the library
(``scenarios/generate.py``): rules read the date and the time of day — a
business-hours rule across a DST change, a holiday — and a live recording
happens *now*.  So each scenario is written line by line here, at the date
it needs, with every PBX frame and answer in the exact shape the Yeastar
simulator sends (``adapters.yeastar.simulator``: the same members, channel
ids, call ids and answers), the rules it runs with in ``meta.rules``, and
expectations that state what the rules must do.  The file is then replayed
(it must pass) before it is written.  ``tests/service/test_rules_blackbox.py``
runs rules live against the simulators through ``xferd run``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.replay.format import parse
from adapters.replay.runner import replay

HERE = Path(__file__).resolve().parent
SN = "3631A0SIM001"
POLICY = {
    "on_answer": "complete",
    "answer_delay_s": 0.0,
    "no_answer_timeout_s": 20.0,
    "on_transferor_hangup": "complete",
    "fallback_numbers": [],
}
CALLER = "0612345678"  # an outside caller, in on trunk "stc" to the company's DID
VIP = "0698765432"
DID = "0155501000"
RECEPTION = "2000"  # the receptionist (bot) who answers inbound calls
MANAGER = "2101"  # the account manager
TEAM = "2100"  # the account team
SALES = "2200"
SALES_QUEUE = "6200"
VOICEMAIL = "8000"

CALENDAR = {
    "name": "office",
    "zone": "Europe/Paris",
    "hours": {day: ["09:00-12:30", "13:30-18:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
    "holidays": ["2025-12-25", "2025-12-31..2026-01-01"],
}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


class Scenario:
    """One scenario file, written line by line (times are offsets from ``start``)."""

    def __init__(self, name: str, description: str, start: str, rules: dict[str, Any]) -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = [
            {
                "kind": "meta",
                "format": 1,
                "name": name,
                "description": description,
                "platform": "yeastar",
                "policy": POLICY,
                "start": epoch(start),
                "xferd": "0.1.0",
                "rules": rules,
            }
        ]
        self.expects: list[dict[str, Any]] = []
        self.channel = 0
        self.calls = 0
        self.serial = 1795400000

    # -- the PBX -------------------------------------------------------------------
    def call_id(self) -> str:
        self.calls += 1
        return f"{self.serial}.{self.calls}"

    def new_channel(self, number: str, trunk: bool = False) -> str:
        self.channel += 1
        return (
            f"PJSIP/trunk-stc-endpoint-{self.channel:08x}" if trunk else f"PJSIP/{number}-{self.channel:08x}"
        )

    def frame(
        self, at: float, call_id: str, *members: dict[str, Any], type_: int = 30011, **extra: Any
    ) -> None:
        msg = {"call_id": call_id, **extra, "members": list(members)}
        self.lines.append({"kind": "frame", "at": at, "json": {"type": type_, "sn": SN, "msg": msg}})

    def request(self, at: float, body: dict[str, Any], call_id: str, endpoint: str = "call/transfer") -> None:
        answer = {"errcode": 0, "errmsg": "SUCCESS", "call_id": call_id}
        self.lines.append(
            {
                "kind": "request",
                "at": at,
                "endpoint": endpoint,
                "body": body,
                "answer": answer,
                "result": "ok",
                "seconds": 0.004,
            }
        )

    def refused(self, at: float, body: dict[str, Any], errcode: int, errmsg: str) -> None:
        answer = {"errcode": errcode, "errmsg": errmsg}
        self.lines.append(
            {
                "kind": "request",
                "at": at,
                "endpoint": "call/transfer",
                "body": body,
                "answer": answer,
                "result": "refused",
                "seconds": 0.004,
            }
        )

    def ask(self, at: float, ask_id: str, answer: dict[str, Any] | None, error: str = "") -> None:
        line: dict[str, Any] = {"kind": "ask", "at": at, "ask_id": ask_id}
        if answer is not None:
            line["answer"] = answer
        if error:
            line["error"] = error
        self.lines.append(line)

    def control(self, at: float, transfer: str, body: dict[str, Any]) -> None:
        self.lines.append({"kind": "control", "at": at, "op": "start", "transfer": transfer, "body": body})

    # -- the phones -------------------------------------------------------------------
    def inbound(self, at: float, caller: str, answered_by: str) -> tuple[str, str, str]:
        """An outside call rings ``answered_by`` who answers 1 s later: (call id, caller ch, ext ch)."""
        call = self.call_id()
        trunk = self.new_channel(caller, trunk=True)
        ext = self.new_channel(answered_by)
        self.frame(at, call, trunk_member(caller, trunk, "ALERT"))
        self.frame(at, call, ext_member(answered_by, ext, "RING"))
        self.frame(at + 1.0, call, ext_member(answered_by, ext, "ANSWER"))
        self.frame(at + 1.0, call, trunk_member(caller, trunk, "ANSWERED"))
        return call, trunk, ext

    def consult(
        self, at: float, transferor: str, transferor_ch: str, number: str, answer_after: float | None
    ) -> tuple[str, str]:
        """The PBX accepts a start from ``transferor_ch`` to ``number``: its answer, the target ringing
        and (after ``answer_after`` s) answering.  (consult call id, target channel)."""
        consult = self.call_id()
        target = self.new_channel(number)
        start = {
            "type": "attended",
            "channel_id": transferor_ch,
            "number": number,
            "dial_permission": transferor,
        }
        self.request(at + 0.004, start, consult)
        self.frame(at + 0.006, consult, ext_member(transferor, transferor_ch, "ALERT"))
        self.frame(at + 0.006, consult, ext_member(number, target, "RING"))
        if answer_after is not None:
            self.frame(at + answer_after, consult, ext_member(number, target, "ANSWER"))
            self.frame(at + answer_after, consult, ext_member(transferor, transferor_ch, "ANSWER"))
        return consult, target

    def complete(self, at: float, call: str, transferor: str, transferor_ch: str, caller_ch: str) -> None:
        """The service's complete is accepted: the transferor leaves, the caller joins the target."""
        body = {"type": "attended", "channel_id": transferor_ch, "attended_operate": "complete"}
        self.request(at + 0.004, body, call)
        self.frame(at + 0.006, call, ext_member(transferor, transferor_ch, "BYE"))

    # -- expectations -----------------------------------------------------------------------
    def expect(self, **what: Any) -> None:
        self.expects.append({"kind": "expect", **what})

    def end(self, at: float) -> None:
        self.lines.append({"kind": "end", "at": at})

    def text(self) -> str:
        return "".join(compact(line) + "\n" for line in [*self.lines, *self.expects])


def ext_member(number: str, channel: str, status: str) -> dict[str, Any]:
    return {"extension": {"number": number, "channel_id": channel, "member_status": status, "call_path": ""}}


def trunk_member(caller: str, channel: str, status: str) -> dict[str, Any]:
    return {
        "inbound": {
            "from": caller,
            "to": DID,
            "trunk_name": "stc",
            "channel_id": channel,
            "member_status": status,
            "call_path": "",
        }
    }


def rule_id(rule: str, trigger: str, call: str) -> str:
    return f"{rule}.{trigger.split('.')[1]}.{call}"


# ----------------------------------------------------------------------------------
# the rules the scenarios run with
# ----------------------------------------------------------------------------------

OFFICE_RULES: dict[str, Any] = {
    "zone": "Europe/Paris",
    "calendars": [CALENDAR],
    "rules": [
        {
            "name": "holiday",
            "on": "call.answered",
            "extensions": [RECEPTION],
            "if": 'calendars.office == "holiday"',
            "then": {"blind": VOICEMAIL},
        },
        {
            "name": "office-hours",
            "on": "call.answered",
            "extensions": [RECEPTION],
            "if": 'calendars.office == "open" && call.direction == "inbound"',
            "then": {"attended": TEAM},
        },
        {
            "name": "after-hours",
            "on": "call.answered",
            "extensions": [RECEPTION],
            "if": 'calendars.office == "closed"',
            "then": {"blind": VOICEMAIL},
        },
    ],
}


def office(name: str, description: str, start: str, expect_rule: str, blind: bool) -> Scenario:
    """One inbound call answered by reception at ``start`` (Paris time): which office rule fires."""
    sc = Scenario(name, description, start, OFFICE_RULES)
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    tid = rule_id(expect_rule, "call.answered", call)
    if blind:
        sc.request(
            1.004,
            {"type": "blind", "channel_id": caller_ch, "number": VOICEMAIL, "dial_permission": RECEPTION},
            call,
        )
        sc.frame(1.006, call, ext_member(RECEPTION, rec_ch, "BYE"))
        sc.expect(request={"transfer": tid, "action": "blind", "number": VOICEMAIL})
        sc.expect(final={"transfer": tid, "state": "completed", "reason": "blind"})
    else:
        consult, _ = sc.consult(1.0, RECEPTION, rec_ch, TEAM, 2.0)
        sc.complete(3.0, consult, RECEPTION, rec_ch, caller_ch)
        sc.expect(request={"transfer": tid, "action": "start", "number": TEAM})
        sc.expect(request={"transfer": tid, "action": "complete"})
        sc.expect(final={"transfer": tid, "state": "completed", "reason": "policy"})
    for rule in ("holiday", "office-hours", "after-hours"):
        sc.expect(rule={"name": rule, "outcome": "fired"}, count=1 if rule == expect_rule else 0)
    sc.end(5.0)
    return sc


def scenarios() -> list[Scenario]:
    out = [
        office(
            "rules-business-hours-after-dst-change",
            "Monday 31 March 2025, 09:30 in Paris, the day after clocks went forward (07:30 UTC): the "
            "office calendar (Europe/Paris, 09:00-12:30 and 13:30-18:00 on weekdays) is open, so rule "
            "office-hours attended-transfers reception's call to the team (2100), completed on answer. "
            "A calendar that kept the winter offset would read 08:30 and say closed.",
            "2025-03-31T09:30:00+02:00",
            "office-hours",
            blind=False,
        ),
        office(
            "rules-after-hours-after-dst-change",
            "Monday 31 March 2025, 18:30 in Paris (16:30 UTC, summer time): the office is closed, so rule "
            "after-hours blind-transfers the caller to voicemail (8000). With the winter offset the "
            "calendar would read 17:30 and wrongly say open.",
            "2025-03-31T18:30:00+02:00",
            "after-hours",
            blind=True,
        ),
        office(
            "rules-holiday-beats-business-hours",
            "Thursday 25 December 2025, 10:00 in Paris: within weekday opening hours, but a holiday; "
            "holidays are evaluated first (holiday → closed → open), so rule holiday blind-transfers to "
            "voicemail and office-hours does not fire.",
            "2025-12-25T10:00:00+01:00",
            "holiday",
            blind=True,
        ),
    ]
    out += [vip(), fallback_chain(), shadow(), chained(), loop_guard(), ask_answers(), ask_times_out()]
    out.append(duplicates())
    return out


def vip() -> Scenario:
    rules = {
        "zone": "Europe/Paris",
        "rules": [
            {
                "name": "vip",
                "on": "call.answered",
                "extensions": [RECEPTION],
                "if": f'call.caller in ["{VIP}", "0611111111"]',
                "then": {
                    "attended": MANAGER,
                    "policy": {"fallback_numbers": [TEAM], "no_answer_timeout_s": 15},
                },
            },
            {"name": "others", "on": "call.answered", "extensions": [RECEPTION], "then": {"attended": TEAM}},
        ],
    }
    sc = Scenario(
        "rules-vip-caller-to-account-manager",
        f"A VIP ({VIP}) calls; reception (2000) answers. Rule vip (caller in the VIP list) matches first "
        f"and attended-transfers the call to the account manager ({MANAGER}), who answers: completed "
        "(policy). Rule others, after it, is not evaluated (first match wins).",
        "2025-06-02T10:00:00+02:00",
        rules,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, VIP, RECEPTION)
    consult, _ = sc.consult(1.0, RECEPTION, rec_ch, MANAGER, 3.0)
    sc.complete(4.0, consult, RECEPTION, rec_ch, caller_ch)
    tid = rule_id("vip", "call.answered", call)
    sc.expect(request={"transfer": tid, "action": "start", "number": MANAGER})
    sc.expect(request={"transfer": tid, "action": "complete"})
    sc.expect(final={"transfer": tid, "state": "completed", "reason": "policy"})
    sc.expect(rule={"name": "vip", "outcome": "fired"})
    sc.expect(rule={"name": "others", "outcome": "fired"}, count=0)
    sc.end(6.0)
    return sc


def fallback_chain() -> Scenario:
    rules = {
        "rules": [
            {
                "name": "account-manager",
                "on": "call.answered",
                "extensions": [RECEPTION],
                "then": {
                    "attended": MANAGER,
                    "policy": {"fallback_numbers": [TEAM], "on_answer": "complete"},
                },
            },
        ],
    }
    sc = Scenario(
        "rules-fallback-chain-manager-busy-team-answers",
        f"Rule account-manager attended-transfers reception's call to {MANAGER} with fallback {TEAM}. "
        f"{MANAGER} is busy (30015 486): the consultation is aborted and {TEAM} is dialled as the next "
        "attempt; it answers and the transfer completes. One rule, one transfer, two attempts.",
        "2025-06-02T10:00:00+02:00",
        rules,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    consult = sc.call_id()
    busy = sc.new_channel(MANAGER)
    start = {"type": "attended", "channel_id": rec_ch, "number": MANAGER, "dial_permission": RECEPTION}
    sc.request(1.004, start, consult)
    sc.frame(1.1, consult, ext_member(MANAGER, busy, "RING"), type_=30015, reason="486 Busy Here")
    abort = {"type": "attended", "channel_id": rec_ch, "attended_operate": "abort"}
    sc.request(1.104, abort, call)
    consult2, _ = sc.consult(1.11, RECEPTION, rec_ch, TEAM, 2.0)
    sc.complete(3.11, consult2, RECEPTION, rec_ch, caller_ch)
    tid = rule_id("account-manager", "call.answered", call)
    sc.expect(request={"transfer": tid, "action": "start", "number": MANAGER})
    sc.expect(request={"transfer": tid, "action": "abort"})
    sc.expect(request={"transfer": tid, "action": "start", "number": TEAM})
    sc.expect(request={"transfer": tid, "action": "complete"})
    sc.expect(final={"transfer": tid, "state": "completed", "reason": "policy"})
    sc.end(5.0)
    return sc


def shadow() -> Scenario:
    rules = {
        "rules": [
            {
                "name": "new-routing",
                "mode": "shadow",
                "on": "call.answered",
                "extensions": [RECEPTION],
                "if": 'call.caller.startsWith("06")',
                "then": {"blind": SALES_QUEUE},
            },
            {
                "name": "reception",
                "on": "call.answered",
                "extensions": [RECEPTION],
                "then": {"attended": TEAM},
            },
        ],
    }
    sc = Scenario(
        "rules-shadow-mode-sends-nothing",
        "Rule new-routing is tried in shadow mode: it matches (caller starts with 06), is counted and "
        "logged with what it would send (a blind transfer to 6200) and sends nothing; rule reception, "
        "after it, still fires as if it were not there: attended to the team, completed.",
        "2025-06-02T10:00:00+02:00",
        rules,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    consult, _ = sc.consult(1.0, RECEPTION, rec_ch, TEAM, 2.0)
    sc.complete(3.0, consult, RECEPTION, rec_ch, caller_ch)
    tid = rule_id("reception", "call.answered", call)
    sc.expect(request={"transfer": tid, "action": "start", "number": TEAM})
    sc.expect(request={"transfer": tid, "action": "complete"})
    sc.expect(final={"transfer": tid, "state": "completed", "reason": "policy"})
    sc.expect(rule={"name": "new-routing", "outcome": "shadow"})
    sc.expect(rule={"name": "new-routing", "outcome": "fired"}, count=0)
    sc.expect(never={"action": "blind"})
    sc.end(5.0)
    return sc


def chained() -> Scenario:
    rules = {
        "rules": [
            {
                "name": "to-sales",
                "on": "call.answered",
                "extensions": [RECEPTION],
                "then": {"attended": SALES},
            },
            {
                "name": "sales-queue",
                "on": "transfer.ended",
                "if": 'transfer.rule == "to-sales" && transfer.state == "aborted"',
                "then": {"blind": SALES_QUEUE},
            },
        ],
    }
    sc = Scenario(
        "rules-chained-on-transfer-ended",
        f"Rule to-sales attended-transfers reception's call to sales ({SALES}), who is busy: the "
        "transfer ends aborted (target_busy) and the caller is back with reception. Rule sales-queue, "
        f"on transfer.ended of a to-sales transfer that was aborted, blind-transfers the caller to the "
        f"sales queue ({SALES_QUEUE}): completed (blind).",
        "2025-06-02T10:00:00+02:00",
        rules,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    consult = sc.call_id()
    busy = sc.new_channel(SALES)
    start = {"type": "attended", "channel_id": rec_ch, "number": SALES, "dial_permission": RECEPTION}
    sc.request(1.004, start, consult)
    sc.frame(1.1, consult, ext_member(SALES, busy, "RING"), type_=30015, reason="486 Busy Here")
    sc.request(1.104, {"type": "attended", "channel_id": rec_ch, "attended_operate": "abort"}, call)
    blind = {"type": "blind", "channel_id": caller_ch, "number": SALES_QUEUE, "dial_permission": RECEPTION}
    sc.request(1.108, blind, call)
    sc.frame(1.11, call, ext_member(RECEPTION, rec_ch, "BYE"))
    first = rule_id("to-sales", "call.answered", call)
    second = rule_id("sales-queue", "transfer.ended", call)
    sc.expect(request={"transfer": first, "action": "start", "number": SALES})
    sc.expect(request={"transfer": first, "action": "abort"})
    sc.expect(request={"transfer": second, "action": "blind", "number": SALES_QUEUE})
    sc.expect(final={"transfer": first, "state": "aborted", "reason": "target_busy"})
    sc.expect(final={"transfer": second, "state": "completed", "reason": "blind"})
    sc.expect(rule={"name": "sales-queue", "outcome": "fired"})
    sc.end(3.0)
    return sc


def loop_guard() -> Scenario:
    rules = {
        "rules": [
            {
                "name": "reception-to-team",
                "on": "call.answered",
                "extensions": [RECEPTION],
                "then": {"attended": TEAM},
            },
            {
                "name": "team-hold-back",
                "on": "call.held",
                "extensions": [TEAM],
                "then": {"attended": RECEPTION},
            },
        ],
    }
    sc = Scenario(
        "rules-loop-guard-never-back",
        f"Rule reception-to-team transfers reception's call to the team ({TEAM}): completed. Later the "
        f"team puts the caller on hold and rule team-hold-back would send the call back to reception — "
        "a number the call was already transferred from. The loop guard blocks it (counted, logged); "
        "nothing is sent. (While the team's phone answered the consultation, the transfer was active: "
        "no rule fires on a call with an active transfer.)",
        "2025-06-02T10:00:00+02:00",
        rules,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    consult, team_ch = sc.consult(1.0, RECEPTION, rec_ch, TEAM, 2.0)
    sc.complete(3.0, consult, RECEPTION, rec_ch, caller_ch)
    # the caller now talks with the team in the consultation's call
    sc.frame(3.01, consult, trunk_member(CALLER, caller_ch, "ANSWERED"))
    sc.frame(10.0, consult, ext_member(TEAM, team_ch, "HOLD"))
    tid = rule_id("reception-to-team", "call.answered", call)
    sc.expect(request={"transfer": tid, "action": "start", "number": TEAM})
    sc.expect(request={"transfer": tid, "action": "complete"})
    sc.expect(final={"transfer": tid, "state": "completed", "reason": "policy"})
    sc.expect(rule={"name": "team-hold-back", "outcome": "blocked"})
    sc.expect(rule={"name": "team-hold-back", "outcome": "fired"}, count=0)
    sc.end(12.0)
    return sc


ASK_RULES = {
    "rules": [
        {
            "name": "crm-routing",
            "on": "call.answered",
            "extensions": [RECEPTION],
            "then": {"ask": "http://127.0.0.1:9/route", "timeout_s": 2, "retries": 1, "backoff_s": 0.2},
        },
    ],
}


def ask_answers() -> Scenario:
    sc = Scenario(
        "rules-ask-url-answers",
        "Rule crm-routing asks a URL (the CRM) where reception's call should go; the CRM answers "
        f'{{"number": "{MANAGER}", "type": "attended", "policy": {{"on_answer": "complete"}}}} after 0.3 s '
        "and the transfer starts then; the manager answers: completed.",
        "2025-06-02T10:00:00+02:00",
        ASK_RULES,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    tid = rule_id("crm-routing", "call.answered", call)
    sc.ask(1.3, tid, {"number": MANAGER, "type": "attended", "policy": {"on_answer": "complete"}})
    consult, _ = sc.consult(1.3, RECEPTION, rec_ch, MANAGER, 2.0)
    sc.complete(3.3, consult, RECEPTION, rec_ch, caller_ch)
    sc.expect(request={"transfer": tid, "action": "start", "number": MANAGER})
    sc.expect(request={"transfer": tid, "action": "complete"})
    sc.expect(final={"transfer": tid, "state": "completed", "reason": "policy"})
    sc.expect(rule={"name": "crm-routing", "outcome": "asked"})
    sc.expect(rule={"name": "crm-routing", "outcome": "fired"})
    sc.end(5.0)
    return sc


def ask_times_out() -> Scenario:
    sc = Scenario(
        "rules-ask-url-times-out",
        "Rule crm-routing asks the CRM, which never answers: after two tries of 2 s (0.2 s apart) the "
        "rule counts an error and is skipped — the call is not left waiting on it. The receptionist "
        f"then transfers the call by hand through the API (to {TEAM}): completed.",
        "2025-06-02T10:00:00+02:00",
        ASK_RULES,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    tid = rule_id("crm-routing", "call.answered", call)
    sc.ask(5.2, tid, None, "no answer within 2 s (2 tries)")
    sc.control(8.0, "t1", {"channel_id": rec_ch, "number": TEAM})
    consult, _ = sc.consult(8.0, RECEPTION, rec_ch, TEAM, 2.0)
    sc.complete(10.0, consult, RECEPTION, rec_ch, caller_ch)
    sc.expect(request={"transfer": "t1", "action": "start", "number": TEAM})
    sc.expect(request={"transfer": "t1", "action": "complete"})
    sc.expect(final={"transfer": "t1", "state": "completed", "reason": "policy"})
    sc.expect(rule={"name": "crm-routing", "outcome": "error"})
    sc.expect(rule={"name": "crm-routing", "outcome": "fired"}, count=0)
    sc.end(12.0)
    return sc


def duplicates() -> Scenario:
    rules = {
        "rules": [
            {
                "name": "reception-to-team",
                "on": "call.answered",
                "extensions": [RECEPTION],
                "then": {"attended": TEAM},
            },
        ],
    }
    sc = Scenario(
        "rules-duplicated-answer-fires-once",
        "Reception's ANSWER frame arrives, then a late RING and the ANSWER again (duplicated and "
        "reordered delivery): the second answer is a trigger too, but the rule already fired for this "
        "call and trigger, so it is blocked; one transfer, completed.",
        "2025-06-02T10:00:00+02:00",
        rules,
    )
    call, caller_ch, rec_ch = sc.inbound(0.0, CALLER, RECEPTION)
    sc.frame(1.001, call, ext_member(RECEPTION, rec_ch, "RING"))
    sc.frame(1.002, call, ext_member(RECEPTION, rec_ch, "ANSWER"))
    consult, _ = sc.consult(1.0, RECEPTION, rec_ch, TEAM, 2.0)
    sc.complete(3.0, consult, RECEPTION, rec_ch, caller_ch)
    tid = rule_id("reception-to-team", "call.answered", call)
    sc.expect(request={"transfer": tid, "action": "start", "number": TEAM})
    sc.expect(request={"transfer": tid, "action": "complete"})
    sc.expect(final={"transfer": tid, "state": "completed", "reason": "policy"})
    sc.expect(rule={"name": "reception-to-team", "outcome": "fired"})
    sc.expect(rule={"name": "reception-to-team", "outcome": "blocked"})
    sc.expect(never={"action": "start"}, max=1)
    sc.end(5.0)
    return sc


def main() -> int:
    failed = 0
    for sc in scenarios():
        path = HERE / f"{sc.name}.jsonl"
        text = sc.text()
        report = replay(parse(path, text.splitlines()))
        if not report.passed:
            failed += 1
            print("\n".join([report.summary(), *report.details()]))
            continue
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.name}: {report.summary()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
