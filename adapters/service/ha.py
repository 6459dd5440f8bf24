"""Several instances: each PBX's unit lives where its lease is (takeover, hand-over, health).

Theory of operation
-------------------
With a PostgreSQL store (``[store] url``) every ``xferd run`` joins a
cluster.  The :class:`~adapters.service.leases.LeaseKeeper` decides which
PBX leases this instance holds; this module gives each held lease a *unit*
(the PBX's adapter, engine and runtime) and takes it away when the lease
goes:

* **granted** → build the unit with a :class:`Fence` of the granted token,
  start it: the runtime restores the PBX's active transfers from the shared
  store (their timers re-armed from the stored deadlines), then the
  adapter's first snapshot reconciles them with what the PBX did while
  nobody owned it (answers, hangups, the outcome of a request the previous
  owner had in flight).  A grant that follows another owner is a
  *takeover* (``xferd_takeovers_total``).
* **lost** (renewal refused, not renewed in time on the monotonic clock, a
  fenced write refused, or handed over) → the unit stops at once *without
  sending*: its adapter is wrapped in :class:`FencedAdapter`, which refuses
  every request once the lease is not valid locally, the runtime refuses
  to dispatch while closing, and any decision it still tries to write is
  refused by the store's fence check (``xferd_stale_writes_total``).

The safety argument, in order: a decision is written with the fence before
its request leaves (runtime); the store accepts the write only while the
lease is current by the database's clock; this instance stops acting
``margin`` seconds before that clock would let anyone else in
(:meth:`LeaseKeeper.valid`); and the new owner restores the written
decision instead of re-deciding it.  What remains is a request already on
the wire when the process froze — the new owner finds its outcome by
reconciliation, as after any restart.

API requests about a PBX owned elsewhere are forwarded to the owner
(:mod:`adapters.service.ha_forward`); the live stream carries every PBX's
changes through LISTEN/NOTIFY (:mod:`adapters.service.ha_stream`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any

from adapters.base import ActionResult, CallAction, EventSink
from adapters.service.leases import LeaseKeeper, LeaseRow
from adapters.service.logs import get_logger
from engine.model import CallsSnapshot, PbxRequest, RequestFinished

if TYPE_CHECKING:
    from adapters.base import PbxAdapter
    from adapters.service.config import Config
    from adapters.service.server import Service, Unit

log = get_logger("xferd.ha")

#: What a refused request says when this instance no longer holds the PBX's lease.
NOT_OWNER = "not sent: this instance no longer holds the PBX's lease"


def store_url(config: Config) -> str | None:
    """The PostgreSQL URL of ``[store] url`` (None: SQLite, one instance, no cluster)."""
    return config.store.url_value


def instance_id(config: Config) -> str:
    """``[ha] instance_id``, or ``<host>-<pid>`` (unique per process: a restarted instance is a new one)."""
    return config.ha.instance_id or f"{socket.gethostname()}-{os.getpid()}"


def advertised_url(config: Config, port: int) -> str:
    """``[ha] advertise_url``, or the listening address (a wildcard address: this host's name)."""
    if config.ha.advertise_url:
        return config.ha.advertise_url.rstrip("/")
    host = config.api.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class FencedAdapter:
    """A PBX adapter that sends nothing once its instance's lease is not valid.

    The last line of defence for requests decided (and written) before the
    process was paused: they are still queued when it wakes, and the lease
    has meanwhile passed to another instance.
    """

    def __init__(self, inner: PbxAdapter, cluster: Cluster, pbx: str) -> None:
        self.inner = inner
        self._cluster = cluster
        self._pbx = pbx
        self.platform = inner.platform
        self.capabilities = inner.capabilities

    @property
    def connected(self) -> bool:
        return self.inner.connected

    @property
    def detail(self) -> str:
        return self.inner.detail

    def __getattr__(self, name: str) -> Any:
        # Platform extras (a Webex adapter's webhook receiver, test hooks) pass through.
        return getattr(self.inner, name)

    async def start(self, sink: EventSink) -> None:
        await self.inner.start(sink)

    async def execute(self, request: PbxRequest) -> RequestFinished:
        if not self._cluster.may_act(self._pbx):
            # Not sent, and no result either: a result would be a new fact for an engine that
            # must decide nothing more.  The request stays in flight in the store; the new owner
            # reconciles it from the PBX's view.  (Cancels the runtime's worker for this transfer.)
            log.warning("request_not_sent_lease_lost", transfer_id=request.transfer_id, action=request.action)
            raise asyncio.CancelledError(NOT_OWNER)
        return await self.inner.execute(request)

    async def query_calls(self) -> CallsSnapshot | None:
        return await self.inner.query_calls()

    async def act(self, action: CallAction) -> ActionResult:
        if not self._cluster.may_act(self._pbx):
            return ActionResult("refused", errmsg=NOT_OWNER, sent=False)
        return await self.inner.act(action)

    async def close(self) -> None:
        await self.inner.close()


class Cluster:
    """This instance's part in a cluster: lease keeper, units of the PBXs it owns, health."""

    def __init__(self, service: Service, dsn: str) -> None:
        self.service = service
        self.config = service.config
        self.dsn = dsn
        self.id = instance_id(self.config)
        self.keeper: LeaseKeeper | None = None
        self.url = ""
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._leaving = False
        from adapters.service.ha_stream import SharedHub

        self.hub = SharedHub(service.metrics, dsn, self.id)
        #: The HTTP client relaying requests to other instances (made on first use).
        self.http: Any = None

    def serve(self, app: Any) -> None:
        """Put the forwarding middleware in front of ``app`` (outermost: the owner audits)."""
        from adapters.service.ha_forward import ForwardMiddleware

        app.add_middleware(ForwardMiddleware, cluster=self)

    # -- life ---------------------------------------------------------------------
    async def start(self, port: int) -> None:
        """Join: register, take this instance's share of the leases (their units start in the background)."""
        ha = self.config.ha
        self.url = advertised_url(self.config, port)
        await self.hub.start()
        self.keeper = LeaseKeeper(
            self.dsn,
            self.id,
            self.url,
            [pbx.name for pbx in self.config.pbx],
            ttl_s=ha.lease_ttl_s,
            renew_s=ha.renew_s,
            on_granted=self._granted,
            on_lost=self._lost,
        )
        await self.keeper.start()
        # What the first round granted starts before the API serves (a lone instance then
        # behaves as without a cluster: restored and connecting when start() returns).
        await asyncio.gather(*list(self._starting.values()), return_exceptions=True)
        log.info("cluster_joined", instance=self.id, url=self.url, holds=sorted(self.keeper.held))

    async def stop(self) -> None:
        """Leave: stop every unit (in-flight requests finish, as on a single instance's shutdown),
        then give the leases back (another instance takes over at once)."""
        self._leaving = True
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        units = list(self.service.units.values())
        self.service.units.clear()
        for unit in units:
            await unit.runtime.close()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        if self.keeper is not None:
            await self.keeper.stop(release=True)
        await self.hub.stop()
        if self.http is not None:
            await self.http.aclose()

    def may_act(self, pbx: str) -> bool:
        """True while this instance holds ``pbx``'s lease and it is valid by the local clock."""
        return self.keeper is not None and self.keeper.valid(pbx)

    def fence_of(self, pbx: str, token: int) -> Any:
        from adapters.service.store import Fence

        return Fence(pbx, self.id, token)

    # -- grants and losses ---------------------------------------------------------
    def _granted(self, pbx: str, token: int, previous: LeaseRow | None) -> None:
        if self._leaving:
            if self.keeper is not None:
                self.keeper.forget(pbx, "this instance is stopping")
            return
        task = asyncio.get_running_loop().create_task(self._take(pbx, token, previous), name=f"take-{pbx}")
        self._starting[pbx] = task
        task.add_done_callback(
            lambda _: self._starting.pop(pbx, None) if self._starting.get(pbx) is task else None
        )

    async def _take(self, pbx: str, token: int, previous: LeaseRow | None) -> None:
        table = self.config.pbx_named(pbx)
        assert table is not None and self.keeper is not None
        from adapters.service.server import CREDENTIAL_KIND, build_adapter
        from adapters.service.store import Fence, StoredCredentials

        fence = Fence(pbx, self.id, token)
        credentials = StoredCredentials(self.service.store, pbx, CREDENTIAL_KIND[table.kind])
        injected = self.service.injected.get(pbx)  # tests and benchmarks bring their own PBX
        inner = injected or build_adapter(table, self.service.observer, credentials)
        adapter = FencedAdapter(inner, self, pbx)
        keeper = self.keeper
        unit = self.service._unit(
            table,
            adapter,
            fence=lambda: fence,
            on_stale=lambda: keeper.forget(pbx, "a fenced write was refused"),
        )
        if self.service.rules is not None:  # routing rules: as Service gives them at start (same ids)
            from engine.rules import RuleEngine

            several = len(self.config.pbx) > 1
            unit.runtime.engine.rules = RuleEngine(
                self.service.rules.ruleset, id_prefix=f"{pbx}." if several else ""
            )
        try:
            await unit.runtime.start()
        except asyncio.CancelledError:
            await unit.runtime.close()
            raise
        except Exception as exc:
            log.error("unit_start_failed", pbx=pbx, error=f"{type(exc).__name__}: {exc}"[:300])
            await unit.runtime.close()
            keeper.forget(pbx, "the PBX connection could not start")
            return
        if not self.may_act(pbx) or keeper.held[pbx].token != token:
            await unit.runtime.close()
            return
        self.service.units[pbx] = unit
        takeover = previous is not None and previous.owner is not None
        if takeover:
            self.service.metrics.takeovers.labels(pbx).inc()
        log.info(
            "pbx_owned",
            pbx=pbx,
            token=token,
            takeover=takeover,
            previous_owner=previous.owner if previous else None,
            restored=len(unit.runtime.live_transfers(active_only=True)),
        )

    def _lost(self, pbx: str, why: str) -> None:
        starting = self._starting.pop(pbx, None)
        if starting is not None:
            starting.cancel()
        unit: Unit | None = self.service.units.pop(pbx, None)
        if unit is None:
            return
        unit.runtime._closing = True  # from this instant nothing is dispatched
        log.warning("pbx_released", pbx=pbx, reason=why)
        task = asyncio.get_running_loop().create_task(unit.runtime.close())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # -- what /healthz and forwarding read ----------------------------------------
    def owner_url(self, pbx: str) -> str | None:
        """The advertised URL of ``pbx``'s live owner other than this instance (None: none)."""
        if self.keeper is None:
            return None
        row = self.keeper.leases.get(pbx)
        if row is None or not row.live or row.owner is None or row.owner == self.id:
            return None
        return row.url

    def health(self) -> tuple[dict[str, Any], int]:
        """``/healthz`` of a cluster member: every PBX with its owner, this instance's role, the token."""
        keeper = self.keeper
        leases = keeper.leases if keeper is not None else {}
        pbxs = []
        for table in self.config.pbx:
            row = leases.get(table.name)
            unit = self.service.units.get(table.name)
            owner = row.owner if row is not None and row.live else None
            entry: dict[str, Any] = {
                "name": table.name,
                "platform": table.kind,
                "owner": owner,
                "owner_url": row.url if row is not None and owner else None,
                "role": "owner" if unit is not None else "standby",
                "token": row.token if row is not None else 0,
            }
            if unit is not None:
                entry.update(
                    pbx="connected" if unit.adapter.connected else "disconnected",
                    capabilities=list(unit.adapter.capabilities),
                    detail=unit.adapter.detail,
                )
            elif owner == self.id:  # granted, its unit still starting (restore, PBX login)
                entry.update(pbx="disconnected", capabilities=[], detail="taking over: connecting to the PBX")
            else:
                # Another instance drives it: its lease being live is what this one can know.
                entry.update(
                    pbx="connected" if owner else "disconnected",
                    capabilities=[],
                    detail=f"owned by {owner}" if owner else "no owner (takeover in progress)",
                )
            pbxs.append(entry)
        connected = all(p["pbx"] == "connected" for p in pbxs)
        platforms = {p["platform"] for p in pbxs}
        local = [p for p in pbxs if p["role"] == "owner"]
        body = {
            "status": "ok" if connected else "degraded",
            "pbx": "connected" if connected else "disconnected",
            "platform": platforms.pop() if len(platforms) == 1 else "mixed",
            "capabilities": local[0]["capabilities"] if len(pbxs) == 1 and local else [],
            "detail": pbxs[0]["detail"]
            if len(pbxs) == 1
            else "; ".join(f"{p['name']}: {p['detail']}" for p in pbxs),
            "pbxs": pbxs,
            "instance": {
                "id": self.id,
                "url": self.url,
                "instances": sorted(keeper.instances) if keeper else [],
            },
        }
        return body, 200 if connected else 503
