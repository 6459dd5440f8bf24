"""The command-line reference, rendered from the ``xferd`` argument parser.

Each subcommand's ``--help`` text is what argparse prints, taken from
:func:`adapters.cli.build_parser`, so a new subcommand or option appears by
itself.
"""

from __future__ import annotations

import argparse
import os

from adapters.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    """The command-line reference page (Markdown)."""
    # argparse wraps help text to the terminal's width: make it the same on every machine.
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return _render(build_parser())
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def _render(parser: argparse.ArgumentParser) -> str:
    lines = [
        "# Command line",
        "",
        "<!-- Generated from adapters/cli.py (build_parser) by docsgen/cli_ref.py at every build. -->",
        "",
        "The package installs one command, `xferd`. Bad arguments or a bad config file give one line "
        "naming the problem and exit code 2, never a traceback.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for name, sub in _subcommands(parser).items():
        lines += [
            f"## `xferd {name}`",
            "",
            sub.description or "",
            "",
            "```text",
            sub.format_help().rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)
