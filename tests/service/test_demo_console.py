"""``xferd demo --console``: runs until Ctrl-C, prints the console URL and a login token that works,
and keeps calls coming so a transfer can be started and completed from the browser."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import httpx

from adapters.service.sessions import CSRF_COOKIE
from tests.service.conftest import START_WITHIN_S, XFERD, until_http


async def test_console_demo_serves_until_interrupted() -> None:
    proc = await asyncio.create_subprocess_exec(
        *XFERD, "demo", "--console",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(START_WITHIN_S):
            while not any("Ctrl-C" in line for line in printed):
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo exited early:\n" + "".join(printed)
                printed.append(line)
        text = "".join(printed)
        url = re.search(r"Supervisor console:\s+(http://127\.0\.0\.1:\d+)/console", text)
        token = re.search(r"admin token.*\n\n\s+(\S+)\n", text)
        assert url and token, text
        async with httpx.AsyncClient(base_url=url.group(1), timeout=10) as http:
            login = await http.post("/console/login", json={"token": token.group(1)})
            assert login.status_code == 204
            assert (await http.get("/console/me")).json() == {"name": "admin", "role": "admin"}
            # the traffic loop places calls at the receptionists
            calls = await until_http(
                lambda r: (
                    r.status_code == 200
                    and any(
                        m["number"] == "2000" and m["status"] in ("ANSWER", "ANSWERED")
                        for call in r.json()["items"]
                        for m in call["members"]
                    )
                ),
                http,
                "/v1/calls",
                30,
            )
            channel = next(
                m["channel_id"]
                for call in calls.json()["items"]
                for m in call["members"]
                if m["number"] == "2000"
            )
            csrf = {"X-CSRF-Token": http.cookies[CSRF_COOKIE]}
            started = await http.post(
                "/v1/transfers", json={"channel_id": channel, "number": "2005"}, headers=csrf
            )
            assert started.status_code == 201, started.text
            transfer_id = started.json()["id"]
            assert started.json()["initiated_by"] == "console:admin"
            # 2005 answers after a few seconds; on_answer = hold leaves completing to the user
            await until_http(
                lambda r: (
                    r.json().get("target", {}).get("status") == "answered"
                    and "complete" in r.json()["allowed_ops"]
                ),
                http,
                f"/v1/transfers/{transfer_id}",
                30,
            )
            done = await http.post(f"/v1/transfers/{transfer_id}/complete", headers=csrf)
            assert done.status_code == 200 and done.json()["state"] == "completed", done.text
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert token.group(1) not in stderr  # printed once, on stdout, never logged
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
