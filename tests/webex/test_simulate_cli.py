"""``xferd simulate --pbx webex``: the Webex simulator alone, scriptable over HTTP, until SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.service.conftest import XFERD


async def test_simulate_webex_serves_the_api_and_its_script_routes() -> None:
    proc = await asyncio.create_subprocess_exec(
        *XFERD, "simulate", "--pbx", "webex", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(15):
            first = (await proc.stdout.readline()).decode()
            credentials = (await proc.stdout.readline()).decode()
            integration = (await proc.stdout.readline()).decode()
        assert first.startswith("Webex Calling simulator at http://127.0.0.1:")
        base_url = first.split(" at ")[1].strip()
        token = dict(part.split("=", 1) for part in credentials.split())["access_token"]
        assert "client_id=" in integration and "refresh_token=sim-refresh-" in integration
        async with httpx.AsyncClient(base_url=base_url.removesuffix("/v1")) as http:
            assert (await http.get("/v1/telephony/calls")).status_code == 401  # a token is required
            party = await http.post("/sim/party", json={"number": "+15553000009", "answer_after": 0.05})
            assert party.status_code == 204
            call_id = (await http.post("/sim/incoming", json={"from": "+15552000009"})).json()["callId"]
            auth = {"Authorization": f"Bearer {token}"}
            listed = (await http.get("/v1/telephony/calls", headers=auth)).json()["items"]
            assert [(c["id"], c["state"], c["personality"]) for c in listed] == [
                (call_id, "connected", "terminator")
            ]
            dialled = await http.post(
                "/v1/telephony/calls/dial", json={"destination": "+15553000009"}, headers=auth
            )
            assert dialled.status_code == 201 and dialled.json()["callId"]
            assert (await http.post("/sim/hangup", json={"callId": call_id})).status_code == 204
            bad = await http.post("/sim/party", json={"number": "+1", "answer_after": "soon"})
            assert bad.status_code == 400 and "answer_after" in bad.json()["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await proc.communicate()
    assert proc.returncode == 0
