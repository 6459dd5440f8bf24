"""The PostgreSQL store: transfer state shared by several instances and PBXs.

Theory of operation
-------------------
:class:`PgStore` is the :class:`~adapters.service.store.TransferStore` of a
deployment that outgrew one process (``[store] url = "postgresql://…"``).  It
keeps the same rows as the SQLite store — transfers, idempotency keys, the
audit log, credentials — so the runtime and the API cannot tell them apart,
and it adds what only a shared store needs: the lease tables
(``xferd_instances``, ``xferd_leases``) and the *fenced* commit.

**Fencing.**  Several instances may believe they own a PBX (one was paused
past its lease and woke up).  The PBX cannot tell them apart, so the store
does: :meth:`PgStore.commit` with a :class:`~adapters.service.store.Fence`
checks, in the same transaction as the writes, that the fence is still the
lease's current grant (``SELECT 1 FROM xferd_leases WHERE pbx=… AND owner=…
AND token=… AND expires_at > now() FOR SHARE``).  No row: nothing is written
and :class:`~adapters.service.store.StaleFence` is raised, so the decision's
requests are never sent.  The check and the writes are one statement (the
check a ``FOR SHARE`` CTE the ``INSERT … SELECT`` depends on): one round trip
per group commit, and a statement is its own transaction.  ``FOR SHARE`` makes
a concurrent grant (an ``UPDATE`` of that lease row) wait for the commit, so a
write cannot slip in after the lease moved on; ``now()`` is the database's
clock, never an instance's.

**Connections.**  Two kinds, both psycopg 3:

* an asyncio pool (``psycopg_pool``, a few connections, opened lazily on the
  event loop that first uses it) for everything ``async`` — reads, the
  fenced :meth:`commit`, audit and credentials;
* one synchronous connection for the write-ahead :meth:`save` /
  :meth:`commit_now`, which callers that cannot ``await`` still use: it blocks
  the loop for one round trip and commit (as SQLite's fsync does), which is
  exactly the write-ahead contract — the request waits for the row.

Every statement runs in autocommit mode unless it is part of an explicit
transaction (a read is one round trip).  A connection the server dropped
(PostgreSQL restarted) is replaced — with the pool's other idle connections,
which the restart dropped too — and the operation tried once more; every
write is idempotent (an upsert of the same rows) except the audit append: a
connection lost between its commit and the answer lists those entries twice.

**Bounded waits.**  A decision must not wait for ever on a database that went
silent: every connection sets ``statement_timeout`` (5 s: a lock held by a
stuck lease writer), the async path stops waiting for an answer 2 s later (a
silent network), and libpq's TCP keepalives and ``tcp_user_timeout`` notice
a dead peer within seconds (the URL may choose its own values).  The
synchronous path has no client-side timeout of its own beyond those; after a
failed reconnect it fails at once for :data:`RECONNECT_PAUSE_S` rather than
block the loop on a connection attempt per decision.

**Migrations.**  Numbered, in :data:`MIGRATIONS`; the ones not yet in
``xferd_schema`` are applied at start in one transaction that first takes a
transaction-scoped advisory lock, so two instances starting together apply
each migration once (the second waits, then finds nothing to do).  A
transaction-scoped lock is released by COMMIT/ROLLBACK even on a pooled
connection (a session lock would survive in the pool — library notes).

**Errors.**  Every failure is a :class:`~adapters.service.store.StoreError`
naming the database by its URL with the password replaced by ``***``, e.g.
``store postgresql://xferd:***@db:5432/xferd: cannot connect: …``.

JSON columns are ``JSONB``: PostgreSQL does not keep the key order of the
objects it stores (a resource read back lists its keys in another order; the
values are the same).  Times the engine writes (``created_at``) are ISO text
compared in the ``C`` collation, so they sort as they do in SQLite.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb, set_json_dumps
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from adapters.service.store import (
    AUDIT_FIELDS,
    Fence,
    Saved,
    StaleFence,
    StoreError,
    audit_entry,
    audit_insert,
    audit_params,
)

T = TypeVar("T")

#: Key of the advisory lock held while migrating (any constant of our own: "xferd" in ASCII).
MIGRATION_LOCK = 0x7866657264

#: Migration n (0-based) is recorded as version n + 1 in ``xferd_schema``.  Never edit one
#: that has shipped: add the next.  Each is a list of statements run in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS xferd_transfers (
            id          TEXT PRIMARY KEY,
            seq         BIGINT GENERATED ALWAYS AS IDENTITY,
            pbx         TEXT NOT NULL DEFAULT 'default',
            state       TEXT NOT NULL,
            final       BOOLEAN NOT NULL,
            resource    JSONB NOT NULL,
            export      JSONB NOT NULL,
            created_at  TEXT COLLATE "C" NOT NULL,
            updated_at  TEXT COLLATE "C" NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS xferd_transfers_active ON xferd_transfers (pbx, created_at, seq)"
        " WHERE NOT final",
        "CREATE INDEX IF NOT EXISTS xferd_transfers_created ON xferd_transfers (created_at, seq)",
        """CREATE TABLE IF NOT EXISTS xferd_idempotency_keys (
            key          TEXT PRIMARY KEY,
            fingerprint  TEXT NOT NULL,
            transfer_id  TEXT NOT NULL,
            created      DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS xferd_audit (
            seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
        )""",
        "CREATE INDEX IF NOT EXISTS xferd_audit_transfer ON xferd_audit (transfer_id)",
        """CREATE TABLE IF NOT EXISTS xferd_credentials (
            pbx      TEXT NOT NULL,
            kind     TEXT NOT NULL,
            value    JSONB NOT NULL,
            updated  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (pbx, kind)
        )""",
        # The lease tables (the same DDL as the HA lease module's CREATE TABLE IF NOT EXISTS).
        """CREATE TABLE IF NOT EXISTS xferd_instances (
            id TEXT PRIMARY KEY, url TEXT NOT NULL, seen_at TIMESTAMPTZ NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS xferd_leases (
            pbx TEXT PRIMARY KEY, owner TEXT, token BIGINT NOT NULL DEFAULT 0,
            expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch', url TEXT)""",
    ),
)

#: The tables the migrations create (names the docs may mention besides metrics).
TABLES = (
    "xferd_schema", "xferd_transfers", "xferd_idempotency_keys", "xferd_audit", "xferd_credentials",
    "xferd_instances", "xferd_leases",
)  # fmt: skip

_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS xferd_schema ("
    " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)

_FENCE = (
    "SELECT 1 FROM xferd_leases WHERE pbx = %s AND owner = %s AND token = %s AND expires_at > now() FOR SHARE"
)

_COLUMNS = "id, pbx, state, final, resource, export, created_at, updated_at"
_ROW = "(%s, %s, %s, %s::boolean, %s::jsonb, %s::jsonb, %s, %s)"
_ON_CONFLICT = (
    " ON CONFLICT (id) DO UPDATE SET pbx = excluded.pbx, state = excluded.state, final = excluded.final,"
    " resource = excluded.resource, export = excluded.export, updated_at = excluded.updated_at"
)


def _upsert(count: int, fenced: bool) -> str:
    """One statement writing ``count`` rows (one round trip, atomic in autocommit).

    Fenced, the lease check is a ``FOR SHARE`` CTE of the same statement — the
    same transaction — and the rows are inserted only if it found the lease;
    ``RETURNING`` then tells a refusal (no row) from a write."""
    values = ", ".join([_ROW] * count)
    if not fenced:
        return f"INSERT INTO xferd_transfers ({_COLUMNS}) VALUES {values}{_ON_CONFLICT}"
    return (
        f"WITH fence AS ({_FENCE}) INSERT INTO xferd_transfers ({_COLUMNS})"
        f" SELECT * FROM (VALUES {values}) AS v ({_COLUMNS}) WHERE EXISTS (SELECT 1 FROM fence)"
        f"{_ON_CONFLICT} RETURNING 1"
    )


#: Seconds to wait for a connection (to connect, or for a free one in the pool).
CONNECT_TIMEOUT_S = 5.0
#: Seconds a statement may take on the server (``statement_timeout``); the client gives up
#: on an answer a little later (a silent network).  A decision waits at most this long.
STATEMENT_TIMEOUT_S = 5.0
#: After a failed reconnect of the synchronous connection, writes fail at once for this long
#: instead of blocking the event loop on another connection attempt.
RECONNECT_PAUSE_S = 1.0
#: libpq settings for every connection unless the URL sets them: notice a dead server or a
#: silent network within seconds, not after the kernel's two hours (library notes).
_LIBPQ_DEFAULTS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
#: Connections in the asyncio pool: reads and commits of every PBX of this instance.
POOL_SIZE = 4


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


set_json_dumps(_compact)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the form messages and logs may show.

    A password given as a ``password=`` query parameter is hidden the same way."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}{':***' if sep else ''}@{hostport}"
    query = "&".join(
        "password=***" if item.split("=", 1)[0].lower() == "password" else item
        for item in parts.query.split("&")
        if item
    )
    return f"{parts.scheme}://{netloc}{parts.path}{'?' if query else ''}{query}"


def url_password(url: str) -> str | None:
    """The password in ``url``, if any (for the log redactor)."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    """psycopg's message on one line (libpq's are multi-line; they never hold the password)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


class PgStore:
    """:class:`~adapters.service.store.TransferStore` on PostgreSQL (see the module docstring).

    The constructor connects and migrates (synchronously: it runs once, at
    start, before the service serves anything); :class:`StoreError` if the
    database is unreachable or refuses.  Close with :meth:`aclose` from the
    event loop (:meth:`close` is the synchronous best effort).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.url = url
        #: The URL without its password: how messages name this store.
        self.where = redact_url(url)
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._pool_size = pool_size
        self._settings = _settings(url, connect_timeout_s)
        self._reconnect_after = 0.0
        self._reconnect_error: StoreError | None = None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._closing: list[asyncio.Task[None]] = []
        self._sync: psycopg.Connection[Any] | None = None
        self._sync = self._connect()
        try:
            self._migrate(self._sync)
        except psycopg.Error as exc:
            self._sync.close()
            raise self._error("cannot migrate the schema", exc) from None

    @property
    def connect_settings(self) -> dict[str, Any]:
        """``psycopg.connect(store.url, **store.connect_settings)``: the parameters of this
        store's connections (autocommit, timeouts, keepalives), for a module that needs a
        connection of its own — the HA lease holder keeps its locks on one (library notes)."""
        return dict(self._settings)

    # -- start-up ------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, **self._settings)
            conn.execute(self._set_timeout())
            return conn
        except psycopg.Error as exc:
            raise self._error("cannot connect", exc) from None

    def _set_timeout(self) -> sql.Composed:
        return sql.SQL("SET statement_timeout = {}").format(round(self._statement_timeout_s * 1000))

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """A new pooled connection: the statement timeout (the pool then keeps it idle)."""
        await conn.execute(self._set_timeout())

    @staticmethod
    def _migrate(conn: psycopg.Connection[Any]) -> None:
        """Apply the migrations this database lacks, one instance at a time."""
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")  # another instance may be migrating
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(_SCHEMA_TABLE)
            row = conn.execute("SELECT coalesce(max(version), 0) FROM xferd_schema").fetchone()
            version = int(row[0]) if row else 0
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
                conn.execute("INSERT INTO xferd_schema (version) VALUES (%s)", (number + 1,))

    def schema_version(self) -> int:
        """The newest migration applied to this database."""
        row = self._sync_run("cannot read", lambda c: c.execute("SELECT max(version) FROM xferd_schema"))
        return int(row[0][0])

    # -- the write-ahead path ----------------------------------------------------
    def save(
        self,
        transfer_id: str,
        resource: Mapping[str, Any],
        export: Mapping[str, Any],
        final: bool,
        pbx: str = "default",
    ) -> None:
        """One transfer's row, on the database when this returns (blocks the loop one transaction)."""
        self.commit_now([Saved(transfer_id, resource, export, final, pbx)])

    def commit_now(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        """:meth:`commit` from code that cannot ``await`` (the synchronous connection)."""
        if not rows:
            return
        sql, params = _statement(rows, fence)

        def write(conn: psycopg.Connection[Any]) -> None:
            cur = conn.execute(sql, params)
            if fence is not None and cur.rowcount == 0:
                raise _stale(fence)

        self._sync_run("cannot write", write)

    async def commit(self, rows: Sequence[Saved], fence: Fence | None = None) -> None:
        """All ``rows`` in one transaction, durable when this returns.  With a ``fence``:
        :class:`StaleFence` (nothing written) unless it is the PBX's current lease."""
        if not rows:
            return
        sql, params = _statement(rows, fence)

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            cur = await conn.execute(sql, params)
            if fence is not None and cur.rowcount == 0:
                raise _stale(fence)

        await self._run("cannot write", write)

    # -- reads ---------------------------------------------------------------------
    async def load_active(self, pbx: str = "default") -> list[dict[str, Any]]:
        """Exports of ``pbx``'s transfers that were not final, oldest first (restore order)."""
        rows = await self._fetch(
            "SELECT export FROM xferd_transfers WHERE NOT final AND pbx = %s ORDER BY created_at, seq", (pbx,)
        )
        return [export for (export,) in rows]

    async def get(self, transfer_id: str) -> dict[str, Any] | None:
        rows = await self._fetch("SELECT resource FROM xferd_transfers WHERE id = %s", (transfer_id,))
        return dict(rows[0][0]) if rows else None

    async def recent(
        self, limit: int, state: str | None = None, pbx: str | None = None
    ) -> list[dict[str, Any]]:
        """Resources, newest first; ``state`` filters on the contract's state name, ``pbx`` on the PBX."""
        where, params = _where(state=state, pbx=pbx)
        rows = await self._fetch(
            f"SELECT resource FROM xferd_transfers{where} ORDER BY created_at DESC, seq DESC LIMIT %s",
            (*params, limit),
        )
        return [resource for (resource,) in rows]

    async def rule_marks(self, pbx: str, since: float) -> list[dict[str, Any]]:
        """Routing rules' decisions (``export.rule``) of ``pbx``'s transfers created since ``since``."""
        since_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))
        rows = await self._fetch(
            "SELECT export -> 'rule' FROM xferd_transfers"
            " WHERE pbx = %s AND created_at >= %s AND export ? 'rule' AND export -> 'rule' <> 'null'::jsonb",
            (pbx, since_iso),
        )
        return [mark for (mark,) in rows]

    async def idempotency_get(self, key: str) -> tuple[str, str] | None:
        """``(transfer_id, fingerprint)`` stored under ``key``, if any."""
        rows = await self._fetch(
            "SELECT transfer_id, fingerprint FROM xferd_idempotency_keys WHERE key = %s", (key,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def idempotency_put(self, key: str, fingerprint: str, transfer_id: str) -> None:
        await self._execute(
            "INSERT INTO xferd_idempotency_keys (key, fingerprint, transfer_id, created)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
            (key, fingerprint, transfer_id, time.time()),
        )

    async def audit_append(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append audit entries (one transaction for the batch)."""
        if not entries:
            return
        params = audit_params(entries)

        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(audit_insert("xferd_audit", "%s"), params)

        await self._run("cannot write", write)

    async def audit_list(
        self, limit: int, *, transfer_id: str | None = None, actor: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit entries, newest first, optionally of one transfer or one actor."""
        where, params = _where(transfer_id=transfer_id, actor=actor)
        rows = await self._fetch(
            f"SELECT seq, {', '.join(AUDIT_FIELDS)} FROM xferd_audit{where} ORDER BY seq DESC LIMIT %s",
            (*params, limit),
        )
        return [audit_entry(row) for row in rows]

    async def credentials_get(self, pbx: str, kind: str) -> dict[str, Any] | None:
        """The credential value of ``kind`` stored for ``pbx``, or None."""
        rows = await self._fetch(
            "SELECT value FROM xferd_credentials WHERE pbx = %s AND kind = %s", (pbx, kind)
        )
        value = rows[0][0] if rows else None
        return value if isinstance(value, dict) else None

    async def credentials_put(self, pbx: str, kind: str, value: Mapping[str, Any]) -> None:
        """Replace the credential value of ``kind`` for ``pbx`` (committed when this returns)."""
        await self._execute(
            "INSERT INTO xferd_credentials (pbx, kind, value, updated) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (pbx, kind) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (pbx, kind, Jsonb(dict(value)), time.time()),
        )

    # -- closing -------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the pool and the synchronous connection (idempotent)."""
        pool, self._pool, self._pool_loop = self._pool, None, None
        if pool is not None:
            await pool.close()
        for task in self._closing:
            await task
        self._closing.clear()
        self._close_sync()

    def close(self) -> None:
        """Synchronous close: the synchronous connection now; the pool is closed by a task
        when called on a running loop (prefer :meth:`aclose` there), else dropped."""
        pool, self._pool, self._pool_loop = self._pool, None, None
        if pool is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._closing.append(loop.create_task(pool.close()))
        self._close_sync()

    def _close_sync(self) -> None:
        conn, self._sync = self._sync, None
        if conn is not None:
            conn.close()

    # -- internals -------------------------------------------------------------------
    def _sync_run(self, what: str, action: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``action`` on the synchronous connection, reconnecting once if the server dropped it."""
        for attempt in (1, 2):
            conn = self._sync
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    conn.close()
                    self._sync = None
                conn = self._reconnect()
            try:
                result = action(conn)
                if isinstance(result, psycopg.Cursor):
                    return result.fetchall()
                return result
            except StaleFence:
                raise
            except psycopg.OperationalError as exc:
                if attempt == 1 and (conn.closed or conn.broken):
                    continue  # a dropped connection (PostgreSQL restarted): one more try on a new one
                raise self._error(what, exc) from None
            except psycopg.Error as exc:
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")

    def _reconnect(self) -> psycopg.Connection[Any]:
        """A new synchronous connection, or the last failure again if it is recent (the
        event loop must not wait for a connection attempt at every decision while the
        database is away)."""
        if self._reconnect_error is not None and time.monotonic() < self._reconnect_after:
            raise self._reconnect_error
        try:
            self._sync = self._connect()
        except StoreError as exc:
            self._reconnect_error, self._reconnect_after = exc, time.monotonic() + RECONNECT_PAUSE_S
            raise
        self._reconnect_error = None
        return self._sync

    async def _pool_for_loop(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        """The asyncio pool of the running loop (created on first use; a new loop gets a new pool)."""
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            self._pool = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                kwargs=self._settings,
                configure=self._configure,
                timeout=self._connect_timeout_s,
                open=False,
                name="xferd-store",
            )
            self._pool_loop = loop
            await self._pool.open(wait=False)
        return self._pool

    async def _run(self, what: str, action: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``action`` on a pooled connection; once more on another if the server dropped it."""
        pool = await self._pool_for_loop()
        # The server stops a statement after statement_timeout; this bounds a silent network.
        answer_within = self._statement_timeout_s + 2
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn:
                    try:
                        async with asyncio.timeout(answer_within):
                            return await action(conn)
                    except psycopg.OperationalError:
                        if attempt == 1 and (conn.closed or conn.broken):
                            raise _Retry() from None
                        raise
            except TimeoutError:
                raise StoreError(
                    f"store {self.where}: {what}: no answer from PostgreSQL within {answer_within:g} s"
                ) from None
            except _Retry:
                # Its idle siblings were most likely dropped too (a server restart drops all):
                # test them all now rather than fail once per connection.
                await pool.check()
                continue
            except StaleFence:
                raise
            except PoolTimeout:
                raise StoreError(
                    f"store {self.where}: {what}: no connection to PostgreSQL within "
                    f"{self._connect_timeout_s:g} s (is it running and reachable?)"
                ) from None
            except psycopg.Error as exc:
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async def read(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._run("cannot read", read)

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> None:
        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(sql, params)

        await self._run("cannot write", write)

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.where}: {what}: {_describe(exc)}")


class _Retry(Exception):
    """Internal: the pooled connection was dropped; take another."""


def _settings(url: str, connect_timeout_s: float) -> dict[str, Any]:
    """Connection parameters: autocommit, the connect timeout, and :data:`_LIBPQ_DEFAULTS`
    where the URL does not choose."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        given = {}  # psycopg.connect reports the bad URL (without the password)
    defaults = {"connect_timeout": max(1, round(connect_timeout_s)), **_LIBPQ_DEFAULTS}
    settings: dict[str, Any] = {"autocommit": True}
    settings.update({key: value for key, value in defaults.items() if key not in given})
    return settings


def _stale(fence: Fence) -> StaleFence:
    return StaleFence(
        f"write refused: instance {fence.owner!r} no longer holds the lease of PBX {fence.pbx!r} "
        f"with token {fence.token}"
    )


def _statement(rows: Sequence[Saved], fence: Fence | None) -> tuple[str, tuple[Any, ...]]:
    """The upsert of ``rows`` (fenced or not) and its parameters.  One row per transfer:
    the last of several saves of one transfer in a batch wins (one statement may not
    update a row twice)."""
    last: dict[str, Saved] = {}
    for saved in rows:
        last.pop(saved.transfer_id, None)
        last[saved.transfer_id] = saved
    params: list[Any] = [] if fence is None else [fence.pbx, fence.owner, fence.token]
    for saved in last.values():
        params += (
            saved.transfer_id,
            saved.pbx,
            str(saved.resource["state"]),
            saved.final,
            Jsonb(dict(saved.resource)),
            Jsonb(dict(saved.export)),
            str(saved.resource["created_at"]),
            str(saved.resource["updated_at"]),
        )
    return _upsert(len(last), fence is not None), tuple(params)


def _where(**filters: str | None) -> tuple[str, tuple[str, ...]]:
    """`` WHERE a = %s AND b = %s`` for the filters that are set (names are ours, never input)."""
    used = {name: value for name, value in filters.items() if value is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{name} = %s" for name in used), tuple(used.values())
