"""Workload 6: web users against direct users, in one run (part of ``python -m chat.bench``; alone:
``python -m chat.bench.web``).

A broker (``broker.py``) and a web gateway (``python -m chat.web``) run as processes. W WebSocket
clients (in a few load processes, aiohttp) join through the gateway, D direct clients (client-core
sessions over ZeroMQ, the asyncio driver) and S senders (raw DEALERs) join the broker. The senders send
R lines a second in all, round robin, for T seconds; every line reaches every web and direct client.
Each line carries its send time (the system-wide monotonic clock, the same in every process), so
latency is measured per delivery: web p50/p99 against direct p50/p99. Every receiver must get every
timed line exactly once and in each sender's order: loss, duplicates and disorder are counted.

Also: the gateway's CPU per delivered web line (from /proc, every thread) and its memory per web
session (VmRSS with every tab joined minus before any, over W).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from chat import protocol as p
from chat.bench.load import percentiles
from chat.bench.procs import REPO, BenchError, cpu_seconds, memory_kib
from chat.client import events as ev
from chat.client.host import BrokerAddress, SessionHost

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for processes to listen and clients to join
DRAIN_TIMEOUT = 30.0  # seconds after the last send for every delivery to arrive
WARM_EVERY = 0.2  # seconds between warm-up lines until every receiver has heard one
CLIENTS_PER_PROCESS = 50  # WebSocket clients in one load process
# The gateway's ping interval here: a browser answers pings in its network code at once, but these
# Python clients answer only when their loop reads, seconds late when they fall behind, and the gateway
# would drop them as vanished (with the default, 3 s, 8% of the deliveries of a 200-tab run never came).
BENCH_PING = 60.0


def parse_line(text: str) -> tuple[int, int, int] | None:
    """(sender, n, sent_ns) of a timed line "b SENDER N NS", else None."""
    parts = text.split()
    if len(parts) != 4 or parts[0] != "b":
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])


class Tally:
    """One receiver's deliveries: counted, checked per sender, and timed."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self.count = 0
        self.duplicates = 0
        self.disorder = 0
        self.latencies_ms: list[float] = []
        self.warm = False

    def add(self, text: str, now_ns: int) -> None:
        if text.startswith("warm"):
            self.warm = True
            return
        parsed = parse_line(text)
        if parsed is None:
            return
        sender, n, sent = parsed
        last = self.last.get(sender, -1)
        if n <= last:
            self.duplicates += 1
            return
        if n != last + 1:
            self.disorder += 1
        self.last[sender] = n
        self.count += 1
        self.latencies_ms.append((now_ns - sent) / 1e6)


# --------------------------------------------------------------------------- web clients (load processes)


def web_clients(url: str, names: list[str], expected: int, queue: Any, go: Any, deadline: float) -> None:
    """A load process: ``names`` join through the gateway and count what they get."""
    import aiohttp

    decode = msgspec.json.decode

    async def client(http: aiohttp.ClientSession, name: str, tally: Tally, joined: asyncio.Event) -> None:
        async with http.ws_connect(url + "ws", max_msg_size=0) as ws:
            await ws.send_str(json.dumps({"type": "hello", "name": name}))
            async for frame in ws:
                now = time.monotonic_ns()
                for message in decode(frame.data):
                    kind = message["type"]
                    if kind == "event" and message["kind"] == "msg":
                        tally.add(message["text"], now)
                    elif kind == "status" and message["state"] == "connected":
                        joined.set()
                if tally.count >= expected or time.monotonic() > deadline:
                    return

    async def main() -> None:
        tallies = [Tally() for _ in names]
        joined = [asyncio.Event() for _ in names]
        async with aiohttp.ClientSession() as http:
            tasks = [asyncio.ensure_future(client(http, n, t, j)) for n, t, j in zip(names, tallies, joined)]
            await asyncio.wait_for(asyncio.gather(*(j.wait() for j in joined)), START_TIMEOUT)
            queue.put(("joined", len(names)))
            while not all(t.warm for t in tallies):
                await asyncio.sleep(0.05)
            queue.put(("warm", len(names)))
            await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            for task in tasks:
                task.cancel()
        queue.put(("result", [(t.count, t.duplicates, t.disorder, t.latencies_ms) for t in tallies]))

    asyncio.run(main())


# --------------------------------------------------------------------------- the run


def start(args: list[str], pattern: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.search(pattern, line):
            return proc, match
    raise BenchError(f"{args} ended without printing {pattern!r}")


async def drive(opts: WebLoad, broker_port: int, gateway_pid: int, url: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    lines = int(opts.rate * opts.seconds)
    deadline = time.monotonic() + START_TIMEOUT + opts.seconds + DRAIN_TIMEOUT
    rss_before = memory_kib(gateway_pid)
    names = [f"w{i}" for i in range(opts.web_clients)]
    workers = [
        ctx.Process(target=web_clients, args=(url, names[i:i + CLIENTS_PER_PROCESS], lines, queue, None, deadline))
        for i in range(0, len(names), CLIENTS_PER_PROCESS)
    ]
    for worker in workers:
        worker.start()
    host = SessionHost(BrokerAddress(HOST, broker_port), history_lines=0, per_address=opts.direct_clients + 1)
    direct = [Tally() for _ in range(opts.direct_clients)]
    zctx = zmq.asyncio.Context()
    senders: list[zmq.asyncio.Socket] = []
    try:
        joined = [asyncio.Event() for _ in direct]
        for i, tally in enumerate(direct):
            def show(item: ev.Show, tally: Tally = tally, joined: asyncio.Event = joined[i]) -> None:
                if isinstance(item, ev.Public) and item.event.kind == p.KIND_MSG:
                    tally.add(item.event.text, time.monotonic_ns())
                elif isinstance(item, ev.Status) and item.state == "connected":
                    joined.set()
            host.open(HOST, show, name=f"d{i}")
        for i in range(opts.senders):
            sock = zctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(p.endpoint(HOST, broker_port))
            await sock.send_multipart(p.encode(p.Join(f"s{i}", f"token-s{i}")))
            senders.append(sock)
        for sock in senders:
            reply = await asyncio.wait_for(sock.recv_multipart(), START_TIMEOUT)
            if reply[1] != p.Welcome.TYPE:
                raise BenchError(f"a sender was not welcomed: {reply}")
        acks = {"n": 0, "refused": 0}

        async def read_acks(sock: zmq.asyncio.Socket) -> None:
            while True:
                reply = await sock.recv_multipart()
                acks["n" if reply[1] == p.Ack.TYPE else "refused"] += reply[1] != p.Pong.TYPE

        readers = [asyncio.ensure_future(read_acks(s)) for s in senders]
        await asyncio.wait_for(asyncio.gather(*(j.wait() for j in joined)), START_TIMEOUT)
        web_joined = 0
        while web_joined < len(names):
            kind, count = await asyncio.to_thread(queue.get, True, START_TIMEOUT)
            assert kind == "joined", kind
            web_joined += count
        rss_joined = memory_kib(gateway_pid)

        # Warm-up: until every receiver has heard a line (slow joiners), then the timed run.
        warm_web, k = 0, 0
        while warm_web < len(names) or not all(t.warm for t in direct):
            await senders[0].send_multipart(p.encode(p.Say(f"warm-{k}", f"warm {k}", p.DEFAULT_ROOM)))
            k += 1
            await asyncio.sleep(WARM_EVERY)
            while not queue.empty():
                kind, count = queue.get_nowait()
                warm_web += count if kind == "warm" else 0
        cpu_before = cpu_seconds(gateway_pid)
        t0 = time.monotonic()
        lag_ms: list[float] = []
        for n in range(lines):
            due = t0 + n / opts.rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            lag_ms.append((time.monotonic() - due) * 1000)
            sender = n % opts.senders
            text = f"b {sender} {n // opts.senders} {time.monotonic_ns()}"
            await senders[sender].send_multipart(p.encode(p.Say(f"{sender}-{n}", text, p.DEFAULT_ROOM)))
        while any(t.count < lines for t in direct) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        results: list[tuple[int, int, int, list[float]]] = []
        while len(results) < len(names):
            kind, rows = await asyncio.to_thread(queue.get, True, max(1.0, deadline - time.monotonic()))
            if kind == "result":
                results += rows
        cpu = cpu_seconds(gateway_pid) - cpu_before
        elapsed = time.monotonic() - t0
        for reader in readers:
            reader.cancel()
    finally:
        for sock in senders:
            sock.close(0)
        host.close_all()
        zctx.term()
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    web_lat = [ms for row in results for ms in row[3]]
    direct_lat = [ms for t in direct for ms in t.latencies_ms]
    web_got = sum(row[0] for row in results)
    return {
        "lines": lines, "web_clients": opts.web_clients, "direct_clients": opts.direct_clients,
        "senders": opts.senders, "rate": opts.rate, "seconds": opts.seconds,
        "web_ms": percentiles(web_lat), "direct_ms": percentiles(direct_lat),
        "web_lost": lines * len(names) - web_got, "direct_lost": lines * len(direct) - sum(t.count for t in direct),
        "duplicates": sum(row[1] for row in results) + sum(t.duplicates for t in direct),
        "disorder": sum(row[2] for row in results) + sum(t.disorder for t in direct),
        "refused": acks["refused"],
        "gateway_cpu_us_per_web_delivery": cpu / max(1, web_got) * 1e6,
        "gateway_cpu_percent": cpu / elapsed * 100,  # from the first send until the last delivery
        "run_seconds": elapsed,
        "gateway_kib_per_web_session": (rss_joined - rss_before) / max(1, len(names)),
        "send_lag_ms": percentiles(lag_ms),
    }


@dataclass(frozen=True)
class WebLoad:
    """The workload: who joins where, and how much is said."""

    web_clients: int = 200
    direct_clients: int = 10
    senders: int = 50
    rate: float = 500.0  # lines a second, all senders
    seconds: float = 10.0


def run_web(opts: WebLoad) -> dict[str, Any]:
    """One run: a broker and a web gateway as processes, the load, and every process ended after."""
    procs: list[subprocess.Popen[str]] = []
    try:
        broker, listening = start(
            ["broker.py", "--host", HOST, "--port", "0", "--pub-port", "0", "--db", ":memory:", "--rate", "0",
             "--pub-hwm", "0", "--timeout", "60", "--max-sessions", "100000", "--max-per-address", "0",
             "--join-rate", "0"],
            r"listening on tcp://[^:]+:(\d+)",
        )
        procs.append(broker)
        gateway, web = start(
            ["-m", "chat.web", "--host", HOST, "--port", listening[1], "--listen", f"{HOST}:0", "--history", "0",
             "--max-per-address", str(opts.web_clients), "--ping", str(BENCH_PING)],
            r"web client is at (\S+)",
        )
        procs.append(gateway)
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        return asyncio.run(drive(opts, int(listening[1]), gateway.pid, web[1]))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def losses(result: dict[str, Any]) -> int:
    """Everything that should be 0: lines lost, duplicated, out of order, or refused by the broker."""
    return sum(result[k] for k in ("web_lost", "direct_lost", "duplicates", "disorder", "refused"))


def text(result: dict[str, Any]) -> str:
    w, d = result["web_ms"], result["direct_ms"]
    ratio = w["p99"] / d["p99"] if d["p99"] > 0 else float("inf")
    return "\n".join([
        f"{result['web_clients']} WebSocket clients and {result['direct_clients']} direct clients, "
        f"{result['senders']} senders, {result['rate']:g} lines/s for {result['seconds']:g} s ({result['lines']} lines)",
        f"  web     p50 {w['p50']:8.1f} ms  p99 {w['p99']:8.1f} ms  max {w['max']:8.1f} ms  lost {result['web_lost']}",
        f"  direct  p50 {d['p50']:8.1f} ms  p99 {d['p99']:8.1f} ms  max {d['max']:8.1f} ms  lost {result['direct_lost']}",
        f"  web p99 / direct p99: {ratio:.1f}x (goal: 2x at most)",
        f"  duplicates {result['duplicates']}, out of order {result['disorder']}, refused {result['refused']}",
        f"  gateway: {result['gateway_cpu_us_per_web_delivery']:.1f} us CPU per web delivery "
        f"({result['gateway_cpu_percent']:.0f}% of a core over the {result['run_seconds']:.1f} s until the last "
        f"delivery), {result['gateway_kib_per_web_session']:.0f} KiB per web session (goal: 200 at most)",
        f"  send lag p99 {result['send_lag_ms']['p99']:.1f} ms",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chat.bench.web", description=__doc__.splitlines()[0])
    ap.add_argument("--web-clients", type=int, default=WebLoad.web_clients)
    ap.add_argument("--direct-clients", type=int, default=WebLoad.direct_clients)
    ap.add_argument("--senders", type=int, default=WebLoad.senders)
    ap.add_argument("--rate", type=float, default=WebLoad.rate, help="lines a second, all senders (default %(default)g)")
    ap.add_argument("--seconds", type=float, default=WebLoad.seconds)
    ap.add_argument("--json", type=Path, default=Path("bench-web.json"))
    opts = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that run_web's finally block ends the broker and the gateway.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_web(WebLoad(opts.web_clients, opts.direct_clients, opts.senders, opts.rate, opts.seconds))
    opts.json.write_text(json.dumps(result, indent=2))
    print("web client latency: " + text(result))
    print(f"details in {opts.json}")
    return 1 if losses(result) else 0


if __name__ == "__main__":
    sys.exit(main())
