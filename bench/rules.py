"""Figures 7 and 8: what routing rules cost — ingest with 100 rules, and a rule's decision latency.

Both run in this process on the service's real runtime (:class:`~adapters.service.runtime.Runtime`:
engine, rules, SQLite store with ``synchronous=FULL``, metrics, JSON logs at INFO into /dev/null)
with a bench adapter that answers every PBX request at once, so what is timed is xferd's own
path, not a PBX's.

* **Ingest** (figure 7): the same pre-encoded 30011 frames of realistic traffic
  (:class:`bench.common.Traffic`, ``ingest_calls`` live calls, hold/resume and call churn — every
  churned call rings and is answered, a ``call.answered`` trigger) are parsed with the Yeastar
  parser and fed to the runtime, with no rules, with 100 enabled rules naming other extensions
  (indexed: none matches) and with 100 enabled rules naming no extension (each evaluated on
  every answer, none matches).  Runs alternate; medians of per-run rates are compared.
* **Decision latency** (figure 8): from feeding the triggering event to the start request being
  handed to the adapter.  Rule path: an extension's ANSWER frame (parsed, fed; a rule on
  ``call.answered`` fires, the transfer is written ahead, the start leaves).  API path: the
  ``TransferRequested`` the control API feeds for the same kind of call.  Same runtime, same
  store, ``latency_transfers`` × 5 samples each, alternating.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from adapters.service.metrics import Metrics
from adapters.service.rules import parse
from adapters.service.runtime import Runtime
from adapters.service.store import SqliteStore
from adapters.yeastar.frames import parse_frame
from bench.common import Figure, Sizes, Traffic, frame_30011, goal, median, member, percentile, tempdir
from engine.engine import Engine
from engine.model import CallsSnapshot, CallState, Member, PbxRequest, RequestFinished, TransferRequested
from engine.rules import RuleEngine, RuleSet


class _Adapter:
    """Answers every request at once; stamps when each request reached it."""

    platform = "yeastar"
    capabilities = ("blind", "attended", "swap", "threeway")
    connected = True
    detail = "bench"

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.event = asyncio.Event()

    async def start(self, sink: Any) -> None:
        self.sink = sink

    async def execute(self, request: PbxRequest) -> RequestFinished:
        self.arrived[request.transfer_id] = time.perf_counter()
        self.event.set()
        return RequestFinished(time.time(), request.transfer_id, request.request_id, "refused", errcode=1)

    async def query_calls(self) -> CallsSnapshot | None:
        return None

    async def close(self) -> None:
        pass


def hundred_rules(indexed: bool) -> RuleSet:
    """100 enabled rules on ``call.answered``, none matching the bench traffic."""
    text = "".join(
        f'[[rules]]\nname = "r{i:03d}"\non = "call.answered"\n'
        + (f'extensions = ["1{i:03d}"]\n' if indexed else "")
        + f'if = \'call.caller == "nobody-{i}" && now.hour >= 0\'\nthen = {{ attended = "2{i:03d}" }}\n'
        for i in range(100)
    )
    return parse(text, "bench-rules")


async def _runtime(store: Path, rules: RuleSet | None) -> tuple[Runtime, _Adapter]:
    engine = Engine()
    if rules is not None:
        engine.rules = RuleEngine(rules)
    adapter = _Adapter()
    runtime = Runtime(engine, adapter, SqliteStore(store), Metrics())  # type: ignore[arg-type]
    await runtime.start()
    return runtime, adapter


async def _ingest(frames: list[str], warmup: int, store: Path, rules: RuleSet | None) -> float:
    runtime, _ = await _runtime(store, rules)
    try:
        feed = runtime.feed
        for text in frames[:warmup]:
            for event in parse_frame(text, time.time()).events:
                feed(event)
        started = time.perf_counter()
        for text in frames[warmup:]:
            for event in parse_frame(text, time.time()).events:
                feed(event)
        elapsed = time.perf_counter() - started
    finally:
        await runtime.close()
        runtime.store.close()
    return (len(frames) - warmup) / elapsed


async def run_rules_ingest(sizes: Sizes) -> list[Figure]:
    traffic = Traffic(sizes.ingest_calls)
    snapshot_rows = traffic.query_rows()
    frames = [frame_30011(row["call_id"], *row["members"]) for row in snapshot_rows]
    frames += traffic.frames(sizes.warmup_frames + sizes.ingest_frames // 2)
    warmup = len(snapshot_rows) + sizes.warmup_frames
    variants: dict[str, RuleSet | None] = {
        "none": None,
        "indexed": hundred_rules(indexed=True),
        "unfiltered": hundred_rules(indexed=False),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with tempdir() as tmp:
        for run in range(max(3, sizes.ingest_pairs)):
            order = list(variants) if run % 2 == 0 else list(reversed(variants))
            for name in order:
                store = tmp / f"{name}-{run}.sqlite3"
                rates[name].append(await _ingest(frames, warmup, store, variants[name]))
    base = median(rates["none"])
    figures = []
    for name, label in (("indexed", "naming other extensions"), ("unfiltered", "naming no extension")):
        ratio = median(rates[name]) / base
        met = ratio >= 0.9 if name == "indexed" else None
        details = (
            f"ratio {ratio:.2f} of {base:.0f} frames/s with no rules; 100 enabled rules on call.answered "
            f"{label}, none matching; {len(rates[name])} alternating runs of "
            f"{len(frames) - warmup} frames ({sizes.ingest_calls} live calls, parse + runtime.feed in "
            f"process): {', '.join(f'{r:.0f}' for r in rates[name])} vs "
            f"{', '.join(f'{r:.0f}' for r in rates['none'])}"
        )
        if met is not None:
            details += f"; {goal(met, '>= 0.9')}"
        figures.append(Figure(f"rules_ingest_{name}", median(rates[name]), "frames/s", details, met))
    return figures


def _call(i: int, ext: str, status: str) -> list[str]:
    call = f"1800000000.{i}"
    return [
        frame_30011(call, member("inbound", f"05550{i:05d}", f"PJSIP/trunk-b-{i:08x}", "ALERT")),
        frame_30011(call, member("extension", ext, f"PJSIP/{ext}-{i:08x}", status)),
    ]


async def run_rule_latency(sizes: Sizes) -> list[Figure]:
    count = sizes.latency_transfers * 5
    rules = parse(
        '[[rules]]\nname = "reception"\non = "call.answered"\nextensions = ["2000"]\n'
        'if = \'call.direction == "inbound" && now.hour >= 0\'\nthen = { attended = "2100" }\n',
        "bench-rules",
    )
    samples: dict[str, list[float]] = {"rule": [], "api": []}
    with tempdir() as tmp:
        runtime, adapter = await _runtime(tmp / "latency.sqlite3", rules)
        try:
            background = Traffic(sizes.latency_calls)
            runtime.feed(
                CallsSnapshot(
                    time.time(),
                    tuple(
                        CallState(row["call_id"], tuple(_members(row["members"])))
                        for row in background.query_rows()
                    ),
                )
            )
            for i in range(count):
                for path in ("rule", "api") if i % 2 == 0 else ("api", "rule"):
                    n = 2 * i + (path == "api")
                    ext = "2000" if path == "rule" else "2001"
                    for text in _call(n, ext, "RING"):
                        for event in parse_frame(text, time.time()).events:
                            runtime.feed(event)
                    adapter.event.clear()
                    answer = _call(n, ext, "ANSWER")[1]
                    started = time.perf_counter()
                    if path == "rule":
                        for event in parse_frame(answer, time.time()).events:
                            runtime.feed(event)
                        transfer_id = f"reception.answered.1800000000.{n}"
                    else:
                        for event in parse_frame(answer, time.time()).events:
                            runtime.feed(event)
                        started = time.perf_counter()
                        transfer_id = f"api-{n}"
                        runtime.feed(
                            TransferRequested(
                                time.time(), transfer_id, "2100", channel_id=f"PJSIP/{ext}-{n:08x}"
                            )
                        )
                    async with asyncio.timeout(10):
                        while transfer_id not in adapter.arrived:
                            adapter.event.clear()
                            await adapter.event.wait()
                    samples[path].append(adapter.arrived[transfer_id] - started)
        finally:
            await runtime.close()
            runtime.store.close()
    figures = []
    for q in (50, 99):
        rule_ms = percentile(samples["rule"], q) * 1000
        api_ms = percentile(samples["api"], q) * 1000
        ratio = rule_ms / api_ms
        met = ratio <= 1.2 if q == 99 else None
        details = (
            f"ratio {ratio:.2f} of the API-started path {api_ms:.3f} ms; from feeding the triggering event "
            f"to the start request reaching the adapter (write-ahead save included); {len(samples['rule'])}/"
            f"{len(samples['api'])} samples alternating, {sizes.latency_calls} background calls"
        )
        if met is not None:
            details += f"; {goal(met, '<= 1.2x')}"
        figures.append(Figure(f"rule_decision_latency_p{q}", rule_ms, "ms", details, met))
    return figures


def _members(raw: list[dict[str, Any]]) -> list[Member]:
    out = []
    for item in raw:
        ((kind, leg),) = item.items()
        number = leg.get("number") or (leg.get("from") if kind == "inbound" else leg.get("to")) or ""
        out.append(Member(kind, number, leg["channel_id"], leg["member_status"]))
    return out


async def run_rules(sizes: Sizes) -> list[Figure]:
    return [*(await run_rules_ingest(sizes)), *(await run_rule_latency(sizes))]
