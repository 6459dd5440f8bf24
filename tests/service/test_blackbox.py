"""Black box: ``xferd run`` as a subprocess against the Yeastar simulator, driven only over HTTP.

One simulator and one service for the whole module (each test uses its own
extensions, so calls never mix); every row of the contract's §4 table, the
operator operations and the API's error answers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from adapters.yeastar.simulator import PbxSimulator, Phone
from tests.service.conftest import API_TOKEN, START_WITHIN_S, XFERD, Xferd, write_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

_numbers = itertools.count(2100)
NEVER = Phone(answer_after=None)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def xf(sim: PbxSimulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Xferd]:
    tmp = tmp_path_factory.mktemp("blackbox")
    config = write_config(tmp / "xferd.toml", sim, tmp / "xferd.sqlite3", no_answer_timeout_s=1)
    service = await Xferd(config, sim).start()
    yield service
    assert await service.terminate() == 0
    await service.close()


def extension(sim: PbxSimulator, phone: Phone | None = None) -> str:
    number = str(next(_numbers))
    sim.add_extension(number, phone or Phone(answer_after=0.1))
    return number


def accepted_ops(sim: PbxSimulator, transferor: str) -> list[str]:
    """The ``attended_operate`` requests the PBX accepted for this transferor channel."""
    return [
        r.body["attended_operate"]
        for r in sim.requests
        if r.endpoint == "call/transfer"
        and r.body.get("channel_id") == transferor
        and "attended_operate" in r.body
        and (r.answer or {}).get("errcode") == 0
    ]


async def start(
    xf: Xferd, target: Phone | None = None, *, fails_at_once: bool = False, **policy: Any
) -> tuple[str, str, str, str]:
    """A caller talks to a fresh receptionist, who starts a transfer to a fresh target.

    Returns (transfer id, transferor channel, receptionist number, target number).
    A target that ``fails_at_once`` (busy) may already have ended the attempt
    when the 201 comes back.
    """
    receptionist = extension(xf.sim)
    number = extension(xf.sim, target)
    channel = await xf.call_in(receptionist)
    body: dict[str, Any] = {"channel_id": channel, "number": number}
    if policy:
        body["policy"] = policy
    response = await xf.post("/v1/transfers", body)
    assert response.status_code == 201, response.text
    resource = response.json()
    assert resource["state"] == "consulting" or fails_at_once
    assert resource["transferor"] == {"channel_id": channel, "number": receptionist}
    assert resource["transferee"]["number"] == "5550100"
    return resource["id"], channel, receptionist, number


def history(resource: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(h["from"], h["to"], h["trigger"]) for h in resource["history"]]


# -- contract §4: what the service does by itself -------------------------------------


async def test_target_answers_complete(xf: Xferd) -> None:
    transfer_id, channel, _, target = await start(xf, Phone(answer_after=0.2))
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert final["target"]["status"] == "answered"
    assert [h[:2] for h in history(final)] == [("idle", "consulting"), ("consulting", "completed")]
    assert accepted_ops(xf.sim, channel) == ["complete"]
    # the caller now talks to the target
    assert xf.sim.channel_of(target)
    metrics = (await xf.get("/metrics")).text
    assert 'xferd_pbx_requests_total{endpoint="call/transfer",result="ok"}' in metrics


async def test_target_answers_threeway_then_transferor_leaves(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(xf, Phone(answer_after=0.1), on_answer="threeway")
    resource = await xf.state(transfer_id, "threeway")
    assert resource["reason"] is None
    assert accepted_ops(xf.sim, channel) == ["threeway"]
    xf.sim.hangup(channel)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "transferor_hangup")
    assert accepted_ops(xf.sim, channel) == ["threeway"]


async def test_target_answers_hold_waits_for_the_operator(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(xf, Phone(answer_after=0.1), on_answer="hold")
    await xf.state(transfer_id, "consulting", "answered")
    assert accepted_ops(xf.sim, channel) == []
    response = await xf.post(f"/v1/transfers/{transfer_id}/complete")
    assert response.status_code == 200, response.text
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "operator")
    assert accepted_ops(xf.sim, channel) == ["complete"]


async def test_no_answer_aborts_then_fallback_answers(xf: Xferd) -> None:
    fallback = extension(xf.sim, Phone(answer_after=0.1))
    transfer_id, channel, _, _ = await start(xf, NEVER, fallback_numbers=[fallback], no_answer_timeout_s=0.5)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("completed", "policy")
    assert final["target"]["number"] == fallback
    assert accepted_ops(xf.sim, channel) == ["abort", "complete"]
    starts = [r.body["number"] for r in xf.sim.requests if r.endpoint == "call/transfer" and
              r.body.get("channel_id") == channel and "attended_operate" not in r.body]  # fmt: skip
    assert starts[-1] == fallback and len(starts) == 2


async def test_no_answer_without_fallback_aborts(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(xf, NEVER)  # config: no_answer_timeout_s = 1
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "no_answer")
    assert accepted_ops(xf.sim, channel) == ["abort"]


async def test_busy_target_falls_back(xf: Xferd) -> None:
    fallback = extension(xf.sim, Phone(answer_after=0.1))
    transfer_id, channel, _, _ = await start(
        xf, Phone(busy=True), fails_at_once=True, fallback_numbers=[fallback]
    )
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"], final["target"]["number"]) == ("completed", "policy", fallback)
    assert accepted_ops(xf.sim, channel)[-1] == "complete"
    assert accepted_ops(xf.sim, channel).count("complete") == 1


async def test_busy_target_without_fallback_is_target_busy(xf: Xferd) -> None:
    transfer_id, _, _, _ = await start(xf, Phone(busy=True), fails_at_once=True)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "target_busy")


async def test_target_rejects_before_answering(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(xf, Phone(answer_after=None, reject_after=0.2))
    final = await xf.final(transfer_id)
    assert final["state"] == "aborted" and final["reason"] in ("target_busy", "target_hangup")
    assert "complete" not in accepted_ops(xf.sim, channel)


async def test_target_hangs_up_after_answering(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(
        xf, Phone(answer_after=0.1, hangup_after_answer=0.2), on_answer="hold"
    )
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "target_hangup")
    assert "complete" not in accepted_ops(xf.sim, channel)


async def test_transferee_hangs_up_while_consulting(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(xf, NEVER, no_answer_timeout_s=30)
    xf.sim.hangup(xf.sim.channel_of("5550100"))
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == ("aborted", "transferee_hangup")
    assert "complete" not in accepted_ops(xf.sim, channel)


@pytest.mark.parametrize(("policy", "state"), [("complete", "completed"), ("abort", "aborted")])
async def test_transferor_hangs_up_while_consulting(xf: Xferd, policy: str, state: str) -> None:
    transfer_id, channel, _, _ = await start(
        xf, Phone(answer_after=0.1), on_answer="hold", on_transferor_hangup=policy
    )
    await xf.state(transfer_id, "consulting", "answered")
    xf.sim.hangup(channel)
    final = await xf.final(transfer_id)
    assert (final["state"], final["reason"]) == (state, "transferor_hangup")


# -- operator operations ------------------------------------------------------------------


async def test_swap_back_and_forth_then_abort(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(xf, Phone(answer_after=0.1), on_answer="hold")
    await xf.state(transfer_id, "consulting", "answered")
    base = f"/v1/transfers/{transfer_id}"
    swapped = await xf.post(f"{base}/swap")
    assert swapped.status_code == 200 and swapped.json()["state"] == "swapped"
    back = await xf.post(f"{base}/swap")
    assert back.status_code == 200 and back.json()["state"] == "consulting"
    aborted = await xf.post(f"{base}/abort")
    assert aborted.status_code == 200
    assert (aborted.json()["state"], aborted.json()["reason"]) == ("aborted", "operator")
    assert accepted_ops(xf.sim, channel) == ["swap", "swap", "abort"]
    # final: refused, nothing sent
    for op in ("complete", "abort", "swap", "threeway"):
        response = await xf.post(f"{base}/{op}")
        assert response.status_code == 409 and response.json()["error"] == "not_allowed"
    assert accepted_ops(xf.sim, channel) == ["swap", "swap", "abort"]
    newest = (await xf.get("/v1/transfers")).json()["items"][0]
    assert newest["id"] == transfer_id


async def test_threeway_twice_is_409(xf: Xferd) -> None:
    transfer_id, channel, _, _ = await start(xf, Phone(answer_after=0.1), on_answer="threeway")
    await xf.state(transfer_id, "threeway")
    response = await xf.post(f"/v1/transfers/{transfer_id}/threeway")
    assert response.status_code == 409 and response.json()["error"] == "not_allowed"
    assert "threeway" in response.json()["detail"]
    assert accepted_ops(xf.sim, channel) == ["threeway"]


async def test_active_filter_lists_only_live_transfers(xf: Xferd) -> None:
    transfer_id, _, _, _ = await start(xf, NEVER, no_answer_timeout_s=30)
    active = (await xf.get("/v1/transfers?state=active")).json()["items"]
    assert transfer_id in [t["id"] for t in active]
    assert all(t["state"] not in ("completed", "aborted") for t in active)
    assert (await xf.post(f"/v1/transfers/{transfer_id}/abort")).status_code == 200
    active = (await xf.get("/v1/transfers?state=active")).json()["items"]
    assert transfer_id not in [t["id"] for t in active]


# -- API errors -----------------------------------------------------------------------------


async def test_auth_and_validation(xf: Xferd) -> None:
    async with httpx.AsyncClient(base_url=xf.http.base_url) as anonymous:
        assert (await anonymous.get("/healthz")).json()["pbx"] == "connected"
        response = await anonymous.post("/v1/transfers", json={"extension": "2000", "number": "2005"})
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
        response = await anonymous.get("/v1/calls", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401
    response = await xf.post("/v1/transfers", {"extension": "2000"})
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"
    response = await xf.post("/v1/transfers", {"extension": "7777", "number": "2005"})
    assert response.status_code == 409 and response.json()["error"] == "no_active_call"
    response = await xf.get("/v1/transfers/does-not-exist")
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    metrics = (await xf.get("/metrics")).text
    assert "xferd_decision_latency_seconds_bucket" in metrics


async def test_pbx_refusal_is_502(xf: Xferd) -> None:
    receptionist = extension(xf.sim)
    channel = await xf.call_in(receptionist)
    xf.sim.refuse("call/transfer", 10009)
    response = await xf.post("/v1/transfers", {"channel_id": channel, "number": extension(xf.sim)})
    assert response.status_code == 502, response.text
    assert response.json()["error"] == "pbx_error" and "10009" in response.json()["detail"]


async def test_logs_are_json_with_transfer_ids_and_no_secrets(xf: Xferd) -> None:
    records = xf.logs()
    assert records and all("timestamp" in r and "level" in r for r in records)
    about_transfers = [
        r for r in records if r["event"] in ("transfer_changed", "decision", "request_finished")
    ]
    assert about_transfers and all(r.get("transfer_id") for r in about_transfers)
    # the adapter's lines about a transfer's requests carry it too (bound in the worker's context)
    sent = [r for r in records if r["event"] == "pbx_request" and r["endpoint"] == "call/transfer"]
    assert sent and all(r.get("transfer_id") for r in sent)
    text = "\n".join(xf.lines)
    assert API_TOKEN not in text and xf.sim.config.client_secret not in text


async def test_bad_pbx_credentials_exit_1_with_one_line(sim: PbxSimulator, tmp_path: Path) -> None:
    config = write_config(tmp_path / "x.toml", sim, tmp_path / "x.db")
    env = {**os.environ, "XFERD_PBX_CLIENT_SECRET": "wrong-secret-55"}
    done = await asyncio.create_subprocess_exec(
        *XFERD, "run", "--config", str(config), env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(START_WITHIN_S):
        _, err = await done.communicate()
    lines = err.decode().splitlines()
    assert done.returncode == 1
    assert lines[-1].startswith("xferd: PBX: ")
    assert "wrong-secret-55" not in err.decode()


async def test_sigterm_exits_0_cleanly(sim: PbxSimulator, tmp_path: Path) -> None:
    service = await Xferd(write_config(tmp_path / "x.toml", sim, tmp_path / "x.db"), sim).start()
    try:
        assert await service.terminate() == 0
        events = [r["event"] for r in service.logs()]
        assert "shutdown_requested" in events and "service_stopped" in events
        assert any(r.endpoint == "del_token" for r in sim.requests)  # the token was revoked
    finally:
        await service.close()
