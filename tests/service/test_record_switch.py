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
from adapters.webex import WebexSimulator
from adapters.yeastar.simulator import PbxSimulator, Phone, SimConfig
from tests.service.conftest import API_TOKEN, write_config
from tests.webex.conftest import webex_config


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


async def test_service_records_a_webex_run_from_its_webhooks(tmp_path: Path) -> None:
    """Webex: the deliveries the control API received (signature checked, then
    stored: the secret is in no body), the call-control answers and the
    snapshots make a scenario that replays to the same decisions."""
    sim = WebexSimulator()
    await sim.start()
    try:
        path = webex_config(
            tmp_path / "xferd.toml", sim, tmp_path / "s.db", extra_pbx={"user_number": sim.user_number}
        )
        path.write_text(path.read_text() + '[record]\npath = "incident.jsonl"\n')
        env = {"XFERD_PBX_ACCESS_TOKEN": sim.access_token, "XFERD_WEBHOOK_SECRET": sim.webhook_secret}
        service = Service(load(path, env))
        await service.start()
        try:
            sim.deliver_to(service.base_url + "/v1/webhooks/webex")
            sim.set_party("+15553000001", answer_after=0.1)
            original = sim.incoming_call("+15552000001")
            await sim.wait_for(lambda: service.runtime.engine.registry.leg(original) is not None)
            async with httpx.AsyncClient(
                base_url=service.base_url, headers={"Authorization": f"Bearer {API_TOKEN}"}
            ) as client:
                created = await client.post(
                    "/v1/transfers", json={"channel_id": original, "number": "+15553000001"}
                )
                assert created.status_code == 201, created.text
                await sim.wait_for(lambda: sim.calls() == [])
                await sim.drained()
                transfer = (await client.get(f"/v1/transfers/{created.json()['id']}")).json()
                assert transfer["state"] == "completed"
        finally:
            await service.stop()
    finally:
        await sim.stop()

    text = (tmp_path / "incident.jsonl").read_text()
    for secret in (sim.access_token, sim.webhook_secret, API_TOKEN):
        assert secret not in text
    scenario = read(tmp_path / "incident.jsonl")
    assert scenario.meta.platform == "webex" and scenario.meta.pbx["user_number"] == sim.user_number
    report = replay(scenario)
    assert report.passed, report.details()
    assert [made.request.action for made in report.made] == ["start", "complete"]
    assert report.frames >= 6  # the deliveries: ringing, connected, held, the consultation's, the ends


async def test_a_recording_keeps_the_rules_so_rule_transfers_replay(tmp_path: Path) -> None:
    """With ``[rules] path`` the scenario carries the rules (``meta.rules``): replayed, the
    rule starts the same transfer by itself (without them the replay would see a
    ``call/transfer`` nobody asked for)."""
    sim = PbxSimulator(SimConfig())
    await sim.start()
    try:
        sim.add_extension("2000", Phone(answer_after=0.05))
        sim.add_extension("2005", Phone(answer_after=0.1))
        rules = tmp_path / "rules.toml"
        rules.write_text(
            '[[rules]]\nname = "reception"\non = "call.answered"\nextensions = ["2000"]\n'
            'then = { attended = "2005", policy = { on_answer = "complete" } }\n'
        )
        path = write_config(tmp_path / "xferd.toml", sim, tmp_path / "s.db", no_answer_timeout_s=5)
        path.write_text(path.read_text() + '[record]\npath = "rules.jsonl"\n[rules]\npath = "rules.toml"\n')
        service = Service(load(path, {"XFERD_PBX_CLIENT_SECRET": sim.config.client_secret}))
        await service.start()
        try:
            await sim.wait_for(lambda: service.runtime.adapter.connected)  # the answer must be seen live
            sim.place_call("5550100", "2000", inbound_trunk="stc")

            def completed() -> bool:
                return any(
                    view["state"] == "completed" and view["initiated_by"] == "rule:reception"
                    for view in service.runtime.recent_finished()
                )

            await sim.wait_for(completed, timeout=10)
        finally:
            await service.stop()
    finally:
        await sim.stop()

    scenario = read(tmp_path / "rules.jsonl")
    assert scenario.meta.rules is not None and scenario.meta.rules["rules"][0]["name"] == "reception"
    report = replay(scenario)
    assert report.passed, report.details()
    assert [made.request.action for made in report.made] == ["start", "complete"]
