"""Several PBXs in one service: each has its own adapter, engine and policy;
requests name their PBX; resources, calls and the stream carry the PBX name."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect

from adapters.service.config import ApiConfig, Config, PolicyConfig, StoreConfig, YeastarPbx, load
from adapters.service.server import Service
from tests.service.conftest import FakeAdapter, answered_call, until

TOKEN = "multi-pbx-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def pbx(name: str, **policy: object) -> YeastarPbx:
    return YeastarPbx(
        kind="yeastar",
        name=name,
        base_url="http://127.0.0.1:9",
        client_id=f"id-{name}",
        client_secret=SecretStr(f"secret-{name}"),
        policy=PolicyConfig(**policy) if policy else None,  # type: ignore[arg-type]
    )


class Two:
    def __init__(self, service: Service, acme: FakeAdapter, globex: FakeAdapter, http: httpx.AsyncClient):
        self.service, self.acme, self.globex, self.http = service, acme, globex, http

    async def post(self, path: str, body: object = None) -> httpx.Response:
        return await self.http.post(path, json=body, headers=AUTH)

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=AUTH)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    acme, globex = FakeAdapter(), FakeAdapter()
    config = Config(
        pbx=(pbx("acme"), pbx("globex", on_answer="hold")),
        api=ApiConfig(listen="127.0.0.1:0", token=SecretStr(TOKEN)),
        store=StoreConfig(path=tmp_path / "s.db"),
        policy=PolicyConfig(no_answer_timeout_s=30),
    )
    service = Service(config, adapters={"acme": acme, "globex": globex})
    await service.start()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as http:
        yield Two(service, acme, globex, http)
    await service.stop()


async def test_a_request_names_its_pbx_and_lands_only_there(two: Two) -> None:
    answered_call(two.acme, "a1", ext="2000")
    answered_call(two.globex, "g1", ext="2000")  # the same extension number on the other PBX
    response = await two.post("/v1/transfers", {"extension": "2000", "number": "2005"})
    assert response.status_code == 422 and "pbx: name the PBX" in response.json()["detail"]
    response = await two.post("/v1/transfers", {"extension": "2000", "number": "2005", "pbx": "nowhere"})
    assert response.status_code == 422 and "acme, globex" in response.json()["detail"]

    response = await two.post("/v1/transfers", {"extension": "2000", "number": "2005", "pbx": "globex"})
    assert response.status_code == 201, response.text
    transfer = response.json()
    assert transfer["pbx"] == "globex" and transfer["transferor"]["channel_id"] == "PJSIP/2000-g1"
    assert [r.action for r in two.globex.executed] == ["start"] and two.acme.executed == []
    # each PBX has its own policy: globex holds on answer, the [policy] default completes
    assert transfer["policy"]["on_answer"] == "hold"
    assert transfer["policy"]["no_answer_timeout_s"] == 30

    # a transfer id names its PBX by itself
    got = (await two.get(f"/v1/transfers/{transfer['id']}")).json()
    assert got["pbx"] == "globex"
    response = await two.post(f"/v1/transfers/{transfer['id']}/abort")
    assert response.status_code == 200, response.text
    assert [r.action for r in two.globex.executed] == ["start", "abort"] and two.acme.executed == []


async def test_calls_and_lists_carry_and_filter_by_pbx(two: Two) -> None:
    answered_call(two.acme, "a1")
    answered_call(two.globex, "g1")
    items = (await two.get("/v1/calls")).json()["items"]
    assert sorted((c["pbx"], c["call_id"]) for c in items) == [("acme", "a1"), ("globex", "g1")]
    items = (await two.get("/v1/calls?pbx=acme")).json()["items"]
    assert [c["call_id"] for c in items] == ["a1"]
    response = await two.get("/v1/calls?pbx=nowhere")
    assert response.status_code == 422

    await two.post("/v1/transfers", {"extension": "2000", "number": "2005", "pbx": "acme"})
    await until(lambda: bool(two.acme.executed))
    active = (await two.get("/v1/transfers?state=active&pbx=acme")).json()["items"]
    assert [t["pbx"] for t in active] == ["acme"]
    assert (await two.get("/v1/transfers?state=active&pbx=globex")).json()["items"] == []
    stored = (await two.get("/v1/transfers?pbx=acme")).json()["items"]
    assert [t["pbx"] for t in stored] == ["acme"]


async def test_health_lists_every_pbx_and_degrades_when_one_is_down(two: Two) -> None:
    body = (await two.http.get("/healthz")).json()
    assert body["status"] == "ok" and [p["name"] for p in body["pbxs"]] == ["acme", "globex"]
    two.globex.is_connected = False
    response = await two.http.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["pbx"] == "disconnected" and "globex" in body["detail"] and "acme" not in body["detail"]
    answered_call(two.globex, "g1")
    response = await two.post("/v1/transfers", {"extension": "2000", "number": "2005", "pbx": "globex"})
    assert response.status_code == 503 and "globex" in response.json()["detail"]
    answered_call(two.acme, "a1")
    response = await two.post("/v1/transfers", {"extension": "2000", "number": "2005", "pbx": "acme"})
    assert response.status_code == 201, "one PBX down does not stop the others"


async def test_stream_carries_every_pbx_or_the_one_asked_for(two: Two) -> None:
    url = two.service.base_url.replace("http", "ws") + "/v1/stream"
    async with (
        connect(url, additional_headers=AUTH) as every,
        connect(f"{url}?pbx=acme", additional_headers=AUTH) as acme,
    ):
        await until(lambda: two.service.metrics.stream_clients._value.get() == 2)
        answered_call(two.globex, "g1")
        answered_call(two.acme, "a1")
        seen = [json.loads(await asyncio.wait_for(every.recv(), 5)) for _ in range(2)]
        assert [(m["call"]["pbx"], m["call"]["call_id"]) for m in seen] == [("globex", "g1"), ("acme", "a1")]
        only = json.loads(await asyncio.wait_for(acme.recv(), 5))
        assert only["call"]["pbx"] == "acme"


def test_config_with_several_pbxs(tmp_path: Path) -> None:
    path = tmp_path / "xferd.toml"
    path.write_text(
        """
[[pbx]]
name = "acme"
kind = "yeastar"
base_url = "https://10.0.0.1:8088"
client_id = "a"
client_secret = "from-file"

[[pbx]]
name = "globex"
kind = "webex"
webhook_secret = "hook"
[pbx.policy]
no_answer_timeout_s = 12

[policy]
no_answer_timeout_s = 25
"""
    )
    config = load(path, {"XFERD_PBX_GLOBEX_ACCESS_TOKEN": "wx", "XFERD_PBX_ACME_CLIENT_SECRET": "from-env"})
    acme, globex = config.pbx
    assert (acme.name, globex.name) == ("acme", "globex")
    assert acme.kind == "yeastar" and acme.client_secret.get_secret_value() == "from-env"
    assert globex.kind == "webex" and globex.access_token.get_secret_value() == "wx"
    assert config.policy_of(acme).no_answer_timeout_s == 25
    assert config.policy_of(globex).no_answer_timeout_s == 12


ENTRY = (
    '[[pbx]]\nname = "{name}"\nkind = "yeastar"\nbase_url = "http://x"\nclient_id = "i"\n'
    + 'client_secret = "s"\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ENTRY.format(name="a") + ENTRY.format(name="a"),
         "[pbx.a].name: unique (two PBXs are named 'a')"),
        ('[[pbx]]\nname = "acme"\nkind = "yeastar"\nbase_url = "http://x"\nclient_id = "i"\n',
         "[pbx.acme].client_secret: required"),
        (ENTRY.format(name="Bad Name"),
         "[pbx.Bad Name].name: String should match pattern"),
        ("pbx = []\n", "[pbx]: at least one PBX"),
    ],
)  # fmt: skip
def test_bad_pbx_lists_name_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    from adapters.service.config import ConfigError

    path = tmp_path / "xferd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert str(info.value).split(": ", 1)[1].startswith(expected), str(info.value)
