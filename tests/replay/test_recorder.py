"""The recorder: one flushed line per thing, secrets never written, never a danger to the service."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Observer
from adapters.replay import read, replay
from adapters.replay.recorder import Recorder, Tee
from engine.model import CallsSnapshot, CallState, Member, OperatorRequested, Policy, TransferRequested

START = 1_700_000_000.0
SECRETS = ("s3cr3t-client", "tok-access-1", "tok-refresh-1", "tok-in-url", "tok-in-frame")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def recorder(out: Any, clock: Clock, **options: Any) -> Recorder:
    return Recorder(out, name="unit", platform="yeastar", policy=Policy(), clock=clock, **options)


def test_secrets_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    clock = Clock()
    rec = recorder(path.open("w"), clock, secrets=["s3cr3t-client"])
    clock.now += 0.1
    rec.pbx_request("get_token", {"username": "xferd", "password": "s3cr3t-client"}, None, "error", 0.01)
    rec.pbx_request(
        "get_token",
        {"username": "xferd", "password": "***"},
        {
            "errcode": 0,
            "access_token": "tok-access-1",
            "refresh_token": "tok-refresh-1",
            "nested": [{"client_secret": "anything"}],
            "note": "wss://pbx/openapi/v1.0/subscribe?access_token=tok-in-url&x=1",
            "echo": "the secret is s3cr3t-client",
        },
        "ok",
        0.02,
    )
    frame = json.dumps({"type": 30011, "msg": json.dumps({"access_token": "tok-in-frame", "call_id": "1"})})
    rec.raw_frame(frame, START + 0.2)
    rec.raw_frame("ws closed: ?access_token=tok-in-url", START + 0.3)
    rec.close()

    text = path.read_text()
    for secret in SECRETS:
        assert secret not in text
    assert text.count("***") >= 7
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["kind"] for line in lines] == ["meta", "request", "request", "frame", "frame", "end"]
    assert lines[2]["answer"]["nested"] == [{"client_secret": "***"}]
    assert lines[2]["answer"]["note"] == "wss://pbx/openapi/v1.0/subscribe?access_token=***&x=1"
    read(path)  # still a valid scenario


def test_lines_are_flushed_as_they_happen_with_offsets(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    clock = Clock()
    rec = recorder(path.open("w"), clock)
    rec.raw_frame("heartbeat response", START + 1.23456)
    # Readable before close: a crash loses at most the line being written.
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"kind": "frame", "at": 1.235, "text": "heartbeat response"}
    assert json.loads(lines[0])["start"] == START
    clock.now += 5
    rec.close()
    rec.close()  # idempotent
    assert json.loads(path.read_text().splitlines()[-1]) == {"kind": "end", "at": 5.0}


def test_control_and_snapshot_lines_replay(tmp_path: Path) -> None:
    """What RecordingRuntime writes is what replay reads: a call, a start the
    PBX accepts, an operator op the engine rejects (nothing is consulting yet)."""
    path = tmp_path / "r.jsonl"
    clock = Clock()
    rec = recorder(path.open("w"), clock)
    members = (
        Member("inbound", "5551234", "PJSIP/trunk-stc-endpoint-00000001", "ANSWERED"),
        Member("extension", "2005", "PJSIP/2005-00000002", "ANSWER"),
    )
    rec.snapshot(CallsSnapshot(START + 0.1, (CallState("1.1", members),)))
    rec.control(
        TransferRequested(
            START + 0.2, "t1", "2008", channel_id="PJSIP/2005-00000002", policy={"on_answer": "hold"}
        )
    )
    rec.control(OperatorRequested(START + 0.3, "t1", "swap"), rejected="not_allowed")
    clock.now = START + 0.4
    body = {
        "type": "attended",
        "channel_id": "PJSIP/2005-00000002",
        "number": "2008",
        "dial_permission": "2005",
    }
    rec.pbx_request("call/transfer", body, {"errcode": 0, "errmsg": "SUCCESS", "call_id": "1.2"}, "ok", 0.1)
    rec.close()
    report = replay(read(path))
    assert report.passed, report.details()
    assert report.summary().endswith(", no expectations)")
    assert [m.request.action for m in report.made] == ["start"]
    assert report.states["t1"] == ("consulting", None)


def test_a_failing_disk_stops_recording_but_never_raises() -> None:
    out = io.StringIO()
    rec = recorder(out, Clock())
    out.close()  # writes now raise ValueError, like a file on a full disk raises OSError
    rec.raw_frame("heartbeat response", START)
    rec.pbx_request("call/query", {}, {"errcode": 0}, "ok", 0.0)
    rec.close()
    assert rec.lines == 1  # the meta line, nothing after


def test_only_known_platforms_can_be_recorded() -> None:
    with pytest.raises(ValueError, match="yeastar and webex platforms, not 'asterisk'"):
        Recorder(io.StringIO(), name="x", platform="asterisk", policy=Policy())


def test_tee_hands_every_hook_to_every_observer() -> None:
    calls: list[tuple[str, int]] = []

    class Spy(Observer):
        def __init__(self, n: int) -> None:
            self.n = n

        def frame(self, kind: str) -> None:
            calls.append(("frame", self.n))

        def bad_frame(self, reason: str, sample: str) -> None:
            calls.append(("bad_frame", self.n))

        def raw_frame(self, text: str, at: float) -> None:
            calls.append(("raw_frame", self.n))

        def pbx_request(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("pbx_request", self.n))

        def reconnect(self) -> None:
            calls.append(("reconnect", self.n))

        def link(self, connected: bool, detail: str) -> None:
            calls.append(("link", self.n))

    tee = Tee(Spy(1), Spy(2))
    tee.frame("30011")
    tee.bad_frame("not_json", "x")
    tee.raw_frame("x", 0.0)
    tee.pbx_request("call/query", {}, None, "ok", 0.0)
    tee.reconnect()
    tee.link(True, "up")
    hooks = ["frame", "bad_frame", "raw_frame", "pbx_request", "reconnect", "link"]
    assert calls == [(hook, n) for hook in hooks for n in (1, 2)]
