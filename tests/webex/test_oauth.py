"""An integration's tokens against the simulated Webex token endpoint:
renewed before expiry and once on a 401, the latest refresh token kept, a
revoked one degrading (with a sentence) and recovering without a restart."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from adapters.base import FatalPbxError
from adapters.webex import WebexSimulator
from adapters.webex.client import WebexClient, WebexError
from adapters.webex.oauth import OAuthTokens, TokenEndpoint, fingerprint, token_url
from tests.webex.conftest import RecordingObserver


class MemoryCredentials:
    """A CredentialStore in memory; remembers every value saved."""

    def __init__(self, value: dict[str, Any] | None = None) -> None:
        self.value = value
        self.saved: list[dict[str, Any]] = []

    async def load(self) -> dict[str, Any] | None:
        return None if self.value is None else dict(self.value)

    async def save(self, value: dict[str, Any]) -> None:
        self.value = dict(value)
        self.saved.append(dict(value))


def tokens_for(
    sim: WebexSimulator,
    refresh_token: str | None,
    store: MemoryCredentials | None = None,
    observer: RecordingObserver | None = None,
) -> OAuthTokens:
    endpoint = TokenEndpoint(token_url(sim.base_url), sim.client_id, sim.client_secret, observer=observer)
    return OAuthTokens(
        endpoint, refresh_token=refresh_token, store=store, retry_first_s=0.05, retry_max_s=0.2
    )


async def wait_until(predicate: Any, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - the token renewer runs on its own clock
            await asyncio.sleep(0.01)


def accepted(sim: WebexSimulator, path: str = "/v1/telephony/calls") -> list[int]:
    return [r.status for r in sim.requests if r.path == path]


async def test_renewed_before_expiry_and_the_latest_refresh_token_kept(sim: WebexSimulator) -> None:
    sim.access_token_lifetime_s = 0.5
    configured = sim.issue_refresh_token()
    store = MemoryCredentials()
    tokens = tokens_for(sim, configured, store)
    client = WebexClient(sim.base_url, tokens)
    await tokens.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 1.6:  # three lifetimes of traffic
            await client.request("GET", "/telephony/calls")
            await asyncio.sleep(0.05)
        renewals = [r.at for r in sim.token_requests()]
        assert len(renewals) >= 3
        # each renewal came before the token it replaced expired: no request was ever refused
        assert all(b - a < 0.5 for a, b in itertools.pairwise(renewals))
        assert set(accepted(sim)) == {200}
        assert tokens.problem is None
    finally:
        await tokens.close()
        await client.aclose()
    # every refresh rotated the refresh token; the store holds the last one, seeded by the configured one
    assert store.value is not None and store.value["seed"] == fingerprint(configured)
    assert len(store.saved) == len(sim.token_requests())
    again = tokens_for(sim, configured, store)  # a restart with the same config
    sim.access_token_lifetime_s = 60.0
    await again.start()  # the stored access token is about to expire: refreshed from the stored token
    assert again.problem is None and sim.token_requests()[-1].status == 200
    await again.close()
    refused = tokens_for(sim, configured)  # the configured token alone: rotated away long ago
    with pytest.raises(FatalPbxError, match=r"Webex refused the refresh token .*xferd webex authorize"):
        await refused.start()
    await refused.close()


async def test_a_401_renews_once_and_retries_once(sim: WebexSimulator) -> None:
    observer = RecordingObserver()
    tokens = tokens_for(sim, sim.issue_refresh_token(), observer=observer)
    client = WebexClient(sim.base_url, tokens, observer=observer)
    await tokens.start()
    try:
        mark = len(sim.requests)
        sim.revoke_access_tokens()
        assert await client.request("GET", "/telephony/calls") == {"items": []}
        assert [(r.path, r.status) for r in sim.requests[mark:]] == [
            ("/v1/telephony/calls", 401),
            ("/v1/access_token", 200),
            ("/v1/telephony/calls", 200),
        ]
        # a token refused again right after renewal: one renewal, one retry, then the 401 is reported
        sim.refuse_issued_tokens = True
        mark = len(sim.requests)
        with pytest.raises(WebexError) as caught:
            await client.request("POST", "/telephony/calls/hold", {"callId": "x"})
        assert caught.value.status == 401
        assert [r.path.rsplit("/", 1)[1] for r in sim.requests[mark:]] == ["hold", "access_token", "hold"]
    finally:
        await tokens.close()
        await client.aclose()
    # what the observer saw (and a recording would hold) carries no token
    text = repr(observer.requests)
    assert "sim-access-" not in text and "sim-refresh-" not in text and sim.client_secret not in text
    token_lines = [r for r in observer.requests if r[0] == "/access_token"]
    assert token_lines and all(r[1]["refresh_token"] == "***" for r in token_lines)


async def test_a_revoked_refresh_token_degrades_then_recovers_from_the_store(sim: WebexSimulator) -> None:
    store = MemoryCredentials()
    tokens = tokens_for(sim, sim.issue_refresh_token(), store)
    problems: list[str | None] = []
    tokens.on_problem = problems.append
    client = WebexClient(sim.base_url, tokens)
    await tokens.start()
    try:
        sim.revoke_refresh_tokens()
        sim.revoke_access_tokens()
        with pytest.raises(WebexError) as caught:
            await client.request("GET", "/telephony/calls")
        assert caught.value.status == 401
        assert tokens.problem is not None
        assert tokens.problem.startswith("Webex refused the refresh token (HTTP 400: Invalid or revoked")
        assert "xferd webex authorize" in tokens.problem
        refused = len(sim.token_requests())
        # refused: the renewer only re-reads the store, it does not hammer Webex with the same token
        await asyncio.sleep(0.3)
        assert len(sim.token_requests()) == refused
        await store.save({"refresh_token": sim.issue_refresh_token()})  # `xferd webex authorize` ran
        await wait_until(lambda: tokens.problem is None)
        assert await client.request("GET", "/telephony/calls") == {"items": []}
        assert problems == [problems[0], None]
    finally:
        await tokens.close()
        await client.aclose()


async def test_the_config_token_wins_only_when_it_is_new(sim: WebexSimulator) -> None:
    first = sim.issue_refresh_token()
    store = MemoryCredentials()
    tokens = tokens_for(sim, first, store)
    await tokens.start()
    await tokens.close()
    assert store.value is not None
    chained = store.value["refresh_token"]
    # the same configured token: the store's successor is used (the configured one was rotated away)
    tokens = tokens_for(sim, first, store)
    store.value["expires_at"] = 0  # force a refresh at start, so we see which token it used
    await tokens.start()
    await tokens.close()
    assert store.value["refresh_token"] != chained and sim.token_requests()[-1].status == 200
    # a new token in the config: it wins, and starts a new chain
    second = sim.issue_refresh_token()
    tokens = tokens_for(sim, second, store)
    store.value["expires_at"] = 0
    await tokens.start()
    await tokens.close()
    assert store.value["seed"] == fingerprint(second)


async def test_without_any_refresh_token_start_says_what_to_do(sim: WebexSimulator) -> None:
    tokens = tokens_for(sim, None, MemoryCredentials())
    with pytest.raises(FatalPbxError, match=r"no Webex refresh token: .*xferd webex authorize"):
        await tokens.start()
    await tokens.close()
