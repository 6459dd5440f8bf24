"""Token lifecycle: one live token, refreshed early, credentials never retried."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from adapters.base import FatalPbxError
from adapters.yeastar.frames import LimitExceededError, PbxUnreachable
from adapters.yeastar.tokens import TokenManager
from tests.yeastar.client_support import SECRET, FakeClock, FakePbx, RecordingObserver, Seen


async def test_login_sends_credentials_in_the_body_and_caches_the_token() -> None:
    pbx = FakePbx()
    rest = pbx.rest(clock=FakeClock())
    assert await rest.tokens.token() == "access-1"
    assert await rest.tokens.token() == "access-1"
    (login,) = pbx.seen
    assert (login.method, login.endpoint) == ("POST", "get_token")
    assert login.body == {"username": "client-id", "password": SECRET}
    assert login.params == {}
    assert login.headers["user-agent"] == "xferd/0.1"


async def test_refresh_before_expiry_keeps_the_newest_refresh_token_and_revokes_the_old_access() -> None:
    pbx = FakePbx()
    clock = FakeClock()
    rest = pbx.rest(clock=clock)
    await rest.tokens.token()
    clock.now += 1800 * 0.8 - 1
    assert await rest.tokens.token() == "access-1"  # not due yet
    clock.now += 2
    assert rest.tokens.refresh_in() == 0
    assert await rest.tokens.token() == "access-2"
    clock.now += 1800 * 0.8 + 1
    assert await rest.tokens.token() == "access-3"
    refreshes = pbx.calls_to("refresh_token")
    assert [seen.body for seen in refreshes] == [
        {"refresh_token": "refresh-1"},
        {"refresh_token": "refresh-2"},
    ]
    assert [seen.params["access_token"] for seen in pbx.calls_to("del_token")] == ["access-1", "access-2"]
    assert len(pbx.calls_to("get_token")) == 1


async def test_refused_refresh_falls_back_to_one_login_after_revoking() -> None:
    pbx = FakePbx()
    clock = FakeClock()
    rest = pbx.rest(clock=clock)
    await rest.tokens.token()
    pbx.script("refresh_token", {"errcode": 10004, "errmsg": "TOKEN EXPIRED"})
    clock.now += 1500
    assert await rest.tokens.token() == "access-2"
    assert [seen.endpoint for seen in pbx.seen] == ["get_token", "refresh_token", "del_token", "get_token"]


async def test_expired_refresh_token_goes_straight_to_login() -> None:
    pbx = FakePbx()
    clock = FakeClock()
    rest = pbx.rest(clock=clock)
    await rest.tokens.token()
    clock.now += 90_000  # both tokens long dead: nothing to refresh, nothing to revoke
    assert await rest.tokens.token() == "access-2"
    assert [seen.endpoint for seen in pbx.seen] == ["get_token", "get_token"]


async def test_refresh_that_cannot_reach_the_pbx_reuses_the_still_valid_token() -> None:
    pbx = FakePbx()
    clock = FakeClock()
    rest = pbx.rest(clock=clock)
    await rest.tokens.token()

    def down(seen: Seen) -> None:
        raise httpx.ConnectError("connection refused")

    pbx.script("refresh_token", down)
    clock.now += 1500
    assert await rest.tokens.token() == "access-1"
    assert await rest.tokens.token() == "access-2"  # tried again on the next call


async def test_bad_credentials_are_tried_exactly_once() -> None:
    pbx = FakePbx()
    pbx.script(
        "get_token",
        {
            "errcode": -1,
            "errmsg": "FAILURE",
            "invalid_param_list": [{"field": "username or password", "value": "error"}],
        },
    )
    rest = pbx.rest(clock=FakeClock())
    with pytest.raises(FatalPbxError, match="Client ID and Client Secret") as first:
        await rest.tokens.token()
    with pytest.raises(FatalPbxError) as second:
        await rest.tokens.renew("whatever")
    assert second.value is first.value
    assert len(pbx.calls_to("get_token")) == 1
    assert SECRET not in str(first.value) and "client-id" not in str(first.value)


@pytest.mark.parametrize(
    ("errcode", "advice"),
    [(70004, "must remove it from the PBX's blocked IP list"), (70087, "allowed IP list")],
)
async def test_ip_block_and_allow_list_are_fatal_with_admin_advice(errcode: int, advice: str) -> None:
    pbx = FakePbx()
    pbx.script("get_token", {"errcode": errcode, "errmsg": "IP"})
    rest = pbx.rest(clock=FakeClock())
    with pytest.raises(FatalPbxError, match=advice):
        await rest.tokens.token()
    with pytest.raises(FatalPbxError):
        await rest.tokens.token()
    assert len(pbx.calls_to("get_token")) == 1


async def test_too_many_tokens_is_waited_out_with_bounded_retries() -> None:
    busy = {"errcode": 60002, "errmsg": "MAX LIMITATION EXCEEDED"}
    pbx = FakePbx()
    pbx.script("get_token", busy, busy)
    rest = pbx.rest(clock=FakeClock())
    assert await rest.tokens.token() == "access-1"
    assert len(pbx.calls_to("get_token")) == 3

    pbx = FakePbx()
    pbx.script("get_token", busy, busy, busy, busy)
    rest = pbx.rest(clock=FakeClock())  # two retry delays: three attempts, then give up
    with pytest.raises(LimitExceededError):
        await rest.tokens.token()
    assert len(pbx.calls_to("get_token")) == 3


async def test_renew_replaces_only_the_stale_token() -> None:
    pbx = FakePbx()
    rest = pbx.rest(clock=FakeClock())
    first = await rest.tokens.token()
    assert await rest.tokens.renew(first) == "access-2"
    assert await rest.tokens.renew(first) == "access-2"  # someone already replaced it: no request
    assert [seen.endpoint for seen in pbx.seen] == ["get_token", "refresh_token", "del_token"]


async def test_concurrent_callers_share_one_login() -> None:
    pbx = FakePbx()

    async def slow_login(seen: Seen) -> object:
        await asyncio.sleep(0.02)
        return pbx.new_tokens()

    pbx.script("get_token", slow_login)
    rest = pbx.rest(clock=FakeClock())
    tokens = await asyncio.gather(*(rest.tokens.token() for _ in range(5)))
    assert set(tokens) == {"access-1"}
    assert len(pbx.calls_to("get_token")) == 1


async def test_close_revokes_the_live_token_once() -> None:
    pbx = FakePbx()
    rest = pbx.rest(clock=FakeClock())
    await rest.tokens.close()
    assert pbx.seen == []  # nothing to revoke
    await rest.tokens.token()
    await rest.aclose()
    (revoke,) = pbx.calls_to("del_token")
    assert (revoke.method, revoke.params) == ("GET", {"access_token": "access-1"})


async def test_secrets_stay_out_of_observer_reports_and_library_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pbx = FakePbx()
    observer = RecordingObserver()
    rest = pbx.rest(clock=FakeClock(), observer=observer)
    # httpx's own logger too: the service keeps it at WARNING outside DEBUG (logs.configure).
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="httpx"):
        await rest.tokens.token()
        await rest.query(type="inbound")
        await rest.aclose()
    assert "access_token=***" in caplog.text  # httpx logged the URL, scrubbed
    reported = repr(observer.requests)
    for secret in (SECRET, "access-1", "refresh-1"):
        assert secret not in caplog.text
        assert secret not in reported
    endpoint, body, answer, _ = observer.requests[0]
    assert endpoint == "get_token" and body["password"] == "***"
    assert answer is not None and answer["access_token"] == answer["refresh_token"] == "***"
    assert all("authorization" not in seen.headers for seen in pbx.seen)


# -- the token pair kept in the store (issue 15, item 5) ------------------------------------------


class MemoryCredentials:
    """A CredentialStore in memory; ``fail`` makes every call raise (a store in trouble)."""

    def __init__(self, value: dict[str, Any] | None = None) -> None:
        self.value = value
        self.saves = 0
        self.fail = False

    async def load(self) -> dict[str, Any] | None:
        if self.fail:
            raise RuntimeError("store down")
        return dict(self.value) if self.value is not None else None

    async def save(self, value: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("store down")
        self.saves += 1
        self.value = dict(value)


def stored_pair(
    client_id: str = "client-id", access_in: float = 600, refresh_in: float = 80000
) -> dict[str, Any]:
    """A pair an earlier process stored, its expiries relative to the wall clock 1e9."""
    return {"client_id": client_id, "access_token": "old-a", "refresh_token": "old-r",
            "access_expires_at": 1e9 + access_in, "refresh_expires_at": 1e9 + refresh_in}  # fmt: skip


def manager(pbx: FakePbx, store: MemoryCredentials, clock: FakeClock, wall: FakeClock) -> TokenManager:
    """A fresh process's token manager (a restart: nothing in memory, the store as it was)."""
    rest = pbx.rest(clock=clock)
    return TokenManager(rest.send, "client-id", SECRET, clock=clock, wall_clock=wall, store=store,
                        busy_retry_delays=(0.01,))  # fmt: skip


async def test_the_pair_is_stored_and_a_restart_refreshes_it_instead_of_logging_in() -> None:
    pbx, store, wall = FakePbx(), MemoryCredentials(), FakeClock(1_700_000_000.0)
    assert await manager(pbx, store, FakeClock(), wall).token() == "access-1"
    assert store.value == {
        "client_id": "client-id", "access_token": "access-1", "refresh_token": "refresh-1",
        "access_expires_at": 1_700_000_000.0 + 1800, "refresh_expires_at": 1_700_000_000.0 + 86400,
    }  # fmt: skip
    wall.now += 60  # killed; started again a minute later (a new process: its own monotonic clock)
    assert await manager(pbx, store, FakeClock(5.0), wall).token() == "access-2"
    assert [seen.endpoint for seen in pbx.seen] == ["get_token", "refresh_token", "del_token"]
    assert pbx.calls_to("refresh_token")[0].body == {"refresh_token": "refresh-1"}
    assert pbx.calls_to("del_token")[0].params == {"access_token": "access-1"}  # the old one revoked
    assert store.value is not None and store.value["refresh_token"] == "refresh-2"


async def test_a_refresh_in_the_running_process_stores_the_newest_pair() -> None:
    pbx, store, clock, wall = FakePbx(), MemoryCredentials(), FakeClock(), FakeClock(1e9)
    tokens = manager(pbx, store, clock, wall)
    await tokens.token()
    clock.now += 1500
    wall.now += 1500
    assert await tokens.token() == "access-2"
    assert store.value is not None
    assert (store.value["access_token"], store.value["refresh_token"]) == ("access-2", "refresh-2")
    assert store.value["access_expires_at"] == 1e9 + 1500 + 1800


async def test_a_stored_pair_that_cannot_be_refreshed_is_revoked_before_one_login() -> None:
    pbx, wall = FakePbx(), FakeClock(1e9)
    store = MemoryCredentials(stored_pair())
    pbx.script("refresh_token", {"errcode": 10004, "errmsg": "TOKEN EXPIRED"})
    assert await manager(pbx, store, FakeClock(), wall).token() == "access-1"
    assert [seen.endpoint for seen in pbx.seen] == ["refresh_token", "del_token", "get_token"]
    assert pbx.calls_to("del_token")[0].params == {"access_token": "old-a"}
    assert store.value is not None and store.value["access_token"] == "access-1"


async def test_an_expired_stored_pair_goes_straight_to_login() -> None:
    pbx, wall = FakePbx(), FakeClock(1e9)
    store = MemoryCredentials(stored_pair(access_in=-5000, refresh_in=-1))
    assert await manager(pbx, store, FakeClock(), wall).token() == "access-1"
    assert [seen.endpoint for seen in pbx.seen] == ["get_token"]  # nothing to refresh, nothing live


async def test_another_applications_pair_is_revoked_not_refreshed() -> None:
    pbx, wall = FakePbx(), FakeClock(1e9)
    store = MemoryCredentials(stored_pair(client_id="old-app"))
    assert await manager(pbx, store, FakeClock(), wall).token() == "access-1"
    assert [seen.endpoint for seen in pbx.seen] == ["del_token", "get_token"]
    assert store.value is not None and store.value["client_id"] == "client-id"


async def test_an_unreachable_pbx_keeps_the_stored_pair_for_the_next_attempt() -> None:
    pbx, wall = FakePbx(), FakeClock(1e9)
    stored = stored_pair()
    store = MemoryCredentials(stored)

    def down(seen: Seen) -> None:
        raise httpx.ConnectError("connection refused")

    pbx.script("refresh_token", down)
    tokens = manager(pbx, store, FakeClock(), wall)
    with pytest.raises(PbxUnreachable):
        await tokens.token()
    assert store.value == stored
    assert await tokens.token() == "access-1"  # the PBX is back: the stored pair is refreshed
    assert [seen.endpoint for seen in pbx.seen] == ["refresh_token", "refresh_token", "del_token"]


async def test_a_store_in_trouble_costs_the_restart_benefit_not_the_connection() -> None:
    pbx, store = FakePbx(), MemoryCredentials()
    store.fail = True
    tokens = manager(pbx, store, FakeClock(), FakeClock(1e9))
    assert await tokens.token() == "access-1"
    assert [seen.endpoint for seen in pbx.seen] == ["get_token"]
