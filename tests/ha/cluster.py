"""A cluster of ``xferd run`` processes on one PostgreSQL database, for black-box tests,
chaos (``python -m chaos --ha``) and the takeover benchmark.

Each :class:`Instance` is a real subprocess (loopback port 0, its own
instance id) with ``XFERD_STORE_URL`` pointing at the shared database; the
PBX is the in-process Yeastar simulator.  :class:`Cluster` starts them,
finds the owner of a PBX from the instances' ``/healthz``, kills, stops and
continues them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from adapters.yeastar.simulator import PbxSimulator
from tests.service.conftest import API_TOKEN, START_WITHIN_S, Xferd, until_http


def write_cluster_config(
    path: Path,
    sim: PbxSimulator | dict[str, PbxSimulator],
    *,
    instance: str,
    ttl_s: float = 3.0,
    renew_s: float = 0.5,
    db_proxy: str | None = None,
    **policy: Any,
) -> Path:
    """A config for one instance: ``[store]`` comes from ``XFERD_STORE_URL``; ``sim`` one PBX
    (named ``default``) or several by name."""
    sims = sim if isinstance(sim, dict) else {None: sim}
    lines: list[str] = []
    for name, one in sims.items():
        lines += [
            "[[pbx]]",
            *([f'name = "{name}"'] if name else []),
            'kind = "yeastar"',
            f'base_url = "{one.base_url}"',
            f'client_id = "{one.config.client_id}"',
            f'client_secret = "{one.config.client_secret}"',
        ]
    lines += [
        "[api]",
        'listen = "127.0.0.1:0"',
        f'token = "{API_TOKEN}"',
        "[ha]",
        f'instance_id = "{instance}"',
        f"lease_ttl_s = {ttl_s}",
        f"renew_s = {renew_s}",
        "[policy]",
        *(f"{key} = {json.dumps(value)}" for key, value in policy.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class DbProxy:
    """A TCP proxy in front of PostgreSQL for one instance: :meth:`cut` drops its connections
    (and refuses new ones for ``down_s``), as a broken network path would."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = target
        self.host, self.port_to = parts.hostname or "127.0.0.1", parts.port or 5432
        self.server: asyncio.Server | None = None
        self.port = 0
        self._pairs: set[asyncio.StreamWriter] = set()
        self._down_until = 0.0

    async def start(self) -> DbProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        parts = urlsplit(self.target)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            (parts.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, parts.path, "", "")
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._down_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port_to)
        except OSError:
            writer.transport.abort()
            return
        self._pairs.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(writer)
            writer.transport.abort()

    def cut(self, down_s: float = 0.0) -> None:
        """Drop every connection now; refuse new ones for ``down_s`` seconds."""
        self._down_until = time.monotonic() + down_s
        for writer in list(self._pairs):
            writer.transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


class Instance(Xferd):
    """One ``xferd run`` of the cluster."""

    def __init__(self, config: Path, sim: PbxSimulator, url: str, name: str) -> None:
        super().__init__(config, sim)
        self.url = url
        self.name = name

    async def start(self) -> Instance:
        env = {**os.environ, "XFERD_STORE_URL": self.url}
        await self._launch(env)
        await self._until_healthy()
        return self

    async def launch(self) -> Instance:
        """Start without waiting for ``/healthz`` 200 (a standby of a PBX nobody owns yet is 503)."""
        await self._launch({**os.environ, "XFERD_STORE_URL": self.url})
        return self

    async def health(self) -> dict[str, Any]:
        response = await self.http.get("/healthz")
        return dict(response.json())

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Cluster:
    """``count`` instances on database ``url`` against ``sim`` (one PBX or several by name)."""

    def __init__(
        self,
        tmp: Path,
        sim: PbxSimulator | dict[str, PbxSimulator],
        url: str,
        *,
        count: int = 2,
        proxies: bool = False,
        **options: Any,
    ) -> None:
        self.tmp = tmp
        self.sim = sim
        self.main_sim = sim if isinstance(sim, PbxSimulator) else next(iter(sim.values()))
        self.url = url
        self.options = options
        self.instances: list[Instance] = []
        self.count = count
        self._next = 0
        self.use_proxies = proxies
        #: Each instance's own path to the database (with ``proxies``), by instance name.
        self.proxies: dict[str, DbProxy] = {}

    async def new_instance(self) -> Instance:
        self._next += 1
        name = f"xferd-{self._next}"
        config = write_cluster_config(self.tmp / f"{name}.toml", self.sim, instance=name, **self.options)
        url = self.url
        if self.use_proxies:
            proxy = self.proxies[name] = await DbProxy(self.url).start()
            url = proxy.url
        instance = Instance(config, self.main_sim, url, name)
        self.instances.append(instance)
        return instance

    async def start(self) -> None:
        """The first instance (it takes every PBX), then the others (standbys, or their share)."""
        first = await (await self.new_instance()).start()
        await first.connected(START_WITHIN_S)
        for _ in range(self.count - 1):
            await (await self.new_instance()).launch()
        for instance in self.instances[1:]:
            await until_http(lambda r: r.status_code in (200, 503), instance.http, "/healthz", START_WITHIN_S)

    def live(self) -> list[Instance]:
        return [i for i in self.instances if i.alive()]

    async def owner(
        self, pbx: str = "default", within_s: float = 30.0, not_: Instance | None = None
    ) -> Instance:
        """The instance that owns ``pbx`` and reports it connected (waits for a takeover)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for instance in self.live():
                if instance is not_:
                    continue
                try:
                    body = await instance.health()
                except (httpx.HTTPError, ValueError):
                    continue
                for entry in body.get("pbxs", []):
                    if entry["name"] == pbx and entry.get("role") == "owner" and entry["pbx"] == "connected":
                        return instance
            await asyncio.sleep(0.02)
        raise AssertionError(f"no instance owns {pbx} after {within_s} s")

    async def kill(self, instance: Instance) -> None:
        await instance.kill()

    async def close(self) -> None:
        for instance in self.instances:
            if instance.alive() and instance.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    instance.proc.send_signal(signal.SIGCONT)
            await instance.close()
        for proxy in self.proxies.values():
            await proxy.close()
