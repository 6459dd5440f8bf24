"""Black box: a routing rule in ``xferd run`` on Webex Calling, against the Webex simulator.

The user (the token's owner, ``user_number`` configured) answers an incoming
call; the rule on ``call.answered`` for the user's number attended-transfers it
(hold + dial) to a party that answers, and the transfer completes by itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from adapters.webex import WebexSimulator
from tests.service.conftest import until_http
from tests.webex.conftest import WebexXferd, webex_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

TARGET = "+15553009001"
CALLER = "+15552009001"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[WebexSimulator]:
    simulator = WebexSimulator()
    await simulator.start()
    simulator.set_party(TARGET, answer_after=0.2)
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def xf(sim: WebexSimulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WebexXferd]:
    tmp = tmp_path_factory.mktemp("webex-rules")
    rules = tmp / "rules.toml"
    rules.write_text(
        f"""
[[rules]]
name = "user-to-desk"
on = "call.answered"
extensions = ["{sim.user_number}"]
if = 'call.caller == "{CALLER}" && leg.kind == "extension"'
then = {{ attended = "{TARGET}" }}
"""
    )
    config = webex_config(
        tmp / "xferd.toml", sim, tmp / "xferd.sqlite3", extra_pbx={"user_number": sim.user_number}
    )
    config.write_text(config.read_text() + f'[rules]\npath = "{rules}"\n')
    service = await WebexXferd(config, sim).start()
    yield service
    assert await service.terminate() == 0
    await service.close()


async def test_rule_transfers_the_users_answered_call(xf: WebexXferd) -> None:
    # Not xf.call_in(): it waits to see the call talking, and the rule holds it within a few ms.
    original = xf.sim.incoming_call(CALLER)
    response = await until_http(
        lambda r: any(t["initiated_by"] == "rule:user-to-desk" for t in r.json()["items"]),
        xf.http,
        "/v1/transfers",
        8,
    )
    transfer = next(t for t in response.json()["items"] if t["initiated_by"] == "rule:user-to-desk")
    assert transfer["transferor"]["channel_id"] == original
    final = await xf.final(transfer["id"])
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert final["target"]["number"] == TARGET
    assert final["history"][0]["rule"]["decision"]["number"] == TARGET
    paths = [
        r.path.rsplit("/", 1)[1]
        for r in xf.sim.requests
        if r.method == "POST" and "/telephony/calls/" in r.path
    ]
    assert paths[-3:] == ["hold", "dial", "transfer"]
    counters = {r["name"]: r["counters"] for r in (await xf.get("/v1/rules")).json()["rules"]}
    assert counters["user-to-desk"]["fired"] == 1
