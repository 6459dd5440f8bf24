"""xferd benchmarks: how fast it does its job, next to the best it could do.

Run from the project root (after ``pip install -e ".[dev,bench]"``)::

    python -m bench              # every figure, full sizes (a few minutes on 2 cores)
    python -m bench --quick      # tiny sizes: proves the code runs, figures are noise
    python -m bench --only ingest --only memory
    python -m bench --plot bench/plot.png   # also draw the plot (needs matplotlib)
    python -m bench --pin        # measured code on CPU 0, feeders on CPU 1 (idle machines only)

Every figure is one line ``name: value unit (ratio …)``: ``value`` is what
xferd did, the parenthesis says what it is compared with (a bare client doing
the least possible work on the same input, in the same run, or the goal) and
whether the goal of issue 7 is met.  Every number is measured in that run;
nothing is hard-coded.  These are benchmarks, not tests: they print, they do
not assert timings (``tests/bench`` only checks that every line is printed).

Figures and their modules:

1. ``ingest`` (:mod:`bench.ingest`) — frames/s through the whole service vs a
   bare websocket client, both fed by the bench PBX (:mod:`bench.minipbx`).
2. ``latency`` (:mod:`bench.latency`) — target ANSWER frame → ``complete``
   request, measured inside the simulator, vs a bare echo client.
3. ``memory`` (:mod:`bench.memory`) — bytes per tracked call and per active
   transfer; memory after everything ended.
4. ``scaling`` (:mod:`bench.ingest`) — ingest rate at 100 / 10,000 / 100,000
   live calls.
5. ``replay`` (:mod:`bench.replay_speed`) — ``xferd replay`` on generated
   scenarios.
6. ``load`` (:mod:`bench.load`) — 500 concurrent transfers through the
   control API against the simulator.
"""
