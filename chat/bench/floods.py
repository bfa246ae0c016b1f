"""The floods of issue 21 against a real broker, bounded, on loopback: what each costs the broker and a
normal user.

    python -m chat.bench.floods [--repo DIR] [--seconds S] [--only NAME,...]

``--repo`` runs the ``broker.py`` of another checkout (an older commit, to compare). For each flood it
starts a fresh broker, a normal user (a DEALER on 127.0.0.1 saying 4 lines a second and timing each
ACK), runs the flood from other loopback addresses for at most ``--seconds``, and prints the broker's
resident memory before, at its peak and after the attacker left, the normal user's ACK p50/p99/max, and
what the broker printed on stderr (what its operator sees).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import zmq

from chat.bench.procs import REPO

HOST = "127.0.0.1"
MiB = 1024 * 1024


def zmtp_null_dealer(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A raw TCP peer that speaks just enough ZMTP 3.0 (NULL) to be a DEALER: what an attacker writes
    to send frames libzmq would never send (a multipart message that does not end)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    sock.sendall(greeting)
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    sock.sendall(b"\x04" + bytes([len(ready)]) + ready)
    return sock


def endless_part(size: int = 60 * 1024) -> bytes:
    """One ZMTP frame of ``size`` bytes with MORE set: sent again and again, a message that never ends."""
    return b"\x03" + struct.pack(">Q", size) + b"x" * size


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class Broker:
    def __init__(self, repo: Path, *args: str) -> None:
        argv = [sys.executable, "broker.py", "--host", HOST, "--port", "0", "--pub-port", "0", *args]
        self.proc = subprocess.Popen(argv, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        match, line = None, ""
        for _ in range(5):  # the listening line comes after a line or two about keys and history
            line = self.proc.stdout.readline()
            match = re.search(r"tcp://[^:]+:(\d+) \(ROUTER.*tcp://[^:]+:(\d+) \(PUB", line)
            if match:
                break
        if not match:
            self.stop()
            raise SystemExit(f"the broker did not start: {line!r} {self.proc.stderr.read()}")
        self.port, self.pub_port = int(match[1]), int(match[2])
        self.errors: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line.rstrip())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dealer(ctx: zmq.Context, port: int, source: str = HOST, **options: Any) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    for name, value in options.items():
        setattr(sock, name, value)
    sock.connect(f"tcp://{source}:0;{HOST}:{port}")
    return sock


def send(sock: zmq.Socket, kind: str, body: dict[str, Any]) -> None:
    sock.send_multipart([b"chat/2", kind.encode(), json.dumps(body).encode()])


def answer(sock: zmq.Socket, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
    if not sock.poll(int(timeout * 1000)):
        return "TIMEOUT", {}
    _, kind, body = sock.recv_multipart()
    return kind.decode(), json.loads(body)


class NormalUser(threading.Thread):
    """A DEALER on 127.0.0.1 that says 4 lines a second and times each ACK (and pings when idle)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sock = dealer(self.ctx, port)
        send(self.sock, "JOIN", {"name": "normal", "token": "n"})
        kind, _ = answer(self.sock)
        self.joined = kind == "WELCOME"
        self.latencies: list[float] = []
        self.lost = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set() and self.joined:
            n += 1
            started = time.monotonic()
            send(self.sock, "SAY", {"id": f"n{n}", "text": f"normal line {n}"})
            while True:
                kind, body = answer(self.sock, 5.0)
                if kind == "TIMEOUT":
                    self.lost += 1
                    break
                if body.get("id") == f"n{n}" or body.get("ref") == f"n{n}":
                    self.latencies.append(time.monotonic() - started)
                    break
            self.stopping.wait(max(0.0, 0.25 - (time.monotonic() - started)))
        self.sock.close()
        self.ctx.term()

    def summary(self) -> str:
        if not self.joined:
            return "could not join"
        ms = sorted(x * 1000 for x in self.latencies)
        if not ms:
            return f"no ACK at all ({self.lost} lost)"
        p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
        return f"ACK p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {ms[-1]:.0f} ms ({len(ms)} lines, {self.lost} lost)"


# --------------------------------------------------------------------------- the floods


def endless(broker: Broker, ctx: zmq.Context, seconds: float, begin: Callable[[], None]) -> str:
    begin()
    part, deadline = endless_part(), time.monotonic() + seconds
    for _ in range(3):  # this bare-bones ZMTP peer is now and then refused at its handshake: again
        attacker = zmtp_null_dealer(HOST, broker.port)
        sent, outcome = 0, "still connected"
        try:
            while sent < 1024 * MiB and time.monotonic() < deadline:
                attacker.sendall(part)
                sent += len(part)
        except OSError as exc:
            outcome = f"cut ({type(exc).__name__})"
        finally:
            attacker.close()
        if sent > 8 * MiB:
            break
    return f"sent {sent // MiB} MiB of one message: {outcome}"


def fetch(broker: Broker, ctx: zmq.Context, seconds: float, begin: Callable[[], None]) -> str:
    writer = dealer(ctx, broker.port, "127.0.0.2")
    send(writer, "JOIN", {"name": "writer"})
    answer(writer)
    waiting, last = {f"w{n}" for n in range(10_000)}, 0
    for _ in range(100):
        for msg_id in sorted(waiting)[:500]:
            send(writer, "SAY", {"id": msg_id, "text": f"{msg_id} " + "x" * 400})
        for _ in range(min(500, len(waiting))):
            kind, body = answer(writer)
            if kind == "ACK":
                waiting.discard(body["id"])
                last = max(last, body["seq"])
        if not waiting:
            break
    readers = []
    for n in range(30):
        sock = dealer(ctx, broker.port, f"127.0.1.{n + 1}", rcvbuf=64 * 1024, rcvhwm=1)
        send(sock, "JOIN", {"name": f"reader{n}"})
        answer(sock)
        readers.append(sock)
    begin()
    asked, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline and asked < 300_000:
        for sock in readers:
            send(sock, "FETCH", {"room": "#general", "first": 1, "last": last})
            asked += 1
        time.sleep(0.01)  # pacing the load, not waiting for anything
    return f"{len(readers)} sessions asked {asked} times for {last} events and never read"


def many(broker: Broker, ctx: zmq.Context, seconds: float, begin: Callable[[], None]) -> str:
    begin()
    socks, welcomed, refused = [], 0, {}
    deadline = time.monotonic() + seconds
    for n in range(3000):
        if time.monotonic() > deadline:
            break
        sock = dealer(ctx, broker.port, "127.0.0.2")
        send(sock, "JOIN", {"name": f"many{n}"})
        socks.append(sock)
    for sock in socks:
        kind, body = answer(sock, 2.0)
        if kind == "WELCOME":
            welcomed += 1
        else:
            refused[body.get("code", kind)] = refused.get(body.get("code", kind), 0) + 1
    other = dealer(ctx, broker.port, "127.0.0.3")
    send(other, "JOIN", {"name": "neighbour"})
    kind, body = answer(other)
    return f"{len(socks)} DEALERs from one host: {welcomed} joined, refused {refused}; another host: {body.get('code', kind)}"


Request = Callable[[int], tuple[str, dict[str, Any]]]  # the n-th request of a loop: (type, body)


def churn(sock: zmq.Socket, seconds: float, do: Request, granted: str, undo: Request) -> tuple[int, int]:
    """``do`` as fast as answers come, and ``undo`` each one granted: (requests, granted), bounded."""
    n, done, deadline = 0, 0, time.monotonic() + seconds
    while time.monotonic() < deadline and n < 1_000_000:
        n += 1
        send(sock, *do(n))
        if answer(sock)[0] == granted:
            done += 1
            send(sock, *undo(n))
            answer(sock)
    return n, done


def join_leave(broker: Broker, ctx: zmq.Context, seconds: float, begin: Callable[[], None]) -> str:
    begin()
    sock = dealer(ctx, broker.port, "127.0.0.2")
    n, joins = churn(sock, seconds, lambda n: ("JOIN", {"name": f"loop{n}"}), "WELCOME", lambda n: ("LEAVE", {}))
    return f"{n} JOINs in {seconds:g} s, {joins} let in: {2 * joins / seconds:.0f} events/s stored and fanned out"


def rooms(broker: Broker, ctx: zmq.Context, seconds: float, begin: Callable[[], None]) -> str:
    sock = dealer(ctx, broker.port, "127.0.0.2")
    send(sock, "JOIN", {"name": "roomer"})
    answer(sock)
    begin()
    room: Request = lambda n: ("ENTER", {"room": f"#r{n}"})  # noqa: E731
    n, made = churn(sock, seconds, room, "ENTERED", lambda n: ("PART", {"room": f"#r{n}"}))
    return f"{n} ENTERs of fresh rooms, {made} rooms made"


Flood = Callable[[Broker, zmq.Context, float, Callable[[], None]], str]  # calls its last argument as it begins
FLOODS: dict[str, tuple[Flood, tuple[str, ...]]] = {
    "endless": (endless, ()),
    "fetch": (fetch, ("--rate", "1000", "--burst", "100000")),
    "many": (many, ("--max-sessions", "3000")),
    "join-leave": (join_leave, ()),
    "rooms": (rooms, ()),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.bench.floods", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose broker.py runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each flood lasts at most")
    parser.add_argument("--only", default=",".join(FLOODS), help="floods to run, comma-separated")
    parser.add_argument("--db", default=":memory:", help="the broker's --db (a file shows the growth on disk)")
    args = parser.parse_args(argv)
    for name in args.only.split(","):
        flood, extra = FLOODS[name]
        with ExitStack() as stack:
            db = args.db if args.db == ":memory:" else f"{args.db}.{name}"
            broker = Broker(args.repo, "--db", db, "--timeout", "30", *extra)
            stack.callback(broker.stop)
            ctx = zmq.Context()
            ctx.set(zmq.MAX_SOCKETS, 8192)  # (libzmq's default is 1023)
            stack.callback(ctx.destroy, 0)
            before = memory_mib(broker.proc.pid)[0]
            user = NormalUser(broker.port)
            stack.callback(lambda: user.is_alive() and user.join(10))
            stack.callback(user.stopping.set)
            what = flood(broker, ctx, args.seconds, user.start)
            ctx.destroy(0)  # the attacker leaves
            rss, peak = memory_mib(broker.proc.pid)
            settle = time.monotonic() + 2
            while time.monotonic() < settle:
                time.sleep(0.1)
                rss = memory_mib(broker.proc.pid)[0]
            user.stopping.set()
            user.join(10)
            size = sum(f.stat().st_size for f in Path(db).parent.glob(Path(db).name + "*")) // MiB if db != ":memory:" else None
            print(f"== {name}: {what}")
            print(f"   broker RSS {before:.0f} MiB before, peak {peak:.0f} MiB, {rss:.0f} MiB after the attacker left"
                  + (f"; database {size} MiB" if size is not None else ""))
            print(f"   normal user: {user.summary()}")
            shown = broker.errors[:5]
            print("   operator sees: " + (" | ".join(shown) if shown else "nothing on stderr")
                  + (f" (+{len(broker.errors) - 5} more lines)" if len(broker.errors) > 5 else ""))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
