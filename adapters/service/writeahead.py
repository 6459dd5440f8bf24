"""Group commit: the write-ahead step of many decisions in one store transaction.

Theory of operation
-------------------
The engine decides synchronously; a decision that sends a PBX request must be
durable *before* the request leaves (write-ahead: a restarted service restores
the decision and asks the PBX what happened instead of deciding again, so a
``complete`` is never sent twice).  One transaction per decision costs one
fsync (SQLite, ``synchronous=FULL``) or one network round trip (PostgreSQL)
each — about seven per attended transfer before this module, which capped the
service near 70 transfers/s and made the decisive request of one transfer
wait behind the saves of every other.

:class:`WriteAhead` collects what the runtime hands it in *entries*: the rows
(:class:`~adapters.service.store.Saved`) one batch of engine commands changed,
and a ``done`` callback that carries out what must wait for them (send the
batch's PBX requests, publish the changes, forget final transfers).  Entries
submitted while no commit is running form one *batch*; the batch is written
by ONE ``await store.commit(rows, fence)`` — one fsync or one round trip for
every decision of that turn of the loop — and then every entry's ``done`` is
called, in submission order, with ``None`` (durable) or the
:class:`~adapters.service.store.StoreError` that refused the batch.

Rules it keeps:

* **No request before its decision is durable.**  ``done`` runs only after
  the commit holding the entry's rows returned.  A refused commit (locked,
  disk full, network) reports the error to every entry of the batch: the
  runtime sends none of their requests (they are reported not sent, and the
  transfers' state is retried by the runtime's store flusher, as before).
  :class:`~adapters.service.store.StaleFence` (another instance owns the
  PBX) is reported the same way; the runtime then sends nothing of the batch
  and tells its owner (``Runtime(on_stale=...)``).
* **At most one commit in flight.**  While one runs (a PostgreSQL round trip
  yields to the loop), new entries accumulate into the next batch, which is
  committed as soon as the current one returns.  Batches are therefore
  durable, and their ``done`` callbacks run, in submission order: one
  transfer's requests still leave in the order the engine emitted them.
* **Same turn, same commit.**  An urgent entry (one whose batch sends a PBX
  request) starts a commit task; the task's first step runs in the loop's
  next iteration, after every callback already scheduled in this one — so
  decisions taken by the frames, timers and API requests handled in the same
  turn share the commit.  SQLite's ``commit`` answers without yielding (a
  local fsync, about 0.4 ms here), so with it the commit is done inside that
  step; running it in a thread would let the loop go on during the fsync but
  needs a second connection, and was not needed for the figures.
* **A save that decides nothing does not wait, and does not make a commit of
  its own.**  An entry with no PBX request (the start was accepted, the target
  rings, a final state after the PBX answered) is *lazy*: it joins the open
  batch, and if nothing urgent comes along it is committed after
  :data:`LAZY_FLUSH_S`.  Under load it rides along with the next urgent
  commit.  Nothing is sent on its strength: if the process dies before it is
  written, the restarted service restores the previous (durable) decision and
  reconciles with the PBX's view of the calls, which tells it what happened.
  Its ``done`` still waits for the commit, so the live stream and the
  forgetting of final transfers stay in decision order.
* Rows of one transfer in one batch are coalesced: each row is the whole
  state of its transfer, so only the last one is written.

What each remaining save of an attended transfer protects (see also
RELIABILITY.md, "Write-ahead saves"):

1. ``idle`` + the start request (urgent): a restart knows a start was sent
   (it reconciles instead of dialling the target a second time).
2. ``consulting`` after the PBX accepted the start, and target ``ringing``
   (lazy): nothing is decided on them; they keep ``GET /v1/transfers`` (read
   from the store) current.
3. target ``answered`` + the ``complete`` request (urgent): ``complete_sent``
   is on disk before the complete leaves, so no restart can send a second one.
4. the final state (lazy): once it is durable the engine forgets the transfer
   and the store serves it; until then the engine keeps it (and the store's
   flusher retries it after a failure).

Testing the guarantee: with :data:`KILL_POINT_ENV` set to a file path, the
process SIGKILLs itself right after a commit returned and before any request
it decided is sent, once, when that file exists (the chaos suite's
``sigkill_after_commit`` creates it; see :func:`kill_point`).  Never set it in
production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapters.service.logs import get_logger
from adapters.service.store import Fence, Saved, StoreError, TransferStore

log = get_logger("xferd.writeahead")

#: How long a lazy entry (one that sends nothing) may wait for an urgent
#: commit to ride along with before it is committed on its own (seconds).
LAZY_FLUSH_S = 0.05

Done = Callable[[StoreError | None], None]

#: Testing only: the path of a file that, while it exists, kills the process between a commit
#: and the first request it decided (the chaos suite's ``sigkill_after_commit``).
KILL_POINT_ENV = "XFERD_CHAOS_KILL_AFTER_COMMIT"
_KILL_POINT = os.environ.get(KILL_POINT_ENV) or None


def kill_point(transfer_ids: Sequence[str]) -> None:
    """SIGKILL this process now if the chaos kill point is armed (see the module docstring).

    Called by the runtime after a commit returned, before it sends the requests
    the commit decided.  Costs one ``is None`` test when not configured.
    """
    if _KILL_POINT is None:
        return
    try:
        os.unlink(_KILL_POINT)  # armed once: a restarted process must not die again
    except FileNotFoundError:
        return
    log.warning("chaos_kill_after_commit", transfer_ids=list(transfer_ids))
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(slots=True)
class _Entry:
    rows: Sequence[Saved]
    done: Done


class WriteAhead:
    """The group-commit pipeline of one runtime (one PBX)."""

    def __init__(
        self,
        store: TransferStore,
        *,
        fence: Callable[[], Fence | None] | None = None,
        lazy_flush_s: float = LAZY_FLUSH_S,
    ) -> None:
        """``fence`` returns the fence every commit carries (None: a single
        instance, nothing to prove)."""
        self.store = store
        self._fence = fence
        self._lazy_flush_s = lazy_flush_s
        self._open: list[_Entry] = []
        self._urgent = False  # the open batch holds an entry that sends a request
        self._task: asyncio.Task[None] | None = None  # the committer (one at a time)
        self._lazy: asyncio.TimerHandle | None = None
        #: Counters the benchmark reads: commits made, rows written, entries carried.
        self.commits = 0
        self.rows = 0
        self.entries = 0
        self.commit_seconds = 0.0

    @property
    def pending(self) -> bool:
        """Something is waiting for a commit or being committed."""
        return bool(self._open) or self._task is not None

    def submit(self, rows: Sequence[Saved], done: Done, *, urgent: bool) -> None:
        """Queue ``rows`` for the next commit; ``done`` is called once it returned.

        ``urgent``: the entry sends a PBX request, so the commit starts in the
        loop's next iteration; otherwise it may wait :data:`LAZY_FLUSH_S` for
        company.  Must be called on the loop's thread.
        """
        self._open.append(_Entry(rows, done))
        if urgent:
            self._urgent = True
        if self._task is not None:
            return  # the running committer takes the open batch when its commit returns
        if self._urgent:
            self._start()
        elif self._lazy is None:
            self._lazy = asyncio.get_running_loop().call_later(self._lazy_flush_s, self._start)

    async def barrier(self) -> None:
        """Wait until everything submitted before this call is committed (or refused).

        Read-your-writes for API clients: a response that shows a state is
        sent only once that state is in the store, which ``GET
        /v1/transfers`` reads.  Lazy entries waiting for company are committed
        now; entries submitted after this call do not delay it.
        """
        if not self.pending:
            return
        reached: asyncio.Future[StoreError | None] = asyncio.get_running_loop().create_future()
        self.submit((), reached.set_result, urgent=True)
        await reached

    async def flush(self) -> None:
        """Commit everything submitted so far and wait for it (shutdown, tests)."""
        while self.pending:
            if self._open:
                self._urgent = True
                if self._task is None:
                    self._start()
            task = self._task
            if task is not None:
                await asyncio.shield(task)

    def _start(self) -> None:
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        if self._task is None and self._open:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._open:
                batch, self._open, self._urgent = self._open, [], False
                await self._commit(batch)
                if self._open and not self._urgent:
                    # Only lazy entries came meanwhile: let them wait for company.
                    self._lazy = asyncio.get_running_loop().call_later(self._lazy_flush_s, self._start)
                    return
        finally:
            self._task = None

    async def _commit(self, batch: list[_Entry]) -> None:
        # Each row is a transfer's whole state: the last one of a transfer is enough.
        latest: dict[str, Saved] = {}
        for entry in batch:
            for row in entry.rows:
                latest.pop(row.transfer_id, None)  # keep the order of last changes
                latest[row.transfer_id] = row
        rows = list(latest.values())
        error: StoreError | None = None
        began = time.perf_counter()
        try:
            await self.store.commit(rows, self._fence() if self._fence is not None else None)
        except StoreError as exc:
            error = exc
        except Exception as exc:  # a store bug must not leave requests waiting forever
            log.exception("store_commit_failed")
            error = StoreError(f"store commit failed: {type(exc).__name__}")
        self.commit_seconds += time.perf_counter() - began
        self.commits += 1
        self.rows += len(rows)
        self.entries += len(batch)
        for entry in batch:
            try:
                entry.done(error)
            except Exception:  # one entry's bug must not strand the others' requests
                log.exception("writeahead_done_failed")
