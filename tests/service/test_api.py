"""The control API (contract §3) over the real engine and runtime, with a fake PBX adapter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from pydantic import SecretStr
from websockets.asyncio.client import connect

from adapters.service.config import ApiConfig, Config, PolicyConfig, StoreConfig, WebexPbx, YeastarPbx
from adapters.service.server import Service
from adapters.service.store import StoreError
from tests.service.conftest import FakeAdapter, answered_call

TOKEN = "test-api-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ATTENDED = {"extension": "2000", "number": "2005"}


def config(tmp_path: Path, platform: str = "yeastar") -> Config:
    pbx: YeastarPbx | WebexPbx
    if platform == "yeastar":
        secret = SecretStr("pbx-secret")
        pbx = YeastarPbx(kind="yeastar", base_url="http://127.0.0.1:9", client_id="id", client_secret=secret)
    else:
        pbx = WebexPbx(kind="webex", access_token=SecretStr("wx-token"), webhook_secret=SecretStr("wx-hook"))
    return Config(
        pbx=pbx,
        api=ApiConfig(listen="127.0.0.1:0", token=SecretStr(TOKEN)),
        store=StoreConfig(path=tmp_path / "s.db"),
        policy=PolicyConfig(no_answer_timeout_s=30),
    )


class Api:
    """A running service with a fake PBX, and an HTTP client on it."""

    def __init__(self, service: Service, adapter: FakeAdapter, client: httpx.AsyncClient) -> None:
        self.service = service
        self.pbx = adapter
        self.http = client

    async def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return await self.http.post(path, json=body, headers={**AUTH, **headers})

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=AUTH)


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[ApiFactory]:
    services: list[tuple[Service, httpx.AsyncClient]] = []

    async def make(platform: str = "yeastar") -> Api:
        adapter = FakeAdapter(platform)
        service = Service(config(tmp_path, platform), adapter=adapter)
        await service.start()
        client = httpx.AsyncClient(base_url=service.base_url, timeout=5)
        services.append((service, client))
        return Api(service, adapter, client)

    yield make
    for service, client in services:
        await client.aclose()
        await service.stop()


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


# -- health, auth, error shapes ------------------------------------------------


async def test_healthz_needs_no_token_and_reports_the_link(api: Api) -> None:
    response = await api.http.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["pbx"] == "connected" and body["platform"] == "yeastar"
    assert body["capabilities"] == ["blind", "attended", "swap", "threeway"]
    api.pbx.is_connected = False
    response = await api.http.get("/healthz")
    assert response.status_code == 503 and response.json()["pbx"] == "disconnected"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/transfers"), ("GET", "/v1/calls"), ("GET", "/metrics"), ("POST", "/v1/transfers"),
     ("GET", "/v1/transfers/x"), ("POST", "/v1/transfers/x/complete")],
)  # fmt: skip
async def test_everything_else_needs_the_token(api: Api, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await api.http.request(method, path, headers=headers, json=ATTENDED)
        error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text
    # auth comes before validation: an anonymous caller learns nothing about the body
    error(await api.http.post("/v1/transfers", json={"bogus": 1}), 401, "unauthorized")
    assert api.pbx.executed == []


async def test_framework_errors_keep_the_error_shape(api: Api) -> None:
    assert "GET /nowhere" in error(await api.get("/nowhere"), 404, "not_found")
    error(await api.http.delete("/v1/transfers", headers=AUTH), 405, "method_not_allowed")
    detail = error(await api.get("/v1/transfers?limit=0"), 422, "invalid_request")
    assert detail.startswith("query.limit:")
    error(await api.get("/v1/transfers?state=ringing"), 422, "invalid_request")
    headers = {**AUTH, "Content-Type": "application/json"}
    response = await api.http.post("/v1/transfers", content=b"{not json", headers=headers)
    error(response, 400, "invalid_json")


async def test_store_and_internal_failures_keep_the_error_shape(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(*args: Any) -> Any:
        raise StoreError("store s.db: cannot read: database is locked")

    def bug() -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(api.service.store, "recent", locked)
    assert "locked" in error(await api.get("/v1/transfers"), 503, "store_unavailable")
    monkeypatch.setattr(api.service.runtime.engine, "calls", bug)
    error(await api.get("/v1/calls"), 500, "internal_error")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"extension": "2000"}, "number: Field required"),
        ({"number": "2005"}, "give exactly one of channel_id or extension"),
        ({"extension": "2000", "channel_id": "PJSIP/2000-1", "number": "2005"}, "exactly one of"),
        ({"extension": "2000", "number": 2005}, "number: Input should be a valid string"),
        ({"extension": "2000", "number": "20 05"}, "number: String should match pattern"),
        ({**ATTENDED, "type": "consult"}, "type: Input should be 'attended' or 'blind'"),
        ({**ATTENDED, "target": "2005"}, "target: unknown field"),
        ({**ATTENDED, "policy": {"on_answer": "merge"}}, "policy.on_answer: Input should be"),
        (
            {**ATTENDED, "policy": {"no_answer_timeout_s": 0}},
            "policy.no_answer_timeout_s: Input should be greater",
        ),
        (
            {**ATTENDED, "policy": {"fallback_numbers": "2008"}},
            "policy.fallback_numbers: Input should be a valid list",
        ),
        ([ATTENDED], "Input should be a valid dictionary"),
    ],
)
async def test_invalid_transfer_bodies_are_422(api: Api, body: Any, expected: str) -> None:
    assert expected in error(await api.post("/v1/transfers", body), 422, "invalid_request")
    assert api.pbx.executed == []


# -- starting transfers ----------------------------------------------------------


async def test_start_attended_by_extension(api: Api) -> None:
    answered_call(api.pbx)
    response = await api.post("/v1/transfers", {**ATTENDED, "policy": {"on_answer": "hold"}})
    assert response.status_code == 201, response.text
    resource = response.json()
    assert resource["state"] == "consulting" and resource["reason"] is None
    assert resource["transferor"] == {"channel_id": "PJSIP/2000-c1", "number": "2000"}
    assert resource["transferee"] == {"channel_id": "PJSIP/trunk-a-c1", "number": "5550100"}
    assert resource["target"]["number"] == "2005"
    assert resource["policy"]["on_answer"] == "hold" and resource["policy"]["no_answer_timeout_s"] == 30
    assert [(h["from"], h["to"]) for h in resource["history"]] == [("idle", "consulting")]
    [start] = api.pbx.executed
    assert (start.action, start.channel_id, start.number, start.dial_permission) == (
        "start", "PJSIP/2000-c1", "2005", "2000",
    )  # fmt: skip

    assert (await api.get(f"/v1/transfers/{resource['id']}")).json() == resource
    assert [t["id"] for t in (await api.get("/v1/transfers?state=active")).json()["items"]] == [
        resource["id"]
    ]
    assert [t["id"] for t in (await api.get("/v1/transfers")).json()["items"]] == [resource["id"]]
    calls = (await api.get("/v1/calls")).json()["items"]
    assert calls[0]["call_id"] == "c1" and len(calls[0]["members"]) == 2
    metrics = (await api.get("/metrics")).text
    assert 'xferd_transfers_started_total{type="attended"} 1.0' in metrics
    assert "xferd_decision_latency_seconds_count 1.0" in metrics
    assert 'xferd_events_total{type="CallUpdated"} 1.0' in metrics


async def test_engine_refusals_are_409(api: Api) -> None:
    assert "2000" in error(await api.post("/v1/transfers", ATTENDED), 409, "no_active_call")
    answered_call(api.pbx)
    api.pbx.outcomes["start"] = "ok"
    assert (await api.post("/v1/transfers", ATTENDED)).status_code == 201
    error(await api.post("/v1/transfers", ATTENDED), 409, "transfer_in_progress")
    assert len(api.pbx.executed) == 1


async def test_pbx_refusal_is_502_with_errcode(api: Api) -> None:
    answered_call(api.pbx)
    api.pbx.outcomes["start"] = "refused"
    detail = error(await api.post("/v1/transfers", ATTENDED), 502, "pbx_error")
    assert "errcode 10009" in detail and "OPERATION FAILED" in detail
    [resource] = (await api.get("/v1/transfers")).json()["items"]
    assert resource["state"] == "aborted" and resource["reason"] == "pbx_error"


async def test_pbx_down_is_503_and_nothing_starts(api: Api) -> None:
    answered_call(api.pbx)
    api.pbx.is_connected = False
    assert "websocket closed" in error(await api.post("/v1/transfers", ATTENDED), 503, "pbx_unavailable")
    assert api.pbx.executed == [] and (await api.get("/v1/transfers")).json()["items"] == []


async def test_idempotency_key_returns_the_same_transfer(api: Api) -> None:
    answered_call(api.pbx)
    first = await api.post("/v1/transfers", ATTENDED, **{"Idempotency-Key": "k-1"})
    again = await api.post("/v1/transfers", ATTENDED, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert len(api.pbx.executed) == 1
    other = {**ATTENDED, "number": "2008"}
    error(await api.post("/v1/transfers", other, **{"Idempotency-Key": "k-1"}), 409, "conflict")


async def test_blind_transfer_completes_once_accepted(api: Api) -> None:
    answered_call(api.pbx)
    response = await api.post(
        "/v1/transfers", {"type": "blind", "channel_id": "PJSIP/trunk-a-c1", "number": "2005"}
    )
    assert response.status_code == 201, response.text
    assert (response.json()["state"], response.json()["reason"]) == ("completed", "blind")
    assert api.pbx.executed[0].action == "blind"


# -- operations --------------------------------------------------------------------


async def test_operations_and_their_refusals(api: Api) -> None:
    answered_call(api.pbx)
    transfer_id = (await api.post("/v1/transfers", {**ATTENDED, "policy": {"on_answer": "hold"}})).json()[
        "id"
    ]
    base = f"/v1/transfers/{transfer_id}"
    assert "use complete, abort, swap or threeway" in error(await api.post(f"{base}/merge"), 404, "not_found")
    error(await api.post("/v1/transfers/nope/abort"), 404, "not_found")

    swapped = await api.post(f"{base}/swap")
    assert swapped.status_code == 200 and swapped.json()["state"] == "swapped"
    aborted = await api.post(f"{base}/abort")
    assert aborted.status_code == 200, aborted.text
    assert (aborted.json()["state"], aborted.json()["reason"]) == ("aborted", "operator")
    sent = len(api.pbx.executed)
    # final: every op is refused and nothing reaches the PBX
    for op in ("complete", "abort", "swap", "threeway"):
        assert "aborted" in error(await api.post(f"{base}/{op}"), 409, "not_allowed")
    assert len(api.pbx.executed) == sent
    assert [a.action for a in api.pbx.executed] == ["start", "swap", "abort"]


async def test_operation_refused_by_pbx_is_502(api: Api) -> None:
    answered_call(api.pbx)
    transfer_id = (await api.post("/v1/transfers", {**ATTENDED, "policy": {"on_answer": "hold"}})).json()[
        "id"
    ]
    api.pbx.outcomes["swap"] = "refused"
    assert "errcode 10009" in error(await api.post(f"/v1/transfers/{transfer_id}/swap"), 502, "pbx_error")


# -- webex specifics -------------------------------------------------------------


async def test_webex_has_no_threeway_and_takes_signed_webhooks(make_api: ApiFactory) -> None:
    api = await make_api("webex")
    health = (await api.http.get("/healthz")).json()
    assert health["platform"] == "webex" and "threeway" not in health["capabilities"]
    answered_call(api.pbx)
    body = {**ATTENDED, "policy": {"on_answer": "threeway"}}
    assert "Webex" in error(await api.post("/v1/transfers", body), 422, "invalid_request")
    transfer_id = (await api.post("/v1/transfers", {**ATTENDED, "policy": {"on_answer": "hold"}})).json()[
        "id"
    ]
    detail = error(await api.post(f"/v1/transfers/{transfer_id}/threeway"), 409, "not_allowed")
    assert "Webex" in detail and "three-way" in detail

    hook = "/v1/webhooks/webex"
    assert (
        await api.http.post(hook, content=b'{"id":"1"}', headers={"X-Spark-Signature": "good"})
    ).status_code == 204
    error(await api.http.post(hook, content=b"{}", headers={"X-Spark-Signature": "bad"}), 401, "unauthorized")
    error(await api.http.post(hook, content=b"{}"), 401, "unauthorized")
    assert api.pbx.webhooks[0] == (b'{"id":"1"}', "good") and api.pbx.webhooks[2][1] is None


async def test_no_webhook_route_on_yeastar(api: Api) -> None:
    error(await api.http.post("/v1/webhooks/webex", content=b"{}"), 404, "not_found")


# -- live stream -------------------------------------------------------------------


async def test_stream_requires_the_token(api: Api) -> None:
    url = api.service.base_url.replace("http", "ws") + "/v1/stream"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(url):
            pass
    assert info.value.response.status_code == 401


async def test_stream_sends_call_and_transfer_changes_in_order(api: Api) -> None:
    url = api.service.base_url.replace("http", "ws") + f"/v1/stream?token={TOKEN}"
    async with connect(url) as ws:
        answered_call(api.pbx)
        first = json.loads(await ws.recv())
        assert first["kind"] == "call" and first["call"]["call_id"] == "c1"
        created = (await api.post("/v1/transfers", ATTENDED)).json()
        states: list[str] = []
        while not states or states[-1] != "consulting":
            message = json.loads(await ws.recv())
            assert message["kind"] == "transfer" and message["transfer"]["id"] == created["id"]
            states.append(message["transfer"]["state"])
        assert states == ["idle", "consulting"]
    # header auth works too
    async with connect(url.split("?")[0], additional_headers=AUTH) as ws:
        api.pbx.call("c9", ("extension", "2001", "PJSIP/2001-9", "RING"))
        assert json.loads(await ws.recv())["call"]["call_id"] == "c9"


async def test_openapi_schema_is_served(api: Api) -> None:
    schema = (await api.http.get("/openapi.json")).json()
    assert {"/v1/transfers", "/v1/transfers/{transfer_id}/{op}", "/healthz"} <= set(schema["paths"])
