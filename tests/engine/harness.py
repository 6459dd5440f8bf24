"""A small driver for the pure engine: feed events, read commands.

The standard world: an external caller (inbound trunk leg, the transferee)
talks to extension 2005 (the transferor) in call ``1700000000.1``.
"""

from __future__ import annotations

from typing import Any

from engine import (
    CallEnded,
    CallFailed,
    CallsSnapshot,
    CallState,
    CallUpdated,
    Command,
    Engine,
    Member,
    OperatorRequested,
    PbxRequest,
    Policy,
    QueryCalls,
    RequestFinished,
    StartTimer,
    TimerFired,
    TransferChanged,
    TransferRequested,
)

CALL = "1700000000.1"
CONSULT = "1700000000.2"
TRANSFEROR = "PJSIP/2005-000000a6"
TRANSFEREE = "PJSIP/trunk-stc-endpoint-000000a5"
TARGET = "PJSIP/trunk-stc-endpoint-000000b1"
TARGET_NUMBER = "5503301"


class Harness:
    def __init__(self, policy: Policy | None = None, now: float = 1_700_000_000.0) -> None:
        self.engine = Engine(policy or Policy(no_answer_timeout_s=20))
        self.now = now
        self.commands: list[Command] = []
        self.timers: dict[str, StartTimer] = {}

    # -- feeding -----------------------------------------------------------
    def feed(self, event: Any) -> list[Command]:
        out = self.engine.handle(event)
        self.commands.extend(out)
        for command in out:
            if isinstance(command, StartTimer):
                self.timers[command.timer] = command
        return out

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def leg(self, call_id: str, kind: str, number: str, channel: str, status: str) -> list[Command]:
        return self.feed(CallUpdated(self.now, call_id, (Member(kind, number, channel, status),)))  # type: ignore[arg-type]

    def setup_call(self) -> None:
        self.leg(CALL, "inbound", "94424722", TRANSFEREE, "ANSWERED")
        self.leg(CALL, "extension", "2005", TRANSFEROR, "ANSWER")

    def start(self, transfer_id: str = "t1", number: str = TARGET_NUMBER, **policy: Any) -> PbxRequest:
        out = self.feed(
            TransferRequested(self.now, transfer_id, number, channel_id=TRANSFEROR, policy=policy or None)
        )
        return only_request(out)

    def result(
        self,
        request: PbxRequest,
        outcome: str = "ok",
        *,
        call_id: str | None = None,
        errcode: int | None = None,
        gone: bool = False,
    ) -> list[Command]:
        return self.feed(
            RequestFinished(
                self.now,
                request.transfer_id,
                request.request_id,
                outcome,
                call_id,
                errcode,  # type: ignore[arg-type]
                "" if outcome == "ok" else "FAILURE",
                gone,
            )
        )

    def consulting(self, transfer_id: str = "t1", **policy: Any) -> None:
        """Set up the call and get a transfer to consulting, target ringing."""
        self.setup_call()
        start = self.start(transfer_id, **policy)
        self.result(start, call_id=CONSULT)
        self.target("RING")

    def target(self, status: str, call_id: str = CONSULT) -> list[Command]:
        return self.leg(call_id, "outbound", TARGET_NUMBER, TARGET, status)

    def transferee(self, status: str) -> list[Command]:
        return self.leg(CALL, "inbound", "94424722", TRANSFEREE, status)

    def transferor(self, status: str, call_id: str = CALL) -> list[Command]:
        return self.leg(call_id, "extension", "2005", TRANSFEROR, status)

    def failed(self, reason: str = "486 Busy Here", call_id: str = CONSULT) -> list[Command]:
        return self.feed(CallFailed(self.now, call_id, reason, ()))

    def ended(self, call_id: str) -> list[Command]:
        return self.feed(CallEnded(self.now, call_id))

    def op(self, op: str, transfer_id: str = "t1") -> list[Command]:
        return self.feed(OperatorRequested(self.now, transfer_id, op))  # type: ignore[arg-type]

    def fire(self, kind: str, transfer_id: str = "t1") -> list[Command]:
        tags = [
            t for t in self.timers if t.startswith(kind + "#") and self.timers[t].transfer_id == transfer_id
        ]
        assert tags, f"no {kind} timer was ever started"
        tag = tags[-1]
        self.now = max(self.now, self.timers[tag].at)
        return self.feed(TimerFired(self.now, transfer_id, tag))

    def snapshot(self, *calls: tuple[str, tuple[Member, ...]]) -> list[Command]:
        return self.feed(CallsSnapshot(self.now, tuple(CallState(c, m) for c, m in calls)))

    # -- reading -----------------------------------------------------------
    def state(self, transfer_id: str = "t1") -> str:
        resource = self.engine.transfer(transfer_id)
        assert resource is not None
        return str(resource["state"])

    def resource(self, transfer_id: str = "t1") -> dict[str, Any]:
        resource = self.engine.transfer(transfer_id)
        assert resource is not None
        return dict(resource)

    def requests(self, action: str | None = None) -> list[PbxRequest]:
        return [
            c for c in self.commands if isinstance(c, PbxRequest) and (action is None or c.action == action)
        ]


def only_request(out: list[Command]) -> PbxRequest:
    requests = [c for c in out if isinstance(c, PbxRequest)]
    assert len(requests) == 1, f"expected exactly one request, got {requests}"
    return requests[0]


def requests_in(out: list[Command]) -> list[PbxRequest]:
    return [c for c in out if isinstance(c, PbxRequest)]


def queries_in(out: list[Command]) -> list[QueryCalls]:
    return [c for c in out if isinstance(c, QueryCalls)]


def changes_in(out: list[Command]) -> list[TransferChanged]:
    return [c for c in out if isinstance(c, TransferChanged)]


def member(kind: str, number: str, channel: str, status: str) -> Member:
    return Member(kind, number, channel, status)  # type: ignore[arg-type]
