"""A crash loop must not exhaust Yeastar's 8 live tokens (issue 15, item 5).

``xferd run`` is killed with SIGKILL right after it starts, again and again,
against the simulator (which refuses a ninth live token with 60002 like the
PBX).  Each start refreshes the token pair the previous process left in the
store and revokes the old access token, so however many kills, at most one
or two tokens are alive and the service still starts.  On SQLite and on
PostgreSQL (the store is where the pair survives).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.yeastar.frames import LimitExceededError
from adapters.yeastar.simulator import MAX_ACCESS_TOKENS, PbxSimulator
from tests.service.conftest import START_WITHIN_S, Xferd, until_http, write_config

KILLS = MAX_ACCESS_TOKENS + 4


@pytest.fixture
async def sim() -> AsyncIterator[PbxSimulator]:
    simulator = PbxSimulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


class StoreXferd(Xferd):
    """``xferd run`` with extra environment (``XFERD_STORE_URL`` for PostgreSQL)."""

    def __init__(self, config: Path, sim: PbxSimulator, env: dict[str, str]) -> None:
        super().__init__(config, sim)
        self.env = env

    async def start(self) -> StoreXferd:
        await self._launch(
            {**os.environ, "XFERD_PBX_CLIENT_SECRET": self.sim.config.client_secret, **self.env}
        )
        await self._until_healthy()
        if "XFERD_STORE_URL" in self.env:
            # A PostgreSQL store is a cluster of one: /healthz is 200 while the killed
            # predecessor's lease still runs (it looks alive); this start counts once it owns
            # the PBX and is connected (it refreshed the stored pair by then).
            def owner(response: Any) -> bool:
                pbxs = response.json().get("pbxs", [])
                return bool(pbxs) and pbxs[0]["role"] == "owner" and pbxs[0]["pbx"] == "connected"

            await until_http(owner, self.http, "/healthz", START_WITHIN_S)
        return self


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_sigkill_loop_leaves_at_most_two_live_tokens(
    sim: PbxSimulator, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    env = {"XFERD_STORE_URL": request.getfixturevalue("pg_url")} if backend == "postgresql" else {}
    config = write_config(tmp_path / "xferd.toml", sim, tmp_path / "xferd.sqlite3")
    for _ in range(KILLS):
        service = StoreXferd(config, sim, env)
        try:
            await service.start()  # healthy: logged in (or refreshed) and subscribed
        finally:
            await service.close()  # SIGKILL: nothing revoked on the way out
        assert sim.live_tokens <= 2
    logins = [r for r in sim.requests if r.endpoint == "get_token"]
    assert len(logins) == 1  # the first start; every later one refreshed the stored pair
    assert len([r for r in sim.requests if r.endpoint == "refresh_token"]) == KILLS - 1
    assert sim.live_tokens == 1


async def test_without_a_stored_pair_the_same_loop_would_exhaust_the_limit(sim: PbxSimulator) -> None:
    """The failure the store prevents, shown on the simulator: one login per start, no revocation."""
    from adapters.yeastar.rest import YeastarRest

    for _ in range(MAX_ACCESS_TOKENS):
        rest = YeastarRest(sim.base_url, sim.config.client_id, sim.config.client_secret)
        await rest.tokens.token()
        await rest._client.aclose()  # dies without revoking, as under SIGKILL
    assert sim.live_tokens == MAX_ACCESS_TOKENS
    rest = YeastarRest(sim.base_url, sim.config.client_id, sim.config.client_secret, busy_retry_delays=())
    with pytest.raises(LimitExceededError):  # 60002 MAX LIMITATION EXCEEDED
        await rest.tokens.token()
    await rest._client.aclose()
