"""The SQLite store: round trips, durability across kill -9, clear errors when locked."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from adapters.service.store import SqliteStore, StoredCredentials, StoreError


def resource(transfer_id: str, state: str, created: str) -> dict[str, Any]:
    return {"id": transfer_id, "state": state, "created_at": created, "updated_at": created}


async def test_round_trip_active_recent_and_final(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
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

    reopened = SqliteStore(tmp_path / "s.db")
    assert await reopened.load_active() == [{"chart": "a2"}, {"chart": "c1"}]
    reopened.close()


async def test_idempotency_keys(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    assert await store.idempotency_get("k1") is None
    await store.idempotency_put("k1", "fp1", "t1")
    await store.idempotency_put("k1", "fp2", "t2")  # the first writer wins
    assert await store.idempotency_get("k1") == ("t1", "fp1")
    store.close()
    assert await SqliteStore(tmp_path / "s.db").idempotency_get("k1") == ("t1", "fp1")


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


async def test_rows_carry_their_pbx(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
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


async def test_audit_entries_newest_first_and_filtered(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
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


async def test_credentials_per_pbx_and_kind_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    store = SqliteStore(path)
    try:
        assert await store.credentials_get("default", "webex_oauth") is None
        await store.credentials_put("default", "webex_oauth", {"refresh_token": "r1", "seed": None})
        await store.credentials_put("other", "webex_oauth", {"refresh_token": "r2"})
        await store.credentials_put("default", "webex_oauth", {"refresh_token": "r3", "seed": None})
        assert await store.credentials_get("default", "webex_oauth") == {"refresh_token": "r3", "seed": None}
        assert await store.credentials_get("other", "webex_oauth") == {"refresh_token": "r2"}
        assert await store.credentials_get("default", "yeastar_tokens") is None
    finally:
        store.close()
    # the store created the file: it holds secrets, so only its owner may read it
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = SqliteStore(path)  # and a restart reads the newest value
    try:
        credentials = StoredCredentials(again, "default", "webex_oauth")
        assert await credentials.load() == {"refresh_token": "r3", "seed": None}
        await credentials.save({"refresh_token": "r4"})
        assert await again.credentials_get("default", "webex_oauth") == {"refresh_token": "r4"}
    finally:
        again.close()


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    SqliteStore(path).close()
    os.chmod(path, 0o640)  # the admin chose this; the store does not second-guess it
    SqliteStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
