"""Figure 3: memory per tracked call and per active transfer, and after everything ended.

Each size runs in a fresh child process (``python -m bench.memory``) so that
nothing else the benchmark did sits in the heap being measured.  The child
feeds the engine the way the live service does — realistic 30011 frames
through ``parse_frame`` (so ids are the strings a live parse makes), every
command dropped as the runtime would after executing it, final transfers
forgotten (``Engine.forget``) — and reads memory at each step:

1. ``calls`` idle two-leg calls (an outside caller on a trunk talking to an
   extension);
2. ``transfers`` of them in an attended transfer, consulting, the target
   ringing (what the live frames say: transferee on hold, transferor moved to
   the consultation call, a new outbound target leg);
3. every transfer completed and every call ended (BYE frames, 30012 CDRs);
4. one more event after the registry's tombstone TTL (hung-up channel ids are
   remembered for :data:`engine.registry.TOMBSTONE_TTL` seconds by design, so
   that late frames cannot resurrect a leg).

Two readings, from two runs of the same script: Python heap bytes
(``tracemalloc``: exact, per object) and the process's resident set size
(what the machine pays; its own run, since tracemalloc's bookkeeping would
inflate it).  Inputs are generated lazily and freed, so the baseline is the
interpreter, xferd and an empty engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import ROOT, Figure, Sizes, compact, goal, member

_SN = "3631A0SIM001"
T0 = 1_700_000_000.0


def _rss() -> int:
    """Resident set size in bytes (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import resource

    return pages * resource.getpagesize()


def _f(call_id: str, kind: str, number: str, channel: str, status: str, peer: str = "5550100") -> str:
    msg = compact({"call_id": call_id, "members": [member(kind, number, channel, status, peer)]})
    return compact({"type": 30011, "sn": _SN, "msg": msg})


def _cdr(call_id: str) -> str:
    msg = compact({"call_id": call_id, "status": "ANSWERED", "type": "Inbound", "call_duration": 60})
    return compact({"type": 30012, "sn": _SN, "msg": msg})


class _Ids:
    """Realistic ids for call ``i``: call id ``1700000xxx.i``, ``PJSIP/<ext>-<hex>``,
    trunk channels ``PJSIP/trunk-siptrunk-endpoint-<hex>``."""

    @staticmethod
    def call(i: int) -> tuple[str, str, str, str, str]:
        ext = str(20000 + i % 80000)
        return (
            f"{int(T0) + i // 1000}.{i}",
            f"PJSIP/trunk-siptrunk-endpoint-{3 * i:08x}",
            f"0{944200000 + i}",
            f"PJSIP/{ext}-{3 * i + 1:08x}",
            ext,
        )

    @staticmethod
    def consult(i: int) -> tuple[str, str, str]:
        return (f"{int(T0) + 500 + i // 1000}.{10**7 + i}", f"PJSIP/trunk-siptrunk-endpoint-{3 * i + 2:08x}",
                f"0{777000000 + i}")  # fmt: skip


def _setup(calls: int) -> Iterator[str]:
    for i in range(calls):
        call, trunk, caller, ext_channel, ext = _Ids.call(i)
        yield _f(call, "inbound", caller, trunk, "ANSWERED")
        yield _f(call, "extension", ext, ext_channel, "ANSWER")


def run_child(calls: int, transfers: int, traced: bool) -> dict[str, Any]:
    """The measurement itself (in the child process)."""
    from adapters.yeastar.frames import parse_frame
    from engine.engine import Engine
    from engine.model import PbxRequest, Policy, RequestFinished, TransferChanged, TransferRequested
    from engine.registry import TOMBSTONE_TTL

    engine = Engine(Policy(no_answer_timeout_s=20))

    def feed(text: str, at: float) -> list[Any]:
        out: list[Any] = []
        for event in parse_frame(text, at).events:
            out.extend(engine.handle(event))
        return out

    def settle(commands: list[Any], at: float) -> None:
        """Answer PBX requests ok (as the adapter would report) and forget final transfers."""
        while commands:
            follow: list[Any] = []
            for command in commands:
                if isinstance(command, PbxRequest):
                    follow.extend(
                        engine.handle(RequestFinished(at, command.transfer_id, command.request_id, "ok"))
                    )
                elif isinstance(command, TransferChanged) and command.final:
                    engine.forget(command.transfer_id)
            commands = follow

    def reading() -> tuple[int, int]:
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] if traced else 0), _rss()

    timings: dict[str, float] = {}
    gc.collect()
    if traced:
        tracemalloc.start()
    base = reading()

    clock = time.perf_counter()
    for text in _setup(calls):
        feed(text, T0)
    idle = reading()
    timings["calls"] = time.perf_counter() - clock

    clock = time.perf_counter()
    for k in range(transfers):
        call, trunk, caller, ext_channel, ext = _Ids.call(k)
        consult, target, number = _Ids.consult(k)
        at = T0 + 1
        out = engine.handle(TransferRequested(at, f"transfer-{k:06d}", number, channel_id=ext_channel))
        start = next(c for c in out if isinstance(c, PbxRequest))
        feed(_f(call, "inbound", caller, trunk, "HOLD"), at)
        feed(_f(consult, "extension", ext, ext_channel, "ALERT"), at)
        feed(_f(consult, "outbound", number, target, "RING", peer=ext), at)
        engine.handle(RequestFinished(at, start.transfer_id, start.request_id, "ok", call_id=consult))
    active = reading()
    timings["transfers"] = time.perf_counter() - clock
    states = [t["state"] for t in engine.transfers(active_only=True)]

    clock = time.perf_counter()
    at = T0 + 2
    for k in range(transfers):
        call, trunk, caller, ext_channel, ext = _Ids.call(k)
        consult, target, number = _Ids.consult(k)
        settle(feed(_f(consult, "outbound", number, target, "ANSWER", peer=ext), at), at)
        feed(_f(consult, "extension", ext, ext_channel, "ANSWERED"), at)
        feed(_f(consult, "extension", ext, ext_channel, "BYE"), at)
        feed(_f(call, "inbound", caller, trunk, "ANSWER"), at)
        feed(_f(call, "outbound", number, target, "ANSWER", peer=ext), at)
        feed(_cdr(consult), at)
    left_active = len(engine.transfers(active_only=True))
    at = T0 + 3
    for i in range(calls):
        call, trunk, caller, ext_channel, ext = _Ids.call(i)
        if i < transfers:
            consult, target, number = _Ids.consult(i)
            feed(_f(call, "outbound", number, target, "BYE", peer=ext), at)
        else:
            feed(_f(call, "extension", ext, ext_channel, "BYE"), at)
        feed(_f(call, "inbound", caller, trunk, "BYE"), at)
        feed(_cdr(call), at)
    ended = reading()
    tombstones = len(engine.registry._tombstones)  # read-only, to explain the figure
    feed(_cdr("1699999999.1"), at + TOMBSTONE_TTL + 1)  # any event: the registry prunes on the next one
    after = reading()
    timings["end"] = time.perf_counter() - clock
    trimmed = 0
    if not traced:
        # How much of what is left is free memory the C allocator keeps cached
        # (glibc only; a diagnostic, not part of the figure).
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            trimmed = _rss()
    return {
        "calls": calls,
        "transfers": transfers,
        "traced": traced,
        "base": base,
        "idle": idle,
        "active": active,
        "ended": ended,
        "after": after,
        "trimmed": trimmed,
        "consulting": states.count("consulting"),
        "left_active": left_active,
        "live_calls_after": len(engine.registry.calls),
        "tombstones": tombstones,
        "tombstone_ttl": TOMBSTONE_TTL,
        "timings": timings,
    }


async def _child(calls: int, transfers: int, traced: bool) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.memory", str(calls), str(transfers), "traced" if traced else "rss",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(600):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()  # our own child, by its pid
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"bench.memory child failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


def _kb(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


async def run_memory(sizes: Sizes) -> list[Figure]:
    """RSS runs at every size (what the process pays); one tracemalloc run at the
    smallest size splits out the Python heap (tracemalloc slows allocation ~3x,
    too slow for 100,000 calls within the time budget)."""
    figures: list[Figure] = []
    transfers = sizes.memory_transfers
    traced = await _child(sizes.memory_calls[0], transfers, traced=True)
    heap_call = (traced["idle"][0] - traced["base"][0]) / traced["calls"]
    heap_transfer = (traced["active"][0] - traced["idle"][0]) / transfers
    heap_held = traced["after"][0] - traced["base"][0]
    heap_note = f"Python heap (tracemalloc, {traced['calls']} calls)"
    for calls in sizes.memory_calls:
        rss = await _child(calls, transfers, traced=False)
        base, idle, active = rss["base"][1], rss["idle"][1], rss["active"][1]
        ended, after, trimmed = rss["ended"][1], rss["after"][1], rss["trimmed"]
        per_call = (idle - base) / calls
        per_transfer = (active - idle) / transfers
        met = per_call <= 2048
        figures.append(
            Figure(
                f"memory_per_call@{calls}",
                per_call,
                "B",
                f"ratio {per_call / 2048:.2f} of the 2 KiB goal; RSS growth per idle two-leg call with "
                f"{calls} live calls ({_mb(base)} -> {_mb(idle)}); {heap_note}: {heap_call:.0f} B/call; "
                f"{goal(met, '<= 2048 B per idle tracked call')}",
                met,
            )
        )
        small = per_transfer <= 10_240
        figures.append(
            Figure(
                f"memory_per_transfer@{calls}",
                per_transfer,
                "B",
                f"ratio {per_transfer / 10_240:.2f} of the 10 KiB goal; RSS growth per active transfer, "
                f"{transfers} transfers consulting with the target ringing on {calls} live calls (transfer "
                f"and its state in the shared python-statemachine chart, target leg, consultation call); "
                f"{heap_note}: {heap_transfer:.0f} B/transfer; "
                f"{transfers / rss['timings']['transfers']:.0f} transfers set up per second; "
                f"{goal(small, '<= 10240 B per active transfer')}",
                small,
            )
        )
        growth = (after - base) / base * 100
        within = after <= base * 1.25  # issue 16: give memory back after a peak
        trim_note = f"; after malloc_trim(0) {_mb(trimmed)}" if trimmed else ""
        figures.append(
            Figure(
                f"memory_after_end@{calls}",
                growth,
                "%",
                f"ratio {after / base:.3f} of the baseline RSS {_mb(base)} once every transfer and call "
                f"ended and the {rss['tombstone_ttl']:.0f} s tombstone TTL passed (peak {_mb(active)}; "
                f"{_mb(ended)} right after the end, {rss['tombstones']} tombstones{trim_note}); "
                f"{heap_note}: {_kb(heap_held)} still held by the engine; {rss['left_active']} transfers "
                f"and {rss['live_calls_after']} calls left; {goal(within, 'RSS back to baseline + 25 %')}",
                within,
            )
        )
    return figures


if __name__ == "__main__":
    result = run_child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "traced")
    print(compact(result))
