"""Who did what when: a replay's timeline as text or as a Mermaid sequence diagram.

An integrator reading an incident wants the conversation between three
parties — the API client, xferd and the PBX — in time order, with xferd's own
decisions (state changes, timers, divergences) as notes.  The text form is
for a terminal; the Mermaid form renders on GitHub, in GitLab and in most
wikis without any tool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from adapters.replay.runner import Entry

PARTICIPANTS = ("client", "xferd", "PBX")
_ENTITIES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;"}
_SPECIAL = re.compile("[#;<>]")


def text(entries: Iterable[Entry]) -> str:
    """One line per entry: ``  +1.234 s  PBX -> xferd   what``."""
    lines = []
    for entry in entries:
        who = f"{entry.source} -> {entry.dest}" if entry.dest else f"{entry.source}"
        lines.append(f"  {entry.at:+10.3f} s  {who:<16} {entry.text}")
    return "\n".join(lines) + ("\n" if lines else "")


def mermaid(entries: Iterable[Entry], title: str | None = None) -> str:
    """A Mermaid ``sequenceDiagram``: messages between participants, notes over xferd."""
    lines = ["sequenceDiagram"]
    if title:
        lines.append(f"    title {_escape(title)}")
    lines += [f"    participant {name}" for name in PARTICIPANTS]
    for entry in entries:
        label = _escape(f"+{entry.at:.3f} s {entry.text}")
        if entry.dest is None:
            lines.append(f"    Note over {entry.source}: {label}")
        else:
            lines.append(f"    {entry.source}->>{entry.dest}: {label}")
    return "\n".join(lines) + "\n"


def _escape(label: str) -> str:
    """Mermaid reads ``#…;`` as an entity and ``;`` as a line break, ``<``/``>`` as HTML: escape them."""
    return _SPECIAL.sub(lambda match: _ENTITIES[match.group()], label)
