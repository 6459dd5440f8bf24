"""Admission of new transfers: bounded, and paced behind the decisive path.

Theory of operation
-------------------
Everything runs on one event loop.  Each turn, the loop first collects the
I/O that became ready (PBX frames, PBX answers, API requests) and the timers
that are due, then runs their callbacks in that order.  A burst of ``POST
/v1/transfers`` would put hundreds of handlers — each a chunk of validation,
engine work and a store row — into one turn, and the target's ANSWER frame
that decides another transfer's ``complete`` would wait behind all of them.

So a new transfer passes two gates before the engine sees it:

* **bounded**: at most ``limit`` transfers may be pending at once (admitted
  or waiting to be, and their start request not yet answered by the PBX).
  One more is refused at once with 503 ``overloaded`` and ``Retry-After``
  (:class:`Overloaded`): the client learns to come back, never times out in
  a queue it cannot see.
* **paced**: admitted handlers enter the engine one per turn of the loop, in
  arrival order, and only while fewer than ``concurrency`` of them are
  starting (fed, start request not yet answered).  Frames, PBX answers and
  timer expiries — what decides requests of transfers already under way —
  are handled every turn, so they wait behind at most one new transfer's
  engine work and the steps of at most ``concurrency`` start requests, not
  behind the whole burst.  The wait happens here, before the engine and the
  PBX request's own time-out start counting.

Operator requests on existing transfers (complete, abort…) do not pass
here: they are decisions, not new work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

#: What ``Retry-After`` says when the queue is full (seconds).
RETRY_AFTER_S = 1
#: How many admitted transfers may be starting at once (the rest wait their turn).
CONCURRENCY = 4  # the default of [api] max_starting_transfers
#: How many waiting handlers may enter the engine in one turn of the loop.
PER_TURN = 1


class Overloaded(Exception):
    """The admission queue is full: answer 503 with ``Retry-After``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} transfers are already starting")
        self.limit = limit
        self.retry_after_s = RETRY_AFTER_S


class Admission:
    """The gate new transfers of one runtime pass (see the module docstring)."""

    def __init__(self, limit: int, concurrency: int = CONCURRENCY) -> None:
        self.limit = limit
        self.concurrency = concurrency
        self.pending = 0  # admitted or waiting, start request not answered yet
        self.active = 0  # let in, start request not answered yet
        self.refused = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._pump: asyncio.Handle | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a pending slot from the turn this handler may feed the engine
        until the block ends (the PBX answered the start); raises
        :class:`Overloaded` at once when every slot is taken."""
        if self.pending >= self.limit:
            self.refused += 1
            raise Overloaded(self.limit)
        self.pending += 1
        let_in = False
        try:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            self._wake()
            await turn
            let_in = True
            yield
        finally:
            self.pending -= 1
            if let_in:
                self.active -= 1
                self._wake()

    def _wake(self) -> None:
        if self._pump is None and self._waiting and self.active < self.concurrency:
            self._pump = asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        """Let the first waiting handler in, then come back next turn for the following one."""
        self._pump = None
        let_in = 0
        while self._waiting and self.active < self.concurrency and let_in < PER_TURN:
            turn = self._waiting.popleft()
            if not turn.done():  # its client may have gone (the handler was cancelled)
                turn.set_result(None)
                self.active += 1
                let_in += 1
        self._wake()
