"""The console's server side: login sessions, CSRF, the stream by cookie, snapshot,
conflation and the per-transfer timeline (issue 13)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from adapters.service.config import ApiConfig, Config, StoreConfig, UserConfig, YeastarPbx
from adapters.service.roles import ROLES, hash_token
from adapters.service.server import Service
from adapters.service.sessions import CSRF_COOKIE, SESSION_COOKIE, LoginLimiter
from tests.service.conftest import FakeAdapter, answered_call, until

ADMIN = "the-admin-token-0123"
TOKENS = {role: f"{role}-token-0123456789" for role in ROLES}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, FakeAdapter]]:
    adapter = FakeAdapter()
    users = tuple(
        UserConfig(name=f"{role}-user", role=role, token_hash=hash_token(t)) for role, t in TOKENS.items()
    )
    config = Config(
        pbx=YeastarPbx(kind="yeastar", base_url="http://127.0.0.1:9", client_id="i",
                       client_secret=SecretStr("s")),
        api=ApiConfig(listen="127.0.0.1:0", token=SecretStr(ADMIN), users=users),
        store=StoreConfig(path=tmp_path / "s.db"),
    )  # fmt: skip
    svc = Service(config, adapter=adapter)
    await svc.start()
    yield svc, adapter
    await svc.stop()


def client(svc: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=svc.base_url, timeout=5)


async def login(http: httpx.AsyncClient, token: str) -> httpx.Response:
    response = await http.post("/console/login", json={"token": token})
    assert response.status_code == 204, response.text
    return response


def set_cookies(response: httpx.Response) -> dict[str, dict[str, Any]]:
    """The Set-Cookie headers parsed: name → {value, attributes (lower-case)}."""
    found: dict[str, dict[str, Any]] = {}
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        for name, morsel in cookie.items():
            flags = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
            found[name] = {"value": morsel.value, "morsel": morsel, "flags": flags}
    return found


# -- login ---------------------------------------------------------------------------


async def test_login_sets_session_and_csrf_cookies(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    async with client(svc) as http:
        response = await login(http, TOKENS["operator"])
        cookies = set_cookies(response)
        session, csrf = cookies[SESSION_COOKIE], cookies[CSRF_COOKIE]
        assert {"httponly", "path", "samesite", "max-age"} <= session["flags"]
        assert session["morsel"]["samesite"].lower() == "strict" and session["morsel"]["path"] == "/"
        assert int(session["morsel"]["max-age"]) == 28800
        assert "secure" not in session["flags"]  # plain http on loopback
        assert "httponly" not in csrf["flags"] and csrf["morsel"]["samesite"].lower() == "strict"
        assert TOKENS["operator"] not in response.headers.get("set-cookie", "")
        me = await http.get("/console/me")
        assert me.status_code == 200 and me.json() == {"name": "operator-user", "role": "operator"}


async def test_secure_flag_when_the_login_came_over_https(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    transport = httpx.ASGITransport(app=svc.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://xferd.example") as http:
        response = await http.post("/console/login", json={"token": ADMIN})
        assert response.status_code == 204
        assert all("secure" in c["flags"] for c in set_cookies(response).values())


async def test_wrong_token_gets_no_hint(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    async with client(svc) as http:
        for token in ("wrong", TOKENS["viewer"] + "x", "a" * 512):
            response = await http.post("/console/login", json={"token": token})
            assert response.status_code == 401 and response.json()["error"] == "login failed"
            assert response.json()["detail"] == "login failed: the token was not accepted"  # no hint
            assert SESSION_COOKIE not in set_cookies(response)
        assert (await http.get("/console/me")).status_code == 401
        # A malformed body is the API's usual 4xx sentence, not a crash.
        response = await http.post("/console/login", json={"token": 5})
        assert response.status_code == 422 and "token" in response.json()["detail"]


async def test_failed_logins_are_rate_limited_per_address(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    async with client(svc) as http:
        for _ in range(5):
            assert (await http.post("/console/login", json={"token": "nope"})).status_code == 401
        limited = await http.post("/console/login", json={"token": ADMIN})  # even the right token
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "too many failed logins" in limited.json()["detail"]
        await svc.app.state.audit.flush()
        entries = await svc.store.audit_list(10, actor=None)
        assert [e["outcome"] for e in entries[:2]] == ["rate_limited", "login_failed"]


def test_limiter_window_slides() -> None:
    now = [1000.0]
    limiter = LoginLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.failed("a")
    assert limiter.retry_after("a") == pytest.approx(60.0)
    assert limiter.retry_after("b") is None  # per address
    now[0] += 30
    assert limiter.retry_after("a") == pytest.approx(30.0)
    now[0] += 30.001
    assert limiter.retry_after("a") is None
    limiter.failed("a")
    limiter.succeeded("a")
    assert limiter.retry_after("a") is None


def test_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(5, 60.0, max_clients=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._failures) == 100


async def test_logout_clears_and_revokes(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    async with client(svc) as http:
        await login(http, TOKENS["viewer"])
        stolen = http.cookies.get(SESSION_COOKIE)
        response = await http.post("/console/logout")
        assert response.status_code == 204
        assert set_cookies(response)[SESSION_COOKIE]["value"] == ""
        assert (await http.get("/console/me")).status_code == 401
    async with client(svc) as other:  # the old cookie, replayed, is refused too
        other.cookies.set(SESSION_COOKIE, stolen or "")
        assert (await other.get("/v1/transfers")).status_code == 401


# -- the session on /v1 --------------------------------------------------------------


async def test_cookie_authenticates_reads_and_csrf_guards_writes(
    service: tuple[Service, FakeAdapter],
) -> None:
    svc, adapter = service
    answered_call(adapter)
    async with client(svc) as http:
        await login(http, TOKENS["operator"])
        assert (await http.get("/v1/transfers")).status_code == 200
        body = {"channel_id": "PJSIP/2000-c1", "number": "2005"}
        refused = await http.post("/v1/transfers", json=body)
        assert refused.status_code == 403 and refused.json()["error"] == "CSRF token missing or wrong"
        wrong = await http.post("/v1/transfers", json=body, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        assert adapter.executed == []  # nothing reached the PBX
        csrf = http.cookies[CSRF_COOKIE]
        started = await http.post("/v1/transfers", json=body, headers={"X-CSRF-Token": csrf})
        assert started.status_code == 201, started.text
        assert started.json()["initiated_by"] == "console:operator-user"
        await svc.app.state.audit.flush()
        entry = (await svc.store.audit_list(1, transfer_id=started.json()["id"]))[0]
        assert (entry["actor"], entry["role"], entry["outcome"]) == ("operator-user", "operator", "ok")


async def test_bearer_clients_need_no_csrf(service: tuple[Service, FakeAdapter]) -> None:
    svc, adapter = service
    answered_call(adapter)
    async with client(svc) as http:
        await login(http, TOKENS["viewer"])  # a cookie is there, but the header decides
        headers = {"Authorization": f"Bearer {TOKENS['operator']}"}
        body = {"channel_id": "PJSIP/2000-c1", "number": "2005"}
        started = await http.post("/v1/transfers", json=body, headers=headers)
        assert started.status_code == 201 and started.json()["initiated_by"] == "api:operator-user"


async def test_viewer_session_cannot_act(service: tuple[Service, FakeAdapter]) -> None:
    svc, adapter = service
    answered_call(adapter)
    async with client(svc) as http:
        await login(http, TOKENS["viewer"])
        csrf = {"X-CSRF-Token": http.cookies[CSRF_COOKIE]}
        body = {"channel_id": "PJSIP/2000-c1", "number": "2005"}
        response = await http.post("/v1/transfers", json=body, headers=csrf)
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        assert "role viewer" in response.json()["detail"]
        response = await http.post("/v1/transfers/nope/complete", headers=csrf)
        assert response.status_code == 403
        assert adapter.executed == []


async def test_expired_session_is_401(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    sessions = svc.app.state.ctx.sessions
    async with client(svc) as http:
        await login(http, TOKENS["supervisor"])
        assert (await http.get("/v1/transfers")).status_code == 200
        sessions.clock = lambda: time.time() + 28800 + 5
        response = await http.get("/v1/transfers")
        assert response.status_code == 401 and "expired" in response.json()["detail"]
        assert (await http.get("/console/me")).status_code == 401


async def test_tampered_cookie_is_refused(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    async with client(svc) as http:
        await login(http, TOKENS["viewer"])
        value = http.cookies[SESSION_COOKIE]
        http.cookies.set(SESSION_COOKIE, value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1])
        assert (await http.get("/v1/transfers")).status_code == 401


# -- the stream by cookie ------------------------------------------------------------


def ws_url(svc: Service, query: str = "") -> str:
    return svc.base_url.replace("http://", "ws://") + "/v1/stream" + query


async def test_stream_by_cookie_starts_with_a_snapshot(service: tuple[Service, FakeAdapter]) -> None:
    svc, adapter = service
    answered_call(adapter)
    async with client(svc) as http:
        await login(http, TOKENS["viewer"])
        cookie = f"{SESSION_COOKIE}={http.cookies[SESSION_COOKIE]}"
    headers = {"Cookie": cookie, "Origin": svc.base_url}
    async with connect(ws_url(svc, "?snapshot=1"), additional_headers=headers) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["kind"] == "snapshot"
        assert [c["call_id"] for c in first["calls"]] == ["c1"]
        assert first["transfers"] == [] and first["health"]["pbx"] == "connected"
        answered_call(adapter, "c2", ext="2001")
        change = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert change["kind"] == "call" and change["call"]["call_id"] == "c2"


async def test_stream_refuses_a_foreign_origin_and_no_credentials(
    service: tuple[Service, FakeAdapter],
) -> None:
    svc, _ = service
    async with client(svc) as http:
        await login(http, TOKENS["viewer"])
        cookie = f"{SESSION_COOKIE}={http.cookies[SESSION_COOKIE]}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            ws_url(svc), additional_headers={"Cookie": cookie, "Origin": "https://evil.example"}
        ):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(svc)):
            pass
    assert refused.value.response.status_code == 401


async def test_stream_without_snapshot_is_unchanged(service: tuple[Service, FakeAdapter]) -> None:
    svc, adapter = service
    async with connect(ws_url(svc, f"?token={ADMIN}")) as ws:
        await until(lambda: bool(svc.hub))
        answered_call(adapter)
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["kind"] == "call"


# -- conflation ------------------------------------------------------------------------


def call_message(call_id: str, n: int) -> dict[str, Any]:
    return {"kind": "call", "call": {"call_id": call_id, "members": [{"status": f"S{n}"}]}}


def transfer_message(transfer_id: str, n: int) -> dict[str, Any]:
    return {"kind": "transfer", "transfer": {"id": transfer_id, "seq": n}}


async def test_conflation_bounds_per_call_changes_and_keeps_every_transfer_change() -> None:
    from adapters.service.hub import Hub
    from adapters.service.metrics import Metrics

    hub = Hub(Metrics())
    conflated = hub.subscribe(conflated=True)
    plain = hub.subscribe()
    got: list[dict[str, Any]] = []

    async def read() -> None:
        while (batch := await conflated.batch()) is not None:
            got.extend(json.loads(text) for text in batch)

    reader = asyncio.create_task(read())
    started = time.monotonic()
    changes = 0
    while time.monotonic() - started < 0.5:  # a hot call: a change every millisecond or so
        changes += 1
        hub.publish(call_message("hot", changes), "default")
        if changes % 50 == 0:
            hub.publish(transfer_message("t1", changes // 50), "default")
        await asyncio.sleep(0.001)
    hub.publish(call_message("cold", 1), "default")
    await until(lambda: any(m.get("call", {}).get("call_id") == "cold" for m in got), within_s=2)
    hub.close()
    await reader
    elapsed = time.monotonic() - started
    hot = [m for m in got if m.get("call", {}).get("call_id") == "hot"]
    # ≤ 10 per second per call: one change of a call per flush at most, flushes interval_s apart
    assert len(hot) <= elapsed / hub.interval_s + 1
    assert len(hot) < changes / 5  # it did conflate
    assert hot[-1]["call"]["members"][0]["status"] == f"S{changes}"  # latest wins
    transfers = [m["transfer"]["seq"] for m in got if m["kind"] == "transfer"]
    assert transfers == list(range(1, changes // 50 + 1))  # every transfer change, in order
    # a plain (in-process) subscriber still gets every message, or is dropped — never conflated
    assert plain.overflowed or plain.queue.qsize() >= 200


async def test_conflated_client_that_stops_reading_is_dropped_not_waited_for() -> None:
    from adapters.service.hub import Hub
    from adapters.service.metrics import Metrics

    metrics = Metrics()
    hub = Hub(metrics, interval_s=0.005)
    hub.stall_s = 0.2
    stuck = hub.subscribe(conflated=True)
    reading = hub.subscribe(conflated=True)
    received = 0

    async def read() -> None:
        nonlocal received
        while (batch := await reading.batch()) is not None:
            received += len(batch)

    reader = asyncio.create_task(read())
    n = 0
    async with asyncio.timeout(10):
        while not stuck.overflowed:
            n += 1
            started = time.perf_counter()
            hub.publish(call_message(f"c{n % 7}", n), "default")
            assert time.perf_counter() - started < 0.05  # publishing never waits for a client
            await asyncio.sleep(0.001)
    assert await stuck.batch() is None
    assert not reading.overflowed and bool(hub)
    hub.close()
    await reader
    assert received > 0
    assert metrics.stream_dropped._value.get() == 1


async def test_a_client_behind_gets_each_calls_latest_change_once() -> None:
    """Flushes waiting for a slow client are folded: every call once, its latest change; every
    transfer change still there, in order."""
    from adapters.service.hub import MERGE_AT, Hub
    from adapters.service.metrics import Metrics

    hub = Hub(Metrics())
    slow = hub.subscribe(conflated=True)
    for flush in range(MERGE_AT * 3):
        for call in range(5):
            hub.publish(call_message(f"c{call}", flush), "default")
        hub.publish(transfer_message("t1", flush), "default")
        hub._flush()  # as the timer would, without waiting for it
    assert slow.queue.qsize() <= MERGE_AT and not slow.overflowed
    messages = [json.loads(text) for text in await slow.batch() or []]
    calls = [m["call"] for m in messages if m["kind"] == "call"]
    assert sorted(c["call_id"] for c in calls) == [f"c{n}" for n in range(5)]  # each once
    last = MERGE_AT * 3 - 1
    assert all(c["members"][0]["status"] == f"S{last}" for c in calls)  # the latest
    assert [m["transfer"]["seq"] for m in messages if m["kind"] == "transfer"] == list(range(MERGE_AT * 3))
    hub.close()


async def test_conflated_stream_over_the_socket(service: tuple[Service, FakeAdapter]) -> None:
    """Many changes of one call through the real websocket: few arrive, the last is the latest."""
    svc, adapter = service
    async with connect(ws_url(svc, f"?token={ADMIN}&snapshot=1")) as ws:
        assert json.loads(await ws.recv())["kind"] == "snapshot"
        statuses = ["ANSWER", "HOLD"] * 100
        for status in statuses:
            adapter.call("c1", ("inbound", "5550100", "PJSIP/trunk-a-c1", "ANSWERED"),
                         ("extension", "2000", "PJSIP/2000-c1", status))  # fmt: skip
        seen: list[str] = []
        async with asyncio.timeout(5):
            while not seen or seen[-1] != statuses[-1]:
                message = json.loads(await ws.recv())
                if message["kind"] == "call":
                    seen.append(message["call"]["members"][1]["status"])
        assert len(seen) < 20


# -- the timeline ----------------------------------------------------------------------


async def test_timeline_tells_a_live_and_then_a_stored_transfer(
    service: tuple[Service, FakeAdapter], tmp_path: Path
) -> None:
    svc, adapter = service
    answered_call(adapter)
    headers = {"Authorization": f"Bearer {TOKENS['operator']}"}
    async with client(svc) as http:
        body = {"channel_id": "PJSIP/2000-c1", "number": "2005"}
        started = await http.post("/v1/transfers", json=body, headers=headers)
        assert started.status_code == 201, started.text
        transfer_id = started.json()["id"]
        adapter.call("consult-1", ("extension", "2000", "PJSIP/2000-x", "ANSWER"),
                     ("extension", "2005", "PJSIP/2005-t", "RING"))  # fmt: skip
        completed = await http.post(f"/v1/transfers/{transfer_id}/complete", headers=headers)
        assert completed.status_code == 200, completed.text
        response = await http.get(f"/v1/transfers/{transfer_id}/timeline", headers=headers)
        assert response.status_code == 200
        timeline = response.json()
        assert timeline["transfer_id"] == transfer_id
        entries = timeline["entries"]
        assert all(set(e) == {"at", "kind", "text"} for e in entries)
        kinds = [e["kind"] for e in entries]
        texts = [e["text"] for e in entries]
        assert kinds[0] == "client" and texts[0].startswith(f"start {transfer_id}: PJSIP/2000-c1 → 2005")
        assert "by api:operator-user" in texts[0]
        assert f"start {transfer_id} → 2005 (PJSIP/2000-c1)" in texts  # xferd → PBX, as replay says it
        assert any(t.startswith(f"ok for start {transfer_id}") for t in texts)
        assert f"{transfer_id}: idle → consulting (initiated)" in texts
        assert any(k == "pbx" and "2005 RING" in t for k, t in zip(kinds, texts, strict=True))
        assert f"complete {transfer_id}" in texts  # the client's op
        assert texts[-1] == f"{transfer_id}: consulting → completed (operator)"
        assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)

        missing = await http.get("/v1/transfers/no-such-id/timeline", headers=headers)
        assert missing.status_code == 404 and missing.json()["detail"] == "no transfer with id no-such-id"
        viewer = {"Authorization": f"Bearer {TOKENS['viewer']}"}
        assert (await http.get(f"/v1/transfers/{transfer_id}/timeline", headers=viewer)).status_code == 200
        assert (await http.get(f"/v1/transfers/{transfer_id}/timeline")).status_code == 401

    # A restarted service has no journal of it: the story comes from the store.
    await svc.stop()
    again = Service(svc.config, adapter=FakeAdapter())
    await again.start()
    try:
        async with client(again) as http:
            response = await http.get(f"/v1/transfers/{transfer_id}/timeline", headers=headers)
            assert response.status_code == 200
            entries = response.json()["entries"]
            texts = [e["text"] for e in entries]
            assert texts[0].startswith(f"start {transfer_id}") and "by api:operator-user" in texts[0]
            states = [e["text"] for e in entries if e["kind"] == "state"]
            assert states == [
                f"{transfer_id}: idle → consulting (initiated)",
                f"{transfer_id}: consulting → completed (operator)",
            ]
            assert any("transfer.complete by operator-user (operator): ok" in t for t in texts)
    finally:
        await again.stop()


async def test_stream_writes_batches_in_one_write_per_wakeup(
    service: tuple[Service, FakeAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under uvicorn the stream writes a wake-up's frames at once; the frames are valid
    WebSocket text frames (the client decodes them as usual)."""
    from adapters.service import stream_writer

    writes: list[int] = []
    real = stream_writer.RawWriter.write

    async def counting(self: stream_writer.RawWriter, frames: bytes) -> None:
        writes.append(len(frames))
        await real(self, frames)

    monkeypatch.setattr(stream_writer.RawWriter, "write", counting)
    svc, adapter = service
    async with connect(ws_url(svc, f"?token={ADMIN}")) as ws:
        await until(lambda: bool(svc.hub))
        for n in range(30):  # 30 calls change at once: one flush, one write
            answered_call(adapter, f"c{n}", ext=f"2{n:03d}")
        seen = {json.loads(await asyncio.wait_for(ws.recv(), 5))["call"]["call_id"] for _ in range(30)}
        assert seen == {f"c{n}" for n in range(30)}
    assert writes and len(writes) <= 2  # a flush may split across a wake-up, never per message


def test_raw_writer_is_not_used_where_it_cannot_be() -> None:
    from adapters.service.stream_writer import RawWriter, _protocol_behind

    async def plain_send(message: Any) -> None:
        pass

    assert _protocol_behind(plain_send) is None
    assert _protocol_behind(None) is None

    class NotUvicorn:
        _send = plain_send

    assert RawWriter.find(NotUvicorn()) is None  # type: ignore[arg-type]


def test_ws_frame_lengths() -> None:
    from adapters.service.hub import ws_frame

    assert ws_frame("hi") == b"\x81\x02hi"
    assert ws_frame("x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert ws_frame("x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")


async def test_login_takes_only_json(service: tuple[Service, FakeAdapter]) -> None:
    """A cross-site form can post text/plain or form data, never application/json without a
    preflight: a login from such a form must not set a session (login CSRF)."""
    svc, _ = service
    async with client(svc) as http:
        body = json.dumps({"token": ADMIN})
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            response = await http.post("/console/login", content=body, headers={"Content-Type": content_type})
            assert response.status_code in (400, 415, 422), (content_type, response.status_code)
            assert SESSION_COOKIE not in set_cookies(response)


async def test_stream_with_an_expired_session_is_401(service: tuple[Service, FakeAdapter]) -> None:
    svc, _ = service
    async with client(svc) as http:
        await login(http, TOKENS["viewer"])
        cookie = f"{SESSION_COOKIE}={http.cookies[SESSION_COOKIE]}"
    svc.app.state.ctx.sessions.clock = lambda: time.time() + 28800 + 5
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(svc), additional_headers={"Cookie": cookie, "Origin": svc.base_url}):
            pass
    assert refused.value.response.status_code == 401


def test_journal_memory_is_bounded() -> None:
    from adapters.service.journal import Journal
    from engine.model import OperatorRequested, TimerFired, TransferRequested

    journal = Journal(transfers=10, rows=5)
    for n in range(50):
        journal.record(TransferRequested(at=float(n), transfer_id=f"t{n}", number="2005", type="attended",
                                         channel_id="PJSIP/2000-1"), [])  # fmt: skip
    assert not journal.holds("t0") and journal.holds("t49")
    for n in range(20):
        journal.record(TimerFired(at=100.0 + n, transfer_id="t49", timer=f"no_answer#0#{n}"), [])
    journal.record(OperatorRequested(at=200.0, transfer_id="t49", op="abort"), [])
    entries = journal.entries("t49", None)
    assert len(entries) == 6 and "earlier rows not kept" in entries[0]["text"]
    assert entries[-1]["text"] == "abort t49"
