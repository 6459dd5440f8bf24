"""The ``xferd`` command line (contract §1).

Subcommands register themselves with :func:`command`; adding one (``replay``,
``record``) is one decorated function in this module::

    @command("replay", "replay recorded scenarios", arg("paths", nargs="+", metavar="PATH"))
    def replay(args: argparse.Namespace) -> int:
        ...

Every failure a user can cause (bad arguments, a bad config file) is one line
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Argument:
    """``add_argument(*flags, **options)``, deferred until the parser is built."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Handler
    arguments: tuple[Argument, ...]


#: The registration point: every ``@command`` lands here, in definition order.
COMMANDS: list[Command] = []


def arg(*flags: str, **options: Any) -> Argument:
    return Argument(flags, options)


def command(name: str, help: str, *arguments: Argument) -> Callable[[Handler], Handler]:
    """Register ``handler(args) -> exit code`` as ``xferd <name>``."""

    def register(handler: Handler) -> Handler:
        COMMANDS.append(Command(name, help, handler, arguments))
        return handler

    return register


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``xferd: error: …``, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"xferd: error: {message}\n")
        sys.exit(2)


def fail(message: str, code: int) -> int:
    sys.stderr.write(f"xferd: {message}\n")
    return code


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 0-65535")
    return int(text)


def until_signalled(main: Coroutine[Any, Any, Any]) -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives, then cancel it cleanly."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(main)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())


# -- subcommands ----------------------------------------------------------------


@command(
    "run",
    "run the service against the PBX named in the config file",
    arg("--config", required=True, metavar="PATH", help="TOML config file (see the contract, section 2)"),
    arg("--log-level", default="info", choices=("debug", "info", "warning", "error")),
    arg("--rules", metavar="FILE", help="routing rules file (overrides [rules] path)"),
)
def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from adapters.base import FatalPbxError
    from adapters.service import logs
    from adapters.service.config import ConfigError, RulesConfig, load
    from adapters.service.rules import RulesError
    from adapters.service.rules import load as load_rules
    from adapters.service.server import run_until_signalled
    from adapters.service.store import StoreError

    try:
        config = load(args.config)
    except ConfigError as exc:
        return fail(str(exc), 2)
    if args.rules is not None:
        config = config.model_copy(update={"rules": RulesConfig(path=Path(args.rules))})
    if config.rules.path is not None:
        try:
            load_rules(config.rules.path)  # a bad rules file stops the start: one line, exit 2
        except RulesError as exc:
            return fail(str(exc), 2)
    logs.configure("json", getattr(logging, args.log_level.upper()))
    try:
        asyncio.run(run_until_signalled(config))
    except FatalPbxError as exc:
        return fail(f"PBX: {exc}", 1)
    except StoreError as exc:
        return fail(str(exc), 1)
    except OSError as exc:  # the API address cannot be bound
        return fail(f"cannot listen on {config.api.listen}: {exc.strerror or exc}", 1)
    return 0


@command(
    "demo",
    "play a scripted attended transfer against the built-in PBX simulator",
    arg(
        "--console",
        action="store_true",
        help="keep the service and a busy simulated PBX running for the supervisor console; prints "
        "its URL and a one-time admin login token; Ctrl-C stops",
    ),
    arg(
        "--port", type=port_number, default=0, metavar="N", help="with --console: the API port (0: any free)"
    ),
)
def demo(args: argparse.Namespace) -> int:
    if args.console:
        from adapters.service.demo_console import run_console_demo

        return asyncio.run(run_console_demo(args.port))
    from adapters.service.demo import run_demo

    return asyncio.run(run_demo())


@command(
    "simulate",
    "run a PBX simulator alone (loopback), for integration tests",
    arg(
        "--port",
        required=True,
        type=port_number,
        metavar="N",
        help="TCP port on 127.0.0.1 (0: any free port)",
    ),
    arg("--pbx", default="yeastar", choices=("yeastar", "webex"), help="which platform to simulate"),
)
def simulate(args: argparse.Namespace) -> int:
    if args.pbx == "webex":
        from adapters.webex.simulator import serve_forever as serve_webex

        until_signalled(serve_webex(args.port))
        return 0
    from adapters.yeastar.simulator import serve_forever

    until_signalled(serve_forever(args.port))
    return 0


@command(
    "webex",
    "Webex Calling setup: `webex authorize` runs an integration's one-time authorization",
    arg("action", choices=("authorize",), help="authorize: get and store the integration's refresh token"),
    arg("--config", required=True, metavar="PATH", help="the service's TOML config (its [pbx] and [store])"),
    arg("--pbx", default=None, metavar="NAME", help="which PBX of the config (default: its only one)"),
    arg("--client-id", default=None, metavar="ID", help="the integration's Client ID (else [pbx].client_id)"),
    arg(
        "--client-secret",
        default=None,
        metavar="SECRET",
        help="the integration's Client Secret (else [pbx].client_secret or env XFERD_PBX_CLIENT_SECRET)",
    ),
    arg(
        "--port",
        default=8766,
        type=port_number,
        metavar="N",
        help="loopback port of the redirect URI http://127.0.0.1:N/callback (default 8766)",
    ),
)
def webex(args: argparse.Namespace) -> int:
    import os

    from adapters.service.config import DEFAULT_PBX_NAME, ConfigError, load, pbx_env_name
    from adapters.service.store import SqliteStore, StoredCredentials, StoreError
    from adapters.webex.authorize import AuthorizationFailed, Integration, authorize
    from adapters.webex.oauth import CREDENTIAL_KIND, fingerprint

    environ = dict(os.environ)
    for key, value in (("client_id", args.client_id), ("client_secret", args.client_secret)):
        if value:  # the plain name means "the one PBX"; the named one, that PBX of several
            environ[f"XFERD_PBX_{key.upper()}"] = value
            environ[pbx_env_name(args.pbx or DEFAULT_PBX_NAME, key)] = value
    try:
        config = load(args.config, environ)
    except ConfigError as exc:
        return fail(str(exc), 2)
    if args.pbx is None and len(config.pbx) != 1:
        names = ", ".join(entry.name for entry in config.pbx)
        return fail(f"config error in {args.config}: several PBXs ({names}): name one with --pbx", 2)
    pbx = config.pbx_named(args.pbx) if args.pbx else config.pbx[0]
    if pbx is None:
        return fail(f"config error in {args.config}: no PBX named {args.pbx!r}", 2)
    name = pbx.name
    if pbx.kind != "webex" or pbx.client_id is None or pbx.client_secret is None:
        return fail(
            f"config error in {args.config}: [pbx].client_id: required for `xferd webex authorize` "
            '(kind = "webex" with an integration\'s client_id and client_secret)',
            2,
        )
    integration = Integration(pbx.base_url, pbx.client_id, pbx.client_secret.get_secret_value())
    seed = fingerprint(pbx.refresh_token.get_secret_value()) if pbx.refresh_token else None
    try:
        store = SqliteStore(config.store.path)
    except StoreError as exc:
        return fail(str(exc), 1)
    credentials = StoredCredentials(store, name, CREDENTIAL_KIND)
    try:
        asyncio.run(authorize(integration, credentials, seed=seed, port=args.port, out=sys.stdout))
    except (AuthorizationFailed, StoreError) as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return fail("authorization cancelled", 1)
    finally:
        store.close()
    print(f"xferd: the refresh token is stored in {config.store.path} for PBX {name!r}; `xferd run` uses it")
    return 0


@command(
    "token",
    "print a new API token and the [[api.users]] entry that holds its hash",
    arg("action", choices=("new",), help="new: make a token"),
    arg("--name", required=True, help="the user's name (as it will appear in the audit log)"),
    arg("--role", required=True, choices=("viewer", "operator", "supervisor", "admin")),
)
def token(args: argparse.Namespace) -> int:
    import re

    from adapters.service.roles import new_token

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", args.name):
        return fail(f"invalid --name {args.name!r}: letters, digits and _ . @ - (at most 64)", 2)
    secret, digest = new_token()
    print(f"token (give it to {args.name}; it is shown only once): {secret}")
    print("add to the config file:")
    print(f'[[api.users]]\nname = "{args.name}"\nrole = "{args.role}"\ntoken_hash = "{digest}"')
    return 0


@command(
    "rules",
    "check a routing rules file, or test it against recorded scenarios",
    arg(
        "action",
        choices=("check", "test"),
        help="check: compile every rule; test: replay scenarios with them",
    ),
    arg("file", metavar="FILE", help="the rules file (TOML)"),
    arg("scenarios", nargs="*", metavar="SCENARIO", help="test: scenario files or folders"),
    arg("--json", action="store_true", help="test: one JSON document instead of a table"),
)
def rules(args: argparse.Namespace) -> int:
    from adapters.service.rules import RulesError, load

    try:
        ruleset = load(args.file)
    except RulesError as exc:
        return fail(str(exc), 2)
    if args.action == "check":
        enforce = sum(1 for rule in ruleset.rules if rule.enabled and rule.mode == "enforce")
        shadow = sum(1 for rule in ruleset.rules if rule.enabled and rule.mode == "shadow")
        print(
            f"{args.file}: {len(ruleset.rules)} rules ({enforce} enforced, {shadow} shadow, "
            f"{len(ruleset.rules) - enforce - shadow} disabled), {len(ruleset.calendars)} calendars: ok"
        )
        return 0
    if not args.scenarios:
        return fail("rules test: name at least one scenario file or folder", 2)
    from adapters.replay.rules_test import run_test

    return run_test(ruleset, args.scenarios, as_json=args.json)


def version() -> str:
    """The installed package's version (its metadata: one source, pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("xferd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xferd", description="Event-driven attended-transfer service.")
    parser.add_argument("--version", action="version", version=f"xferd {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        child = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        for argument in cmd.arguments:
            child.add_argument(*argument.flags, **argument.options)
        child.set_defaults(handler=cmd.handler)
    # Imported here: replay pulls in the recorder and runner, which `run`
    # and `demo` do not need at start-up.
    from adapters.replay.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
