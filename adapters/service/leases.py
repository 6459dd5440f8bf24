"""PBX leases: which instance owns which PBX connection, proved by a fencing token.

Theory of operation
-------------------
Several ``xferd run`` processes share one PostgreSQL database.  Each PBX
connection must be driven by exactly one of them at a time — two engines
deciding about the same calls would send every request twice.  Ownership is
a row per PBX in ``xferd_leases``:

* ``owner``: the instance id holding it, ``url``: where that instance serves
  the API (other instances forward requests about this PBX there);
* ``expires_at``: when the lease runs out, **by the database's clock** (every
  comparison is ``now()`` in SQL, so the instances' clocks never matter);
* ``token``: the fencing token, which grows by one on every *grant* (not on a
  renewal).  Every write of a decision carries ``(pbx, owner, token)``
  (:class:`~adapters.service.store.Fence`); the store refuses it unless it is
  still the current, unexpired lease.  An instance that was paused past its
  lease (SIGSTOP, a long GC, a partition) and wakes up therefore cannot
  record a decision — and a decision not recorded is never sent.

Instances register in ``xferd_instances`` (``seen_at`` refreshed on every
round).  Each round (every ``renew_s``, default 1 s) an instance:

1. renews the leases it holds (``expires_at = now() + ttl``); a lease whose
   renewal finds no row is *lost* at once;
2. reads the leases and the live instances, and asks the pure
   :func:`plan` what to take and what to give back: each instance takes at
   most its fair share (``ceil(PBXs / live instances)``) of the free or
   expired leases, preferring the PBXs that rendezvous hashing gives it (so
   two instances rarely race for the same one), and gives back what it holds
   beyond its share when another live instance holds less;
3. grants are one ``UPDATE … WHERE owner IS NULL OR expires_at <= now()
   RETURNING token``: of two instances trying, exactly one gets a row.

Losing a lease must stop the instance acting **before** the database thinks
the lease expired.  The keeper measures validity on its own monotonic clock
from the moment a renewal was *sent* (the database's ``now()`` is at least
that late, so its expiry is at least ``sent + ttl``): ``valid_until = sent +
ttl - margin``.  A timer fires at ``valid_until`` and reports the loss if no
renewal moved it — a database that stops answering (a cut connection, a
restart) costs the lease locally before anyone else can be granted it.
:meth:`LeaseKeeper.valid` is what the unit checks right before each PBX
request leaves, which covers a process that was stopped with requests
already decided and queued.

The lease connection is a dedicated psycopg connection in autocommit mode,
with TCP keepalives and ``tcp_user_timeout`` so the server notices a dead
client, and every round runs under a deadline shorter than the TTL.  No
advisory locks: they live as long as a session, which the server only ends
when it notices the client died (reference §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.service.logs import get_logger
from adapters.service.store import Fence

log = get_logger("xferd.leases")

#: The lease tables (identical to the PostgreSQL store's migration: either may create them).
DDL = (
    """CREATE TABLE IF NOT EXISTS xferd_instances (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, seen_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS xferd_leases (
    pbx TEXT PRIMARY KEY, owner TEXT, token BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch', url TEXT)""",
)

#: Connection options of every HA connection: notice a dead peer in seconds, not hours.
KEEPALIVE_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 3000,
    "connect_timeout": 2,
    "application_name": "xferd-ha",
}


#: How long a grant waits for the lease row's lock (a live owner's fenced write holds it for
#: a moment; a frozen owner's, for ever).
GRANT_LOCK_TIMEOUT = "300ms"
#: Ends transactions that hold the lease table's row locks and sat idle longer than a
#: half-TTL: only a frozen or cut-off client does that (a commit is a few milliseconds).
TERMINATE_STALE = (
    "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a"
    " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
    " AND a.state IN ('idle in transaction', 'idle in transaction (aborted)')"
    " AND now() - a.state_change > %s::interval"
    " AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid"
    " AND l.relation = 'xferd_leases'::regclass AND l.mode = 'RowShareLock')"
)


# -- the decision (pure) ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One ``xferd_leases`` row as read: ``live`` is ``expires_at > now()`` by the database."""

    pbx: str
    owner: str | None
    token: int
    live: bool
    url: str | None = None
    remaining_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What one round should do: leases to try to take, leases to give back."""

    acquire: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


def score(instance: str, pbx: str) -> int:
    """Rendezvous hash of (instance, PBX): each instance prefers the PBXs it scores highest,
    so instances taking free leases at the same moment mostly want different ones."""
    return int.from_bytes(hashlib.blake2b(f"{instance}\0{pbx}".encode(), digest_size=8).digest(), "big")


def fair_share(pbxs: int, instances: int) -> int:
    """How many PBXs one of ``instances`` live instances may hold."""
    return math.ceil(pbxs / max(1, instances))


def plan(
    me: str,
    pbxs: Iterable[str],
    leases: Mapping[str, LeaseRow],
    live: Iterable[str],
    held: Iterable[str] = (),
) -> Plan:
    """Who should own what, from this instance's view.

    ``pbxs``: the configured PBXs; ``leases``: their rows (a missing row is a
    free lease); ``live``: the instances seen within the TTL (``me`` counts
    even if its own heartbeat is not in yet); ``held``: the leases this
    instance holds *in memory* — a live row naming ``me`` that is not held
    (a restart reusing the id) is not ours to act on: it is taken anew once
    it expires, with a new token.
    """
    names = sorted(set(pbxs))
    instances = set(live) | {me}
    share = fair_share(len(names), len(instances))
    mine = [p for p in names if p in set(held)]
    free = [p for p in names if (row := leases.get(p)) is None or not row.live]
    free.sort(key=lambda p: score(me, p), reverse=True)
    acquire = tuple(free[: max(0, share - len(mine))])
    release: tuple[str, ...] = ()
    if len(mine) > share:
        # More instances than when we took these: hand over what is beyond our share
        # (lowest scores first); the others take them on their next round.
        mine.sort(key=lambda p: score(me, p))
        release = tuple(mine[: len(mine) - share])
    return Plan(acquire, release)


# -- the adapter (SQL) -------------------------------------------------------------
@dataclass(slots=True)
class Held:
    """A lease this instance holds: its fencing token and how long it may act on it."""

    pbx: str
    token: int
    valid_until: float  # time.monotonic()
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def fence_token(self) -> int:
        return self.token


#: Called with a PBX name and the granted token (granted) / a reason (lost).
Granted = Callable[[str, int, LeaseRow | None], None]
Lost = Callable[[str, str], None]


class LeaseKeeper:
    """Registers this instance and keeps its share of PBX leases (one dedicated connection)."""

    def __init__(
        self,
        dsn: str,
        instance_id: str,
        url: str,
        pbxs: Iterable[str],
        *,
        ttl_s: float,
        renew_s: float,
        on_granted: Granted,
        on_lost: Lost,
        margin_s: float | None = None,
    ) -> None:
        self.dsn = dsn
        self.id = instance_id
        self.url = url
        self.pbxs = tuple(pbxs)
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        # Stop acting this long before the database would let another instance in.
        self.margin_s = margin_s if margin_s is not None else min(1.0, ttl_s / 4)
        self.on_granted = on_granted
        self.on_lost = on_lost
        self.held: dict[str, Held] = {}
        #: The last view of every lease and of the live instances (for /healthz and forwarding).
        self.leases: dict[str, LeaseRow] = {}
        self.instances: dict[str, str] = {}
        self.rounds = 0
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    # -- life -------------------------------------------------------------------
    async def start(self) -> None:
        """Create the tables, run a first round (a lone instance owns everything at once), keep going.

        A first round that fails (the database slow or away) does not stop the
        service: it serves as a standby and the rounds go on trying."""
        try:
            await self._round()
        except Exception as exc:
            log.warning("lease_round_failed", error=_brief(exc), first=True)
            await self._close()
        self._task = asyncio.create_task(self._run(), name="xferd-leases")

    async def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release``, give the leases back so another instance needn't wait the TTL."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        held = list(self.held)
        for pbx in held:
            self._drop(pbx, "stopping")
        if release and held and self._conn is not None:
            try:
                async with asyncio.timeout(self.renew_s):
                    await self._conn.execute(
                        "UPDATE xferd_leases SET expires_at = now() WHERE owner = %s AND pbx = ANY(%s)",
                        (self.id, held),
                    )
            except Exception as exc:
                log.warning("lease_release_failed", error=_brief(exc))
        await self._close()

    def valid(self, pbx: str) -> bool:
        """May this instance act for ``pbx`` now (by its own monotonic clock)?"""
        held = self.held.get(pbx)
        return held is not None and time.monotonic() < held.valid_until

    def fence(self, pbx: str) -> Fence | None:
        """The fence of ``pbx``'s lease as granted (None: not held)."""
        held = self.held.get(pbx)
        return Fence(pbx, self.id, held.token) if held is not None else None

    def forget(self, pbx: str, why: str) -> None:
        """Treat ``pbx``'s lease as lost (a fenced write was refused): stop renewing it."""
        self._drop(pbx, why)

    def release_soon(self) -> None:
        self._wake.set()

    # -- rounds -------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            delay = self.renew_s
            try:
                await self._round()
                delay = self._next_delay()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease_round_failed", error=_brief(exc))
                await self._close()
                delay = min(self.renew_s, 0.5)
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _next_delay(self) -> float:
        """Renew every ``renew_s``; wake exactly when a lease we could take runs out (a fast takeover)."""
        delay = self.renew_s
        for row in self.leases.values():
            if row.live and row.owner != self.id and row.remaining_s > 0:
                delay = min(delay, row.remaining_s + 0.02)
        return max(0.02, delay)

    async def _round(self) -> None:
        sent = time.monotonic()
        # A hung database must not hang the keeper; losing the lease meanwhile is the
        # watchdog's job (its own timer), so the round may take up to a TTL (a first
        # connection on a loaded machine is slow).
        async with asyncio.timeout(self.ttl_s):
            conn = await self._connection()
            ttl = f"{self.ttl_s} seconds"
            await conn.execute(
                "INSERT INTO xferd_instances (id, url, seen_at) VALUES (%s, %s, now())"
                " ON CONFLICT (id) DO UPDATE SET url = excluded.url, seen_at = now()",
                (self.id, self.url),
            )
            if self.held:
                pbxs = list(self.held)
                tokens = [self.held[p].token for p in pbxs]
                cursor = await conn.execute(
                    "UPDATE xferd_leases AS l SET expires_at = now() + %s::interval"
                    " FROM unnest(%s::text[], %s::bigint[]) AS h(pbx, token)"
                    " WHERE l.pbx = h.pbx AND l.token = h.token AND l.owner = %s AND l.expires_at > now()"
                    " RETURNING l.pbx",
                    (ttl, pbxs, tokens, self.id),
                )
                renewed = {row[0] for row in await cursor.fetchall()}
                for pbx in pbxs:
                    held = self.held.get(pbx)
                    if held is None:
                        continue
                    if pbx in renewed:
                        self._extend(held, sent)
                    else:
                        self._drop(pbx, "renewal refused: the lease expired or was taken")
            await self._read(conn)
            decided = plan(self.id, self.pbxs, self.leases, self.instances, self.held)
            for pbx in decided.release:
                if pbx in self.held:
                    held = self.held[pbx]
                    self._drop(pbx, "handed over (fair share)")
                    await conn.execute(
                        "UPDATE xferd_leases SET expires_at = now()"
                        " WHERE pbx = %s AND owner = %s AND token = %s",
                        (pbx, self.id, held.token),
                    )
            for pbx in decided.acquire:
                previous = self.leases.get(pbx)
                sent = time.monotonic()
                row = await self._grant(conn, pbx, ttl)
                if row is None:
                    continue  # another instance was faster
                held = Held(pbx, int(row[0]), 0.0)
                self.held[pbx] = held
                self._extend(held, sent)
                log.info(
                    "lease_granted", pbx=pbx, token=held.token, previous_owner=previous and previous.owner
                )
                self.on_granted(pbx, held.token, previous)
            if decided.acquire or decided.release:
                await self._read(conn)
        self.rounds += 1

    async def _grant(self, conn: Any, pbx: str, ttl: str) -> Any:
        """Take ``pbx``'s lease if it is free or expired: its new token, or None.

        An expired lease's row may still be locked by its old owner's fenced
        write, left open when that process froze mid-transaction: ``FOR
        SHARE`` held by a stopped client is never released by the server on
        its own.  The grant waits at most :data:`GRANT_LOCK_TIMEOUT`, then
        ends such stale transactions (:data:`TERMINATE_STALE`) — the frozen
        owner's write is rolled back, so its request is never sent — and the
        next round grants.
        """
        import psycopg

        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{GRANT_LOCK_TIMEOUT}'")
                cursor = await conn.execute(
                    "UPDATE xferd_leases SET owner = %s, url = %s, token = token + 1,"
                    " expires_at = now() + %s::interval"
                    " WHERE pbx = %s AND (owner IS NULL OR expires_at <= now()) RETURNING token",
                    (self.id, self.url, ttl, pbx),
                )
                return await cursor.fetchone()
        except psycopg.errors.LockNotAvailable:
            cursor = await conn.execute(TERMINATE_STALE, (f"{self.ttl_s / 2} seconds",))
            ended = [row[0] for row in await cursor.fetchall()]
            log.warning("lease_row_locked", pbx=pbx, stale_transactions_ended=len(ended))
            return None

    async def _read(self, conn: Any) -> None:
        cursor = await conn.execute(
            "SELECT pbx, owner, token, expires_at > now(), url,"
            " GREATEST(0, EXTRACT(EPOCH FROM expires_at - now()))::float8 FROM xferd_leases"
        )
        self.leases = {
            r[0]: LeaseRow(r[0], r[1], int(r[2]), bool(r[3]), r[4], float(r[5]))
            for r in await cursor.fetchall()
        }
        cursor = await conn.execute(
            "SELECT id, url FROM xferd_instances WHERE seen_at > now() - %s::interval",
            (f"{self.ttl_s} seconds",),
        )
        self.instances = {r[0]: r[1] for r in await cursor.fetchall()}

    def _extend(self, held: Held, sent: float) -> None:
        held.valid_until = sent + self.ttl_s - self.margin_s
        if held.timer is not None:
            held.timer.cancel()
        delay = max(0.0, held.valid_until - time.monotonic())
        held.timer = asyncio.get_running_loop().call_later(delay, self._expired, held.pbx, held.token)

    def _expired(self, pbx: str, token: int) -> None:
        held = self.held.get(pbx)
        if held is not None and held.token == token and time.monotonic() >= held.valid_until:
            self._drop(pbx, "not renewed in time (database unreachable or this process was paused)")

    def _drop(self, pbx: str, why: str) -> None:
        held = self.held.pop(pbx, None)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        log.warning("lease_lost", pbx=pbx, token=held.token, reason=why)
        self.on_lost(pbx, why)

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg

            self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, **KEEPALIVE_OPTIONS)
            for attempt in range(3):
                try:
                    # Concurrent CREATE TABLE IF NOT EXISTS can still collide: one at a time
                    # (a transaction lock, released at commit), and once more if the store's
                    # own migration raced us.
                    async with self._conn.transaction():
                        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('xferd_leases_ddl'))")
                        for statement in DDL:
                            await self._conn.execute(statement)
                    break
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                    if attempt == 2:
                        raise
            await self._conn.execute(
                "INSERT INTO xferd_leases (pbx) SELECT unnest(%s::text[]) ON CONFLICT (pbx) DO NOTHING",
                (list(self.pbxs),),
            )
        return self._conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to tidy
                await conn.close()


def _brief(exc: BaseException) -> str:
    """One line about a database error (psycopg's messages may span lines; no secrets in them)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
