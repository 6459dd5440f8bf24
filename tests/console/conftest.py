"""Browser tests of the supervisor console: ``xferd run`` + the Yeastar simulator + Chromium.

The browser is Debian's Chromium (``/usr/bin/chromium``) driven by Playwright for
Python; ``scripts/check`` installs it with apt-get when it is missing.  Without
it the tests skip loudly here, and fail under ``CI`` (a check that silently
runs no browser test would lie).

Every wait is a Playwright ``expect`` / ``wait_for`` or a bounded poll of the
API or the simulator, never a sleep; every test is bounded by pytest-timeout.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters.service.roles import hash_token
from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.service.conftest import Xferd, write_config

CHROMIUM = Path(os.environ.get("XFERD_CHROMIUM", "/usr/bin/chromium"))

try:
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extras have it
    async_playwright = None  # type: ignore[assignment]

if async_playwright is None or not CHROMIUM.exists():
    why = (
        "browser tests NOT RUN: "
        + ("playwright is not installed" if async_playwright is None else f"no Chromium at {CHROMIUM}")
        + " (scripts/check installs it with apt-get install chromium)"
    )
    if os.environ.get("CI"):
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)

#: Users of the console tests: name → (role, token).
USERS = {
    "sue": ("supervisor", "sue-supervisor-token-0123456789"),
    "sam": ("supervisor", "sam-supervisor-token-0123456789"),
    "otto": ("operator", "otto-operator-token-0123456789"),
    "vera": ("viewer", "vera-viewer-token-0123456789"),
}
SESSION_SECRET = "console-tests-session-secret-0123456789abcdef"
#: Bound on one browser-side wait (a loaded 2-core machine runs five helpers' tests).
WAIT_MS = 15_000

_numbers = itertools.count(4100)


def free_port() -> int:
    """A loopback port free now (the service must come back on the same one after a restart)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def console_config(tmp: Path, sim: PbxSimulator, **policy: Any) -> Path:
    """``xferd run`` config: the simulator, users of every role, a fixed port and session secret
    (sessions outlive a restart), transfers that wait for the operator once answered."""
    config = write_config(tmp / "xferd.toml", sim, tmp / "xferd.sqlite3", on_answer="hold", **policy)
    text = config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{free_port()}"')
    text = text.replace("[api]\n", f'[api]\nsession_secret = "{SESSION_SECRET}"\n', 1)
    for name, (role, token) in USERS.items():
        text += f'[[api.users]]\nname = "{name}"\nrole = "{role}"\ntoken_hash = "{hash_token(token)}"\n'
    config.write_text(text)
    return config


def extension(sim: PbxSimulator, phone: Phone | None = None) -> str:
    """A fresh extension number on the simulator (each test uses its own)."""
    number = str(next(_numbers))
    sim.add_extension(number, phone or Phone(answer_after=0.05))
    return number


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def xf(sim: PbxSimulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Xferd]:
    tmp = tmp_path_factory.mktemp("console")
    service = await Xferd(console_config(tmp, sim, no_answer_timeout_s=30), sim).start()
    yield service
    assert await service.terminate() == 0
    await service.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile per test (its own cookies), 1440×900."""
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    await ctx.close()


class Console:
    """One logged-in console page, with the page errors it raised (a test fails on any)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    async def open(cls, context: BrowserContext, xf: Xferd, user: str) -> Console:
        console = cls(await context.new_page())
        await console.login(xf, user)
        return console

    async def login(self, xf: Xferd, user: str) -> None:
        page = self.page
        await page.goto(f"http://127.0.0.1:{xf.port}/console/")
        await page.locator("#login-token").fill(USERS[user][1])
        await page.locator("#login-token").press("Enter")
        await expect(page.locator("#me")).to_contain_text(user)
        await expect(page.locator("#stream-status")).to_have_text("Live")

    def row(self, number: str) -> Any:
        """The calls-table row of the call ``number`` takes part in (as a party: not as the
        target another call's transfer names)."""
        party = self.page.locator(".leg .num", has_text=number)
        return self.page.locator("#calls-body tr[data-key]", has=party)

    def transfer_card(self) -> Any:
        return self.page.locator('#detail section[aria-label="transfer"]')

    async def select_call(self, number: str) -> None:
        await self.row(number).click()
        await expect(self.page.locator('#detail section[aria-label="call"]')).to_contain_text(number)

    async def csrf(self) -> str:
        cookies = await self.page.context.cookies()
        return next(c["value"] for c in cookies if c["name"] == "xferd_csrf")


__all__ = ["WAIT_MS", "Console", "Xferd", "console_config", "expect", "extension"]
