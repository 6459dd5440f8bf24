"""Giving memory back to the operating system after a peak.

Theory of operation
===================

A busy hour leaves the process as large as its peak unless something gives
the memory back, and three layers keep it:

1. **Python dicts never shrink.**  A dict that held 200,000 legs keeps its
   table after they are gone.  The registry and the engine therefore rebuild
   their dicts once they hold under an eighth of their peak
   (:func:`engine.registry.shrinkable`).
2. **pymalloc** (small objects) returns a 1 MiB arena to the system only
   when every object in it is gone: long-lived objects created during a
   peak pin arenas.  The engine keeps little that is long-lived per transfer
   (one shared python-statemachine chart instead of one per transfer was the
   big pin: see :mod:`engine.chart`).
3. **glibc malloc** (everything larger: dict tables, lists) keeps freed
   memory in its heap for reuse; only ``malloc_trim`` returns the free pages
   in the middle of the heap.  :func:`give_back` calls it, and the registry
   calls :func:`give_back` when it has just rebuilt its dicts after a large
   drop — a handful of times per peak, never per event.

This is no I/O and changes no decision: replays stay deterministic.  Where
the C library has no ``malloc_trim`` (musl, macOS), :func:`give_back` does
nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_Trim = Callable[[int], int]


def _find_trim() -> _Trim | None:
    try:
        trim: _Trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    return trim


_trim = _find_trim()


def give_back() -> bool:
    """Return the C heap's free pages to the system; whether any were returned."""
    return bool(_trim(0)) if _trim is not None else False
