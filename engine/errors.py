"""Errors split by blame, as h11 does.

:class:`Rejected` — the caller asked for something the current state does
not allow or that names nothing we know; the control API turns it into a
4xx carrying ``code`` and ``detail``.  Anything else escaping the engine is a
bug.
"""

from __future__ import annotations


class Rejected(Exception):
    """A request the engine refuses; nothing changed.

    ``code`` is the contract's error code (``not_allowed``, ``not_found``,
    ``no_active_call``, ``ambiguous``, ``transfer_in_progress``,
    ``conflict``); ``detail`` is a sentence that says what to do instead.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
