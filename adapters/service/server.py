"""Assembly: config → adapter, store, engine, runtime, control API on uvicorn.

``xferd run`` and ``xferd demo`` both build a :class:`Service`; the only
difference is where the config comes from.  Start-up and shutdown order live
here so they are the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn

from adapters.base import CredentialStore, Observer, PbxAdapter
from adapters.replay.recorder import Recorder, RecordingRuntime, Tee
from adapters.service.api import create_app
from adapters.service.config import DEFAULT_PBX_NAME, Config, PbxTable
from adapters.service.hub import Hub
from adapters.service.journal import Journal
from adapters.service.logs import get_logger, redactor
from adapters.service.metrics import Metrics, MetricsObserver
from adapters.service.roles import User, Users
from adapters.service.rules import RulesCollector, RulesError, RulesHolder
from adapters.service.runtime import Runtime
from adapters.service.store import StoredCredentials, close_store, open_store
from engine.engine import Engine

log = get_logger("xferd.service")

REQUEST_TIMEOUT_S = 5.0


def build_adapter(
    pbx: PbxTable, observer: Observer, credentials: CredentialStore | None = None
) -> PbxAdapter:
    """The platform adapter a ``[pbx]`` table names (imported lazily: each pulls its own deps).

    ``credentials``: where this PBX connection keeps credentials that change
    while it runs (a Webex integration's refresh token, Yeastar's token pair).
    """
    if pbx.kind == "yeastar":
        from adapters.yeastar.adapter import YeastarAdapter

        return YeastarAdapter(
            pbx.base_url,
            pbx.client_id,
            pbx.client_secret.get_secret_value(),
            verify_tls=pbx.verify_tls,
            ca_file=str(pbx.ca_file) if pbx.ca_file else None,
            topics=pbx.topics,
            observer=observer,
            request_timeout_s=REQUEST_TIMEOUT_S,
            credentials=credentials,
        )
    from adapters.webex.adapter import WebexAdapter
    from adapters.webex.events import WEBHOOK_PATH
    from adapters.webex.oauth import integration

    oauth = None
    if pbx.client_id is not None and pbx.client_secret is not None:
        refresh_token = pbx.refresh_token.get_secret_value() if pbx.refresh_token else None
        secret = pbx.client_secret.get_secret_value()
        oauth = integration(pbx.base_url, pbx.client_id, secret, refresh_token, credentials, observer)
    return WebexAdapter(
        pbx.base_url,
        access_token=pbx.access_token.get_secret_value() if pbx.access_token else None,
        oauth=oauth,
        webhook_secret=pbx.webhook_secret.get_secret_value(),
        events=pbx.events,
        public_url=pbx.public_url,
        # One Webex PBX may use the plain path; a named one of several has its own.
        webhook_path=WEBHOOK_PATH if pbx.name == DEFAULT_PBX_NAME else f"{WEBHOOK_PATH}/{pbx.name}",
        poll_interval_s=pbx.poll_interval_s,
        user_number=pbx.user_number,
        observer=observer,
        request_timeout_s=REQUEST_TIMEOUT_S,
    )


def secrets_of(config: Config) -> list[str]:
    """Every secret value in ``config`` (for the log redactor)."""
    values = [config.api.token, config.api.session_secret]
    for pbx in config.pbx:
        if pbx.kind == "yeastar":
            values += [pbx.client_secret]
        else:
            values += [pbx.access_token, pbx.webhook_secret, pbx.client_secret, pbx.refresh_token]
    secrets = [value.get_secret_value() for value in values if value is not None]
    if config.store.url is not None:  # the whole URL, and its password wherever it shows alone
        from adapters.service.pgstore import url_password

        url = config.store.url.get_secret_value()
        secrets += [url, url_password(url) or ""]
    return [secret for secret in secrets if secret]


#: The ``credentials.kind`` each platform keeps in the store (``adapters.webex.oauth.CREDENTIAL_KIND``).
CREDENTIAL_KIND = {"yeastar": "yeastar_tokens", "webex": "webex_oauth"}


def recorded_settings(pbx: PbxTable) -> dict[str, Any]:
    """The PBX settings a replay needs besides the policy (``meta.pbx`` of a recording)."""
    if pbx.kind == "webex":
        return {"events": pbx.events, "user_number": pbx.user_number}
    return {}


@dataclass
class Unit:
    """One PBX connection: its config, adapter and runtime (engine inside)."""

    name: str
    pbx: PbxTable
    adapter: PbxAdapter
    runtime: Runtime

    @property
    def platform(self) -> str:
        return self.adapter.platform


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM
    (uvicorn would re-raise the signal after shutdown, killing the process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    """One running xferd: store, one unit (adapter + engine + runtime) per PBX, control API."""

    def __init__(
        self,
        config: Config,
        *,
        observer: MetricsObserver | None = None,
        adapter: PbxAdapter | None = None,
        adapters: Mapping[str, PbxAdapter] | None = None,
    ) -> None:
        """``adapter`` (one PBX) or ``adapters`` (by PBX name) replace the ones
        the config names: tests inject fake PBXs."""
        self.config = config
        self.metrics = observer.metrics if observer is not None else Metrics()
        self.observer = observer or MetricsObserver(self.metrics)
        redactor.add(secrets_of(config))
        self.store = open_store(config.store.url_value, config.store.path)
        # Several instances (a PostgreSQL store): units follow the PBX leases (adapters.service.ha).
        self.cluster = _cluster(self)
        self.hub = self.cluster.hub if self.cluster is not None else Hub(self.metrics)
        self.journal = Journal()  # every PBX's transfers' stories (the console's timeline)
        self.users = Users(
            (User(u.name, u.role, u.token_hash) for u in config.api.users),
            config.api.token.get_secret_value() if config.api.token else None,
        )
        injected = dict(adapters or {})
        if adapter is not None:
            injected[config.pbx[0].name] = adapter
        self.recorder: Recorder | None = None
        self.injected = injected  # a cluster builds its units later (adapters.service.ha)
        #: The routing rules file and what it holds (None: no ``[rules] path``).
        self.rules: RulesHolder | None = None
        if config.rules.path is not None:
            self.rules = RulesHolder.open(config.rules.path)  # RulesError: one line
        self.units: dict[str, Unit] = {}
        for pbx in config.pbx:
            if self.cluster is None:  # in a cluster, units come and go with the leases
                self.units[pbx.name] = self._unit(pbx, injected.get(pbx.name))
        if self.rules is not None:
            self.rules.attach(self)
            self.metrics.registry.register(RulesCollector(self))
        self.app = create_app(self, request_timeout_s=REQUEST_TIMEOUT_S)
        if self.cluster is not None:
            self.cluster.serve(self.app)  # requests about PBXs owned elsewhere go to their owner
        self._socket: socket.socket | None = None
        self._server: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._stopped = False

    def _unit(self, pbx: PbxTable, adapter: PbxAdapter | None, **runtime_options: Any) -> Unit:
        """``runtime_options``: more :class:`Runtime` arguments (a cluster's ``fence``, ``on_stale``)."""
        config = self.config
        engine = Engine(config.policy_of(pbx).engine_policy())
        credentials = StoredCredentials(self.store, pbx.name, CREDENTIAL_KIND[pbx.kind])
        runtime: Runtime
        options: dict[str, Any] = {
            "pbx": pbx.name,
            "hub": self.hub,
            "max_pending_transfers": config.api.max_pending_transfers,
            "max_starting_transfers": config.api.max_starting_transfers,
            **runtime_options,
        }
        if config.record.path is not None:  # one PBX (the config checks)
            # Record this run as a scenario: frames and PBX requests through the
            # adapter's observer, API requests and snapshots through the runtime.
            self.recorder = Recorder.open(
                config.record.path,
                name=config.record.path.stem,
                platform=pbx.kind,
                policy=config.policy_of(pbx).engine_policy(),
                secrets=secrets_of(config),
                pbx=recorded_settings(pbx),
                # The rules as loaded at start (a SIGHUP reload later is not re-recorded).
                rules=self.rules.data if self.rules is not None else None,
            )
            adapter = adapter or build_adapter(pbx, Tee(self.observer, self.recorder), credentials)
            runtime = RecordingRuntime(
                engine, adapter, self.store, self.metrics, recorder=self.recorder, **options
            )
        else:
            adapter = adapter or build_adapter(pbx, self.observer, credentials)
            runtime = Runtime(engine, adapter, self.store, self.metrics, **options)
        runtime.journal = self.journal
        return Unit(pbx.name, pbx, adapter, runtime)

    def reload_rules(self) -> None:
        """SIGHUP: load the rules file again (a bad file is logged and refused; the old rules stay)."""
        if self.rules is None:
            log.warning("rules_reload_ignored", reason="no [rules] path configured")
            return
        with contextlib.suppress(RulesError):  # logged by reload(); the old rules stay
            self.rules.reload(self)

    @property
    def runtime(self) -> Runtime:
        """The runtime of the only PBX (tools and tests that drive one PBX)."""
        return self._only().runtime

    @property
    def adapter(self) -> PbxAdapter:
        """The adapter of the only PBX."""
        return self._only().adapter

    def _only(self) -> Unit:
        if len(self.units) != 1:
            raise RuntimeError(f"this service drives {len(self.units)} PBXs: pick one from .units")
        return next(iter(self.units.values()))

    @property
    def port(self) -> int:
        assert self._socket is not None, "start() first"
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        host = self.config.api.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        """Restore, connect to the PBX, then serve the API.

        The listening socket is bound here (port 0 → a free port, known at
        once); raises :class:`~adapters.base.FatalPbxError` or ``OSError``.
        """
        host, port = self.config.api.host, self.config.api.port
        # Bind first: a port in use should fail before we log in to the PBX.
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets whose
        # proto says TCP, and with Nagle on every kept-alive request waits ~40 ms.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)  # clients queue in the backlog until uvicorn accepts
            for unit in self.units.values():
                await unit.runtime.start()
            if self.cluster is not None:
                await self.cluster.start(int(sock.getsockname()[1]))
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(
            self.app,
            log_config=None,  # our structlog handler on the root logger formats uvicorn's lines
            lifespan="off",
            ws="websockets-sansio",
            # The live stream fans one message out to every client: compressing it per client
            # would cost more CPU than everything else the stream does (see bench "console").
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=3,
        )
        self._server = _Uvicorn(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        log.info(
            "service_started",
            listen=f"{host}:{self.port}",
            pbxs={name: unit.platform for name, unit in self.units.items()},
        )

    async def stop(self) -> None:
        """Stop the API (closing stream clients), finish in-flight requests, close the adapter and store.

        Idempotent: a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await self._serving
        self.hub.close()
        if self.cluster is not None:
            await self.cluster.stop()  # its units, then the leases handed back
        for unit in self.units.values():
            await unit.runtime.close()
        await self.app.state.audit.close()
        if self.recorder is not None:
            self.recorder.close()
        await close_store(self.store)
        if self._socket is not None:
            self._socket.close()
        log.info("service_stopped")


def _cluster(service: Service) -> Any:
    """The service's part in a cluster (None: SQLite, one instance)."""
    from adapters.service.ha import Cluster, store_url

    url = store_url(service.config)
    return Cluster(service, url) if url is not None else None


async def run_until_signalled(config: Config) -> None:
    """``xferd run``: serve until SIGINT/SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    service = Service(config)
    loop.add_signal_handler(signal.SIGHUP, service.reload_rules)
    try:
        await service.start()
    except BaseException:
        await close_store(service.store)
        raise
    try:
        await stop.wait()
        log.info("shutdown_requested")
    finally:
        await service.stop()
