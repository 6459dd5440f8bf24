"""Black box under faults: websocket loss, token expiry, kill -9 and restart — and ``xferd demo``.

Each test owns its simulator and ``xferd run`` subprocess (the faults are global
to a PBX).  The invariant checked everywhere: exactly one ``complete`` reaches
the PBX, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.service.conftest import START_WITHIN_S, XFERD, Xferd, until_http, write_config

RECEPTIONIST, TARGET = "2000", "2005"


@pytest.fixture
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    simulator.add_extension(RECEPTIONIST, Phone(answer_after=0.1))
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def services(sim: PbxSimulator, tmp_path: Path) -> AsyncIterator[list[Xferd]]:
    """Started services (all sharing one config and store), killed at the end."""
    started: list[Xferd] = []
    yield started
    for service in started:
        await service.close()


async def run(sim: PbxSimulator, tmp_path: Path, services: list[Xferd]) -> Xferd:
    config = write_config(tmp_path / "xferd.toml", sim, tmp_path / "xferd.sqlite3", no_answer_timeout_s=30)
    service = Xferd(config, sim)
    services.append(service)
    return await service.start()


async def consulting(xf: Xferd, target: Phone, **policy: Any) -> str:
    xf.sim.add_extension(TARGET, target)
    channel = await xf.call_in(RECEPTIONIST)
    body: dict[str, Any] = {"channel_id": channel, "number": TARGET}
    if policy:
        body["policy"] = policy
    response = await xf.post("/v1/transfers", body)
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "consulting"
    return str(response.json()["id"])


async def test_target_answers_while_the_websocket_is_down(
    sim: PbxSimulator, tmp_path: Path, services: list[Xferd]
) -> None:
    xf = await run(sim, tmp_path, services)
    transfer_id = await consulting(xf, Phone(answer_after=None))
    sim.accept_then_close = True  # reconnects fail until we say so
    sim.drop_sockets()
    await until_http(lambda r: r.status_code == 503, xf.http, "/healthz", 5)
    sim.answer(sim.channel_of(TARGET))  # lost: the PBX does not queue events
    assert (await xf.transfer(transfer_id))["target"]["status"] == "ringing"
    sim.accept_then_close = False
    final = await xf.final(transfer_id, within_s=15)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert sim.operate_count("complete") == 1


async def test_token_expires_mid_transfer(sim: PbxSimulator, tmp_path: Path, services: list[Xferd]) -> None:
    xf = await run(sim, tmp_path, services)
    transfer_id = await consulting(xf, Phone(answer_after=None), on_answer="hold")
    sim.expire_tokens()
    await xf.connected(within_s=15)  # logged in again and resubscribed
    sim.answer(sim.channel_of(TARGET))
    await xf.state(transfer_id, "consulting", "answered")
    response = await xf.post(f"/v1/transfers/{transfer_id}/complete")
    assert response.status_code == 200, response.text
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "operator")
    assert sim.operate_count("complete") == 1


async def test_kill_9_then_restart_resumes(sim: PbxSimulator, tmp_path: Path, services: list[Xferd]) -> None:
    xf = await run(sim, tmp_path, services)
    transfer_id = await consulting(xf, Phone(answer_after=None))
    await xf.kill()
    sim.answer(sim.channel_of(TARGET))  # happens while the service is dead
    await asyncio.sleep(0)
    again = await run(sim, tmp_path, services)
    final = await again.final(transfer_id, within_s=10)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert sim.operate_count("complete") == 1


async def test_kill_9_while_complete_is_in_flight_never_repeats_it(
    sim: PbxSimulator, tmp_path: Path, services: list[Xferd]
) -> None:
    xf = await run(sim, tmp_path, services)
    transfer_id = await consulting(xf, Phone(answer_after=None))
    sim.time_out("call/transfer", act=True, seconds=30)  # the PBX completes but never answers
    sim.answer(sim.channel_of(TARGET))
    await sim.wait_for(lambda: sim.operate_count("complete") == 1, timeout=5)
    await xf.kill()
    again = await run(sim, tmp_path, services)
    final = await again.final(transfer_id, within_s=10)
    assert final["state"] == "completed"
    assert sim.operate_count("complete") == 1


def xferd_script() -> str:
    """The installed console script, as the README runs it."""
    found = Path(sys.executable).with_name("xferd")
    if found.exists():
        return str(found)
    which = shutil.which("xferd")
    assert which, "the xferd console script is not installed (pip install -e .)"
    return which


async def test_demo_runs_as_in_the_readme(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        xferd_script(), "demo", cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "completed (reason: policy)" in text
    assert "call/transfer" in text and "attended_operate=complete" in text
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - no files left behind in the cwd


async def test_simulate_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        *XFERD, "simulate", "--port", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(START_WITHIN_S):
        first = (await proc.stdout.readline()).decode()
    base_url = first.split(" at ")[1].strip()
    assert base_url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient(headers={"User-Agent": "test"}) as http:
        answer = await http.post(
            f"{base_url}/openapi/v1.0/get_token", json={"username": "x", "password": "y"}
        )
    assert answer.json()["errcode"] == -1  # a PBX answer: bad credentials
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(START_WITHIN_S):
        await proc.communicate()
    assert proc.returncode == 0
