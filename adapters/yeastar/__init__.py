"""Yeastar P-Series OpenAPI platform: REST client, token lifecycle, event
websocket consumer and frame parser behind :class:`YeastarAdapter`."""

from adapters.yeastar.adapter import YeastarAdapter, subscribe_url
from adapters.yeastar.consumer import EventConsumer
from adapters.yeastar.frames import (
    LimitExceededError,
    NotFoundError,
    OutcomeUnknown,
    Parsed,
    PbxUnreachable,
    TlsVerifyError,
    TokenExpiredError,
    YeastarError,
    parse_frame,
    parse_query,
)
from adapters.yeastar.rest import YeastarRest, tls_context
from adapters.yeastar.tokens import TokenManager, redact

__all__ = [
    "EventConsumer",
    "LimitExceededError",
    "NotFoundError",
    "OutcomeUnknown",
    "Parsed",
    "PbxUnreachable",
    "TlsVerifyError",
    "TokenExpiredError",
    "TokenManager",
    "YeastarAdapter",
    "YeastarError",
    "YeastarRest",
    "parse_frame",
    "parse_query",
    "redact",
    "subscribe_url",
    "tls_context",
]
