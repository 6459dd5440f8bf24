"""Helpers for the replay tests: library scenarios as editable lines, and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.replay.cli import add_commands

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios"


def library(name: str) -> list[dict[str, Any]]:
    """A library scenario as a list of JSON objects, one per line."""
    text = (LIBRARY / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``xferd <argv>`` the way adapters/cli.py does: (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="xferd")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err
