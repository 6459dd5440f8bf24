"""Prometheus metrics and the adapter observer that feeds them.

One :class:`~prometheus_client.CollectorRegistry` per service instance (not the
global default) so several services — tests, the demo — can live in one
process without "duplicated timeseries" errors.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from adapters.base import Observer
from adapters.service.logs import get_logger

log = get_logger("xferd.pbx")

# Decisions take tens of microseconds to a few milliseconds (an fsync); PBX
# round trips take tens of milliseconds to seconds.
_DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the service exports, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter("xferd_events", "Events fed to the engine, by type", ["type"], registry=r)
        self.frames = Counter(
            "xferd_pbx_frames", "PBX frames/deliveries accepted, by type", ["type"], registry=r
        )
        self.bad_frames = Counter("xferd_bad_frames", "PBX frames skipped, by reason", ["reason"], registry=r)
        self.transfers_started = Counter(
            "xferd_transfers_started", "Transfers accepted by the engine, by type", ["type"], registry=r
        )
        self.transfers_finished = Counter(
            "xferd_transfers_finished",
            "Transfers that reached a final state",
            ["state", "reason"],
            registry=r,
        )
        self.pbx_requests = Counter(
            "xferd_pbx_requests",
            "PBX HTTP requests, by endpoint and result",
            ["endpoint", "result"],
            registry=r,
        )
        self.pbx_request_seconds = Histogram(
            "xferd_pbx_request_seconds", "PBX HTTP request duration", ["endpoint"],
            buckets=_REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.unmapped_states = Counter(
            "xferd_unmapped_states",
            "Call states the platform reference does not name (legs kept as they were)",
            ["state", "personality"],
            registry=r,
        )
        self.reconnects = Counter("xferd_reconnects", "PBX event link re-established", registry=r)
        self.connected = Gauge("xferd_pbx_connected", "1 while the PBX event link is up", registry=r)
        self.decision_latency = Histogram(
            "xferd_decision_latency_seconds",
            "From feeding the decisive event to handing its PBX request to the adapter",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.engine_errors = Counter("xferd_engine_errors", "Events the engine failed on (bugs)", registry=r)
        self.store_errors = Counter("xferd_store_errors", "Store writes that failed", registry=r)
        self.stream_clients = Gauge("xferd_stream_clients", "Connected live-stream clients", registry=r)
        self.stream_dropped = Counter(
            "xferd_stream_dropped", "Live-stream clients dropped for falling behind", registry=r
        )
        # Several instances (adapters.service.ha).
        self.stale_writes = Counter(
            "xferd_stale_writes", "Decisions refused for a stale lease token (their requests never sent)",
            registry=r,
        )  # fmt: skip
        self.takeovers = Counter(
            "xferd_takeovers", "PBX leases this instance took over from another owner (or an expired one)",
            ["pbx"], registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsObserver(Observer):
    """Counts and logs what the PBX adapter reports."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._bad_reasons: set[str] = set()
        self._frames: dict[str, Any] = {}  # kind -> labelled counter (a label lookup per frame is not free)

    def frame(self, kind: str) -> None:
        counter = self._frames.get(kind)
        if counter is None:
            counter = self._frames[kind] = self.metrics.frames.labels(kind)
        counter.inc()

    def bad_frame(self, reason: str, sample: str) -> None:
        self.metrics.bad_frames.labels(reason).inc()
        # A broken PBX may send thousands: warn once per reason, the counter has the rest.
        level = "debug" if reason in self._bad_reasons else "warning"
        self._bad_reasons.add(reason)
        getattr(log, level)("bad_frame", reason=reason, sample=sample[:200])

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
        self.metrics.pbx_requests.labels(endpoint, result).inc()
        self.metrics.pbx_request_seconds.labels(endpoint).observe(seconds)
        log.info("pbx_request", endpoint=endpoint, body=body, answer=answer, result=result, seconds=seconds)

    def unmapped_state(self, state: str, personality: str) -> None:
        self.metrics.unmapped_states.labels(state, personality).inc()

    def reconnect(self) -> None:
        self.metrics.reconnects.inc()
        log.info("pbx_reconnected")

    def link(self, connected: bool, detail: str) -> None:
        self.metrics.connected.set(1 if connected else 0)
        log.info("pbx_link", connected=connected, detail=detail)
