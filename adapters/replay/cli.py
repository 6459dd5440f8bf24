"""``xferd replay`` and ``xferd record`` (contract §1).

:func:`add_commands` registers both on the ``xferd`` parser's subparsers;
each sets ``handler(args) -> exit code`` like the other subcommands.

Exit codes: ``replay`` 0 when every scenario passed, 1 when one failed, 2
for bad arguments or a bad scenario file (one line, no traceback);
``record`` 0 after SIGINT/SIGTERM, 1 when the PBX refuses us for good (or the
store cannot be opened), 2 for bad arguments or a bad config.  Webex is
recorded in poll mode (``record`` serves no webhook listener).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.replay import timeline
from adapters.replay.examples import bundled
from adapters.replay.format import Scenario, ScenarioError, collector_paused, discover, read
from adapters.replay.runner import replay
from engine.model import CallsSnapshot, Event

if TYPE_CHECKING:  # the service's modules are imported only by ``record``: replay stays light
    from adapters.base import CredentialStore
    from adapters.replay.recorder import Recorder
    from adapters.service.config import PbxTable, StoreConfig


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``replay`` and ``record`` on ``xferd``'s subparsers."""
    about = "replay recorded scenarios on a virtual clock and check their expectations"
    parser = subparsers.add_parser("replay", help=about, description=about)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="scenario files, or folders of *.jsonl")
    examples = sorted(bundled())
    parser.add_argument(
        "--example",
        action="append",
        default=[],
        choices=examples,
        metavar="NAME",
        help=f"a scenario bundled with xferd (repeatable): {', '.join(examples)}",
    )
    parser.add_argument("--timeline", action="store_true", help="print who did what when, per scenario")
    parser.add_argument(
        "--mermaid", metavar="FILE", help="write a Mermaid sequence diagram of the scenario ('-': stdout)"
    )
    parser.set_defaults(handler=replay_command)

    about = "record the PBX's frames and answers to a scenario file (secrets redacted) until SIGINT"
    parser = subparsers.add_parser("record", help=about, description=about)
    parser.add_argument("--config", required=True, metavar="PATH", help="TOML config file (contract §2)")
    parser.add_argument("--out", required=True, metavar="FILE", help="scenario file to write (.jsonl)")
    parser.add_argument("--pbx", metavar="NAME", help="the [[pbx]] to record (if several)")
    parser.set_defaults(handler=record_command)


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"xferd: {message}\n")
    return code


def replay_command(args: argparse.Namespace) -> int:
    """``xferd replay``: read every scenario first (a bad file is exit 2 before anything runs), then replay.

    Speed without a change of verdict: the scenarios are read with the garbage collector paused,
    then frozen out of its sight until the command returns (they all stay alive, so a collection
    walking them finds nothing to free; see :func:`~adapters.replay.format.collector_paused`),
    and the timeline is built only when ``--timeline`` or ``--mermaid`` asks for it.
    """
    # Freeze only when nothing else is frozen: unfreezing at the end must give back ours alone.
    # getattr: callers that build the Namespace themselves (bench) predate --example.
    paths = [*args.paths, *(bundled()[name] for name in getattr(args, "example", ()))]
    if not paths:
        return _fail("replay: give scenario files or folders (PATH...), or --example NAME")
    freeze = gc.get_freeze_count() == 0
    try:
        try:
            with collector_paused(freeze=freeze):
                scenarios = [read(path) for path in discover(paths)]
        except ScenarioError as exc:
            return _fail(str(exc))
        return _replay_all(scenarios, args)
    finally:
        if freeze:
            gc.unfreeze()


def _replay_all(scenarios: list[Scenario], args: argparse.Namespace) -> int:
    """Replay and print each scenario (apart from reading, so the collector is restored in one place)."""
    mermaid_to: str | None = args.mermaid
    if mermaid_to not in (None, "-") and len(scenarios) != 1:
        return _fail(f"--mermaid {mermaid_to}: give one scenario, not {len(scenarios)} (or '-' for stdout)")
    wanted = bool(args.timeline) or mermaid_to is not None
    failed = 0
    for scenario in scenarios:
        report = replay(scenario, timeline=wanted)
        failed += not report.passed
        print(report.summary())
        for line in report.details():
            print(line)
        if args.timeline:
            print(timeline.text(report.timeline), end="")
        if mermaid_to == "-":
            print(timeline.mermaid(report.timeline, scenario.name), end="")
        elif mermaid_to is not None:
            diagram = timeline.mermaid(report.timeline, scenario.name)
            try:
                Path(mermaid_to).write_text(diagram, encoding="utf-8")
            except OSError as exc:
                return _fail(f"cannot write {mermaid_to}: {exc.strerror or exc}")
    print(f"{len(scenarios) - failed} passed, {failed} failed")
    return 1 if failed else 0


def record_command(args: argparse.Namespace) -> int:
    from adapters.base import FatalPbxError
    from adapters.replay.recorder import Recorder
    from adapters.service import logs
    from adapters.service.config import ConfigError, load
    from adapters.service.server import recorded_settings, secrets_of
    from adapters.service.store import StoreError

    try:
        config = load(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    names = [pbx.name for pbx in config.pbx]
    if args.pbx is None and len(names) > 1:
        return _fail(f"several PBXs in {args.config}: name one with --pbx ({', '.join(names)})")
    pbx = config.pbx[0] if args.pbx is None else config.pbx_named(args.pbx)
    if pbx is None:
        return _fail(f"no PBX named {args.pbx!r} in {args.config} ({', '.join(names)})")
    if pbx.kind == "webex" and pbx.events != "poll":
        return _fail(
            f"config error in {args.config}: [pbx].events: 'poll' for `xferd record` (it serves no webhook "
            "listener; to record webhook deliveries, set [record] path in the service's config)"
        )
    logs.redactor.add(secrets_of(config))
    logs.configure("console", logging.WARNING)
    out = Path(args.out)
    try:
        recorder = Recorder.open(
            out,
            name=out.stem,
            platform=pbx.kind,
            policy=config.policy_of(pbx).engine_policy(),
            secrets=secrets_of(config),
            description=f"recorded by xferd record from {pbx.base_url}",
            pbx=recorded_settings(pbx),
        )
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc.strerror or exc}")
    sys.stderr.write(f"xferd: recording {pbx.base_url} to {out}; Ctrl-C to stop\n")
    try:
        asyncio.run(_record_until_signalled(pbx, recorder, config.store))
    except FatalPbxError as exc:
        return _fail(f"PBX: {exc}", 1)
    except StoreError as exc:
        return _fail(str(exc), 1)
    finally:
        recorder.close()
    sys.stderr.write(f"xferd: {recorder.lines} lines written to {out}\n")
    return 0


async def _record_until_signalled(pbx: PbxTable, recorder: Recorder, store_config: StoreConfig) -> None:
    from adapters.service.server import CREDENTIAL_KIND
    from adapters.service.store import StoredCredentials, close_store, open_store

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if pbx.kind != "webex":
        # Yeastar: a token of its own (revoked at the end), not the service's stored pair —
        # refreshing that would revoke the access token of a service running beside.
        await record(pbx, recorder, stop, None)
        return
    store = open_store(store_config.url_value, store_config.path)  # the integration's refresh token
    try:
        await record(pbx, recorder, stop, StoredCredentials(store, pbx.name, CREDENTIAL_KIND[pbx.kind]))
    finally:
        await close_store(store)


async def record(
    pbx: PbxTable, recorder: Recorder, stop: asyncio.Event, credentials: CredentialStore | None = None
) -> None:
    """Connect to the PBX ``pbx`` and record until ``stop`` is set.

    No engine runs: the recording holds frames, the adapter's requests (log
    in, ``call/query``) and the reconciliation snapshots it delivered after
    each (re)connect — the inputs a replay needs to rebuild the calls.
    ``credentials``: where the PBX connection keeps its renewing credentials.
    """
    from adapters.service.server import build_adapter

    adapter = build_adapter(pbx, recorder, credentials)

    def sink(event: Event) -> None:
        if isinstance(event, CallsSnapshot):
            recorder.snapshot(event)

    await adapter.start(sink)
    try:
        await stop.wait()
    finally:
        await adapter.close()
