"""``python -m bench``: run the figures, print one line each.

Lines starting with ``#`` say what ran and where; every other line is a
figure, ``name: value unit (details)``.  The exit code is 0 when every figure
was measured (whether or not its goal is met: a benchmark reports, it does
not judge), 1 when one of them could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable

from bench.common import PIN_ENV, Figure, Sizes, machine, pin, quiet_logs

Runner = Callable[[Sizes], Awaitable[list[Figure]]]


def _figures() -> dict[str, Runner]:
    # Imported here so that ``--help`` is instant and a broken module names itself.
    from bench.console import run_console
    from bench.ingest import run_ingest, run_scaling
    from bench.latency import run_latency
    from bench.load import run_load
    from bench.memory import run_memory
    from bench.replay_speed import run_replay
    from bench.rules import run_rules

    return {
        "ingest": run_ingest,
        "latency": run_latency,
        "memory": run_memory,
        "scaling": run_scaling,
        "replay": run_replay,
        "load": run_load,
        "rules": run_rules,
        "console": run_console,
    }


NAMES = ("ingest", "latency", "memory", "scaling", "replay", "load", "rules", "console")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


async def run(names: list[str], sizes: Sizes, plot: str | None) -> int:
    quiet_logs()
    described = machine()  # before pinning: it counts the cores this process may use
    pinned = pin(0)
    for line in described:
        print(f"# {line}")
    mode = "quick (tiny sizes: figures are noise)" if sizes.quick else "full"
    cores = "measured code on CPU 0, feeders on CPU 1" if pinned else "processes not pinned to CPUs"
    print(f"# mode: {mode}; {cores}; load average before: {_load()}", flush=True)
    figures = _figures()
    done: dict[str, list[Figure]] = {}
    failed = 0
    started = time.perf_counter()
    for name in names:
        began = time.perf_counter()
        try:
            results = await figures[name](sizes)
        except Exception:
            failed += 1
            print(f"# {name}: FAILED after {time.perf_counter() - began:.1f} s", flush=True)
            traceback.print_exc()
            continue
        done[name] = results
        for figure in results:
            print(figure.line(), flush=True)
        print(f"# {name}: {time.perf_counter() - began:.1f} s", flush=True)
    goals = [f for results in done.values() for f in results if f.met is not None]
    met = sum(1 for f in goals if f.met)
    print(
        f"# {met}/{len(goals)} goals met; {failed} figure(s) failed; "
        f"{time.perf_counter() - started:.0f} s in all; load average after: {_load()}",
        flush=True,
    )
    if plot:
        from bench.plot import draw

        print(f"# plot: {draw(done, plot)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, figures are noise")
    parser.add_argument(
        "--only", action="append", choices=NAMES, metavar="NAME", help=f"run only these ({', '.join(NAMES)})"
    )
    parser.add_argument(
        "--plot", metavar="PATH", help="draw latency and scaling into PATH (needs matplotlib)"
    )
    parser.add_argument(
        "--pin", action="store_true", help="measured code on CPU 0, feeders on CPU 1 (for a quiet machine)"
    )
    args = parser.parse_args(argv)
    if args.pin:
        os.environ[PIN_ENV] = "1"  # the children read it too
    names = [name for name in NAMES if name in args.only] if args.only else list(NAMES)
    sizes = Sizes.tiny() if args.quick else Sizes.full()
    return asyncio.run(run(names, sizes, args.plot))


if __name__ == "__main__":
    sys.exit(main())
