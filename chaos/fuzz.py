"""Bad input: the frame parser, the webhook receiver, the config loader and the control API, fuzzed.

Each fuzzer is a hypothesis search (seeded, no example database) whose body
asserts what bad input must get: a parsed result or a counted, named
rejection — never an exception, never a 5xx from our own code, never a
secret in a message.  A failing example is not raised: it is recorded as a
crash with its input, so one run reports every fuzzer; the fast tests
assert the list is empty.

The control API is fuzzed twice: schemathesis generates requests from the
OpenAPI schema the service serves (``/openapi.json``), valid and invalid,
and a hypothesis fuzzer sends raw bytes, odd paths, methods and headers
that no schema describes.  The service runs in a thread of its own (the
fuzzers' HTTP clients are synchronous) with a scripted PBX that accepts
everything, so every 5xx is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import string
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr

from adapters.service.config import (
    ApiConfig,
    Config,
    ConfigError,
    PolicyConfig,
    StoreConfig,
    YeastarPbx,
    load,
)
from adapters.service.server import Service
from adapters.webex import WebexAdapter
from adapters.yeastar.frames import parse_frame, parse_query

KNOWN_KINDS = {"30011", "30012", "30015", "ack", "heartbeat", "token_expired", "error", "bad"}
API_TOKEN = "fuzz-api-token-81b2c3d4"


@dataclass(slots=True)
class FuzzStats:
    """What one fuzzer tried and what it found."""

    name: str
    what: str
    examples: int = 0
    rejected: int = 0
    accepted: int = 0
    crashes: list[str] = field(default_factory=list)

    def crash(self, what: str, example: Any) -> None:
        if len(self.crashes) < 50:
            self.crashes.append(f"{what}: {example!r}"[:1000])


def _settings(examples: int, seed: int) -> settings:
    return settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _run(test: Callable[[], None], seed: int) -> None:
    """Run a ``@given`` test with a fixed seed (hypothesis's own seeding API)."""
    from hypothesis import seed as hypothesis_seed

    hypothesis_seed(seed)(test)()


# -- JSON-shaped strategies ------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)
_statuses = st.sampled_from(["ALERT", "RING", "EARLYMEDIA", "ANSWERED", "ANSWER", "HOLD", "BYE", "", "ring"])
_member_fields = st.fixed_dictionaries(
    {},
    optional={
        "number": st.text(max_size=10) | st.integers(),
        "channel_id": st.text(max_size=30) | st.none() | st.integers(),
        "member_status": _statuses | json_values,
        "call_path": st.text(max_size=5),
        "from": st.text(max_size=10),
        "to": st.text(max_size=10),
        "trunk_name": st.text(max_size=10),
    },
)
_members = st.lists(
    st.dictionaries(st.sampled_from(["extension", "inbound", "outbound", "queue", ""]), _member_fields,
                    min_size=0, max_size=2) | json_values,
    max_size=4,
)  # fmt: skip
_msgs = st.fixed_dictionaries(
    {},
    optional={
        "call_id": st.text(max_size=20) | st.integers() | st.none(),
        "members": _members | json_values,
        "reason": st.text(max_size=20) | json_values,
        "status": st.text(max_size=10),
    },
)
_frames = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([30011, 30012, 30015, 30013, "30011", 0, -1, 1.5]) | json_values,
        "sn": st.text(max_size=12),
        "msg": _msgs.map(json.dumps) | _msgs | json_values | st.text(max_size=50),
        "errcode": st.sampled_from([0, 10004, -1, 40002]) | json_values,
        "errmsg": st.text(max_size=20),
    },
)
frame_inputs = (
    _frames.map(lambda f: json.dumps(f, allow_nan=False))
    | json_values.map(json.dumps)
    | st.text(max_size=300)
    | st.binary(max_size=300)
    | st.sampled_from(["heartbeat response", "heartbeat", "", "{", "null", '{"type":30011,"msg":"{"}'])
)


def fuzz_frames(examples: int, seed: int) -> FuzzStats:
    """Yeastar websocket frames and ``call/query`` answers: parsed or rejected with a named reason."""
    stats = FuzzStats("yeastar_frames", "websocket frames (text, bytes, near-valid 30011/30012/30015) and "
                      "call/query answers through the adapter's parsers")  # fmt: skip

    @_settings(examples, seed)
    @given(
        frame=frame_inputs,
        answer=json_values | st.fixed_dictionaries({"errcode": st.just(0), "data": json_values}),
    )
    def test(frame: str | bytes, answer: Any) -> None:
        stats.examples += 1
        try:
            parsed = parse_frame(frame, 1.0)
        except Exception as exc:
            stats.crash(f"parse_frame raised {type(exc).__name__}: {exc}", frame)
            return
        if parsed.kind not in KNOWN_KINDS and not parsed.kind.isdigit():
            stats.crash(f"parse_frame returned kind {parsed.kind!r}", frame)
        if parsed.kind == "bad":
            stats.rejected += 1
            if not parsed.bad or not parsed.bad.replace("_", "").isalpha():
                stats.crash(f"rejected without a reason ({parsed.bad!r})", frame)
        reasons: list[str] = []
        try:
            parse_query(
                answer if isinstance(answer, dict) else {"errcode": 0, "data": answer}, 1.0, reasons.append
            )
        except Exception as exc:
            stats.crash(f"parse_query raised {type(exc).__name__}: {exc}", answer)

    _run(test, seed)
    return stats


# -- webhooks --------------------------------------------------------------------------------------

WEBHOOK_SECRET = "fuzz-webhook-secret-5e6f"

_call_data = st.fixed_dictionaries(
    {},
    optional={
        "callId": st.text(max_size=20) | json_values,
        "callSessionId": st.text(max_size=20) | json_values,
        "personality": st.sampled_from(["originator", "terminator", "clickToDial", "x"]) | json_values,
        "state": st.sampled_from(["connecting", "alerting", "connected", "held", "remoteHeld", "disconnected",
                                  "odd"]) | json_values,
        "remoteParty": st.fixed_dictionaries({}, optional={"number": st.text(max_size=12) | json_values})
        | json_values,
        "eventType": st.text(max_size=10),
        "eventTimestamp": st.sampled_from(["2026-01-01T00:00:00.000Z", "yesterday", ""]) | json_values,
        "answered": st.text(max_size=25) | json_values,
    },
)  # fmt: skip
_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "resource": st.sampled_from(["telephony_calls", "messages"]) | json_values,
        "event": st.sampled_from(["created", "updated", "deleted"]) | json_values,
        "data": _call_data | json_values,
        "id": st.text(max_size=10),
    },
)
webhook_bodies = _envelopes.map(lambda e: json.dumps(e).encode()) | st.binary(max_size=400)


def fuzz_webhooks(examples: int, seed: int) -> FuzzStats:
    """``POST /v1/webhooks/webex`` as the Webex adapter takes it: 401 unless signed, 204 if signed."""
    stats = FuzzStats("webex_webhooks", "webhook bodies (near-valid envelopes, raw bytes), signed right, "
                      "signed wrong, unsigned, with odd signature headers")  # fmt: skip
    events: list[Any] = []
    adapter = WebexAdapter(
        "http://127.0.0.1:9/v1", access_token="fuzz-token-2a", webhook_secret=WEBHOOK_SECRET
    )
    adapter._sink = events.append  # started without the network: deliveries reach the parser

    @_settings(examples, seed)
    @given(
        body=webhook_bodies,
        how=st.sampled_from(["right", "wrong", "none", "garbage", "upper"]),
        garbage=st.text(max_size=60),
    )
    def test(body: bytes, how: str, garbage: str) -> None:
        stats.examples += 1
        good = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
        signature = {
            "right": good,
            "upper": good.upper(),
            "wrong": hmac.new(b"other-secret", body, hashlib.sha1).hexdigest(),
            "none": None,
            "garbage": garbage,
        }[how]
        try:
            status = asyncio.run(adapter.handle_webhook(body, signature))
        except Exception as exc:
            stats.crash(f"handle_webhook raised {type(exc).__name__}: {exc}", (body, signature))
            return
        signed = how in ("right", "upper") or (how == "garbage" and garbage.strip().lower() == good)
        expected = 204 if signed else 401
        if status != expected:
            stats.crash(f"answered {status}, expected {expected} ({how})", (body, signature))
        if status == 401:
            stats.rejected += 1

    _run(test, seed)
    return stats


# -- config ----------------------------------------------------------------------------------------

SECRET_VALUE = "Sup3r-S3cret-Value-77"
_KEYS = {
    "pbx": ["kind", "base_url", "client_id", "client_secret", "access_token", "webhook_secret", "events",
            "verify_tls", "ca_file", "topics", "public_url", "poll_interval_s", "bogus"],
    "api": ["listen", "token", "bogus"],
    "store": ["path", "bogus"],
    "policy": ["on_answer", "answer_delay_s", "no_answer_timeout_s", "on_transferor_hangup",
               "fallback_numbers",
               "bogus"],
}  # fmt: skip
_toml_scalars = (
    st.sampled_from(["yeastar", "webex", "http://127.0.0.1:8088", "https://x", "127.0.0.1:0", "0.0.0.0:80",
                     "[::]:1", "complete", "hold", "threeway", "abort", "poll", "webhook", SECRET_VALUE, ""])
    | st.integers(min_value=-(2**31), max_value=2**31)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.text(alphabet=string.printable, max_size=20)
)  # fmt: skip
_toml_values = _toml_scalars | st.lists(_toml_scalars, max_size=3)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if not (isinstance(value, float) and math.isinf(value)) else "0"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string is a JSON string for these characters


_VALID: dict[str, dict[str, Any]] = {
    "pbx": {
        "kind": "yeastar",
        "base_url": "http://127.0.0.1:8088",
        "client_id": "id",
        "client_secret": SECRET_VALUE,
    },
    "api": {"listen": "127.0.0.1:0", "token": SECRET_VALUE + "-api"},
    "store": {"path": "x.sqlite3"},
    "policy": {"no_answer_timeout_s": 20},
}


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    """Raw text, a random config, or a valid config with a few keys changed, dropped or added."""
    shape = draw(st.sampled_from(["raw", "random", "mutated", "mutated"]))
    if shape == "raw":
        return draw(st.text(max_size=200))
    tables: dict[str, dict[str, Any]] = (
        {table: dict(values) for table, values in _VALID.items()} if shape == "mutated" else {}
    )
    for table, keys in _KEYS.items():
        if shape == "random" and draw(st.integers(0, 5)) == 0:
            continue
        chosen = draw(
            st.lists(st.sampled_from(keys), unique=True, max_size=2 if shape == "mutated" else len(keys))
        )
        for key in chosen:
            if shape == "mutated" and draw(st.booleans()):
                tables.setdefault(table, {}).pop(key, None)
            else:
                tables.setdefault(table, {})[key] = draw(_toml_values)
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def fuzz_config(examples: int, seed: int) -> FuzzStats:
    """Config files: a Config, or one line naming the file and key, never quoting a secret."""
    stats = FuzzStats("config_files", "TOML config files (random keys, types and values, and raw text) "
                      "through the loader")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="chaos-config-") as tmp:
        path = Path(tmp) / "xferd.toml"

        @_settings(examples, seed)
        @given(text=config_texts())
        def test(text: str) -> None:
            stats.examples += 1
            path.write_text(text, encoding="utf-8")
            try:
                load(path, environ={})
                stats.accepted += 1
            except ConfigError as exc:
                stats.rejected += 1
                message = str(exc)
                if "\n" in message or not message.startswith(f"config error in {path}"):
                    stats.crash("the message is not one line naming the file", (text, message))
                if SECRET_VALUE in message:
                    stats.crash("the message quotes a secret", (text, message))
            except Exception as exc:
                stats.crash(f"load raised {type(exc).__name__}: {exc}", text)

        _run(test, seed)
    return stats


# -- the control API ---------------------------------------------------------------------------------


@contextmanager
def service_thread(tmp: Path) -> Iterator[str]:
    """A service with a PBX that accepts everything, on its own loop in a thread; yields its base URL."""
    from tests.service.conftest import FakeAdapter, answered_call

    ready = threading.Event()
    stop = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        config = Config(
            pbx=YeastarPbx(kind="yeastar", base_url="http://127.0.0.1:9", client_id="x",
                           client_secret=SecretStr("fuzz-pbx-secret-9f")),
            api=ApiConfig(listen="127.0.0.1:0", token=SecretStr(API_TOKEN)),
            store=StoreConfig(path=tmp / "fuzz.sqlite3"),
            policy=PolicyConfig(no_answer_timeout_s=30),
        )  # fmt: skip
        adapter = FakeAdapter()
        service = Service(config, adapter=adapter)
        await service.start()
        answered_call(adapter, "c1", "2000")
        answered_call(adapter, "c2", "2001", "5550101")
        box["url"] = service.base_url
        # A console session made before any fuzzing: fuzzed logins soon trip the rate limit.
        issued = service.app.state.ctx.sessions.login(API_TOKEN)
        SESSIONS[service.base_url] = (issued[1], issued[2])
        ready.set()
        while not stop.is_set():  # noqa: ASYNC110 - a thread's stop flag, bounded by the caller
            await asyncio.sleep(0.05)
        await service.stop()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the fuzzed service did not start")
    try:
        yield box["url"]
    finally:
        stop.set()
        thread.join(30)


def _check_answer(
    stats: FuzzStats, what: Any, status: int, body: bytes, content_type: str, method: str = "GET"
) -> None:
    if status >= 500 and status not in (502, 503):
        stats.crash(f"HTTP {status}: {body[:300]!r}", what)
        return
    if status >= 400 and method == "HEAD":
        stats.rejected += 1  # a HEAD answer has no body to check
    elif status >= 400:
        stats.rejected += 1
        try:
            error = json.loads(body)
        except ValueError:
            stats.crash(f"HTTP {status} without a JSON error body: {body[:200]!r}", what)
            return
        if not (isinstance(error, dict) and isinstance(error.get("error"), str) and error.get("detail")):
            stats.crash(f"HTTP {status} error without error/detail: {body[:200]!r}", what)


def fuzz_api_schema(base_url: str, examples: int, seed: int) -> FuzzStats:
    """schemathesis: requests generated from ``/openapi.json``, valid and invalid, with the token."""
    import schemathesis
    from schemathesis import GenerationMode

    stats = FuzzStats("control_api_schema", "schemathesis cases from the served OpenAPI schema, positive and "
                      "negative, every operation, with the API token")  # fmt: skip
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    per_operation = max(5, examples // max(1, 2 * len(operations)))
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @_settings(per_operation, seed)
            @given(case=operation.as_strategy(generation_mode=mode))
            def test(case: Any) -> None:
                stats.examples += 1
                try:
                    response = case.call(base_url=base_url, headers=headers, timeout=10)
                except Exception as exc:
                    stats.crash(f"request failed: {type(exc).__name__}: {exc}", repr(case)[:300])
                    return
                _check_answer(stats, f"{case.method} {case.formatted_path}", response.status_code,
                              response.content, response.headers.get("content-type", ""))  # fmt: skip

            # No invalid request exists for an operation without parameters or body.
            with contextlib.suppress(Unsatisfiable):
                _run(test, seed)
    return stats


_paths = st.sampled_from(
    ["/v1/transfers", "/v1/transfers/x", "/v1/transfers/x/complete", "/v1/calls", "/healthz", "/metrics",
     "/v1/stream", "/openapi.json", "/", "/v1/transfers/%00", "/v1/transfers/" + "a" * 3000,
     "/v1/webhooks/webex", "/v1/transfers/x/../../etc", "/console/login", "/console/logout",
     "/console/me", "/v1/transfers/x/timeline", "/v1/stream?snapshot=1", "/v1/audit"]
) | st.text(alphabet=string.ascii_letters + "/%._-", max_size=40).map(lambda p: "/" + p)  # fmt: skip
_bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries(
        {}, optional={"type": json_values, "channel_id": json_values, "extension": json_values,
                      "number": json_values, "policy": json_values, "dial_permission": json_values}
    ).map(lambda v: json.dumps(v).encode())
)  # fmt: skip


def fuzz_api_raw(base_url: str, examples: int, seed: int) -> FuzzStats:
    """Requests no schema describes: odd methods, paths, headers, bodies; with and without the token."""
    stats = FuzzStats("control_api_raw", "raw requests: any method, odd paths, raw/JSON bodies, "
                      "content types, "
                      "Authorization and Idempotency-Key headers, console session cookies with and "
                      "without the CSRF header")  # fmt: skip
    with httpx.Client(base_url=base_url, timeout=10) as http:
        session, csrf = _console_session(http)

        @_settings(examples, seed)
        @given(
            method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
            path=_paths,
            body=_bodies,
            auth=st.sampled_from(
                [
                    "good",
                    "none",
                    "wrong",
                    "basic",
                    "empty",
                    "lower",
                    "session",
                    "session-no-csrf",
                    "bad-cookie",
                ]
            ),
            content_type=st.sampled_from(
                ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
            ),
            key=st.none() | st.text(alphabet=string.printable.strip(), max_size=300),
        )
        def test(method: str, path: str, body: bytes, auth: str, content_type: str, key: str | None) -> None:
            stats.examples += 1
            headers = {
                "good": {"Authorization": f"Bearer {API_TOKEN}"},
                "lower": {"Authorization": f"bearer {API_TOKEN}"},
                "wrong": {"Authorization": "Bearer not-the-token"},
                "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
                "empty": {"Authorization": ""},
                "none": {},
                "session": {"Cookie": f"xferd_session={session}; xferd_csrf={csrf}", "X-CSRF-Token": csrf},
                "session-no-csrf": {"Cookie": f"xferd_session={session}; xferd_csrf={csrf}"},
                "bad-cookie": {"Cookie": f"xferd_session={session[:-3]}xyz", "X-CSRF-Token": csrf},
            }[auth]
            if content_type:
                headers["Content-Type"] = content_type
            if key is not None:
                headers["Idempotency-Key"] = key
            try:
                response = http.request(method, path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                stats.crash(f"request failed: {type(exc).__name__}: {exc}", (method, path))
                return
            _check_answer(stats, (method, path, auth, body[:100]), response.status_code, response.content,
                          response.headers.get("content-type", ""), method)  # fmt: skip
            state_changing = method not in ("GET", "HEAD", "OPTIONS")
            if (
                (auth == "bad-cookie" or (auth == "session-no-csrf" and state_changing))
                and path.startswith("/v1/")
                and not path.startswith("/v1/webhooks")
                and response.status_code < 300
            ):
                stats.crash(f"HTTP {response.status_code} without a valid session and CSRF header",
                            (method, path, auth))  # fmt: skip
            if (
                auth not in ("good", "lower", "session", "session-no-csrf", "bad-cookie")
                and path.startswith("/v1/")
                and not path.startswith("/v1/webhooks")
                and response.status_code not in (401, 404, 405)
            ):
                stats.crash(f"HTTP {response.status_code} without the token", (method, path, auth))

        _run(test, seed)
    return stats


#: Console sessions of the services :func:`service_thread` started, by base URL.
SESSIONS: dict[str, tuple[str, str]] = {}


def _console_session(http: httpx.Client) -> tuple[str, str]:
    """The session cookie and CSRF token the fuzzer sends (logged in before fuzzing began)."""
    made = SESSIONS.get(str(http.base_url).rstrip("/"))
    if made is not None:
        return made
    response = http.post("/console/login", json={"token": API_TOKEN})
    response.raise_for_status()
    return response.cookies["xferd_session"], response.cookies["xferd_csrf"]


async def run_fuzzers(examples: int, seed: int) -> list[FuzzStats]:
    """Every fuzzer, ``examples`` each (off the event loop: they block)."""

    def all_of_them() -> list[FuzzStats]:
        started = time.monotonic()
        out = [fuzz_frames(examples, seed), fuzz_webhooks(examples, seed), fuzz_config(examples, seed)]
        with tempfile.TemporaryDirectory(prefix="chaos-api-") as tmp, service_thread(Path(tmp)) as url:
            out.append(fuzz_api_schema(url, examples, seed))
            out.append(fuzz_api_raw(url, examples, seed))
        del started
        return out

    return await asyncio.to_thread(all_of_them)
