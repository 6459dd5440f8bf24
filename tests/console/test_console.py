"""The supervisor console in a real browser, against ``xferd run`` and the Yeastar simulator.

What a supervisor does with it: log in, see a call appear, start an attended
transfer from the page, watch the target ring and answer, complete it from the
keyboard, and find the final state and the audit entry; that a viewer has no
button to act (and the API refuses the viewer anyway); that the page recovers
by itself when the stream drops; that two supervisors clicking complete at once
send the PBX exactly one complete; and that a call action (listen) reaches the PBX.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.console.conftest import USERS, Console, Xferd, console_config, expect, extension
from tests.service.conftest import until_http

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


def requests_to(sim: PbxSimulator, endpoint: str, **fields: str) -> list[dict[str, object]]:
    """The bodies the simulator received at ``endpoint`` that carry ``fields``."""
    return [
        r.body
        for r in sim.requests
        if r.endpoint == endpoint and all(r.body.get(k) == v for k, v in fields.items())
    ]


async def test_attended_transfer_from_the_page_completed_by_keyboard(context, xf: Xferd) -> None:
    # The target's phone rings until the test answers it (after the page showed it ringing).
    agent, target = extension(xf.sim), extension(xf.sim, Phone(answer_after=None))
    console = await Console.open(context, xf, "sue")
    page = console.page

    channel = await xf.call_in(agent)
    await expect(console.row(agent)).to_be_visible()
    await expect(console.row(agent)).to_contain_text("talking")
    await console.select_call(agent)

    # t: the transfer dialog; type the target, Enter starts an attended transfer.
    await page.keyboard.press("t")
    await expect(page.locator("#dialog")).to_be_visible()
    await page.keyboard.type(target)
    await page.keyboard.press("Enter")
    card = console.transfer_card()
    await expect(card).to_have_attribute("data-state", "consulting")
    await expect(card).to_contain_text("ringing")
    await expect(card).to_contain_text("sue (console)")
    transfer_id = await card.get_attribute("data-transfer")
    assert transfer_id
    await expect(card.locator("[data-deadline]")).to_contain_text("no answer in")
    await expect(card.locator("button[data-op]")).not_to_have_count(0)
    xf.sim.answer(xf.sim.channel_of(target))
    await expect(card).to_contain_text("answered")
    await expect(card.locator("[data-deadline]")).to_have_count(0)  # the timer is off once answered
    # Only what the transfer allows now is offered.
    await expect(card.locator("button[data-op]")).to_have_count(4)
    assert xf.sim.operate_count("complete") == 0

    await page.keyboard.press("c")
    await expect(card).to_have_attribute("data-state", "completed")
    await expect(card).to_contain_text("by an operator")
    await expect(card.locator("button[data-op]")).to_have_count(0)
    assert xf.sim.operate_count("complete") == 1
    assert requests_to(xf.sim, "call/transfer", channel_id=channel, number=target)

    # The timeline tells the story; the history and the audit log have it.
    await expect(card.locator(".timeline")).to_contain_text("complete")
    await page.keyboard.press("g")
    await page.keyboard.press("h")
    await expect(page.locator(f'#history-body tr[data-transfer="{transfer_id}"]')).to_contain_text(
        "completed"
    )
    await page.keyboard.press("g")
    await page.keyboard.press("a")
    audit = page.locator("#audit-body tr", has_text="transfer.complete")
    await expect(audit.first).to_contain_text("sue")
    await expect(audit.first).to_contain_text(transfer_id[:8])
    assert console.errors == []


async def test_viewer_sees_calls_but_no_button_and_the_api_refuses(context, xf: Xferd) -> None:
    agent = extension(xf.sim)
    console = await Console.open(context, xf, "vera")
    page = console.page
    channel = await xf.call_in(agent)
    await console.select_call(agent)
    await expect(page.locator("#me")).to_contain_text("viewer")
    # No action anywhere: no transfer button, no call actions, no audit tab; keys do nothing.
    await expect(page.locator("#detail button")).to_have_count(0)
    await expect(page.locator("#tab-audit")).to_be_hidden()
    await page.keyboard.press("t")
    await expect(page.locator("#dialog")).to_be_hidden()
    # The API refuses the viewer's session too (the buttons are not the protection).
    csrf = await console.csrf()
    for path, body in (
        ("/v1/transfers", {"channel_id": channel, "number": "2999"}),
        (f"/v1/calls/{channel}/hangup", None),
    ):
        answer = await page.request.post(
            f"http://127.0.0.1:{xf.port}{path}", data=body, headers={"X-CSRF-Token": csrf}
        )
        assert answer.status == 403, await answer.text()
        assert "viewer" in (await answer.json())["detail"]
    assert not requests_to(xf.sim, "call/hangup", channel_id=channel)
    assert console.errors == []


async def test_two_supervisors_complete_at_once_one_complete_reaches_the_pbx(
    context, browser, xf: Xferd
) -> None:
    agent, target = extension(xf.sim), extension(xf.sim, Phone(answer_after=0.2))
    await xf.call_in(agent)
    started = await xf.post("/v1/transfers", {"extension": agent, "number": target})
    assert started.status_code == 201, started.text
    transfer_id = started.json()["id"]
    await xf.state(transfer_id, "consulting", "answered")
    other = await browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        consoles = [await Console.open(context, xf, "sue"), await Console.open(other, xf, "sam")]
        buttons = []
        for console in consoles:
            await console.select_call(agent)
            button = console.transfer_card().locator('button[data-op="complete"]')
            await expect(button).to_be_enabled()
            buttons.append(button)
        before = xf.sim.operate_count("complete")
        sent: list[str] = []
        for console in consoles:
            console.page.on(
                "request",
                lambda r: sent.append(r.url) if r.method == "POST" and r.url.endswith("/complete") else None,
            )
        # Both clicks leave in the same instant: straight to the buttons, with none of Playwright's
        # waits (one of which would see the other page's click disable or remove its button).
        handles = [await button.element_handle() for button in buttons]
        await asyncio.gather(*(handle.evaluate("button => button.click()") for handle in handles))
        for console in consoles:
            await expect(console.transfer_card()).to_have_attribute("data-state", "completed")
        final = await xf.final(transfer_id)
        assert final["state"] == "completed"
        # However the two clicks interleave — both requests reach the service (the later one is
        # refused there), or the second page already knows a complete is in flight (`in_flight`
        # from the stream) and sends nothing — the PBX gets exactly one complete.
        assert 1 <= len(sent) <= 2
        assert xf.sim.operate_count("complete") - before == 1
        assert len(requests_to(xf.sim, "call/transfer", attended_operate="complete")) == before + 1
        audit = (await xf.get(f"/v1/audit?transfer_id={transfer_id}")).json()["items"]
        statuses = sorted(e["status"] for e in audit if e["action"] == "transfer.complete")
        assert len(statuses) == len(sent) and statuses[0] == 200  # one accepted
        assert all(status == 409 for status in statuses[1:])  # the other refused, nothing sent
        for console in consoles:
            assert console.errors == []
    finally:
        await other.close()


async def test_listen_button_reaches_the_pbx(context, xf: Xferd) -> None:
    agent, boss = extension(xf.sim), extension(xf.sim, Phone(answer_after=0.05))
    console = await Console.open(context, xf, "sue")
    page = console.page
    channel = await xf.call_in(agent)
    await console.select_call(agent)
    leg = page.locator(f'#detail tbody[data-channel="{channel}"]')
    await leg.locator('button[data-action="listen"]').click()
    await page.locator("#dialog input[name=monitor]").fill(boss)
    await page.locator("#dialog input[name=monitor]").press("Enter")
    await expect(page.locator("#dialog")).to_be_hidden()
    await expect(page.locator(".toast-ok")).to_contain_text(f"extension {boss} rings")
    assert requests_to(xf.sim, "call/listen", channel_id=channel, monitor=boss, type="listen")
    # The supervisor's monitor leg shows on the call.
    await expect(page.locator('#detail section[aria-label="call"]')).to_contain_text("listening")
    assert console.errors == []


async def test_park_by_key_then_retrieve_from_the_parked_list(context, xf: Xferd) -> None:
    agent, colleague = extension(xf.sim), extension(xf.sim, Phone(answer_after=0.05))
    console = await Console.open(context, xf, "sue")
    page = console.page
    agent_channel = await xf.call_in(agent)
    await console.select_call(agent)
    # p: park; the dialog proposes the party the extension talks to (the caller waits).
    await page.keyboard.press("p")
    await expect(page.locator("#dialog select[name=channel] option:checked")).to_contain_text("inbound")
    await page.locator("#dialog button[type=submit]").click()
    await expect(page.locator(".toast-ok", has_text="Parked in slot")).to_be_visible()
    parks = requests_to(xf.sim, "call/park")
    assert parks and parks[-1]["channel_id"] not in ("", agent_channel)  # the caller, not the agent
    row = page.locator("#parked-body tr", has_text=agent)
    await expect(row).to_be_visible()
    slot = (await row.locator("td").first.text_content() or "").strip()
    assert slot
    await row.locator("button", has_text="Retrieve").click()
    await page.locator("#dialog input[name=extension]").fill(colleague)
    await page.locator("#dialog input[name=extension]").press("Enter")
    await expect(page.locator(".toast-ok", has_text=f"extension {colleague} rings")).to_be_visible()
    assert requests_to(xf.sim, "call/dial", caller=colleague, callee=slot)
    assert console.errors == []


async def test_refusal_shows_the_api_sentence(context, xf: Xferd) -> None:
    agent = extension(xf.sim)
    console = await Console.open(context, xf, "otto")
    page = console.page
    await xf.call_in(agent)
    await console.select_call(agent)
    # An operator: transfer yes, call actions no.
    await expect(page.locator("#detail button[data-action]")).to_have_count(0)
    await page.locator("#start-transfer").click()
    await page.keyboard.type("9" * 70)  # passes the page's check; the API's limit is 64
    await page.keyboard.press("Enter")
    error = page.locator("#dialog .error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("number")
    assert console.errors == []


async def test_values_from_the_pbx_are_shown_as_text(context, xf: Xferd) -> None:
    """A "number" that is markup stays text: no element is made of it, no script runs."""
    agent = extension(xf.sim)
    console = await Console.open(context, xf, "sue")
    page = console.page
    await xf.call_in(agent)
    markup = "<img/src=x/onerror=window.__pwned=1>"
    started = await xf.post("/v1/transfers", {"extension": agent, "number": markup})
    assert started.status_code == 201, started.text
    row = page.locator("#transfers-body tr", has_text=markup)
    await expect(row).to_be_visible()
    await row.click()
    await expect(console.transfer_card()).to_contain_text(markup)
    assert await page.locator("#app-view img").count() == 0
    assert await page.evaluate("window.__pwned === undefined")
    assert (await xf.post(f"/v1/transfers/{started.json()['id']}/abort")).status_code == 200
    assert console.errors == []


# -- the stream drops: the service restarts under the page -------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def own_xf(tmp_path: Path) -> AsyncIterator[Xferd]:
    """A service and simulator of the test's own (it restarts the one or floods the other)."""
    sim = PbxSimulator()
    await sim.start()
    try:
        service = await Xferd(console_config(tmp_path, sim), sim).start()
        yield service
        await service.close()
    finally:
        await sim.stop()


async def test_stream_drop_page_recovers_without_reload(context, own_xf: Xferd) -> None:
    xf = own_xf
    first, second = extension(xf.sim), extension(xf.sim)
    console = await Console.open(context, xf, "sue")
    page = console.page
    await page.evaluate("window.__notReloaded = true")
    await xf.call_in(first)
    await expect(console.row(first)).to_be_visible()

    assert await xf.terminate() == 0
    await expect(page.locator("#banner")).to_be_visible()
    await expect(page.locator("#banner")).to_contain_text("Reconnecting")
    await expect(page.locator("#stream-status")).to_have_text("Reconnecting")

    await xf.start()  # same port, same session secret: the page's session is still good
    await expect(page.locator("#stream-status")).to_have_text("Live", timeout=30_000)
    await expect(page.locator("#banner")).to_be_hidden()
    await expect(console.row(first)).to_be_visible()  # re-snapshot: the call is still there
    await xf.call_in(second)
    await expect(console.row(second)).to_be_visible()  # and changes flow again
    assert await page.evaluate("window.__notReloaded") is True
    assert await xf.terminate() == 0
    assert console.errors == []


async def test_a_thousand_calls_stay_paged_and_searchable(context, own_xf: Xferd) -> None:
    """1,000 live calls: 50 rows in the page whatever the count, search finds one, keys still move."""
    xf = own_xf
    console = await Console.open(context, xf, "otto")
    page = console.page
    numbers = [str(n) for n in range(6000, 7000)]
    for number in numbers:
        xf.sim.add_extension(number, Phone(answer_after=0.05))
        xf.sim.place_call(f"555{number}", number, inbound_trunk="trunk1")
    await expect(page.locator("#calls-count")).to_have_text("1000", timeout=60_000)
    await expect(page.locator("#calls-body tr")).to_have_count(50)
    await expect(page.locator("#calls-pager")).to_contain_text("1–50 of 1000")
    await page.keyboard.press("]")
    await expect(page.locator("#calls-pager")).to_contain_text("51–100 of 1000")
    # Search by extension: one row; Enter selects it; the detail shows it.
    await page.keyboard.press("/")
    await page.keyboard.type("6789")
    await expect(page.locator("#calls-body tr[data-key]")).to_have_count(1)
    await page.keyboard.press("Enter")
    await expect(page.locator('#detail section[aria-label="call"]')).to_contain_text("5556789")
    # Clear the filter: j moves to the next call in the full list.
    await page.locator("#search").fill("")
    await page.keyboard.press("Escape")  # leave the search box: keys are commands again
    await page.keyboard.press("j")
    await expect(page.locator("#calls-body tr.selected")).to_have_count(1)
    # How long one full redraw of the 1,000 calls takes in this browser (printed, not asserted).
    took = await page.evaluate(
        """() => { const t0 = performance.now();
                   for (let i = 0; i < 20; i++) { window.xferdConsole.app.redraw("all");
                     window.xferdConsole.draw(); }
                   return (performance.now() - t0) / 20; }"""
    )
    print(f"\nconsole redraw with 1,000 calls: {took:.1f} ms")
    assert await xf.terminate() == 0
    assert console.errors == []


async def test_wrong_token_and_expired_session(context, xf: Xferd) -> None:
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{xf.port}/console/")
    await page.locator("#login-token").fill("not-a-token")
    await page.locator("#login-token").press("Enter")
    await expect(page.locator("#login-error")).to_have_text("Login failed.")
    console = Console(page)
    await console.login(xf, "otto")
    # The session ends under the page (logged out elsewhere): the next request lands on the login.
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{xf.port}", cookies=cookies) as http:
        answer = await http.post("/console/logout", headers={"X-CSRF-Token": cookies["xferd_csrf"]})
        assert answer.status_code == 204
    # (the browser keeps its cookie: the service itself no longer honours that session)
    await page.keyboard.press("r")  # refresh: asks the API, which says 401
    await expect(page.locator("#login-view")).to_be_visible()
    await expect(page.locator("#login-error")).to_contain_text("session has ended")
    await until_http(lambda r: r.status_code == 200, xf.http, "/healthz", 5)


async def test_logout(context, xf: Xferd) -> None:
    console = await Console.open(context, xf, "sue")
    await console.page.locator("#logout").click()
    await expect(console.page.locator("#login-view")).to_be_visible()
    names = {c["name"] for c in await context.cookies()}
    assert "xferd_session" not in names
    assert USERS["sue"][1] not in await console.page.content()  # the token is not kept in the page


async def test_state_model_keeps_one_call_per_leg_and_finished_transfers_in_history(
    context, xf: Xferd
) -> None:
    """The page's model (state.js) on its own: messages in, what the page would draw out."""
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{xf.port}/console/")
    result = await page.evaluate(STATE_SCRIPT)
    assert result == {
        "inexact": False,  # seen at the snapshot: its start was not observed ("≥")
        "c1": ["B"],
        "c2": ["A", "C"],
        "onCall": "t1",
        "afterFinal": None,
        "history": ["t1", "old"],
        "calls": ["p|c1"],
        "callOfA": None,
    }


#: Runs in the page: the model fed by hand, what it holds after each step.
STATE_SCRIPT = """async () => {
  const { LiveState } = await import("/console/static/state.js");
  const s = new LiveState();
  const leg = (channel_id, number, status, kind = "extension") => ({ channel_id, number, status, kind });
  const transfer = (state, at) => ({
    id: "t1", state, updated_at: at,
    transferor: { channel_id: "A" }, transferee: { channel_id: "B" }, target: { channel_id: "C" },
  });
  const members = [leg("A", "1", "ANSWER"), leg("B", "5", "ANSWERED", "inbound")];
  const c1 = { call_id: "c1", pbx: "p", members };
  s.applySnapshot({
    calls: [c1],
    transfers: [{ id: "old", state: "completed", updated_at: "2026-01-01T00:00:00Z" }],
  }, 1000);
  const inexact = s.calls.get("p|c1").legs.get("A").exact;
  // The consultation re-reports A under a new call: it leaves c1.
  const c2 = { call_id: "c2", pbx: "p", members: [leg("A", "100", "ANSWER"), leg("C", "200", "RING")] };
  s.apply({ kind: "call", call: c2 }, 2000);
  const legsOf = (key) => [...s.calls.get(key).legs.keys()];
  const [inC1, inC2] = [legsOf("p|c1"), legsOf("p|c2")];
  // A transfer on A: the call knows it; final, it moves to the history.
  s.applyTransfer(transfer("consulting", "2026-01-01T00:01:00Z"));
  const onCall = s.transferOfCall(s.calls.get("p|c2")).id;
  s.applyTransfer(transfer("aborted", "2026-01-01T00:02:00Z"));
  const afterFinal = s.transferOfCall(s.calls.get("p|c2"));
  // Every leg gone: the call is gone.
  s.apply({ kind: "call", call: { call_id: "c2", pbx: "p", members: [] } }, 3000);
  return {
    inexact, c1: inC1, c2: inC2, onCall, afterFinal, history: s.history.map((t) => t.id),
    calls: [...s.calls.keys()], callOfA: s.callOfChannel("A"),
  };
}"""
