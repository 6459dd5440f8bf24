"""``[record] path``: the running service records a replayable scenario.

A production incident becomes a scenario the moment it happens: the service,
configured to record, runs a real transfer against the simulator; the file
it leaves replays to the same decisions and holds no secret.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from adapters.replay import read, replay
from adapters.service.config import load
from adapters.service.server import Service
from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig
from tests.service.conftest import API_TOKEN, write_config


async def test_service_records_a_run_that_replays_to_the_same_decisions(tmp_path: Path) -> None:
    sim = PbxSimulator(SimConfig())
    await sim.start()
    try:
        sim.add_extension("2000")
        sim.add_extension("2005", Phone(answer_after=0.1))
        path = write_config(tmp_path / "xferd.toml", sim, tmp_path / "s.db", no_answer_timeout_s=5)
        path.write_text(path.read_text() + '[record]\npath = "incident.jsonl"\n')
        config = load(path, {"XFERD_PBX_CLIENT_SECRET": sim.config.client_secret})
        assert config.record.path == tmp_path / "incident.jsonl", "relative to the config file"
        service = Service(config)
        await service.start()
        try:
            async with httpx.AsyncClient(
                base_url=service.base_url, headers={"Authorization": f"Bearer {API_TOKEN}"}
            ) as client:
                sim.place_call("5550100", "2000", inbound_trunk="stc")
                await sim.wait_for(lambda: len(service.runtime.engine.registry.legs) >= 2)
                created = await client.post("/v1/transfers", json={"extension": "2000", "number": "2005"})
                assert created.status_code == 201, created.text
                transfer_id = created.json()["id"]
                for _ in range(100):
                    state = (await client.get(f"/v1/transfers/{transfer_id}")).json()["state"]
                    if state == "completed":
                        break
                    await asyncio.sleep(0.05)
                assert state == "completed"
        finally:
            await service.stop()
    finally:
        await sim.stop()

    text = (tmp_path / "incident.jsonl").read_text()
    assert sim.config.client_secret not in text and API_TOKEN not in text
    report = replay(read(tmp_path / "incident.jsonl"))
    assert report.passed, report.details()
    assert [made.request.action for made in report.made] == ["start", "complete"]
