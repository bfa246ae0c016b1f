"""The benchmark, ``python -m chat.bench``: a real broker and real clients, against two baselines.

Layout: ``__main__`` (flags, order of the runs, output), ``targets`` (the broker set-ups and the
baselines, started as processes), ``relays`` (the baselines themselves), ``fanout``, ``latency`` and
``scale`` (one workload each: its load processes and the bench's side of it), ``load`` and ``wire``
(what the load processes share), ``procs`` (starting and ending processes, /proc), ``report``
(tables, targets, JSON). README.md, section "Benchmark", says how to run it and what it measures.
"""
