"""Users, roles and the audit log: every role check is made by the API, and
every state-changing request is recorded with who made it and what came of it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from adapters.service.config import ApiConfig, Config, ConfigError, StoreConfig, UserConfig, YeastarPbx, load
from adapters.service.roles import ROLES, User, Users, allows, hash_token
from adapters.service.server import Service
from tests.service.conftest import FakeAdapter, answered_call

ADMIN = "the-admin-token-0123"
TOKENS = {role: f"{role}-token-0123456789" for role in ROLES}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Service, FakeAdapter, httpx.AsyncClient]]:
    adapter = FakeAdapter()
    users = tuple(
        UserConfig(name=f"{role}-user", role=role, token_hash=hash_token(t)) for role, t in TOKENS.items()
    )
    config = Config(
        pbx=YeastarPbx(kind="yeastar", base_url="http://127.0.0.1:9", client_id="i",
                       client_secret=SecretStr("s")),
        api=ApiConfig(listen="127.0.0.1:0", token=SecretStr(ADMIN), users=users),
        store=StoreConfig(path=tmp_path / "s.db"),
    )  # fmt: skip
    svc = Service(config, adapter=adapter)
    await svc.start()
    async with httpx.AsyncClient(base_url=svc.base_url, timeout=5) as http:
        yield svc, adapter, http
    await svc.stop()


def test_roles_are_ordered() -> None:
    assert allows("admin", "viewer") and allows("supervisor", "operator") and allows("viewer", "viewer")
    assert not allows("operator", "supervisor") and not allows("viewer", "operator")


def test_users_by_token() -> None:
    users = Users([User("ann", "operator", hash_token("ann-token"))], admin_token="root-token")
    assert users.by_token("ann-token") == users.by_token("ann-token")
    found = users.by_token("ann-token")
    assert found is not None and (found.name, found.role) == ("ann", "operator")
    admin = users.by_token("root-token")
    assert admin is not None and admin.role == "admin"
    assert users.by_token("wrong") is None and users.by_token("") is None
    assert not users.open
    opened = Users([])
    assert opened.open and opened.by_token("") is not None


async def test_each_role_may_do_what_it_should_and_no_more(
    service: tuple[Service, FakeAdapter, httpx.AsyncClient],
) -> None:
    _, adapter, http = service
    answered_call(adapter, "c1")
    # viewer reads, but cannot start
    assert (await http.get("/v1/transfers", headers=bearer(TOKENS["viewer"]))).status_code == 200
    response = await http.post(
        "/v1/transfers", json={"extension": "2000", "number": "2005"}, headers=bearer(TOKENS["viewer"])
    )
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "forbidden" and "role viewer" in body["detail"] and "operator" in body["detail"]
    assert adapter.executed == [], "a refused request sends nothing"
    # operator starts and operates, but cannot read the audit log
    response = await http.post(
        "/v1/transfers", json={"extension": "2000", "number": "2005"}, headers=bearer(TOKENS["operator"])
    )
    assert response.status_code == 201, response.text
    assert response.json()["initiated_by"] == "api:operator-user"
    transfer_id = response.json()["id"]
    response = await http.post(f"/v1/transfers/{transfer_id}/abort", headers=bearer(TOKENS["operator"]))
    assert response.status_code == 200
    assert (await http.get("/v1/audit", headers=bearer(TOKENS["operator"]))).status_code == 403
    # supervisor and the single admin token read it
    for token in (TOKENS["supervisor"], ADMIN):
        assert (await http.get("/v1/audit", headers=bearer(token))).status_code == 200
    # unknown token: 401 without saying which part was wrong
    response = await http.get("/v1/transfers", headers=bearer("nobody"))
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"


async def test_audit_records_who_did_what_and_the_outcome(
    service: tuple[Service, FakeAdapter, httpx.AsyncClient],
) -> None:
    svc, adapter, http = service
    answered_call(adapter, "c1")
    operator = bearer(TOKENS["operator"])
    started = await http.post("/v1/transfers", json={"extension": "2000", "number": "2005"}, headers=operator)
    transfer_id = started.json()["id"]
    await http.post(f"/v1/transfers/{transfer_id}/threeway", headers=operator)  # 409: target not answered
    await http.post(
        "/v1/transfers", json={"extension": "2000", "number": "2005"}, headers=bearer(TOKENS["viewer"])
    )
    await http.post("/v1/transfers", json={"number": "2005"}, headers=bearer("wrong"))
    entries = (await http.get("/v1/audit", headers=bearer(ADMIN))).json()["items"]
    seen = [(e["actor"], e["role"], e["action"], e["status"], e["outcome"]) for e in reversed(entries)]
    assert seen == [
        ("operator-user", "operator", "transfer.start.attended", 201, "ok"),
        ("operator-user", "operator", "transfer.threeway", 409, "not_allowed"),
        ("viewer-user", "viewer", "POST /v1/transfers", 403, "forbidden"),
        ("-", "-", "POST /v1/transfers", 401, "unauthorized"),
    ]  # fmt: skip
    assert entries[-1]["transfer_id"] == transfer_id and entries[-1]["pbx"] == "default"
    assert entries[-2]["transfer_id"] == transfer_id
    mine = (await http.get(f"/v1/audit?transfer_id={transfer_id}", headers=bearer(ADMIN))).json()["items"]
    assert len(mine) == 2
    # reads are not audited, and the log survives a restart (it is in the store)
    await http.get("/v1/transfers", headers=operator)
    await svc.stop()
    svc2 = Service(svc.config, adapter=FakeAdapter())
    await svc2.start()
    try:
        async with httpx.AsyncClient(base_url=svc2.base_url, timeout=5) as http2:
            again = (await http2.get("/v1/audit", headers=bearer(ADMIN))).json()["items"]
        assert len(again) == 4
    finally:
        await svc2.stop()


def test_users_config_errors(tmp_path: Path) -> None:
    base = '[pbx]\nkind = "yeastar"\nbase_url = "http://x"\nclient_id = "i"\nclient_secret = "s"\n'
    path = tmp_path / "xferd.toml"
    for users, expected in [
        ('[[api.users]]\nname = "ann"\nrole = "boss"\ntoken_hash = "sha256:' + "0" * 64 + '"\n',
         "[api].users[0].role"),
        ('[[api.users]]\nname = "ann"\nrole = "viewer"\ntoken_hash = "plain"\n', "[api].users[0].token_hash"),
        ('[[api.users]]\nname = "ann"\nrole = "viewer"\ntoken_hash = "sha256:' + "0" * 64 + '"\n' * 1
         + '[[api.users]]\nname = "ann"\nrole = "admin"\ntoken_hash = "sha256:' + "1" * 64 + '"\n',
         "[api].users: user names must be unique"),
    ]:  # fmt: skip
        path.write_text(base + users)
        with pytest.raises(ConfigError) as info:
            load(path, {})
        assert expected in str(info.value), str(info.value)


def test_token_command_prints_a_token_and_its_hash() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "token", "new", "--name", "ann", "--role", "supervisor"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = done.stdout.split("only once): ", 1)[1].split()[0]
    assert f'token_hash = "{hash_token(token)}"' in done.stdout and 'role = "supervisor"' in done.stdout
