"""Logging: one JSON format for our lines and library lines; secrets never come out."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from adapters.service import logs
from adapters.service.logs import Redactor


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the previous logging setup is restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    logs.configure("json", logging.INFO, buffer)
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)
    structlog.reset_defaults()


def test_redactor_masks_known_secrets_and_credential_parameters() -> None:
    redactor = Redactor()
    redactor.add(["s3cr3t-value", None, "x"])
    event = {
        "event": "GET /openapi/v1.0/call/query?access_token=abcdef&type=inbound",
        "url": "ws://127.0.0.1:1/v1/stream?token=tok123",
        "header": "Authorization: Bearer tok456",
        "nested": {"list": ["password=hunter2", "the s3cr3t-value leaked"]},
        "count": 3,
    }
    cleaned = redactor(None, "info", event)
    text = json.dumps(cleaned)
    for secret in ("abcdef", "tok123", "tok456", "hunter2", "s3cr3t-value"):
        assert secret not in text
    assert cleaned["event"] == "GET /openapi/v1.0/call/query?access_token=***&type=inbound"
    assert cleaned["nested"]["list"][1] == "the *** leaked"
    assert cleaned["count"] == 3
    # one-character "secrets" would mask innocent text: ignored
    assert redactor(None, "info", {"event": "x marks"})["event"] == "x marks"


def test_json_lines_for_ours_and_stdlib_with_redaction(json_logs: io.StringIO) -> None:
    logs.redactor.add(["api-token-777"])
    logs.get_logger("xferd.test").info("transfer_changed", transfer_id="t1", note="api-token-777")
    logging.getLogger("some.library").info('"GET /v1/stream?token=api-token-777 HTTP/1.1" 101')
    try:
        raise RuntimeError("boom with api-token-777")
    except RuntimeError:
        logs.get_logger("xferd.test").exception("failed")
    logging.getLogger("statemachine").debug("noisy transition")
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["xferd.test", "some.library", "xferd.test"]
    ours, stdlib, failure = lines
    assert ours["transfer_id"] == "t1" and ours["level"] == "info" and ours["timestamp"].endswith("Z")
    assert ours["note"] == "***"
    assert stdlib["logger"] == "some.library" and "token=***" in stdlib["event"]
    assert failure["level"] == "error" and failure["exception"][0]["exc_type"] == "RuntimeError"
    assert "locals" not in failure["exception"][0]["frames"][0]  # locals could hold anything
    assert "api-token-777" not in json.dumps(lines)
    assert len(lines) == 3  # the statemachine DEBUG line was dropped
