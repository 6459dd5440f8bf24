"""Black box: ``xferd run`` as a Webex integration, and ``xferd webex authorize``,
as subprocesses against the Webex simulator (which plays the token endpoint
and the consent redirect), driven only over HTTP.

What an integrator relies on: the access token renews itself before it
expires and once on a 401 (the refused request is retried once); the latest
refresh token is kept in the store (a file only its owner can read) and
used at the next start; a revoked refresh token is one log line and a
``/healthz`` sentence, transfers get 503 meanwhile, nothing is lost, and
running ``xferd webex authorize`` again brings the service back without a
restart.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path

import httpx

from adapters.service.store import SqliteStore
from adapters.webex import WebexSimulator
from adapters.webex.oauth import CREDENTIAL_KIND
from tests.service.conftest import START_WITHIN_S, XFERD, until_http
from tests.webex.conftest import WebexXferd, webex_config

TARGET = "+15553000001"


def integration_config(tmp: Path, sim: WebexSimulator, **policy: object) -> Path:
    return webex_config(
        tmp / "xferd.toml",
        sim,
        tmp / "xferd.sqlite3",
        extra_pbx={"client_id": sim.client_id, "user_number": sim.user_number},
        **policy,
    )


async def stored_refresh_token(tmp: Path) -> str | None:
    store = SqliteStore(tmp / "xferd.sqlite3")
    try:
        value = await store.credentials_get("default", CREDENTIAL_KIND)
    finally:
        store.close()
    return None if value is None else str(value["refresh_token"])


def statuses(sim: WebexSimulator, since: int) -> list[tuple[str, int]]:
    return [(r.path.rsplit("/", 1)[1], r.status) for r in sim.requests[since:]]


async def sim_waits_for(sim: WebexSimulator, predicate: Callable[[], bool], within_s: float = 10) -> None:
    await sim.wait_for(predicate, within_s)


async def test_renews_before_expiry_and_keeps_the_latest_token(sim: WebexSimulator, tmp_path: Path) -> None:
    sim.access_token_lifetime_s = 1.0
    configured = sim.issue_refresh_token()
    service = await WebexXferd(integration_config(tmp_path, sim), sim, refresh_token=configured).start()
    try:
        original = await service.call_in("+15552000001")
        sim.set_party(TARGET, answer_after=1.5)  # the consultation outlives the first token
        response = await service.post("/v1/transfers", {"channel_id": original, "number": TARGET})
        assert response.status_code == 201, response.text
        final = await service.final(response.json()["id"])
        assert (final["state"], final["reason"]) == ("completed", "policy")
        await sim_waits_for(sim, lambda: len(sim.token_requests()) >= 3)
        # renewed ahead of time: Webex never had to refuse a token
        assert all(r.status != 401 for r in sim.requests)
        assert all(r.status == 200 for r in sim.token_requests())
        assert await service.terminate() == 0
        assert stat.S_IMODE(os.stat(tmp_path / "xferd.sqlite3").st_mode) == 0o600
        latest = await stored_refresh_token(tmp_path)
        assert latest is not None and latest != configured and latest in sim.issued_tokens()
        logs = "\n".join(service.lines)
        assert not [token for token in sim.issued_tokens() if token in logs]
        assert sim.client_secret not in logs
    finally:
        await service.close()
    # the configured token was rotated away: a restart works only from the stored one
    again = await WebexXferd(service.config, sim, refresh_token=configured).start()
    try:
        assert (await again.get("/healthz")).json()["pbx"] == "connected"
        assert await again.terminate() == 0
    finally:
        await again.close()


async def test_a_refused_token_is_renewed_and_the_request_retried(
    sim: WebexSimulator, tmp_path: Path
) -> None:
    service = await WebexXferd(
        integration_config(tmp_path, sim), sim, refresh_token=sim.issue_refresh_token()
    ).start()
    try:
        original = await service.call_in("+15552000002")
        sim.set_party(TARGET, answer_after=0.1)
        mark = len(sim.requests)
        sim.revoke_access_tokens()  # Webex stops accepting the token it issued
        response = await service.post("/v1/transfers", {"channel_id": original, "number": TARGET})
        assert response.status_code == 201, response.text
        assert statuses(sim, mark)[:4] == [("hold", 401), ("access_token", 200), ("hold", 204), ("dial", 201)]
        final = await service.final(response.json()["id"])
        assert (final["state"], final["reason"]) == ("completed", "policy")
        assert (await service.get("/healthz")).status_code == 200
        assert await service.terminate() == 0
    finally:
        await service.close()


async def authorize_again(config: Path, sim: WebexSimulator) -> None:
    """``xferd webex authorize`` as the admin runs it: open the printed URL (the
    simulator consents at once and redirects to the command's loopback)."""
    env = {
        **os.environ,
        "XFERD_PBX_CLIENT_SECRET": sim.client_secret,
        "XFERD_WEBHOOK_SECRET": sim.webhook_secret,
    }
    env.pop("XFERD_PBX_ACCESS_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        *XFERD, "webex", "authorize", "--config", str(config), "--port", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(START_WITHIN_S):
        assert (await proc.stdout.readline()).decode().startswith("Open this URL in a browser")
        url = (await proc.stdout.readline()).decode().strip()
        assert url.startswith(sim.base_url + "/authorize?client_id=sim-client-id&response_type=code")
        async with httpx.AsyncClient() as browser:
            page = await browser.get(url, follow_redirects=True)
        assert page.status_code == 200 and "received the authorization" in page.text
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "the refresh token is stored in" in out.decode()
    assert sim.client_secret not in out.decode() + err.decode()


async def test_a_revoked_refresh_token_degrades_then_authorize_brings_it_back(
    sim: WebexSimulator, tmp_path: Path
) -> None:
    config = integration_config(tmp_path, sim)
    service = await WebexXferd(config, sim, refresh_token=sim.issue_refresh_token()).start()
    try:
        original = await service.call_in("+15552000003")
        sim.revoke_refresh_tokens()  # the user revoked xferd's access
        sim.revoke_access_tokens()
        refused = await service.post("/v1/transfers", {"channel_id": original, "number": TARGET})
        assert refused.status_code == 502 and "errcode 401" in refused.json()["detail"], refused.text
        health = await service.get("/healthz")
        assert health.status_code == 503
        detail = health.json()["detail"]
        assert detail.startswith(
            "Webex refused the refresh token (HTTP 400: Invalid or revoked refresh token)"
        )
        assert "xferd webex authorize" in detail
        again = await service.post("/v1/transfers", {"channel_id": original, "number": TARGET})
        assert again.status_code == 503 and again.json()["error"] == "pbx_unavailable"
        assert "xferd webex authorize" in again.json()["detail"]
        assert [r for r in service.logs() if r.get("event") == "webex_refresh_refused"] != []
        assert len([r for r in service.logs() if r.get("event") == "webex_refresh_refused"]) == 1
        assert sim.call(original) is not None and sim.call(original).state == "connected"  # type: ignore[union-attr]
        # the admin authorizes again; the running service picks the new token up from the store
        await authorize_again(config, sim)
        await until_http(lambda r: r.status_code == 200, service.http, "/healthz", 15)
        sim.set_party(TARGET, answer_after=0.1)
        response = await service.post("/v1/transfers", {"channel_id": original, "number": TARGET})
        assert response.status_code == 201, response.text
        final = await service.final(response.json()["id"])
        assert (final["state"], final["reason"]) == ("completed", "policy")
        assert await service.terminate() == 0
        logs = "\n".join(service.lines)
        assert not [token for token in sim.issued_tokens() if token in logs]
    finally:
        await service.close()


async def run_exit(
    config: Path, sim: WebexSimulator, *args: str, access_token: bool = True
) -> tuple[int, str]:
    env = {**os.environ, "XFERD_WEBHOOK_SECRET": sim.webhook_secret}
    if access_token:
        env["XFERD_PBX_ACCESS_TOKEN"] = sim.access_token
    proc = await asyncio.create_subprocess_exec(*XFERD, *args, env=env, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(START_WITHIN_S):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_static_token_and_integration_together_is_exit_2(sim: WebexSimulator, tmp_path: Path) -> None:
    config = integration_config(tmp_path, sim)
    code, err = await run_exit(config, sim, "run", "--config", str(config))  # env also gives an access token
    assert code == 2
    assert err.splitlines() == [
        f"xferd: config error in {config}: [pbx].access_token: give either access_token or an integration's "
        "client_id/client_secret, not both (also set: client_id)"
    ]
    static = webex_config(tmp_path / "static.toml", sim, tmp_path / "s.sqlite3")
    code, err = await run_exit(static, sim, "webex", "authorize", "--config", str(static))
    assert code == 2 and "[pbx].client_id: required for `xferd webex authorize`" in err
    assert sim.access_token not in err


async def test_an_integration_without_any_refresh_token_says_to_authorize(
    sim: WebexSimulator, tmp_path: Path
) -> None:
    config = integration_config(tmp_path, sim)
    env = {
        **os.environ,
        "XFERD_WEBHOOK_SECRET": sim.webhook_secret,
        "XFERD_PBX_CLIENT_SECRET": sim.client_secret,
    }
    env.pop("XFERD_PBX_ACCESS_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        *XFERD, "run", "--config", str(config), env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(START_WITHIN_S):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode().splitlines()[-1] == (
        "xferd: PBX: no Webex refresh token: set pbx.refresh_token, or run "
        "`xferd webex authorize --config PATH` once to store one"
    )


async def test_the_integrations_tokens_live_in_postgresql_too(
    sim: WebexSimulator, tmp_path: Path, pg_url: str
) -> None:
    """``[store] url``: the latest refresh token goes to PostgreSQL (``xferd run`` and
    ``xferd webex authorize`` alike), and a restart starts from it."""
    from adapters.service.pgstore import PgStore

    config = integration_config(tmp_path, sim)
    config.write_text(
        config.read_text().replace(f'path = "{tmp_path / "xferd.sqlite3"}"', f'url = "{pg_url}"')
    )

    async def stored() -> str | None:
        store = PgStore(pg_url)
        try:
            value = await store.credentials_get("default", CREDENTIAL_KIND)
        finally:
            await store.aclose()
        return None if value is None else str(value["refresh_token"])

    configured = sim.issue_refresh_token()
    service = await WebexXferd(config, sim, refresh_token=configured).start()
    try:
        assert await service.terminate() == 0
    finally:
        await service.close()
    latest = await stored()
    assert latest is not None and latest != configured and latest in sim.issued_tokens()
    assert not (tmp_path / "xferd.sqlite3").exists()
    again = await WebexXferd(config, sim, refresh_token=configured).start()  # works only from the stored one
    try:
        assert (await again.get("/healthz")).json()["pbx"] == "connected"
        assert await again.terminate() == 0
    finally:
        await again.close()
    before = await stored()
    await authorize_again(config, sim)
    after = await stored()
    assert after is not None and after != before and after in sim.issued_tokens()
