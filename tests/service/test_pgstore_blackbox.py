"""Black box: ``xferd run`` with its state on PostgreSQL (``XFERD_STORE_URL``), against the simulator.

The same service as with SQLite, only the store differs: a transfer completes
and its row is in the database; ``kill -9`` mid-transfer and a restart resume
it from PostgreSQL with exactly one ``complete``; an unreachable database
stops the start with one line that does not show the password.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.service.conftest import XFERD, Xferd, write_config

RECEPTIONIST, TARGET = "2000", "2005"


@pytest.fixture
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    simulator.add_extension(RECEPTIONIST, Phone(answer_after=0.1))
    await simulator.start()
    yield simulator
    await simulator.stop()


class PgXferd(Xferd):
    """``xferd run`` whose config names a SQLite file, overridden by ``XFERD_STORE_URL``
    (the environment wins, as for secrets: the URL may hold a password)."""

    def __init__(self, config: Path, sim: PbxSimulator, url: str) -> None:
        super().__init__(config, sim)
        self.url = url

    async def start(self) -> PgXferd:
        env = {
            **os.environ,
            "XFERD_PBX_CLIENT_SECRET": self.sim.config.client_secret,
            "XFERD_STORE_URL": self.url,
        }
        await self._launch(env)
        await self._until_healthy()
        return self


@pytest.fixture
async def services() -> AsyncIterator[list[Xferd]]:
    started: list[Xferd] = []
    yield started
    for service in started:
        await service.close()


def config_without_store_path(tmp_path: Path, sim: PbxSimulator) -> Path:
    config = write_config(tmp_path / "xferd.toml", sim, tmp_path / "unused.sqlite3", no_answer_timeout_s=30)
    text = config.read_text().replace(f'path = "{tmp_path / "unused.sqlite3"}"\n', "")
    config.write_text(text)
    return config


async def run(sim: PbxSimulator, tmp_path: Path, url: str, services: list[Xferd]) -> Xferd:
    service = PgXferd(config_without_store_path(tmp_path, sim), sim, url)
    services.append(service)
    return await service.start()


async def consulting(xf: Xferd) -> str:
    xf.sim.add_extension(TARGET, Phone(answer_after=None))
    channel = await xf.call_in(RECEPTIONIST)
    response = await xf.post("/v1/transfers", {"channel_id": channel, "number": TARGET})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_transfer_on_postgresql_then_kill_9_and_resume(
    sim: PbxSimulator, tmp_path: Path, pg_url: str, services: list[Xferd]
) -> None:
    xf = await run(sim, tmp_path, pg_url, services)
    transfer_id = await consulting(xf)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT state, final, pbx FROM xferd_transfers WHERE id = %s", (transfer_id,)
        ).fetchone()
    assert row == ("consulting", False, "default")  # written before the request went out
    await xf.kill()
    sim.answer(sim.channel_of(TARGET))  # while no service runs
    again = await run(sim, tmp_path, pg_url, services)
    final = await again.final(transfer_id, within_s=10)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert sim.operate_count("complete") == 1
    assert await again.terminate() == 0
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT state, final FROM xferd_transfers WHERE id = %s", (transfer_id,)
        ).fetchone()
    assert row == ("completed", True)
    assert not (tmp_path / "unused.sqlite3").exists()  # the URL replaced the SQLite file


async def test_unreachable_postgresql_exits_1_with_one_line(sim: PbxSimulator, tmp_path: Path) -> None:
    config = config_without_store_path(tmp_path, sim)
    env = {
        **os.environ,
        "XFERD_PBX_CLIENT_SECRET": sim.config.client_secret,
        "XFERD_STORE_URL": "postgresql://xferd:pg-secret-77@127.0.0.1:1/xferd",
    }
    proc = await asyncio.create_subprocess_exec(
        *XFERD, "run", "--config", str(config), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    text = err.decode()
    assert "store postgresql://xferd:***@127.0.0.1:1/xferd: cannot connect:" in text
    assert "pg-secret-77" not in text
    assert not any(r.endpoint == "get_token" for r in sim.requests)  # failed before logging in
