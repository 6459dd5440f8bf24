"""Screenshots of the console for the docs: ``python -m tests.console.screenshots [OUT_DIR]``.

Stages a small office on the Yeastar simulator (``xferd run`` against it, as in
the browser tests): calls in progress, a transfer whose target rings with a
fallback behind it, one answered and waiting for the operator, one swapped
(the target on hold), and a few finished ones; then photographs the login, the
live view, the history and the audit log into ``docs/console/`` (by default).
Needs Chromium at ``/usr/bin/chromium`` (``XFERD_CHROMIUM`` to override).
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright, expect

from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.console.conftest import CHROMIUM, USERS, Console, console_config
from tests.service.conftest import Xferd

OUT = Path(__file__).resolve().parents[2] / "docs" / "console"
NEVER = Phone(answer_after=None)


async def stage(xf: Xferd) -> dict[str, str]:
    """Calls and transfers worth looking at; the id of the transfer to show in detail."""
    sim = xf.sim
    xf.http.headers["Authorization"] = f"Bearer {USERS['sue'][1]}"
    agents = [str(n) for n in range(2001, 2010)]
    for number in agents:
        sim.add_extension(number, Phone(answer_after=0.05))
    sim.add_extension("2101", NEVER)  # rings on
    sim.add_extension("2102", Phone(answer_after=0.2))
    sim.add_extension("2103", Phone(answer_after=0.2))
    sim.add_extension("2104", Phone(busy=True))
    sim.add_extension("2105", Phone(answer_after=0.2))
    callers = iter(["5550143", "5550178", "5550112", "5550196", "5550131", "5550157", "5550120", "5550184"])

    async def call(agent: str) -> None:
        sim.place_call(next(callers), agent, inbound_trunk="trunk1")
        await wait_leg(xf, agent)

    async def transfer(agent: str, number: str, **policy: Any) -> str:
        body: dict[str, Any] = {"extension": agent, "number": number}
        if policy:
            body["policy"] = policy
        answer = await xf.post("/v1/transfers", body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    # Finished ones first, so the history has a story.
    await call(agents[0])
    done = await transfer(agents[0], "2102")
    await xf.state(done, "consulting", "answered")
    assert (await xf.post(f"/v1/transfers/{done}/complete")).status_code == 200
    await call(agents[1])
    busy = await transfer(agents[1], "2104")
    await xf.final(busy)
    await call(agents[2])
    blind = await xf.post("/v1/transfers", {"extension": agents[2], "number": "2105", "type": "blind"})
    assert blind.status_code == 201, blind.text
    await xf.final(blind.json()["id"])

    # Live: plain calls, a ringing target with a fallback, an answered one, a swapped one.
    for agent in agents[3:8]:
        await call(agent)
    await transfer(agents[3], "2101", fallback_numbers=["2102"], no_answer_timeout_s=45)
    answered = await transfer(agents[4], "2103")
    await xf.state(answered, "consulting", "answered")
    swapped = await transfer(agents[5], "2102")
    await xf.state(swapped, "consulting", "answered")
    assert (await xf.post(f"/v1/transfers/{swapped}/swap")).status_code == 200
    await xf.state(swapped, "swapped")
    return {"answered_agent": agents[4], "done": done}


async def wait_leg(xf: Xferd, number: str) -> None:
    async with asyncio.timeout(10):
        while True:
            items = (await xf.get("/v1/calls")).json()["items"]
            if any(m["number"] == number and m["status"] == "ANSWER" for c in items for m in c["members"]):
                return
            await asyncio.sleep(0.05)


async def shoot(page: Page, out: Path, name: str) -> None:
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(out / f"{name}.png"))
    print(f"wrote {out / name}.png")


async def main(out: Path) -> None:
    sim = PbxSimulator()
    await sim.start()
    with tempfile.TemporaryDirectory(prefix="xferd-shots-") as tmp:
        xf = await Xferd(console_config(Path(tmp), sim, no_answer_timeout_s=30), sim).start()
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
                context = await browser.new_context(viewport={"width": 1440, "height": 860})
                page = await context.new_page()
                await page.goto(f"http://127.0.0.1:{xf.port}/console/")
                await expect(page.locator("#login-token")).to_be_visible()
                await page.locator("#login-token").fill("••••••••••••••••••••••")
                await shoot(page, out, "login")
                await page.locator("#login-token").fill("")
                console = Console(page)
                await console.login(xf, "sue")
                # The page watches the office fill up: every duration is one it saw start.
                scene = await stage(xf)
                await console.select_call(scene["answered_agent"])
                await expect(console.transfer_card()).to_contain_text("answered")
                await expect(console.transfer_card().locator(".timeline li").first).to_be_visible()
                await expect(page.locator("#detail .since.big")).to_have_text(re.compile(r"^0:0[3-9]$"))
                await shoot(page, out, "live")
                await page.keyboard.press("g")
                await page.keyboard.press("h")
                await page.locator(f'#history-body tr[data-transfer="{scene["done"]}"]').click()
                await expect(console.transfer_card()).to_have_attribute("data-state", "completed")
                await shoot(page, out, "history")
                await page.keyboard.press("g")
                await page.keyboard.press("a")
                await expect(page.locator("#audit-body tr").nth(3)).to_be_visible()
                await shoot(page, out, "audit")
                await page.keyboard.press("g")
                await page.keyboard.press("l")
                await console.select_call(scene["answered_agent"])
                await page.keyboard.press("?")
                await shoot(page, out, "keys")
                await page.keyboard.press("Escape")
                # The service goes away under the page: the banner, the greyed-out view.
                await xf.terminate()
                await expect(page.locator("#banner")).to_contain_text("next try in")
                await shoot(page, out, "reconnecting")
                await browser.close()
        finally:
            if xf.proc is not None and xf.proc.returncode is None:
                await xf.terminate()
            await xf.close()
            await sim.stop()


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    where.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(where))
