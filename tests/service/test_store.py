"""The stores: round trips, durability across kill -9, clear errors when locked or unreachable.

The behaviour every store shares runs on SQLite and on PostgreSQL (``backend``
fixture); what only one of them has (a file's mode, a lock, fencing) is
tested on that one.  PostgreSQL tests use the session's own database
(``tests/pg.py``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.service.store import (
    Fence,
    Saved,
    SqliteStore,
    StaleFence,
    StoredCredentials,
    StoreError,
    TransferStore,
    close_store,
)

Open = Callable[[], TransferStore]


def resource(transfer_id: str, state: str, created: str) -> dict[str, Any]:
    return {"id": transfer_id, "state": state, "created_at": created, "updated_at": created}


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Open]:
    """Opens a store on one backing database (call again: the same data, as after a restart)."""
    opened: list[TransferStore] = []
    if request.param == "sqlite":

        def open_one() -> TransferStore:
            opened.append(SqliteStore(tmp_path / "s.db"))
            return opened[-1]

    else:
        from adapters.service.pgstore import PgStore

        url = request.getfixturevalue("pg_url")

        def open_one() -> TransferStore:
            opened.append(PgStore(url))
            return opened[-1]

    yield open_one
    for store in opened:
        await close_store(store)


async def test_round_trip_active_recent_and_final(open_store: Open) -> None:
    store = open_store()
    store.save("a", resource("a", "consulting", "2026-01-01T00:00:01.000Z"), {"chart": "a1"}, False)
    store.save("b", resource("b", "idle", "2026-01-01T00:00:02.000Z"), {"chart": "b1"}, False)
    store.save("c", resource("c", "consulting", "2026-01-01T00:00:03.000Z"), {"chart": "c1"}, False)
    # an update replaces the row; a final transfer leaves the active set
    store.save("a", resource("a", "swapped", "2026-01-01T00:00:01.000Z"), {"chart": "a2"}, False)
    store.save("b", resource("b", "completed", "2026-01-01T00:00:02.000Z"), {"chart": "b2"}, True)

    assert await store.load_active() == [{"chart": "a2"}, {"chart": "c1"}]  # oldest first
    assert await store.get("a") == resource("a", "swapped", "2026-01-01T00:00:01.000Z")
    assert await store.get("nope") is None
    assert [r["id"] for r in await store.recent(10)] == ["c", "b", "a"]  # newest first
    assert [r["id"] for r in await store.recent(2)] == ["c", "b"]
    assert [r["id"] for r in await store.recent(10, "completed")] == ["b"]
    store.close()

    reopened = open_store()
    assert await reopened.load_active() == [{"chart": "a2"}, {"chart": "c1"}]


async def test_idempotency_keys(open_store: Open) -> None:
    store = open_store()
    assert await store.idempotency_get("k1") is None
    await store.idempotency_put("k1", "fp1", "t1")
    await store.idempotency_put("k1", "fp2", "t2")  # the first writer wins
    assert await store.idempotency_get("k1") == ("t1", "fp1")
    store.close()
    assert await open_store().idempotency_get("k1") == ("t1", "fp1")


def test_a_save_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from adapters.service.store import SqliteStore
        store = SqliteStore({str(path)!r})
        store.save("t1", {{"state": "consulting", "created_at": "x", "updated_at": "y"}}, {{"n": 1}}, False)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert done.returncode == -9
    store = SqliteStore(path)
    assert asyncio.run(store.load_active()) == [{"n": 1}]


async def test_locked_database_is_a_clear_error_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path, busy_timeout_s=0.05)
    store.save("t1", resource("t1", "consulting", "a"), {"n": 1}, False)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreError, match=r"s\.db: cannot write: database is locked"):
        store.save("t1", resource("t1", "swapped", "a"), {"n": 2}, False)
    other.execute("ROLLBACK")
    other.close()
    assert await store.load_active() == [{"n": 1}]
    store.save("t1", resource("t1", "swapped", "a"), {"n": 2}, False)  # usable again
    assert await store.load_active() == [{"n": 2}]


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open: file is not a database"):
        SqliteStore(path)


async def test_rows_carry_their_pbx(open_store: Open) -> None:
    store = open_store()
    store.save("a", resource("a", "consulting", "2026-01-01T00:00:01.000Z"), {"n": "a"}, False, "acme")
    store.save("b", resource("b", "consulting", "2026-01-01T00:00:02.000Z"), {"n": "b"}, False, "globex")
    store.save("c", resource("c", "completed", "2026-01-01T00:00:03.000Z"), {"n": "c"}, True, "acme")
    assert await store.load_active("acme") == [{"n": "a"}]
    assert await store.load_active("globex") == [{"n": "b"}]
    assert [r["id"] for r in await store.recent(10, pbx="acme")] == ["c", "a"]
    assert [r["id"] for r in await store.recent(10, "completed", "globex")] == []


async def test_a_store_of_the_first_version_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE transfers (id TEXT PRIMARY KEY, state TEXT NOT NULL, final INTEGER NOT NULL,
            resource TEXT NOT NULL, export TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,
            transfer_id TEXT NOT NULL, created REAL NOT NULL);
        INSERT INTO transfers VALUES ('t1', 'consulting', 0, '{"id": "t1"}', '{"n": 1}', 'a', 'b');
        """
    )
    old.close()
    store = SqliteStore(path)
    assert await store.load_active() == [{"n": 1}]  # an old row belongs to the default PBX
    await store.audit_append([{"at": "x", "actor": "ann", "role": "operator", "action": "a", "status": 200,
                               "outcome": "ok", "detail": ""}])  # fmt: skip
    store.close()
    assert await SqliteStore(path).audit_list(5) != []


async def test_audit_entries_newest_first_and_filtered(open_store: Open) -> None:
    store = open_store()
    entries = [
        {"at": f"t{i}", "actor": actor, "role": "operator", "action": "transfer.complete", "pbx": "default",
         "transfer_id": tid, "channel_id": None, "status": 200, "outcome": "ok", "detail": ""}
        for i, (actor, tid) in enumerate([("ann", "x"), ("bob", "y"), ("ann", "y")])
    ]  # fmt: skip
    await store.audit_append(entries)
    assert [e["at"] for e in await store.audit_list(10)] == ["t2", "t1", "t0"]
    assert [e["at"] for e in await store.audit_list(10, actor="ann")] == ["t2", "t0"]
    assert [e["at"] for e in await store.audit_list(10, transfer_id="y")] == ["t2", "t1"]
    assert (await store.audit_list(1))[0]["actor"] == "ann"


async def test_credentials_per_pbx_and_kind(open_store: Open) -> None:
    store = open_store()
    assert await store.credentials_get("default", "webex_oauth") is None
    await store.credentials_put("default", "webex_oauth", {"refresh_token": "r1", "seed": None})
    await store.credentials_put("other", "webex_oauth", {"refresh_token": "r2"})
    await store.credentials_put("default", "webex_oauth", {"refresh_token": "r3", "seed": None})
    assert await store.credentials_get("default", "webex_oauth") == {"refresh_token": "r3", "seed": None}
    assert await store.credentials_get("other", "webex_oauth") == {"refresh_token": "r2"}
    assert await store.credentials_get("default", "yeastar_tokens") is None
    store.close()
    again = open_store()  # a restart reads the newest value
    credentials = StoredCredentials(again, "default", "webex_oauth")
    assert await credentials.load() == {"refresh_token": "r3", "seed": None}
    await credentials.save({"refresh_token": "r4"})
    assert await again.credentials_get("default", "webex_oauth") == {"refresh_token": "r4"}


async def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    store = SqliteStore(path)
    await store.credentials_put("default", "webex_oauth", {"refresh_token": "r1"})
    store.close()
    # the store created the file: it holds secrets, so only its owner may read it
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    SqliteStore(path).close()
    os.chmod(path, 0o640)  # the admin chose this; the store does not second-guess it
    SqliteStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


# -- commit (the write-ahead pipeline's path), on both stores ----------------------------------


async def test_commit_writes_a_batch_and_the_last_save_of_a_transfer_wins(open_store: Open) -> None:
    store = open_store()
    await store.commit(
        [
            Saved("a", resource("a", "consulting", "2026-01-01T00:00:01Z"), {"n": 1}, False, "acme"),
            Saved("b", resource("b", "consulting", "2026-01-01T00:00:02Z"), {"n": 2}, False, "acme"),
            Saved("a", resource("a", "swapped", "2026-01-01T00:00:01Z"), {"n": 3}, False, "acme"),
        ]
    )
    await store.commit([])  # nothing to write: no error
    assert await store.load_active("acme") == [{"n": 3}, {"n": 2}]
    assert (await store.get("a") or {})["state"] == "swapped"
    await store.commit(
        [Saved("b", resource("b", "completed", "2026-01-01T00:00:02Z"), {"n": 4}, True, "acme")]
    )
    assert await store.load_active("acme") == [{"n": 3}]
    store.close()
    assert await open_store().load_active("acme") == [{"n": 3}]  # durable


async def test_rule_marks_since_a_time(open_store: Open) -> None:
    store = open_store()
    day1, day2 = "2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z"
    await store.commit(
        [
            Saved("old", resource("old", "completed", day1), {"rule": {"r": 0}}, True),
            Saved("new", resource("new", "consulting", day2), {"rule": {"r": 1}}, False),
            Saved("none", resource("none", "consulting", day2), {"rule": None}, False),
            Saved("other", resource("other", "consulting", day2), {"rule": {"r": 2}}, False, "acme"),
        ]
    )
    since = 1767312000.0  # 2026-01-02T00:00:00Z
    assert await store.rule_marks("default", since) == [{"r": 1}]
    assert await store.rule_marks("acme", since) == [{"r": 2}]


async def test_sqlite_has_no_leases_and_accepts_any_fence(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.commit(
        [Saved("a", resource("a", "consulting", "x"), {"n": 1}, False)], Fence("default", "i", 7)
    )
    assert await store.load_active() == [{"n": 1}]
    store.close()


# -- PostgreSQL only --------------------------------------------------------------------------


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Any]:
    from adapters.service.pgstore import PgStore

    store = PgStore(pg_url)
    yield store
    await store.aclose()


def _grant(url: str, pbx: str, owner: str, token: int, ttl_s: float) -> None:
    """A lease row as the HA lease module would write it (expiry by the database's clock)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO xferd_leases (pbx, owner, token, expires_at)"
            " VALUES (%s, %s, %s, now() + %s * interval '1 s')"
            " ON CONFLICT (pbx) DO UPDATE SET owner = excluded.owner, token = excluded.token,"
            " expires_at = excluded.expires_at",
            (pbx, owner, token, ttl_s),
        )


async def test_a_fenced_commit_needs_the_current_lease(pg: Any, pg_url: str) -> None:
    batch = [
        Saved("a", resource("a", "consulting", "2026-01-01T00:00:01Z"), {"n": 1}, False, "acme"),
        Saved("b", resource("b", "consulting", "2026-01-01T00:00:02Z"), {"n": 2}, False, "acme"),
    ]
    with pytest.raises(StaleFence, match="'i1' no longer holds the lease of PBX 'acme' with token 1"):
        await pg.commit(batch, Fence("acme", "i1", 1))  # no lease row at all
    _grant(pg_url, "acme", "i1", 1, 30)
    await pg.commit(batch, Fence("acme", "i1", 1))
    assert await pg.load_active("acme") == [{"n": 1}, {"n": 2}]

    newer = [
        Saved("a", resource("a", "swapped", "2026-01-01T00:00:01Z"), {"n": 3}, False, "acme"),
        Saved("c", resource("c", "consulting", "2026-01-01T00:00:03Z"), {"n": 4}, False, "acme"),
    ]
    for stale in (Fence("acme", "i1", 2), Fence("acme", "i2", 1), Fence("globex", "i1", 1)):
        with pytest.raises(StaleFence):  # wrong token, wrong owner, another PBX's lease
            await pg.commit(newer, stale)
    _grant(pg_url, "acme", "i2", 2, 30)  # taken over: the old owner's token is stale
    with pytest.raises(StaleFence):
        await pg.commit(newer, Fence("acme", "i1", 1))
    with pytest.raises(StaleFence):  # the synchronous path checks the same fence
        pg.commit_now(newer, Fence("acme", "i1", 1))
    assert await pg.load_active("acme") == [{"n": 1}, {"n": 2}]  # nothing of a refused batch written
    await pg.commit(newer, Fence("acme", "i2", 2))
    assert await pg.load_active("acme") == [{"n": 3}, {"n": 2}, {"n": 4}]


async def test_an_expired_lease_refuses_writes_by_the_database_clock(pg: Any, pg_url: str) -> None:
    _grant(pg_url, "acme", "i1", 5, -1)  # expired a second ago, owner and token unchanged
    with pytest.raises(StaleFence):
        await pg.commit([Saved("a", resource("a", "consulting", "x"), {"n": 1}, False, "acme")],
                        Fence("acme", "i1", 5))  # fmt: skip
    assert await pg.load_active("acme") == []


async def test_two_instances_starting_together_migrate_once(pg_url: str) -> None:
    from adapters.service.pgstore import MIGRATIONS, PgStore

    stores = await asyncio.gather(*(asyncio.to_thread(PgStore, pg_url) for _ in range(4)))
    try:
        assert {store.schema_version() for store in stores} == {len(MIGRATIONS)}
        await stores[0].commit([Saved("a", resource("a", "consulting", "x"), {"n": 1}, False)])
        assert await stores[3].load_active() == [{"n": 1}]  # one database, shared
    finally:
        for store in stores:
            await store.aclose()


async def test_the_lease_tables_exist_with_the_shared_ddl(pg: Any, pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_name IN ('xferd_instances', 'xferd_leases') ORDER BY table_name, ordinal_position"
        ).fetchall()
    assert columns == [
        ("xferd_instances", "id", "text"),
        ("xferd_instances", "url", "text"),
        ("xferd_instances", "seen_at", "timestamp with time zone"),
        ("xferd_leases", "pbx", "text"),
        ("xferd_leases", "owner", "text"),
        ("xferd_leases", "token", "bigint"),
        ("xferd_leases", "expires_at", "timestamp with time zone"),
        ("xferd_leases", "url", "text"),
    ]


def test_unreachable_postgresql_is_one_sentence_without_the_password() -> None:
    from adapters.service.pgstore import PgStore

    with pytest.raises(StoreError) as caught:
        PgStore("postgresql://xferd:s3cret-pw@127.0.0.1:1/xferd", connect_timeout_s=1)
    message = str(caught.value)
    assert message.startswith("store postgresql://xferd:***@127.0.0.1:1/xferd: cannot connect: ")
    assert "Connection refused" in message
    assert "s3cret-pw" not in message and "\n" not in message


def test_redact_url() -> None:
    from adapters.service.pgstore import redact_url

    assert redact_url("postgresql://u:p@h:1/d?sslmode=require") == "postgresql://u:***@h:1/d?sslmode=require"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact_url("postgresql:///d?password=p&host=h") == "postgresql:///d?password=***&host=h"


async def test_a_restarted_postgresql_costs_no_write(pg: Any, pg_url: str) -> None:
    """Connections the server dropped (as after a PostgreSQL restart) are replaced on the next use."""
    import psycopg

    await pg.commit([Saved("a", resource("a", "consulting", "x"), {"n": 1}, False)])
    pg.save("b", resource("b", "consulting", "y"), {"n": 2}, False)
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
    pg.save("c", resource("c", "consulting", "z"), {"n": 3}, False)  # the synchronous connection
    await pg.commit([Saved("d", resource("d", "consulting", "zz"), {"n": 4}, False)])  # the pool
    assert await pg.load_active() == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]


def test_a_postgresql_save_survives_kill_9(pg_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from adapters.service.pgstore import PgStore
        store = PgStore({pg_url!r})
        store.save("t1", {{"state": "consulting", "created_at": "x", "updated_at": "y"}}, {{"n": 1}}, False)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert done.returncode == -9
    from adapters.service.pgstore import PgStore

    store = PgStore(pg_url)

    async def load() -> list[dict[str, Any]]:
        try:
            return await store.load_active()
        finally:
            await store.aclose()

    assert asyncio.run(load()) == [{"n": 1}]


async def test_a_write_waiting_on_a_lock_gives_up_after_the_statement_timeout(pg_url: str) -> None:
    """A decision never waits without bound: the lease row held by another transaction
    (a stuck lease writer) makes the fenced write fail after ``statement_timeout``."""
    import psycopg

    from adapters.service.pgstore import PgStore

    store = PgStore(pg_url, statement_timeout_s=0.3)
    _grant(pg_url, "acme", "i1", 1, 30)
    row = [Saved("a", resource("a", "consulting", "x"), {"n": 1}, False, "acme")]
    try:
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT 1 FROM xferd_leases WHERE pbx = 'acme' FOR UPDATE")  # open transaction
            with pytest.raises(
                StoreError, match="cannot write: canceling statement due to statement timeout"
            ):
                await store.commit(row, Fence("acme", "i1", 1))
            with pytest.raises(StoreError, match="statement timeout"):
                store.commit_now(row, Fence("acme", "i1", 1))
            holder.rollback()
        await store.commit(row, Fence("acme", "i1", 1))  # the lock is gone: it goes through
        assert await store.load_active("acme") == [{"n": 1}]
    finally:
        await store.aclose()


async def test_while_the_database_is_away_a_save_fails_fast(pg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The synchronous save runs on the event loop: after one failed reconnect, the next
    saves fail at once for a moment instead of each waiting for a connection attempt."""
    attempts: list[float] = []

    def unreachable() -> None:
        attempts.append(1)
        raise StoreError("store x: cannot connect: refused")

    pg.save("a", resource("a", "consulting", "x"), {"n": 1}, False)
    pg._sync.close()  # as if the server went away
    monkeypatch.setattr(pg, "_connect", unreachable)
    for _ in range(3):
        with pytest.raises(StoreError, match="cannot connect: refused"):
            pg.save("a", resource("a", "consulting", "x"), {"n": 2}, False)
    assert len(attempts) == 1
    monkeypatch.undo()
    pg._reconnect_after = 0.0  # the pause is over
    pg.save("a", resource("a", "consulting", "x"), {"n": 3}, False)
    assert await pg.load_active() == [{"n": 3}]


def test_connect_settings_keep_what_the_url_chose(pg_url: str) -> None:
    from adapters.service.pgstore import PgStore

    store = PgStore(f"{pg_url}?keepalives_idle=30")
    try:
        settings = store.connect_settings
        assert settings["autocommit"] is True and settings["tcp_user_timeout"] == 10_000
        assert "keepalives_idle" not in settings  # the URL's 30 stands
        import psycopg

        with psycopg.connect(store.url, **settings) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        store.close()


async def test_a_write_racing_a_takeover_is_refused(pg: Any, pg_url: str) -> None:
    """The lease is being granted to another instance (its UPDATE not yet committed) while
    the old owner writes: the write waits for the grant's row lock, then sees the new
    owner and is refused — it cannot slip in between."""
    import psycopg

    _grant(pg_url, "acme", "i1", 1, 30)
    with psycopg.connect(pg_url) as granting, psycopg.connect(pg_url, autocommit=True) as watcher:
        granting.execute("UPDATE xferd_leases SET owner = 'i2', token = token + 1 WHERE pbx = 'acme'")
        write = asyncio.create_task(
            pg.commit(
                [Saved("a", resource("a", "consulting", "x"), {"n": 1}, False, "acme")],
                Fence("acme", "i1", 1),
            )
        )

        def waiting_on_the_lock() -> bool:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                ("WITH fence AS%",),
            ).fetchone()
            return bool(row and row[0] == 1)

        async with asyncio.timeout(10):
            while not waiting_on_the_lock():  # noqa: ASYNC110 - the database has no hook
                await asyncio.sleep(0.01)
        assert not write.done()
        granting.commit()
        with pytest.raises(StaleFence):
            await write
    assert await pg.load_active("acme") == []
