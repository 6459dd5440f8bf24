"""Black box: routing rules in ``xferd run`` against the Yeastar simulator, seen only over HTTP.

A rule fires on the receptionist answering, the transfer completes by itself;
shadow rules send nothing; ``GET /v1/rules`` and ``/metrics`` count; a bad file
is refused on reload (422, old rules kept) and at start (exit 2, one line);
SIGHUP reloads; an ``ask`` rule asks a URL that answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.service.conftest import XFERD, Xferd, until_http, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

_numbers = itertools.count(3100)


def rules_text(ask_url: str, extra: str = "") -> str:
    return f"""
zone = "Europe/Paris"

[[rules]]
name = "try-queue"
mode = "shadow"
on = "call.answered"
extensions = ["3100"]
then = {{ blind = "6200" }}

[[rules]]
name = "reception"
on = "call.answered"
extensions = ["3100"]
if = 'call.direction == "inbound"'
then = {{ attended = "3101", policy = {{ on_answer = "complete" }} }}

[[rules]]
name = "crm"
on = "call.answered"
extensions = ["3102"]
then = {{ ask = "{ask_url}", timeout_s = 2, retries = 1 }}
{extra}
"""


class Crm:
    """A tiny HTTP endpoint answering every POST with ``answer`` (and keeping the bodies)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.bodies: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/route"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        self.bodies.append(json.loads(await reader.readexactly(length)))
        body = json.dumps(self.answer).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    await simulator.start()
    for number in ("3100", "3101", "3102", "3103"):
        simulator.add_extension(number, Phone(answer_after=0.1))
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def crm() -> AsyncIterator[Crm]:
    server = Crm({"number": "3103", "type": "attended"})
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(
    sim: PbxSimulator, crm: Crm, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Xferd, Path, str]]:
    tmp = tmp_path_factory.mktemp("rules-blackbox")
    url = await crm.start()
    rules = tmp / "rules.toml"
    rules.write_text(rules_text(url))
    config = write_config(tmp / "xferd.toml", sim, tmp / "xferd.sqlite3", no_answer_timeout_s=2)
    config.write_text(config.read_text() + f'[rules]\npath = "{rules}"\n')
    service = await Xferd(config, sim).start()
    yield service, rules, url
    assert await service.terminate() == 0
    await service.close()


async def rule_transfer(xf: Xferd, rule: str, channel: str) -> dict[str, Any]:
    """The transfer ``rule`` started from ``channel`` (polled: the rule acts by itself)."""

    def found(response: Any) -> bool:
        return any(
            t["initiated_by"] == f"rule:{rule}" and t["transferor"]["channel_id"] == channel
            for t in response.json()["items"]
        )

    response = await until_http(found, xf.http, "/v1/transfers", 8)
    return next(
        t
        for t in response.json()["items"]
        if t["initiated_by"] == f"rule:{rule}" and t["transferor"]["channel_id"] == channel
    )


async def test_rule_fires_on_answer_and_completes(setup: tuple[Xferd, Path, str]) -> None:
    xf, _, _ = setup
    channel = await xf.call_in("3100")
    transfer = await rule_transfer(xf, "reception", channel)
    final = await xf.final(transfer["id"])
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert final["target"]["number"] == "3101"
    decision = final["history"][0]
    assert decision["trigger"] == "rule:reception"
    assert decision["rule"]["decision"]["number"] == "3101"
    listed = (await xf.get("/v1/rules")).json()
    by_name = {rule["name"]: rule for rule in listed["rules"]}
    assert by_name["reception"]["counters"]["fired"] >= 1
    assert by_name["try-queue"]["counters"]["shadow"] >= 1 and by_name["try-queue"]["counters"]["fired"] == 0
    # the shadow rule sent nothing: no blind transfer ever reached the PBX
    assert not [r for r in xf.sim.requests if r.endpoint == "call/transfer" and r.body.get("type") == "blind"]
    metrics = (await xf.get("/metrics")).text
    assert 'xferd_rule_events_total{counter="fired",rule="reception"}' in metrics
    assert any(line.get("event") == "rule" and line.get("rule") == "reception" for line in xf.logs())


async def test_ask_rule_transfers_where_the_url_says(setup: tuple[Xferd, Path, str], crm: Crm) -> None:
    xf, _, _ = setup
    channel = await xf.call_in("3102")
    transfer = await rule_transfer(xf, "crm", channel)
    final = await xf.final(transfer["id"])
    assert (final["state"], final["target"]["number"]) == ("completed", "3103")
    (body,) = [b for b in crm.bodies if b["facts"]["leg"]["channel"] == channel]
    assert body["rule"] == "crm" and body["facts"]["call"]["direction"] == "inbound"


async def test_reload_refuses_a_bad_file_and_sighup_takes_a_good_one(setup: tuple[Xferd, Path, str]) -> None:
    xf, rules, url = setup
    good = rules.read_text()
    rules.write_text(good + '\n[[rules]]\nname = "broken"\non = "call.answered"\nif = "leg.nmber == 1"\n'
                     'then = { attended = "1" }\n')  # fmt: skip
    refused = await xf.post("/v1/rules/reload")
    assert refused.status_code == 422
    assert refused.json()["error"] == "invalid_rules" and 'rule "broken": if:' in refused.json()["detail"]
    assert "broken" not in [r["name"] for r in (await xf.get("/v1/rules")).json()["rules"]]
    rules.write_text(
        rules_text(url, '\n[[rules]]\nname = "added"\non = "call.held"\nthen = { blind = "1" }\n')
    )
    assert xf.proc is not None
    xf.proc.send_signal(signal.SIGHUP)
    await until_http(
        lambda r: "added" in [rule["name"] for rule in r.json()["rules"]], xf.http, "/v1/rules", 5
    )
    ok = await xf.post("/v1/rules/reload")
    assert ok.status_code == 200 and ok.json()["reloads"] >= 2


async def test_a_bad_rules_file_stops_the_start_with_one_line(sim: PbxSimulator, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nname = "vip"\non = "call.answered"\nif = "call.caller =="\nthen = { attended = "1" }\n'
    )
    config = write_config(tmp_path / "xferd.toml", sim, tmp_path / "x.sqlite3")
    env = {**os.environ, "XFERD_PBX_CLIENT_SECRET": sim.config.client_secret}
    proc = await asyncio.create_subprocess_exec(
        *XFERD, "run", "--config", str(config), "--rules", str(rules), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f'xferd: rules error in {rules}: rule "vip": if: syntax error')
    assert "at line 4 column" in lines[0]
