"""Chaos: xferd under faults and bad input, with figures.

Why this package exists
-----------------------
xferd promises that no transfer decision is lost or repeated and that it does
not crash, whatever the PBX, the network or its clients do.  Unit tests show
that each mechanism works once; this package shows, with counts, that the
promise holds when faults land at random moments, many times over.

How a run works
---------------
A *world* is a PBX simulator (Yeastar or Webex, in this process, on
127.0.0.1) and the real service against it: the platform adapter, engine,
runtime, SQLite store and control API, in-process (or ``xferd run`` as a
subprocess where a SIGKILL is the fault).  One *run* is one attended
transfer, driven like an API client would drive it: an outside caller
reaches a fresh receptionist extension, the client asks for a transfer to a
fresh target, the target's phone follows a randomly drawn script (answers,
never answers, is busy, a fallback answers, an operator completes or
aborts, the caller hangs up …), and one fault is injected at a randomly
drawn *stage* of the transfer (before the request, while the start request
is in flight, while the target rings, at the answer, while the second
request is in flight, after the final state), with a random jitter.  All
randomness comes from one :class:`random.Random` per run, seeded from the
command's ``--seed``, the fault kind and the run number: a run is
reproducible in what is injected and when (the event loop's own scheduling
still varies by a few milliseconds).

After every run :mod:`chaos.invariants` checks the promise against the
simulator's own truth (its live legs and its request log), not against what
the service says about itself:

* the transfer reached ``completed`` or ``aborted`` (else it is *lost*);
* the final state matches the legs (*wrong outcome* otherwise): completed →
  the transferor is gone and the transferee talks to the target; aborted →
  no target leg is left and the transferee is not left on hold;
* at most one ``complete`` ever reached the PBX (10004 refusals excepted:
  the PBX did not act on them);
* no request for the transfer's legs reached the PBX after the final state;
* no crash: no engine error, no unhandled exception or traceback in the
  log, no HTTP 500 from the control API, the service process alive;
* no secret in any log line or recording.

Between runs the world is cleaned (legs hung up, fault switches reset) and
kept: one service lives through every run of a fault kind, so leaked tasks,
timers or transfers would accumulate and show in the baseline check.

Entry points: ``python -m chaos`` (:mod:`chaos.__main__`) for the long run
and the table; ``tests/chaos`` for the fast part of the normal suite.
"""
