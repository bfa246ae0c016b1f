"""Stress run of the reliability guarantees: ``python -m chat.stress``.

Starts a broker with a history file, S sender clients that each send N numbered lines (and every
PM_EVERY-th also as a private message to the first receiver), R receiver clients of which one is paused
(SIGSTOP/SIGCONT) again and again, and kills the broker with SIGKILL once in the middle and starts it
again on the same ports and file. Then it counts, for every receiver, the lines (and private messages)
lost and shown twice, against what the broker acknowledged (what is in its history file). Everything
runs on 127.0.0.1, every load is bounded, and every process is ended.
"""

from __future__ import annotations

import argparse
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on tcp://[^:]+:(\d+) .* and tcp://[^:]+:(\d+)")
LINE = re.compile(r"^\[[^\]]+\] (s\d+): (\d+)$")
PRIVATE_LINE = re.compile(r"^\[[^\]]+\] (s\d+) \(private\): (\d+)$")
PM_EVERY = 50  # every so many lines, a sender also sends the number privately to the first receiver


class Proc:
    def __init__(self, args: list[str], stdin: bool = False) -> None:
        self.p = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._read, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.p.stderr, self.errors), daemon=True).start()

    @staticmethod
    def _read(pipe, into: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in pipe:
            into.append(line.rstrip("\n"))

    def wait_for(self, what: re.Pattern[str] | str, into: list[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(what)
        while time.monotonic() < deadline:
            for line in list(into):
                match = regex.search(line)
                if match:
                    return match
            time.sleep(0.05)  # polling a list filled by a reader thread, with a deadline
        raise TimeoutError(f"no line matching {regex.pattern!r} within {timeout:g} s")

    def end(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def start_broker(port: int, pub_port: int, db: Path) -> tuple[Proc, int, int]:
    broker = Proc(
        ["broker.py", "--host", "127.0.0.1", "--port", str(port), "--pub-port", str(pub_port),
         "--db", str(db), "--rate", "0", "--timeout", "3"]
    )
    match = broker.wait_for(LISTENING, broker.lines, 15)
    return broker, int(match[1]), int(match[2])


def run(senders: int, lines: int, receivers: int, restart: bool) -> int:
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "stress.db"
        try:
            broker, port, pub_port = start_broker(0, 0, db)
            procs.append(broker)
            client = ["client.py", "--host", "127.0.0.1", "--port", str(port), "--history", "0", "--plain"]
            readers = [Proc([*client, "--name", f"r{i}"], stdin=True) for i in range(receivers)]
            procs += readers
            for r in readers:
                r.wait_for("joined as", r.errors, 15)
            writers = [Proc([*client, "--name", f"s{i}"], stdin=True) for i in range(senders)]
            procs += writers
            for w in writers:
                w.wait_for("joined as", w.errors, 15)

            slow = readers[-1]
            stop_pausing = threading.Event()

            def pause_slow_reader() -> None:
                while not stop_pausing.wait(0.3):
                    slow.p.send_signal(signal.SIGSTOP)
                    stop_pausing.wait(0.7)
                    slow.p.send_signal(signal.SIGCONT)

            pauser = threading.Thread(target=pause_slow_reader, daemon=True)
            pauser.start()

            def feed(writer: Proc) -> None:
                assert writer.p.stdin is not None
                for n in range(lines):
                    writer.p.stdin.write(f"{n}\n")
                    if n % PM_EVERY == 0:
                        writer.p.stdin.write(f"/pm r0 {n}\n")
                    if n % 200 == 199:
                        writer.p.stdin.flush()
                        time.sleep(0.02)  # a steady stream rather than one paste
                writer.p.stdin.close()

            started = time.monotonic()
            feeders = [threading.Thread(target=feed, args=(w,), daemon=True) for w in writers]
            for f in feeders:
                f.start()
            if restart:
                readers[0].wait_for(rf": {lines // 3}$", readers[0].lines, 60)
                broker.p.send_signal(signal.SIGKILL)
                broker.p.wait()
                print(f"broker killed (SIGKILL) after {time.monotonic() - started:.1f} s; restarting", flush=True)
                broker, _, _ = start_broker(port, pub_port, db)
                procs.append(broker)
            for f in feeders:
                f.join()
            codes = [w.p.wait(timeout=120) for w in writers]
            stop_pausing.set()
            pauser.join()
            slow.p.send_signal(signal.SIGCONT)

            expected = senders * lines
            deadline = time.monotonic() + 60
            for r in readers:
                while time.monotonic() < deadline and sum(1 for l in list(r.lines) if LINE.match(l)) < expected:
                    time.sleep(0.1)
            elapsed = time.monotonic() - started
            # The broker holds its history file locked while it runs: read what it stored once it is gone
            # (a SIGKILL loses nothing committed, so this is what any crash would have left).
            broker.end()
            with sqlite3.connect(db) as conn:
                acked = Counter(
                    conn.execute("SELECT name || ': ' || text FROM events WHERE kind = 'msg'").fetchall()
                )
                # A PM to r0 while r0 was away (the restart) is refused (no_such_user), not stored.
                acked_pms = Counter(conn.execute("SELECT name || ': ' || text FROM private").fetchall())
            print(f"{senders} senders x {lines} lines, {receivers} receivers (1 paused again and again), "
                  f"{'one broker SIGKILL + restart' if restart else 'no restart'}; {elapsed:.1f} s")
            print(f"sender exit codes: {codes}")
            print(f"acknowledged (stored by the broker): {sum(acked.values())} lines, "
                  f"{sum(c - 1 for c in acked.values())} stored twice")
            pm_lines = map(PRIVATE_LINE.match, list(readers[0].lines))
            pm_seen = Counter(m.group(1) + ": " + m.group(2) for m in pm_lines if m)
            pm_lost = sum(1 for key in acked_pms if key[0] not in pm_seen)
            pm_dup = sum(c - 1 for c in pm_seen.values())
            print(f"  r0 private messages: acknowledged {sum(acked_pms.values())}, delivered {sum(pm_seen.values())}, "
                  f"lost {pm_lost}, duplicated {pm_dup}")
            worst = max(pm_lost, pm_dup)
            for r, name in zip(readers, [f"r{i}" for i in range(receivers)]):
                seen = Counter(m.group(1) + ": " + m.group(2) for m in map(LINE.match, list(r.lines)) if m)
                lost = sum(1 for key in acked if key[0] not in seen)
                dup = sum(c - 1 for c in seen.values())
                order_ok = all(
                    nums == sorted(nums)
                    for nums in (
                        [int(m.group(2)) for m in map(LINE.match, r.lines) if m and m.group(1) == f"s{i}"]
                        for i in range(senders)
                    )
                )
                label = " (paused)" if r is slow else ""
                for line in r.errors:
                    if not line.startswith("*** joined as") and "private" not in line:
                        print(f"  {name} said: {line}")
                print(f"  {name}{label}: delivered {sum(seen.values())}, lost {lost}, duplicated {dup}, "
                      f"in order per sender: {order_ok}")
                worst = max(worst, lost, dup, 0 if order_ok else 1)
            bad = worst or any(codes) or sum(acked.values()) != expected
            print("RESULT:", "FAIL" if bad else "ok (0 lost, 0 duplicated)")
            return 1 if bad else 0
        finally:
            for proc in procs:
                if proc.p.poll() is None and proc.p.stdin is not None:
                    try:
                        proc.p.stdin.close()
                    except OSError:
                        pass
                proc.end()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--lines", type=int, default=2000, help="lines per sender")
    parser.add_argument("--receivers", type=int, default=3, help="receivers, the last one paused repeatedly")
    parser.add_argument("--no-restart", action="store_true", help="do not kill and restart the broker")
    args = parser.parse_args(argv)
    return run(args.senders, args.lines, args.receivers, not args.no_restart)


if __name__ == "__main__":
    sys.exit(main())
