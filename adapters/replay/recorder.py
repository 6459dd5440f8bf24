"""Recording what the service sees and does, as a replayable scenario.

A :class:`Recorder` is an :class:`~adapters.base.Observer`: the PBX adapter
hands it every raw frame (Webex: every webhook delivery whose signature it
checked) and every HTTP exchange (already redacted by the adapter; Webex:
call control, polls and token renewals, with their HTTP status), and
:class:`RecordingRuntime` hands it the two inputs that do not come from the
adapter's observer hooks — API requests (``control``) and
reconciliation snapshots (``snapshot``).  Each becomes one JSONL line
(:mod:`adapters.replay.format`), flushed at once so that a crash loses at
most the line being written: a production incident is a scenario the moment
it happens.

Secrets are scrubbed again here, whatever the adapter did: keys that hold
credentials, ``access_token=`` in URLs and any known secret value (from the
config) become ``***``.  A recording is a file people attach to tickets.

Recording must never hurt the service: a write that fails (disk full) is
logged once and recording stops; the hooks never raise.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

from adapters.base import Clock, Observer
from adapters.replay.format import (
    CallModel,
    ControlLine,
    EndLine,
    Line,
    MemberModel,
    Meta,
    RequestLine,
    SnapshotLine,
    StartBody,
    SuperviseLine,
    dump_line,
    frame_line,
)
from adapters.service.runtime import Runtime
from engine.errors import Rejected
from engine.model import (
    CallsSnapshot,
    Command,
    Event,
    HangupRequested,
    MonitorRequested,
    OperatorRequested,
    ParkRequested,
    Policy,
    TransferRequested,
)

log = structlog.get_logger(__name__)

MASK = "***"
#: Keys whose values are credentials wherever they appear in a body or answer.
SECRET_KEYS = frozenset({"access_token", "refresh_token", "password", "client_secret", "webhook_secret"})
_NAMES = "access_token|refresh_token|password|client_secret|webhook_secret"
# ``access_token=…`` in a URL, and ``"access_token":"…"`` in JSON text (also escaped inside a ``msg``).
_PARAM = re.compile(rf"((?:{_NAMES})=)[^&\s\"'#]+")
_JSON_VALUE = re.compile(rf'(\\?"(?:{_NAMES})\\?"\s*:\s*\\?")[^"\\]*')


#: The adapters' ``result`` words; anything else is a request that never reached the PBX.
_RESULTS: dict[str, Literal["ok", "refused", "unknown", "error"]] = {
    "ok": "ok",
    "refused": "refused",
    "unknown": "unknown",
}


def xferd_version() -> str:
    try:
        return version("xferd")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class Redactor:
    """Masks credentials in text and JSON values; ``secrets`` are literal values to mask anywhere."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # A very short value would mask innocent text; no real secret is that short.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _JSON_VALUE.sub(r"\1" + MASK, _PARAM.sub(r"\1" + MASK, text))

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: MASK if k in SECRET_KEYS else self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value


class Recorder(Observer):
    """Writes a scenario file while the service (or ``xferd record``) runs.

    The ``meta`` line is written at construction; :meth:`close` writes the
    ``end`` line.  Offsets are seconds since construction, to the millisecond.
    ``pbx``: the platform settings a replay needs (``meta.pbx``).
    ``rules``: the routing rules the service runs with (a rules file's
    content, ``meta.rules``), so a replay starts the same rule transfers.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        name: str,
        platform: str,
        policy: Policy,
        secrets: Iterable[str] = (),
        description: str = "",
        clock: Clock = time.time,
        pbx: dict[str, Any] | None = None,
        rules: dict[str, Any] | None = None,
    ) -> None:
        if platform not in ("yeastar", "webex"):
            raise ValueError(f"recording supports the yeastar and webex platforms, not {platform!r}")
        self._out: TextIO | None = out
        self._clock = clock
        self._redact = Redactor(secrets)
        self.start = round(clock(), 3)
        self.lines = 0
        meta = Meta.model_validate(
            {
                "kind": "meta",
                "format": 1,
                "name": name,
                "description": description,
                "platform": platform,
                "pbx": pbx or {},
                "policy": policy.as_dict(),
                "start": self.start,
                "xferd": xferd_version(),
                "rules": rules,
            }
        )
        self._write(meta)

    @classmethod
    def open(cls, path: str | Path, **options: Any) -> Recorder:
        """Record to ``path`` (replaced if it exists); ``options`` as for the constructor."""
        out = Path(path).open("w", encoding="utf-8", newline="\n")  # noqa: SIM115 - kept open: we record into it
        try:
            return cls(out, **options)
        except BaseException:
            out.close()
            raise

    # -- Observer hooks (the adapter calls these) ------------------------------------
    def raw_frame(self, text: str, at: float) -> None:
        self._write(frame_line(self._offset(at), self._redact.text(text)))

    def pbx_request(
        self,
        endpoint: str,
        body: dict[str, Any],
        answer: dict[str, Any] | None,
        result: str,
        seconds: float,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self._write(
            RequestLine(
                kind="request",
                at=self._offset(self._clock()),
                endpoint=endpoint,
                body=self._redact.value(body),
                answer=None if answer is None else self._redact.value(answer),
                result=_RESULTS.get(result, "error"),
                seconds=round(seconds, 3),
                status=status,
                retry_after=retry_after,
            )
        )

    # -- what the runtime feeds the engine -------------------------------------------
    def control(self, event: TransferRequested | OperatorRequested, rejected: str | None = None) -> None:
        """An API request as the engine received it; ``rejected`` is its refusal code, if any."""
        if isinstance(event, TransferRequested):
            body = StartBody(
                type=event.type,
                channel_id=event.channel_id,
                extension=event.extension,
                number=event.number,
                dial_permission=event.dial_permission,
                policy=dict(event.policy) if event.policy else None,
            )
            line = ControlLine(
                kind="control",
                at=self._offset(event.at),
                op="start",
                transfer=event.transfer_id,
                body=body,
                rejected=rejected,
            )
        else:
            line = ControlLine(
                kind="control", at=self._offset(event.at), op=event.op, transfer=event.transfer_id,
                rejected=rejected,
            )  # fmt: skip
        self._write(line)

    def supervise(
        self, event: MonitorRequested | HangupRequested | ParkRequested, rejected: str | None = None
    ) -> None:
        """A supervisor's call action as the engine received it; ``rejected``: its refusal code."""
        at = self._offset(event.at)
        if isinstance(event, MonitorRequested):
            line = SuperviseLine(
                kind="supervise", at=at, action="monitor", channel_id=event.channel_id, monitor=event.monitor,
                mode=event.mode, session=event.session_id, rejected=rejected,
            )  # fmt: skip
        else:
            action: Literal["park", "hangup"] = "park" if isinstance(event, ParkRequested) else "hangup"
            line = SuperviseLine(
                kind="supervise", at=at, action=action, channel_id=event.channel_id, rejected=rejected
            )
        self._write(line)

    def snapshot(self, snapshot: CallsSnapshot) -> None:
        """A reconciliation snapshot as the engine received it."""
        calls = [
            CallModel(
                call_id=call.call_id,
                members=[
                    MemberModel(kind=m.kind, number=m.number, channel_id=m.channel_id, status=m.status)
                    for m in call.members
                ],
            )
            for call in snapshot.calls
        ]
        self._write(SnapshotLine(kind="snapshot", at=self._offset(snapshot.at), calls=calls))

    def close(self) -> None:
        """Write the ``end`` line and close the file (idempotent)."""
        if self._out is None:
            return
        self._write(EndLine(kind="end", at=self._offset(self._clock())))
        out, self._out = self._out, None
        try:
            out.close()
        except OSError as exc:
            log.warning("recording_close_failed", error=str(exc))

    # -- internals ----------------------------------------------------------------------
    def _offset(self, at: float) -> float:
        return max(0.0, round(at - self.start, 3))

    def _write(self, line: Line) -> None:
        out = self._out
        if out is None:
            return
        try:
            out.write(dump_line(line) + "\n")
            out.flush()
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            self._out = None
            log.error("recording_stopped", error=str(exc))
            return
        self.lines += 1


#: What clients ask of the engine (the API, supervisors): recorded with the engine's refusal, if any.
_CLIENT_EVENTS = (TransferRequested, OperatorRequested, MonitorRequested, HangupRequested, ParkRequested)


class RecordingRuntime(Runtime):
    """A :class:`Runtime` that records API requests and snapshots as it feeds them.

    Why here and not in the adapter: API requests never pass the adapter, and
    snapshots reach the engine from two places (the adapter after every
    reconnect, the runtime after an unknown outcome); :meth:`feed` is where
    every one of them goes through, in the order the engine sees them.
    """

    def __init__(self, *args: Any, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = recorder

    def feed(self, event: Event) -> list[Command]:
        if isinstance(event, CallsSnapshot):
            self.recorder.snapshot(event)
        if not isinstance(event, _CLIENT_EVENTS):
            return super().feed(event)
        try:
            commands = super().feed(event)
        except Rejected as exc:
            self._record(event, exc.code)
            raise
        self._record(event)
        return commands

    def _record(self, event: Event, rejected: str | None = None) -> None:
        """A client's request: an API request (``control``) or a supervisor's action (``supervise``)."""
        if isinstance(event, TransferRequested | OperatorRequested):
            self.recorder.control(event, rejected)
        elif isinstance(event, MonitorRequested | HangupRequested | ParkRequested):
            self.recorder.supervise(event, rejected)


class Tee(Observer):
    """Hands every adapter hook to several observers (metrics and a recorder)."""

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def frame(self, kind: str) -> None:
        for observer in self._observers:
            observer.frame(kind)

    def bad_frame(self, reason: str, sample: str) -> None:
        for observer in self._observers:
            observer.bad_frame(reason, sample)

    def raw_frame(self, text: str, at: float) -> None:
        for observer in self._observers:
            observer.raw_frame(text, at)

    def pbx_request(
        self,
        endpoint: str,
        body: dict[str, Any],
        answer: dict[str, Any] | None,
        result: str,
        seconds: float,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        for observer in self._observers:
            observer.pbx_request(
                endpoint, body, answer, result, seconds, status=status, retry_after=retry_after
            )

    def unmapped_state(self, state: str, personality: str) -> None:
        for observer in self._observers:
            observer.unmapped_state(state, personality)

    def reconnect(self) -> None:
        for observer in self._observers:
            observer.reconnect()

    def link(self, connected: bool, detail: str) -> None:
        for observer in self._observers:
            observer.link(connected, detail)
