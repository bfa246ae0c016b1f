"""``python -m chat.bench.search``: /search latency over a large history, written through the store.

The history is generated directly with ``SqliteHistory`` (batches of appends and flushes, as the broker
writes them), bounded in lines and in time; then searches of words common and rare, one room and all
rooms, run one after the other and their latencies are reported (p50, p99, max).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chat import protocol as p
from chat.broker.store import SqliteHistory

WORDS = [f"w{n}" for n in range(5000)]  # a vocabulary: word i is used about 1/(i+1) as often (Zipf)
ROOMS = [f"#room{n}" for n in range(20)]
BATCH = 5000


def generate(history: SqliteHistory, lines: int, seconds: float, seed: int = 16) -> int:
    """Append up to ``lines`` lines of ten words in ``ROOMS``; stop after ``seconds``. Returns how many."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1 / (i + 1) for i in range(len(WORDS))))
    seqs = {room: history.last_seq(room) for room in ROOMS}
    deadline = time.monotonic() + seconds
    done, ts = 0, 1_700_000_000_000
    while done < lines and time.monotonic() < deadline:
        for text in (" ".join(rng.choices(WORDS, cum_weights=cumulative, k=10)) for _ in range(min(BATCH, lines - done))):
            room = ROOMS[done % len(ROOMS)]
            seqs[room] += 1
            ts += 10
            history.append(p.Event(seqs[room], ts, p.KIND_MSG, f"user{done % 97}", text, room), f"id{done}")
            done += 1
        history.flush()
    return done


def measure(history: SqliteHistory, searches: int, seed: int = 22) -> dict[str, float]:
    rng = random.Random(seed)
    latencies = []
    for n in range(searches):
        kind = n % 4
        if kind == 0:  # a common word, every room
            text, rooms = rng.choice(WORDS[:10]), ROOMS
        elif kind == 1:  # a rare word, every room
            text, rooms = rng.choice(WORDS[-1000:]), ROOMS
        elif kind == 2:  # two words, one room
            text, rooms = f"{rng.choice(WORDS[:200])} {rng.choice(WORDS[:200])}", [rng.choice(ROOMS)]
        else:  # FTS5 syntax as words
            text, rooms = f'"{rng.choice(WORDS[:50])}* NEAR(-{rng.choice(WORDS[:50])}', ROOMS[:5]
        start = time.perf_counter()
        history.search(text, rooms, 0, p.MAX_FOUND)
        latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    return {
        "searches": searches,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max_ms": latencies[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.bench.search", description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=300.0, help="at most this long to write the history")
    parser.add_argument("--searches", type=int, default=400)
    parser.add_argument("--db", type=Path, help="keep the history in this file (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "search.db"
        history = SqliteHistory(path)
        start = time.monotonic()
        written = generate(history, args.lines, args.seconds)
        took = time.monotonic() - start
        print(f"history: {written} lines in {took:.1f} s ({written / took:,.0f} lines/s, file {path.stat().st_size / 1e6:.0f} MB)")
        start = time.monotonic()
        while history.index_some(50_000):  # what the broker does while idle
            pass
        took = time.monotonic() - start
        print(f"index: {written} lines in {took:.1f} s ({written / took:,.0f} lines/s, file {path.stat().st_size / 1e6:.0f} MB)")
        result = measure(history, args.searches)
        print(
            f"search over {written} lines: {result['searches']} searches, p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms"
        )
        history.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
