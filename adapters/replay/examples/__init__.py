"""Recorded scenarios shipped inside the package, so an installed xferd can replay one.

The repository's ``scenarios/`` folder is the full library; a few of its
files are copied here (byte for byte: ``tests/replay/test_examples.py``
checks that they match) because ``scenarios/`` is not part of the wheel.
``xferd replay --example NAME`` replays one by name; the files are also
plain files in the installed package, under this module's folder.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def bundled() -> dict[str, Path]:
    """The bundled scenarios by name (the file name without ``.jsonl``), sorted."""
    return {path.stem: path for path in sorted(FOLDER.glob("*.jsonl"))}
