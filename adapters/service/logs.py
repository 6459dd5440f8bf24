"""Logging: JSON lines for ``xferd run``, a readable console for ``xferd demo``.

structlog renders both our own events and the stdlib lines of uvicorn, httpx
and websockets (through :class:`structlog.stdlib.ProcessorFormatter`), so one
log shipper sees one format.  A redaction processor runs last on every line:
whatever a library or a traceback printed, known secret values and
``access_token=…``/``token=…`` query parameters come out masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

MASK = "***"
# Query-string and header forms of credentials that may appear in URLs and
# library messages (uvicorn's access log prints the websocket's ?token=…).
_CREDENTIAL = re.compile(
    r"((?:access_token|refresh_token|token|client_secret|password)=)[^&\s\"']+"
    r"|(Bearer\s+)[^\s\"',]+",
    re.IGNORECASE,
)


class Redactor:
    """A structlog processor masking secrets anywhere in an event dict."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secrets: Iterable[str | None]) -> None:
        # Very short values would mask innocent text ("1"); no real secret is that short.
        self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def clean(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2)) + MASK, text)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.clean(value)
        if isinstance(value, dict):
            return {key: self._walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(item) for item in value]
        return value

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        return {key: self._walk(value) for key, value in event_dict.items()}


#: The process-wide redactor; the service adds its secrets at start-up.
redactor = Redactor()


def configure(
    mode: Literal["json", "console"], level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) in one format."""
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Processor
    if mode == "json":
        # Tracebacks as data, without frame locals: a local may hold a credential.
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        final: list[Processor] = [structlog.processors.ExceptionRenderer(tracebacks), redactor]
        renderer = structlog.processors.JSONRenderer()
    else:
        final = [redactor]
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,  # so tests can capture_logs() after configure()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # DEBUG in python-statemachine logs every transition and slows each one down.
    logging.getLogger("statemachine").setLevel(max(level, logging.INFO))
    # httpx logs every PBX request at INFO; the runtime's own ``decision`` and
    # ``request_finished`` lines say the same with the transfer's id, and the
    # duplicate cost ~10 % of each PBX request's CPU under load (bench/RESULTS.md).
    # At DEBUG they are kept (scrubbed of the token like every line).
    logging.getLogger("httpx").setLevel(level if level < logging.INFO else max(level, logging.WARNING))


def get_logger(name: str) -> Any:
    """A structlog logger (typed ``Any``: structlog's bound loggers are dynamic)."""
    return structlog.get_logger(name)
