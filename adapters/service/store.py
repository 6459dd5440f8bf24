"""Durable transfer state: what lets a restarted service resume without repeating a decision.

The runtime saves a transfer every time the engine reports it changed, *before*
the PBX request that follows the decision is sent (write-ahead).  If the process
is killed right after, the restarted service restores the decision and asks the
PBX what happened instead of deciding again.

SQLite in WAL mode with ``synchronous=FULL``: every commit is fsynced, so a
saved decision survives not only ``kill -9`` (which NORMAL would already cover)
but also a power cut between the save and the PBX acting on the request — the
case that would otherwise allow a second ``complete``.  An fsync per decision
is cheap next to a PBX round trip.

The interface (:class:`TransferStore`) is deliberately small so a shared store
(several instances, several PBXs) can replace this one.  Reads are ``async``
(a networked store answers over a round trip); the write-ahead ``save`` is
synchronous because the decision's request must wait for it.  Each transfer
row carries the name of the PBX it belongs to (``pbx``).

Schema changes are numbered migrations (SQLite's ``user_version``), applied
at open, so a store written by an earlier version is upgraded in place.

The store also keeps credentials that change while the service runs (a Webex
integration's latest refresh token): table ``credentials``, one JSON value
per PBX connection and kind, handed to the adapter as a
:class:`~adapters.base.CredentialStore` (:class:`StoredCredentials`).  So the
file holds secrets: when the store creates it, it is readable by its owner
only (mode 0600; SQLite gives its ``-wal``/``-shm`` files the same mode).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: Migration n brings a store at ``user_version`` n to n + 1.  Never edit one
#: that has shipped: add the next.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS transfers (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        final       INTEGER NOT NULL,
        resource    TEXT NOT NULL,
        export      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS transfers_active ON transfers (final) WHERE final = 0;
    CREATE INDEX IF NOT EXISTS transfers_created ON transfers (created_at);
    CREATE TABLE IF NOT EXISTS idempotency_keys (
        key          TEXT PRIMARY KEY,
        fingerprint  TEXT NOT NULL,
        transfer_id  TEXT NOT NULL,
        created      REAL NOT NULL
    )
    """,
    """
    ALTER TABLE transfers ADD COLUMN pbx TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX transfers_pbx_active ON transfers (pbx, final) WHERE final = 0;
    CREATE TABLE audit (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        at          TEXT NOT NULL,
        actor       TEXT NOT NULL,
        role        TEXT NOT NULL,
        action      TEXT NOT NULL,
        pbx         TEXT,
        transfer_id TEXT,
        channel_id  TEXT,
        status      INTEGER NOT NULL,
        outcome     TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_transfer ON audit (transfer_id)
    """,
    """
    CREATE TABLE credentials (
        pbx      TEXT NOT NULL,
        kind     TEXT NOT NULL,
        value    TEXT NOT NULL,
        updated  REAL NOT NULL,
        PRIMARY KEY (pbx, kind)
    )
    """,
)

#: Columns of an audit entry, in table order (``seq`` aside).
AUDIT_FIELDS = (
    "at", "actor", "role", "action", "pbx", "transfer_id", "channel_id", "status", "outcome", "detail",
)  # fmt: skip


def audit_insert(table: str, mark: str) -> str:
    """The INSERT of one audit entry into ``table`` with the driver's parameter ``mark``
    (``?`` SQLite, ``%s`` psycopg): both stores write the same columns."""
    return f"INSERT INTO {table} ({', '.join(AUDIT_FIELDS)}) VALUES ({', '.join(mark for _ in AUDIT_FIELDS)})"


def audit_params(entries: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The entries' values in :data:`AUDIT_FIELDS` order (a missing key is NULL)."""
    return [tuple(entry.get(name) for name in AUDIT_FIELDS) for entry in entries]


def audit_entry(row: Sequence[Any]) -> dict[str, Any]:
    """A row of ``SELECT seq, <AUDIT_FIELDS>`` as the API's audit entry."""
    return dict(zip(("seq", *AUDIT_FIELDS), row, strict=True))


class StoreError(Exception):
    """The store cannot read or write (locked, disk full, not a database…).

    The message says which file and what SQLite reported; the data on disk
    is left as it was (every write is one transaction).
    """


class StaleFence(StoreError):
    """A fenced write was refused: the writer no longer holds the PBX's lease
    with that token (another instance owns the PBX now, or the lease expired).

    Nothing was written, and the requests the write would have decided must
    never be sent: the instance that wrote it has lost the right to act.
    """


@dataclass(frozen=True, slots=True)
class Saved:
    """One transfer's row as a decision leaves it (what :meth:`TransferStore.commit` writes)."""

    transfer_id: str
    resource: Mapping[str, Any]
    export: Mapping[str, Any]
    final: bool
    pbx: str = "default"


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of ownership carried by a write: ``owner`` holds the lease of ``pbx``
    with fencing ``token`` (which grows on every grant).  A store that shares
    PBXs between instances refuses a write whose fence is not the lease's
    current one (:class:`StaleFence`); a single-instance store has no leases
    and accepts every write."""

    pbx: str
    owner: str
    token: int


class TransferStore(Protocol):
    """What the runtime and the control API need from a store.

    ``save`` is the write-ahead step (synchronous: the decision's request
    waits for it); everything else may be a round trip.  ``pbx`` names the
    PBX connection a transfer belongs to.
    """

    def save(
        self,
        transfer_id: str,
        resource: Mapping[str, Any],
        export: Mapping[str, Any],
        final: bool,
        pbx: str = "default",
    ) -> None: ...
    async def commit(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        """Write ``rows`` in one transaction, durable when this returns (group
        commit: the decisions of one loop turn cost one fsync / round trip).
        With a ``fence``, raise :class:`StaleFence` (writing nothing) unless
        the fence is still the current lease of its PBX."""
        ...

    async def load_active(self, pbx: str = "default") -> list[dict[str, Any]]: ...
    async def get(self, transfer_id: str) -> dict[str, Any] | None: ...
    async def recent(
        self, limit: int, state: str | None = None, pbx: str | None = None
    ) -> list[dict[str, Any]]: ...
    async def rule_marks(self, pbx: str, since: float) -> list[dict[str, Any]]: ...
    async def idempotency_get(self, key: str) -> tuple[str, str] | None: ...
    async def idempotency_put(self, key: str, fingerprint: str, transfer_id: str) -> None: ...
    async def audit_append(self, entries: Sequence[Mapping[str, Any]]) -> None: ...
    async def credentials_get(self, pbx: str, kind: str) -> dict[str, Any] | None: ...
    async def credentials_put(self, pbx: str, kind: str, value: Mapping[str, Any]) -> None: ...
    async def audit_list(
        self, limit: int, *, transfer_id: str | None = None, actor: str | None = None
    ) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class SqliteStore:
    """:class:`TransferStore` on one SQLite file, used from the event loop's thread only.

    Calls are synchronous on purpose: a save is part of taking a decision, and
    the decision's PBX request must not leave before it is on disk.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 1.0) -> None:
        self.path = Path(path)
        try:
            _create_private(self.path)
        except OSError as exc:
            raise StoreError(f"store {self.path}: cannot create: {exc.strerror or exc}") from None
        try:
            # isolation_level=None: we open transactions ourselves, one per write.
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error("cannot open", exc) from None

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number in range(version, len(_MIGRATIONS)):
            with self._transaction():
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number + 1}")

    def save(
        self,
        transfer_id: str,
        resource: Mapping[str, Any],
        export: Mapping[str, Any],
        final: bool,
        pbx: str = "default",
    ) -> None:
        self.commit_now([Saved(transfer_id, resource, export, final, pbx)])

    async def commit(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        """All ``rows`` in one fsynced transaction.  SQLite is the single-instance
        store: there are no leases, so ``fence`` is accepted as it is."""
        self.commit_now(rows)

    def commit_now(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        """:meth:`commit` without leaving the caller's turn of the loop (SQLite is local;
        ``fence`` accepted as it is, as by :meth:`commit`)."""
        if not rows:
            return
        try:
            with self._transaction():
                self._db.executemany(_UPSERT, [_row(saved) for saved in rows])
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.rollback()
            raise self._error("cannot write", exc) from None

    async def load_active(self, pbx: str = "default") -> list[dict[str, Any]]:
        """Exports of ``pbx``'s transfers that were not final, oldest first (restore order)."""
        rows = self._read(
            "SELECT export FROM transfers WHERE final = 0 AND pbx = ? ORDER BY created_at, rowid", (pbx,)
        )
        return [json.loads(export) for (export,) in rows]

    async def get(self, transfer_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT resource FROM transfers WHERE id = ?", (transfer_id,))
        return json.loads(rows[0][0]) if rows else None

    async def recent(
        self, limit: int, state: str | None = None, pbx: str | None = None
    ) -> list[dict[str, Any]]:
        """Resources, newest first; ``state`` filters on the contract's state name, ``pbx`` on the PBX."""
        where, params = _where(state=state, pbx=pbx)
        rows = self._read(
            f"SELECT resource FROM transfers{where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )
        return [json.loads(resource) for (resource,) in rows]

    async def rule_marks(self, pbx: str, since: float) -> list[dict[str, Any]]:
        """Routing rules' decisions (``export.rule``) of ``pbx``'s transfers created since ``since``
        (epoch seconds): a rule fires once per call and trigger, across restarts."""
        since_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
        rows = self._read(
            "SELECT json_extract(export, '$.rule') FROM transfers"
            " WHERE pbx = ? AND created_at >= ? AND json_extract(export, '$.rule') IS NOT NULL",
            (pbx, since_iso),
        )
        return [json.loads(mark) for (mark,) in rows]

    async def idempotency_get(self, key: str) -> tuple[str, str] | None:
        """``(transfer_id, fingerprint)`` stored under ``key``, if any."""
        rows = self._read("SELECT transfer_id, fingerprint FROM idempotency_keys WHERE key = ?", (key,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def idempotency_put(self, key: str, fingerprint: str, transfer_id: str) -> None:
        self._write(
            "INSERT OR IGNORE INTO idempotency_keys (key, fingerprint, transfer_id, created)"
            " VALUES (?, ?, ?, ?)",
            (key, fingerprint, transfer_id, time.time()),
        )

    async def audit_append(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append audit entries (one transaction for the batch)."""
        if not entries:
            return
        try:
            with self._transaction():
                self._db.executemany(audit_insert("audit", "?"), audit_params(entries))
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.rollback()
            raise self._error("cannot write", exc) from None

    async def audit_list(
        self, limit: int, *, transfer_id: str | None = None, actor: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit entries, newest first, optionally of one transfer or one actor."""
        where, params = _where(transfer_id=transfer_id, actor=actor)
        rows = self._read(
            f"SELECT seq, {', '.join(AUDIT_FIELDS)} FROM audit{where} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        return [audit_entry(row) for row in rows]

    async def credentials_get(self, pbx: str, kind: str) -> dict[str, Any] | None:
        """The credential value of ``kind`` stored for ``pbx``, or None."""
        rows = self._read("SELECT value FROM credentials WHERE pbx = ? AND kind = ?", (pbx, kind))
        if not rows:
            return None
        value = json.loads(rows[0][0])
        return value if isinstance(value, dict) else None

    async def credentials_put(self, pbx: str, kind: str, value: Mapping[str, Any]) -> None:
        """Replace the credential value of ``kind`` for ``pbx`` (fsynced, like a decision)."""
        self._write(
            "INSERT INTO credentials (pbx, kind, value, updated) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (pbx, kind) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (pbx, kind, json.dumps(dict(value), separators=(",", ":")), time.time()),
        )

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close (a clean shutdown leaves one file)."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # best effort: the WAL is replayed on the next open anyway
        finally:
            self._db.close()

    # -- internals -----------------------------------------------------------
    def _transaction(self) -> sqlite3.Connection:
        # sqlite3.Connection as a context manager commits or rolls back; with
        # isolation_level=None we must BEGIN ourselves (IMMEDIATE: take the
        # write lock now, so "locked" is reported before anything is written).
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            with self._transaction():
                self._db.execute(sql, params)
        except sqlite3.Error as exc:
            if self._db.in_transaction:  # a failed COMMIT (disk full) leaves it open
                self._db.rollback()
            raise self._error("cannot write", exc) from None

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from None

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        return StoreError(f"store {self.path}: {what}: {exc}")


_UPSERT = (
    "INSERT INTO transfers (id, pbx, state, final, resource, export, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, final = excluded.final,"
    " resource = excluded.resource, export = excluded.export, updated_at = excluded.updated_at"
)


def _row(saved: Saved) -> tuple[Any, ...]:
    resource = saved.resource
    return (
        saved.transfer_id,
        saved.pbx,
        str(resource["state"]),
        int(saved.final),
        json.dumps(resource, separators=(",", ":")),
        json.dumps(saved.export, separators=(",", ":")),
        str(resource["created_at"]),
        str(resource["updated_at"]),
    )


def _where(**filters: str | None) -> tuple[str, tuple[str, ...]]:
    """`` WHERE a = ? AND b = ?`` for the filters that are set (names are ours, never input)."""
    used = {name: value for name, value in filters.items() if value is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{name} = ?" for name in used), tuple(used.values())


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (it will hold secrets).

    SQLite's in-memory database (``:memory:``) is no file: nothing to create."""
    if str(path) == ":memory:":
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, 0o600)  # whatever the umask said


class StoredCredentials:
    """One PBX connection's credentials of one kind, as an :class:`~adapters.base.CredentialStore`.

    A failed write raises :class:`StoreError`, which the caller decides about.
    """

    def __init__(self, store: TransferStore, pbx: str, kind: str) -> None:
        self._store = store
        self.pbx = pbx
        self.kind = kind

    async def load(self) -> dict[str, Any] | None:
        return await self._store.credentials_get(self.pbx, self.kind)

    async def save(self, value: dict[str, Any]) -> None:
        await self._store.credentials_put(self.pbx, self.kind, value)


def open_store(url: str | None, path: str | Path) -> TransferStore:
    """The store ``[store]`` names: PostgreSQL when ``url`` is set (``store.url``), else the
    SQLite file ``path``.  Raises :class:`StoreError` (one sentence, no password)."""
    if url is not None:
        from adapters.service.pgstore import PgStore  # psycopg only for those who use it

        return PgStore(url)
    return SqliteStore(path)


async def close_store(store: TransferStore) -> None:
    """Close ``store`` from the event loop (a networked store closes its pool asynchronously)."""
    aclose = getattr(store, "aclose", None)
    if aclose is not None:
        await aclose()
    else:
        store.close()
