"""The event websocket against a small loopback websocket server.

The server plays the PBX's subscribe endpoint: it records what the client
sends (token, User-Agent, topic list, heartbeats), acknowledges the topic
list, answers heartbeats, and lets the test push frames or misbehave.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve

from adapters.base import EventSink, FatalPbxError
from adapters.yeastar.consumer import EventConsumer
from adapters.yeastar.tokens import TokenManager
from engine.model import CallsSnapshot, CallState, CallUpdated, Event, Member
from tests.yeastar.client_support import FakePbx, RecordingObserver, wait_until

ACK = '{"errcode":0,"errmsg":"SUCCESS"}'


def update(call_id: str, number: str, status: str) -> str:
    member = {"extension": {"number": number, "channel_id": f"PJSIP/{number}-1", "member_status": status}}
    return json.dumps(
        {"type": 30011, "sn": "x", "msg": json.dumps({"call_id": call_id, "members": [member]})}
    )


@dataclass
class Conn:
    ws: ServerConnection
    token: str
    user_agent: str | None
    received: list[str] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)


class WsPbx:
    """The subscribe endpoint, with switches for misbehaviour."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.url = ""
        self.ack = True
        self.close_at_once = False
        self.close_after_ack = False
        self.before_ack: str | None = None

    @property
    def last(self) -> Conn:
        return self.conns[-1]

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        conn = Conn(ws, query["access_token"][0], ws.request.headers.get("User-Agent"))
        self.conns.append(conn)
        if self.close_at_once:
            await ws.close()
            return
        async for message in ws:
            assert isinstance(message, str)
            conn.received.append(message)
            if message == "heartbeat":
                await ws.send("heartbeat response")
            elif "topic_list" in message and self.ack:
                if self.before_ack is not None:
                    await ws.send(self.before_ack)
                await ws.send(ACK)
                conn.subscribed.set()
                if self.close_after_ack:
                    await ws.close()
                    return

    async def send(self, text: str | bytes) -> None:
        await self.last.ws.send(text)


@pytest.fixture
async def pbx() -> AsyncIterator[WsPbx]:
    fake = WsPbx()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/openapi/v1.0/subscribe"
        yield fake


class World:
    """What call/query answers; the test changes it while the link is down."""

    def __init__(self) -> None:
        self.calls: tuple[CallState, ...] = ()
        self.queries = 0
        self.fail = False

    async def snapshot(self) -> CallsSnapshot | None:
        self.queries += 1
        return None if self.fail else CallsSnapshot(time.time(), self.calls)


@dataclass
class Rig:
    consumer: EventConsumer
    events: list[Event]
    observer: RecordingObserver
    world: World
    http: FakePbx


MakeRig = Callable[..., Rig]


@pytest.fixture
async def rig(pbx: WsPbx) -> AsyncIterator[MakeRig]:
    """Makes consumers against ``pbx`` (fast timings unless overridden); closes them after the test."""
    rigs: list[Rig] = []

    def make(*, tokens: TokenManager | None = None, sink: EventSink | None = None, **options: Any) -> Rig:
        http = FakePbx()
        events: list[Event] = []
        observer = RecordingObserver()
        world = World()
        fast: dict[str, Any] = {
            "heartbeat_s": 5.0,
            "ack_timeout_s": 1.0,
            "backoff_s": (0.01, 0.05),
            "stable_s": 0.5,
        }
        consumer = EventConsumer(
            pbx.url,
            tokens or http.rest().tokens,
            world.snapshot,
            sink or events.append,
            observer=observer,
            **(fast | options),
        )
        rigs.append(Rig(consumer, events, observer, world, http))
        return rigs[-1]

    yield make
    for made in rigs:
        await made.consumer.close()


async def test_subscribes_with_token_and_user_agent_then_snapshot_then_live_events(
    pbx: WsPbx, rig: MakeRig
) -> None:
    r = rig(user_agent="xferd-test/1")
    r.world.calls = (CallState("1.1", (Member("extension", "2005", "PJSIP/2005-1", "ANSWER"),)),)
    r.consumer.start()
    await wait_until(lambda: r.consumer.connected)
    assert pbx.last.token == "access-1" and pbx.last.user_agent == "xferd-test/1"
    assert json.loads(pbx.last.received[0]) == {"topic_list": [30011, 30012, 30015]}
    await pbx.send(update("1.1", "2008", "RING"))
    await wait_until(lambda: len(r.events) == 2)
    snapshot, live = r.events
    assert isinstance(snapshot, CallsSnapshot) and snapshot.calls == r.world.calls
    assert isinstance(live, CallUpdated) and live.members[0].number == "2008"
    assert r.observer.frames == ["ack", "30011"]
    assert r.observer.links == [(True, "subscribed to the PBX event stream")]
    assert r.observer.reconnects == 0


async def test_the_token_in_the_url_stays_out_of_library_logs(
    pbx: WsPbx, rig: MakeRig, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig()
    with caplog.at_level(logging.DEBUG, logger="websockets.client"):
        r.consumer.start()
        await wait_until(lambda: r.consumer.connected)
    # Only our side's lines: the test PBX's own server logs (if another test left
    # the root logger at DEBUG) are not the client's business.
    client = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("websockets.client"))
    assert "subscribe?access_token=***" in client
    assert pbx.last.token not in client


async def test_an_event_before_the_ack_still_comes_after_the_snapshot(pbx: WsPbx, rig: MakeRig) -> None:
    pbx.before_ack = update("1.1", "2008", "RING")
    r = rig()
    r.consumer.start()
    await wait_until(lambda: r.consumer.connected)
    assert [type(event).__name__ for event in r.events] == ["CallsSnapshot", "CallUpdated"]


async def test_heartbeat_is_sent_periodically(pbx: WsPbx, rig: MakeRig) -> None:
    r = rig(heartbeat_s=0.05)
    r.consumer.start()
    await wait_until(lambda: bool(pbx.conns) and pbx.last.received.count("heartbeat") >= 3)
    await wait_until(lambda: r.observer.frames.count("heartbeat") >= 3)
    assert len(pbx.conns) == 1


async def test_events_lost_while_disconnected_arrive_in_the_reconnect_snapshot(
    pbx: WsPbx, rig: MakeRig
) -> None:
    r = rig()
    r.consumer.start()
    await wait_until(lambda: r.consumer.connected)
    await pbx.send(update("1.1", "2008", "RING"))
    await wait_until(lambda: len(r.events) == 2)
    # The link drops; meanwhile the target answers, and no frame says so.
    r.world.calls = (CallState("1.1", (Member("extension", "2008", "PJSIP/2008-1", "ANSWER"),)),)
    await pbx.last.ws.close(1001)
    await wait_until(lambda: len(pbx.conns) == 2 and r.consumer.connected)
    await pbx.send(update("1.1", "2008", "BYE"))
    await wait_until(lambda: len(r.events) == 4)
    kinds = [type(event).__name__ for event in r.events]
    assert kinds == ["CallsSnapshot", "CallUpdated", "CallsSnapshot", "CallUpdated"]
    reconciled = r.events[2]
    assert isinstance(reconciled, CallsSnapshot) and reconciled.calls[0].members[0].status == "ANSWER"
    assert r.observer.reconnects == 1
    assert [up for up, _ in r.observer.links] == [True, False, True]


async def test_token_expired_frame_reconnects_with_a_fresh_token(pbx: WsPbx, rig: MakeRig) -> None:
    r = rig()
    r.consumer.start()
    await wait_until(lambda: r.consumer.connected)
    await pbx.send('{"errcode":10004,"errmsg":"TOKEN EXPIRED"}')
    await wait_until(lambda: len(pbx.conns) == 2 and r.consumer.connected)
    assert [conn.token for conn in pbx.conns] == ["access-1", "access-2"]
    assert [seen.endpoint for seen in r.http.seen] == ["get_token", "refresh_token", "del_token"]


async def test_reconnects_with_a_fresh_token_before_the_old_one_is_due(pbx: WsPbx, rig: MakeRig) -> None:
    http = FakePbx()
    http.default["get_token"] = lambda seen: http.new_tokens(ttl=1)  # refresh due after 0.8 s
    http.default["refresh_token"] = lambda seen: http.new_tokens(ttl=60)
    r = rig(tokens=http.rest().tokens, stable_s=0.2)
    r.consumer.start()
    await wait_until(lambda: len(pbx.conns) == 2 and r.consumer.connected, within=3)
    assert [conn.token for conn in pbx.conns] == ["access-1", "access-2"]
    assert pbx.conns[0].ws.close_code == 1000  # closed cleanly, not dropped


async def test_a_server_that_accepts_then_closes_does_not_make_it_spin(pbx: WsPbx, rig: MakeRig) -> None:
    pbx.close_at_once = True
    r = rig(backoff_s=(0.05, 1.0))
    r.consumer.start()
    await asyncio.sleep(1.0)
    # 0.05 → 0.1 → 0.2 → 0.4 s with jitter in [d/2, d]: at most 7 attempts in 1 s (hundreds if it spun)
    assert 2 <= len(pbx.conns) <= 7
    assert not r.consumer.connected and r.world.queries == 0


async def test_a_server_that_acks_then_closes_does_not_reset_the_backoff(pbx: WsPbx, rig: MakeRig) -> None:
    pbx.close_after_ack = True
    r = rig(backoff_s=(0.05, 1.0), stable_s=5.0)
    r.consumer.start()
    await asyncio.sleep(1.0)
    assert 2 <= len(pbx.conns) <= 7


async def test_missing_acknowledgement_means_reconnect(pbx: WsPbx, rig: MakeRig) -> None:
    pbx.ack = False
    r = rig(ack_timeout_s=0.1)
    r.consumer.start()
    await wait_until(lambda: len(pbx.conns) >= 2)
    assert not r.consumer.connected
    assert "no topic_list acknowledgement within 0.1 s" in r.consumer.detail


async def test_no_snapshot_no_link(pbx: WsPbx, rig: MakeRig) -> None:
    r = rig()
    r.world.fail = True
    r.consumer.start()
    await wait_until(lambda: r.world.queries >= 2)
    assert not r.consumer.connected and r.events == []
    assert "call/query failed" in r.consumer.detail
    r.world.fail = False
    await wait_until(lambda: r.consumer.connected)
    assert isinstance(r.events[0], CallsSnapshot)


async def test_bad_frames_are_counted_and_skipped(pbx: WsPbx, rig: MakeRig) -> None:
    r = rig()
    r.consumer.start()
    await wait_until(lambda: r.consumer.connected)
    for text in ("garbage", '{"type":30011,"msg":"{"}', "x" * 1000, update("1.1", "2008", "RING")):
        await pbx.send(text)
    await pbx.send(b'{"type":30012,"msg":"{\\"call_id\\":\\"1.1\\"}"}')
    await wait_until(lambda: len(r.events) == 3)
    assert [reason for reason, _ in r.observer.bad] == ["not_json", "msg_not_json", "not_json"]
    assert r.observer.bad[2][1] == "x" * 200  # samples are truncated
    assert len(r.observer.raw) == 6  # the ack and all five frames sent, binary included
    assert r.consumer.connected and len(pbx.conns) == 1


async def test_a_failing_sink_does_not_cut_the_link(pbx: WsPbx, rig: MakeRig) -> None:
    seen: list[Event] = []

    def sink(event: Event) -> None:
        seen.append(event)
        raise RuntimeError("runtime bug")

    r = rig(sink=sink)
    r.consumer.start()
    await wait_until(lambda: r.consumer.connected)
    await pbx.send(update("1.1", "2008", "RING"))
    await wait_until(lambda: len(seen) == 2)
    assert r.consumer.connected and len(pbx.conns) == 1


async def test_close_closes_the_socket_cleanly_and_stops(pbx: WsPbx, rig: MakeRig) -> None:
    r = rig()
    r.consumer.start()
    await wait_until(lambda: r.consumer.connected)
    await r.consumer.close()
    await wait_until(lambda: pbx.last.ws.close_code is not None)
    assert pbx.last.ws.close_code == 1000
    assert not r.consumer.connected
    await asyncio.sleep(0.1)
    assert len(pbx.conns) == 1


async def test_fatal_login_stops_the_consumer(pbx: WsPbx, rig: MakeRig) -> None:
    http = FakePbx()
    http.script("get_token", {"errcode": -1, "errmsg": "FAILURE"})
    tokens = http.rest().tokens
    r = rig(tokens=tokens)
    r.consumer.start()
    await wait_until(lambda: "Client ID and Client Secret" in r.consumer.detail)
    await asyncio.sleep(0.2)  # time for several reconnects, were it (wrongly) retrying
    assert pbx.conns == [] and len(http.calls_to("get_token")) == 1
    assert r.observer.links == [(False, r.consumer.detail)]
    with pytest.raises(FatalPbxError):
        await tokens.token()
