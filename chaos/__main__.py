"""``python -m chaos``: every fault kind many times, bad input, a soak — and the table.

Run from the repository root (``chaos`` is a top-level package beside
``engine`` and ``adapters``)::

    python -m chaos                      # full: ~10 min on 2 cores
    python -m chaos --quick              # a few runs of each, a short soak: ~2 min
    python -m chaos --seed 7 --runs 5 --only pbx_restart,sqlite_locked
    python -m chaos --write RELIABILITY.md
    python -m chaos --model              # the engine against its reference model, long (chaos/model.py)
    python -m chaos --ha                 # several instances on PostgreSQL (chaos/ha.py), ~5 min

Exit status 0 only when every run kept the promise (nothing lost, no wrong
outcome, no duplicate complete, no request after a final state, no crash,
no secret in a log or recording) and every fuzzer found nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from chaos.faults import FAULTS, FaultKind, by_name
from chaos.fuzz import FuzzStats, run_fuzzers
from chaos.report import markdown, print_run, table
from chaos.runner import KindResult, run_kind
from chaos.soak import SoakResult, soak
from chaos.support import LogWatch, watch_logs


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="base seed of every random draw (default 1)")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per fault kind (default: each kind's own)"
    )
    parser.add_argument("--quick", action="store_true", help="the fast subset: 2 runs a kind, short soak")
    parser.add_argument("--only", default="", help="comma-separated fault kinds (default: all)")
    parser.add_argument(
        "--soak", type=int, default=None, help="transfers in the soak (default 300, quick 40)"
    )
    parser.add_argument("--fuzz", type=int, default=None, help="examples per fuzzer (default 600, quick 150)")
    parser.add_argument("--write", metavar="PATH", help="also write the report (Markdown) to PATH")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per run")
    parser.add_argument(
        "--model", action="store_true", help="only the model-based test of the engine (chaos/model.py), long"
    )
    parser.add_argument("--examples", type=int, default=3000, help="--model: examples (default 3000)")
    parser.add_argument("--steps", type=int, default=80, help="--model: steps per example (default 80)")
    parser.add_argument(
        "--ha", action="store_true", help="only the several-instances kinds on PostgreSQL (chaos/ha.py)"
    )
    parser.add_argument(
        "--pg-restart", action="store_true", help="--ha: restart the real PostgreSQL server (disruptive)"
    )
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    kinds: list[FaultKind] = [by_name(n) for n in args.only.split(",") if n] or list(FAULTS)
    watch = LogWatch()
    watch_logs(watch)
    logging.getLogger("chaos").setLevel(logging.INFO)
    started = time.monotonic()
    results: list[KindResult] = []
    for kind in kinds:
        runs = args.runs if args.runs is not None else (kind.quick_runs if args.quick else kind.runs)
        with tempfile.TemporaryDirectory(prefix=f"chaos-{kind.name}-") as tmp:
            result = await run_kind(
                kind, runs, args.seed, Path(tmp), watch, progress=print_run if args.verbose else None
            )
        results.append(result)
        print(
            f"{kind.name:<28} {len(result.runs):>3} runs  {result.injected:>4} faults  "
            f"{result.survived:>3} survived  {result.seconds:6.1f} s",
            file=sys.stderr,
            flush=True,
        )
        for problem in result.problems()[:5]:
            print(f"    {problem[:400]}", file=sys.stderr, flush=True)
    soak_result: SoakResult | None = None
    transfers = args.soak if args.soak is not None else (40 if args.quick else 300)
    if transfers > 0 and not args.only:
        with tempfile.TemporaryDirectory(prefix="chaos-soak-") as tmp:
            soak_result = await soak(Path(tmp), watch, transfers=transfers, seed=args.seed)
        print(f"soak: {soak_result.transfers} transfers in {soak_result.seconds:.0f} s", file=sys.stderr)
    fuzz: list[FuzzStats] = []
    examples = args.fuzz if args.fuzz is not None else (150 if args.quick else 600)
    if examples > 0 and not args.only:
        fuzz = await run_fuzzers(examples, args.seed)
        for stats in fuzz:
            print(
                f"fuzz {stats.name}: {stats.examples} examples, {len(stats.crashes)} crashes", file=sys.stderr
            )
    seconds = time.monotonic() - started
    print("\n".join(table(results, soak_result, fuzz, watch)))
    ok = all(r.survived == len(r.runs) and not r.resource_problems for r in results)
    ok = ok and not watch.leaks and all(not f.crashes for f in fuzz)
    if soak_result is not None:
        ok = ok and not soak_result.problems
    if args.write:
        report = markdown(args, results, soak_result, fuzz, watch, seconds, ok)
        await asyncio.to_thread(Path(args.write).write_text, report)
        print(f"report written to {args.write}", file=sys.stderr)
    return 0 if ok else 1


def main_model(args: argparse.Namespace) -> int:
    """The engine against the reference model: many long random programs, one summary."""
    from chaos.model import run_model

    result = run_model(args.examples, args.steps, args.seed)
    finals = ", ".join(f"{k} {v}" for k, v in sorted(result.finals.items()))
    requests = ", ".join(f"{k} {v}" for k, v in sorted(result.requests.items()))
    print(
        f"model: {result.examples} programs, {result.steps} steps, {result.events} events, "
        f"{result.restarts} restarts in {result.seconds:.0f} s (seed {args.seed})\n"
        f"  requests: {requests}\n  final states: {finals}\n"
        f"  disagreements or broken invariants: {'none' if result.failure is None else 'see below'}"
    )
    if result.failure is not None:
        print(result.failure)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.model:
        return main_model(args)
    if args.ha:
        from chaos.ha import main_ha

        return asyncio.run(main_ha(args.only, args.runs, args.quick, args.seed, args.pg_restart))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
