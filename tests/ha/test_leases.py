"""PBX leases on a real PostgreSQL: grant, renewal, expiry, token growth, fair shares."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from adapters.service.leases import LeaseKeeper, LeaseRow, fair_share, plan
from tests.service.conftest import until


# -- the pure decision ------------------------------------------------------------
def live(pbx: str, owner: str, token: int = 1) -> LeaseRow:
    return LeaseRow(pbx, owner, token, True)


def test_a_lone_instance_takes_every_free_lease() -> None:
    decided = plan("a", ["x", "y", "z"], {}, ["a"])
    assert sorted(decided.acquire) == ["x", "y", "z"] and decided.release == ()


def test_an_instance_takes_at_most_its_fair_share_and_only_free_or_expired_leases() -> None:
    leases = {"x": live("x", "b"), "y": LeaseRow("y", "b", 3, False), "z": live("z", "c")}
    decided = plan("a", ["x", "y", "z", "w"], leases, ["a", "b", "c"])
    assert fair_share(4, 3) == 2
    assert sorted(decided.acquire) == ["w", "y"]  # x and z are held and live
    # Holding one already: only one more.
    assert len(plan("a", ["x", "y", "z", "w"], leases, ["a", "b", "c"], held=["q"]).acquire) <= 2


def test_a_live_row_naming_this_instance_but_not_held_is_not_taken_before_it_expires() -> None:
    # A restart that reuses the instance id holds nothing in memory: the old lease must run out.
    assert plan("a", ["x"], {"x": live("x", "a")}, ["a"]).acquire == ()
    assert plan("a", ["x"], {"x": LeaseRow("x", "a", 1, False)}, ["a"]).acquire == ("x",)


def test_more_instances_make_the_holder_hand_over_what_exceeds_its_share() -> None:
    leases = {"x": live("x", "a"), "y": live("y", "a")}
    decided = plan("a", ["x", "y"], leases, ["a", "b"], held=["x", "y"])
    assert len(decided.release) == 1 and decided.acquire == ()
    # The newcomer takes the one handed back (its row is then free).
    released = decided.release[0]
    after = {**leases, released: LeaseRow(released, None, 1, False)}
    assert plan("b", ["x", "y"], after, ["a", "b"]).acquire == (released,)


def test_two_instances_mostly_want_different_pbxs() -> None:
    names = [f"p{i}" for i in range(20)]
    first = set(plan("a", names, {}, ["a", "b"]).acquire)
    second = set(plan("b", names, {}, ["a", "b"]).acquire)
    assert len(first) == len(second) == 10
    assert len(first & second) < 10  # rendezvous hashing spreads the preferences


# -- against PostgreSQL -------------------------------------------------------------
class Events:
    def __init__(self) -> None:
        self.granted: list[tuple[str, int, str | None]] = []
        self.lost: list[tuple[str, str]] = []

    def on_granted(self, pbx: str, token: int, previous: LeaseRow | None) -> None:
        self.granted.append((pbx, token, previous.owner if previous else None))

    def on_lost(self, pbx: str, why: str) -> None:
        self.lost.append((pbx, why))


def keeper(db: str, name: str, pbxs: list[str], events: Events, ttl: float = 1.5) -> LeaseKeeper:
    return LeaseKeeper(
        db, name, f"http://127.0.0.1/{name}", pbxs, ttl_s=ttl, renew_s=0.2,
        on_granted=events.on_granted, on_lost=events.on_lost,
    )  # fmt: skip


def rows(db: str) -> dict[str, tuple[str | None, int, bool]]:
    with psycopg.connect(db) as conn:
        found = conn.execute("SELECT pbx, owner, token, expires_at > now() FROM xferd_leases").fetchall()
    return {pbx: (owner, token, alive) for pbx, owner, token, alive in found}


async def test_grant_renewal_expiry_and_token_growth(ha_db: str) -> None:
    a_events, b_events = Events(), Events()
    a = keeper(ha_db, "a", ["acme"], a_events)
    b = keeper(ha_db, "b", ["acme"], b_events)
    await a.start()
    await until(lambda: bool(a_events.granted), 10)  # the first round (or a retry, if it was slow)
    await b.start()
    try:
        assert a_events.granted == [("acme", 1, None)] and b_events.granted == []
        assert a.valid("acme") and not b.valid("acme")
        assert a.fence("acme") is not None and a.fence("acme").token == 1  # type: ignore[union-attr]
        # Renewals keep it: well past the TTL, still a's, same token.
        rounds = a.rounds
        await until(lambda: a.rounds >= rounds + 10, 10)
        assert rows(ha_db)["acme"] == ("a", 1, True) and a.valid("acme") and b_events.granted == []
        # a stops renewing without giving the lease back (as if killed): b takes it once it expired.
        a._stopping = True
        assert a._task is not None
        a._task.cancel()
        await asyncio.gather(a._task, return_exceptions=True)
        stopped = time.monotonic()
        await until(lambda: bool(b_events.granted), 10)
        waited = time.monotonic() - stopped
        assert b_events.granted == [("acme", 2, "a")]
        assert waited > 0.5  # not before the lease ran out (ttl 1.5 s from a's last renewal)
        # a's own clock said so before b got it.
        assert a_events.lost and "not renewed in time" in a_events.lost[0][1]
        assert not a.valid("acme") and b.valid("acme")
        assert rows(ha_db)["acme"][:2] == ("b", 2)
    finally:
        await a.stop(release=False)
        await b.stop()
    # b handed it back on a clean stop: expired at once (its last owner and token kept).
    assert rows(ha_db)["acme"] == ("b", 2, False)


async def test_a_renewal_refused_loses_the_lease_at_once(ha_db: str) -> None:
    events = Events()
    a = keeper(ha_db, "a", ["acme"], events, ttl=30)
    await a.start()
    try:
        await until(lambda: a.valid("acme"), 10)
        # Another party took the row (as a grant after expiry would): the next renewal finds nothing.
        with psycopg.connect(ha_db, autocommit=True) as conn:
            conn.execute("UPDATE xferd_leases SET owner = 'z', token = token + 1 WHERE pbx = 'acme'")
        await until(lambda: bool(events.lost), 5)
        assert "renewal refused" in events.lost[0][1] and not a.valid("acme")
    finally:
        await a.stop()


async def test_two_pbxs_are_spread_over_two_instances_and_taken_back_when_one_leaves(ha_db: str) -> None:
    a_events, b_events = Events(), Events()
    a = keeper(ha_db, "a", ["p1", "p2"], a_events)
    await a.start()
    await until(lambda: sorted(a.held) == ["p1", "p2"], 10)
    b = keeper(ha_db, "b", ["p1", "p2"], b_events)
    await b.start()
    try:
        # a sees b, hands one back; b takes it.
        await until(lambda: len(a.held) == 1 and len(b.held) == 1, 10)
        assert set(a.held) | set(b.held) == {"p1", "p2"}
        moved = next(iter(b.held))
        assert b_events.granted == [(moved, 2, "a")]
    finally:
        await b.stop()
    # b left cleanly: a takes its share back.
    await until(lambda: len(a.held) == 2, 10)
    await a.stop()


@pytest.mark.parametrize("instances", [3])
async def test_concurrent_grants_give_each_lease_to_exactly_one_instance(ha_db: str, instances: int) -> None:
    events = [Events() for _ in range(instances)]
    keepers = [keeper(ha_db, f"i{n}", ["p1", "p2"], events[n]) for n in range(instances)]
    await asyncio.gather(*(k.start() for k in keepers))
    try:
        # Converged: each holds at most its fair share (1), both are held...
        await until(
            lambda: all(len(k.held) <= 1 for k in keepers) and sum(len(k.held) for k in keepers) == 2, 10
        )
        for _ in range(10):  # ...and it stays so, round after round
            held = [pbx for k in keepers for pbx in k.held]
            assert sorted(held) == ["p1", "p2"]
            await asyncio.sleep(0.1)
    finally:
        for k in keepers:
            await k.stop()
