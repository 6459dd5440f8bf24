"""Security: the API token, the listen address, webhook signatures, and secrets in logs and recordings.

The secrets grep runs the worlds of the chaos suite with faults that make
the service talk about its credentials (tokens expiring, refreshed and
revoked, sockets dropped, the PBX restarting, a SIGKILL and restart), at
DEBUG level, then greps every log line and every recording for every
secret used: the API token, the PBX client secret, every access and refresh
token the simulator issued, the Webex token and webhook secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from adapters.service import logs
from adapters.service import roles as roles_module
from adapters.service.config import ConfigError, load
from chaos.faults import by_name
from chaos.fuzz import API_TOKEN as FUZZ_TOKEN
from chaos.fuzz import service_thread
from chaos.runner import run_kind
from chaos.support import WEBHOOK_SECRET, LogWatch, WebexWorld, YeastarWorld

OPEN_PATHS = {"/healthz"}
CONSOLE_LOGIN_PATHS = {"/console/login", "/console/logout"}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with service_thread(tmp_path_factory.mktemp("security")) as url:
        yield url


def operations(base_url: str) -> list[tuple[str, str]]:
    """Every (method, path) of the served OpenAPI schema, path parameters filled in."""
    schema = httpx.get(f"{base_url}/openapi.json").json()
    out = []
    for path, methods in schema["paths"].items():
        concrete = path.replace("{transfer_id}", "t-1").replace("{op}", "complete")
        out += [
            (method.upper(), concrete) for method in methods if method in ("get", "post", "put", "delete")
        ]
    return out


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Basic {FUZZ_TOKEN}", f"Bearer {FUZZ_TOKEN}x",
     f"Bearer {FUZZ_TOKEN[:-1]}", f"{FUZZ_TOKEN}"],
)  # fmt: skip
def test_every_operation_refuses_a_missing_or_wrong_token(base_url: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    checked = 0
    for method, path in operations(base_url):
        response = httpx.request(method, f"{base_url}{path}", headers=headers, json={})
        if path in OPEN_PATHS:
            assert response.status_code in (200, 503)
            continue
        if path in CONSOLE_LOGIN_PATHS:  # open by design: they take a token or clear cookies
            assert response.status_code in (204, 401, 422, 429), (method, path, response.status_code)
            assert "xferd_session=" not in response.headers.get("set-cookie", "").replace(
                'xferd_session=""', ""
            )
            continue
        checked += 1
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.json()["error"] == "unauthorized" and response.json()["detail"]
        assert response.headers.get("www-authenticate") == "Bearer"
    assert checked >= 5


def test_the_token_is_compared_in_constant_time(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token check goes through ``hmac.compare_digest`` with the whole provided value."""
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(roles_module.hmac, "compare_digest", spy)
    response = httpx.get(f"{base_url}/v1/calls", headers={"Authorization": "Bearer guess-1234"})
    assert response.status_code == 401
    assert (b"guess-1234", FUZZ_TOKEN.encode()) in seen
    assert (
        httpx.get(f"{base_url}/v1/calls", headers={"Authorization": f"Bearer {FUZZ_TOKEN}"}).status_code
        == 200
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:8765", "[::]:8765", "192.0.2.10:8765", "pbx.example.com:8765"])
def test_a_non_loopback_listen_without_a_token_is_refused(tmp_path: Path, listen: str) -> None:
    """Config validation only: nothing listens on these addresses."""
    path = tmp_path / "x.toml"
    path.write_text(
        '[pbx]\nkind = "yeastar"\nbase_url = "http://127.0.0.1:9"\nclient_id = "a"\nclient_secret = "b"\n'
        f'[api]\nlisten = "{listen}"\n'
    )
    with pytest.raises(ConfigError, match=r"\[api\]\.token: required when \[api\]\.listen is not a loopback"):
        load(path, environ={})


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0", "localhost:0", "127.0.0.2:0"])
def test_a_loopback_listen_may_go_without_a_token(tmp_path: Path, listen: str) -> None:
    path = tmp_path / "x.toml"
    path.write_text(
        '[pbx]\nkind = "yeastar"\nbase_url = "http://127.0.0.1:9"\nclient_id = "a"\nclient_secret = "b"\n'
        f'[api]\nlisten = "{listen}"\n'
    )
    assert load(path, environ={}).api.token is None


async def test_webhook_signatures_are_enforced_by_the_control_api(tmp_path: Path) -> None:
    """``POST /v1/webhooks/webex`` on the real service: 401 unless signed with the webhook secret."""
    world = WebexWorld(tmp_path, LogWatch())
    await world.start()
    try:
        url = f"{world.svc.base_url}/v1/webhooks/webex"
        body = b'{"resource": "telephony_calls", "event": "updated", "data": {}}'
        good = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
        tampered = body.replace(b"updated", b"deleted")
        cases = [
            ({}, body, 401),
            ({"X-Spark-Signature": ""}, body, 401),
            ({"X-Spark-Signature": "0" * 40}, body, 401),
            ({"X-Spark-Signature": hmac.new(b"other", body, hashlib.sha1).hexdigest()}, body, 401),
            ({"X-Spark-Signature": good}, tampered, 401),
            (
                {"Authorization": "Bearer chaos-api-token-7f3a9c21"},
                body,
                401,
            ),  # the API token is no signature
            ({"X-Spark-Signature": good}, body, 204),
        ]
        async with httpx.AsyncClient() as http:
            for headers, content, expected in cases:
                response = await http.post(url, content=content, headers=headers)
                assert response.status_code == expected, (headers, response.text)
                if expected == 401:
                    assert response.json()["error"] == "unauthorized"
    finally:
        await world.stop()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """This test reconfigures logging at DEBUG; later tests must not inherit that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
async def test_no_secret_in_any_log_line_or_recording(tmp_path: Path) -> None:
    watch = LogWatch(keep=True)
    logs.configure("json", logging.DEBUG, stream=watch)  # type: ignore[arg-type]
    logging.getLogger("statemachine").setLevel(logging.INFO)
    recordings: list[Path] = []
    for name in ("token_expired_mid_stream", "refresh_failure", "pbx_restart", "webex_token_refused"):
        where = tmp_path / name
        where.mkdir()
        result = await run_kind(by_name(name), 1, 1, where, watch, deadline_s=15)
        assert result.runs and result.injected >= 1
        recordings += sorted(where.glob("recording-*.jsonl"))
    kill = tmp_path / "kill"
    kill.mkdir()
    await run_kind(by_name("service_sigkill"), 1, 1, kill, watch, deadline_s=15)
    assert len(watch.secrets) >= 6, (
        watch.secrets
    )  # the API token, client secret, webex secrets, issued tokens
    assert any(len(s) == 32 for s in watch.secrets), "no simulator-issued token was collected"
    assert watch.count > 200 and recordings
    texts = {f"log line {i}": line for i, line in enumerate(watch.lines)}
    texts |= {str(path): path.read_text() for path in recordings}
    leaks = [(where, secret) for where, text in texts.items() for secret in watch.secrets if secret in text]
    assert leaks == []
    assert YeastarWorld.platform in "".join(p.name for p in recordings)
