"""Black box: two ``xferd run`` on one PostgreSQL database take a transfer through ``kill -9``
of the owner; an owner frozen past its lease sends nothing when it wakes.

The simulator is the truth: how many ``complete`` requests the PBX accepted,
and who is talking to whom at the end.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.ha.cluster import Cluster
from tests.service.conftest import API_TOKEN, until, until_http

RECEPTIONIST, TARGET = "2000", "2005"


@pytest.fixture
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    simulator.add_extension(RECEPTIONIST, Phone(answer_after=0.1))
    simulator.add_extension(TARGET, Phone(answer_after=None))  # answers when the test says
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def cluster(sim: PbxSimulator, tmp_path: Path, ha_db: str) -> AsyncIterator[Cluster]:
    group = Cluster(tmp_path, sim, ha_db, count=2, no_answer_timeout_s=60)
    try:
        await group.start()
        yield group
    finally:
        await group.close()


async def test_a_transfer_survives_kill_9_of_its_owner_exactly_once(
    sim: PbxSimulator, cluster: Cluster
) -> None:
    owner = await cluster.owner()
    standby = next(i for i in cluster.instances if i is not owner)
    # The standby serves the API too: it names the owner, and relays requests to it.
    health = await standby.health()
    (entry,) = health["pbxs"]
    assert (entry["role"], entry["owner"], entry["token"]) == ("standby", owner.name, 1)
    assert (await owner.health())["pbxs"][0]["role"] == "owner"
    stream_url = f"ws://127.0.0.1:{standby.port}/v1/stream?token={API_TOKEN}"
    async with connect(stream_url) as ws:
        channel = await standby.call_in(RECEPTIONIST)  # GET /v1/calls, relayed to the owner
        created = await standby.post("/v1/transfers", {"channel_id": channel, "number": TARGET})
        assert created.status_code == 201, created.text
        transfer_id = created.json()["id"]
        # The owner's changes reach the standby's stream clients (LISTEN/NOTIFY).
        async with asyncio.timeout(10):
            while True:
                message = json.loads(await ws.recv())
                transfer = message.get("transfer") or {}
                if transfer.get("id") == transfer_id and transfer["state"] == "consulting":
                    break
    await owner.state(transfer_id, "consulting")
    await cluster.kill(owner)
    sim.answer(sim.channel_of(TARGET))  # the target answers while nobody owns the PBX
    assert await cluster.owner(not_=owner) is standby
    final = await standby.final(transfer_id, within_s=15)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert sim.operate_count("complete") == 1
    # The PBX's truth: the caller now talks to the target, the receptionist is free.
    (call,) = sim.calls()
    legs = [next(iter(member.items())) for member in call["members"]]
    extensions = [fields["number"] for kind, fields in legs if kind == "extension"]
    callers = [fields["from"] for kind, fields in legs if kind == "inbound"]
    assert (extensions, callers) == ([TARGET], ["5550100"]), call
    health = await standby.health()
    assert (health["pbxs"][0]["role"], health["pbxs"][0]["token"]) == ("owner", 2)
    metrics = (await standby.get("/metrics")).text
    assert 'xferd_takeovers_total{pbx="default"} 1.0' in metrics


#: What a PBX request that acts on calls looks like to the simulator (reads and logins aside).
ACTIONS = (
    "call/transfer",
    "call/hangup",
    "call/hold",
    "call/unhold",
    "call/dial",
    "call/park",
    "call/listen",
)


def actions(sim: PbxSimulator) -> int:
    return sum(1 for r in sim.requests if r.endpoint in ACTIONS)


async def test_an_owner_frozen_past_its_lease_sends_nothing_when_it_wakes(
    sim: PbxSimulator, tmp_path: Path, ha_db: str
) -> None:
    # A short no-answer timer: due while the owner is frozen, so on waking it has a decision to take.
    cluster = Cluster(tmp_path, sim, ha_db, count=2, no_answer_timeout_s=6)
    try:
        await cluster.start()
        owner = await cluster.owner()
        standby = next(i for i in cluster.instances if i is not owner)
        channel = await owner.call_in(RECEPTIONIST)
        created = await owner.post("/v1/transfers", {"channel_id": channel, "number": TARGET})
        assert created.status_code == 201, created.text
        transfer_id = created.json()["id"]
        await owner.state(transfer_id, "consulting")
        owner.signal(signal.SIGSTOP)
        try:
            assert await cluster.owner(not_=owner) is standby  # took over after the TTL
            # The new owner re-armed the no-answer timer from the store and acts on it.
            final = await standby.final(transfer_id, within_s=20)
            assert (final["state"], final["reason"]) == ("aborted", "no_answer")
            done = actions(sim)
        finally:
            owner.signal(signal.SIGCONT)
        # Awake with its own timer overdue: it must notice the lost lease and send nothing.
        await until(lambda: any('"lease_lost"' in line for line in owner.lines), 10)

        # Its loop runs again: it answers, as a standby that sees the new owner.
        def sees_new_owner(r: httpx.Response) -> bool:
            entry = r.json()["pbxs"][0]
            return (entry["role"], entry["owner"]) == ("standby", standby.name)

        await until_http(sees_new_owner, owner.http, "/healthz", 10)
        await owner.get("/metrics")  # one more loop turn for anything it might still send
        assert actions(sim) == done
        assert sim.operate_count("complete") == 0
    finally:
        await cluster.close()
