"""The thin Webex client: what each kind of failure means, and what never
leaves it (the token, the webhook secret)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from adapters.webex.client import RetryBudget, WebexClient, WebexError, redact, retry_after_seconds
from tests.webex.conftest import RecordingObserver

TOKEN = "secret-token-value"
DEFAULT_BUDGET = RetryBudget()


def client_for(
    transport: httpx.MockTransport,
    observer: RecordingObserver | None = None,
    budget: RetryBudget = DEFAULT_BUDGET,
) -> WebexClient:
    # The port is never dialled: MockTransport answers in-process.
    return WebexClient("http://127.0.0.1:9/v1", TOKEN, observer=observer, transport=transport, budget=budget)


async def test_a_204_is_never_parsed_even_with_a_body() -> None:
    """The wxc_sdk defect: an attended transfer's 204 must not be read as a body."""
    transport = httpx.MockTransport(lambda request: httpx.Response(204, content=b"not json at all"))
    client = client_for(transport)
    assert await client.request("POST", "/telephony/calls/transfer", {"callId1": "a", "callId2": "b"}) is None
    await client.aclose()


async def test_server_error_is_an_unknown_outcome() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, json={"message": "upstream"}))
    client = client_for(transport)
    with pytest.raises(WebexError) as caught:
        await client.request("POST", "/telephony/calls/hold", {"callId": "a"})
    assert (caught.value.kind, caught.value.status, caught.value.message) == ("unknown", 502, "upstream")
    await client.aclose()


async def test_connection_refused_is_unreachable_and_read_timeout_unknown() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    for handler, kind in ((refuse, "unreachable"), (hang, "unknown")):
        client = client_for(httpx.MockTransport(handler))
        with pytest.raises(WebexError) as caught:
            await client.request("POST", "/telephony/calls/dial", {"destination": "1"})
        assert caught.value.kind == kind
        await client.aclose()


async def test_refusal_carries_status_message_and_tracking_id() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(409, json={"message": "Call is held", "trackingId": "WX_1"})
    )
    client = client_for(transport)
    with pytest.raises(WebexError) as caught:
        await client.request("POST", "/telephony/calls/hold", {"callId": "a"})
    assert (caught.value.kind, caught.value.status, caught.value.tracking_id) == ("refused", 409, "WX_1")
    await client.aclose()


async def test_throttling_beyond_the_budget_is_refused_without_waiting() -> None:
    calls = []

    def throttled(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(429, headers={"Retry-After": "60"}, json={"message": "slow down"})

    client = client_for(httpx.MockTransport(throttled), budget=RetryBudget(max_retries=3, max_wait_s=30))
    started = time.monotonic()
    with pytest.raises(WebexError) as caught:
        await client.request("POST", "/telephony/calls/hangup", {"callId": "a"})
    assert time.monotonic() - started < 1.0
    assert (caught.value.kind, caught.value.status, caught.value.retry_after) == ("refused", 429, 60.0)
    assert len(calls) == 1
    await client.aclose()


async def test_retry_count_is_bounded() -> None:
    calls = []

    def throttled(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["TrackingID"])
        return httpx.Response(423, headers={"Retry-After": "0"}, json={"message": "locked"})

    client = client_for(httpx.MockTransport(throttled), budget=RetryBudget(max_retries=2))
    with pytest.raises(WebexError) as caught:
        await client.request("POST", "/telephony/calls/hangup", {"callId": "a"})
    assert caught.value.status == 423
    assert len(calls) == 3 and len(set(calls)) == 3  # first try + 2 retries, each its own TrackingID
    await client.aclose()


def test_retry_after_forms() -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) == 1.0
    assert retry_after_seconds("soon") == 1.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    assert 15 < retry_after_seconds(later) <= 20


async def test_observer_sees_no_secret() -> None:
    observer = RecordingObserver()
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, json={"id": "W1", "secret": "hook-secret", "targetUrl": "u"})
    )
    client = client_for(transport, observer)
    answer = await client.request("POST", "/webhooks", {"name": "n", "secret": "hook-secret"})
    assert answer is not None and answer["secret"] == "hook-secret"  # the caller gets the real answer
    assert observer.requests == [
        ("/webhooks", {"name": "n", "secret": "***"}, {"id": "W1", "secret": "***", "targetUrl": "u"}, "ok")
    ]
    assert TOKEN not in repr(observer.requests)
    await client.aclose()


def test_redact_is_recursive() -> None:
    assert redact({"items": [{"secret": "s", "id": 1}], "secret": "t"}) == {
        "items": [{"secret": "***", "id": 1}],
        "secret": "***",
    }
