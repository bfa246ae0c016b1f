"""IRC clients against our gateway and against Debian's ngircd, on one workload:
``python -m chat.bench.irc [--clients 200] [--senders 20] [--rate 500] [--seconds 10] [--slow 10]``.

Every client is a raw IRC connection in this process, in one channel (``#general``). ``--senders`` of
them send ``--rate`` lines a second in all, each line carrying its send time; a sample of receivers
parses every line for its latency, the others count lines. One more client stops reading for
``--slow`` seconds in the middle, then reads on: it must not be dropped and must get every line. The
CPU time of the server process (our gateway, without the broker; ngircd) is divided by the lines
delivered. Everything listens on 127.0.0.1 with OS-chosen ports, and every process is ended by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from chat.bench.procs import REPO, cpu_seconds

HOST = "127.0.0.1"
CHANNEL = "#general"
LATENCY_SAMPLE = 10  # receivers that parse every line for its latency
START_TIMEOUT = 15.0
LINE = re.compile(rb"PRIVMSG #general :b (\d+) (\d+) (\d+)")
NGIRCD_CONF = """[Global]
Name = bench.test
Info = bench
Listen = 127.0.0.1
Ports = {port}
PidFile = {folder}/ngircd.pid
MotdPhrase = bench
ServerUID = {uid}
ServerGID = {gid}
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
PingTimeout = 120
PongTimeout = 60
[Options]
PAM = no
Ident = no
DNS = no
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process by its PID: SIGTERM, then SIGKILL if a loaded machine keeps it busy too long."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(argv: list[str], stack: ExitStack, ready: str) -> tuple[subprocess.Popen[bytes], str]:
    """A process, ended by its PID when the run is over; its output line matching ``ready``."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stack.callback(stop, proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            break
        if re.search(ready, line):
            return proc, line
    raise SystemExit(f"{argv[0]} did not start")


def ours(stack: ExitStack) -> tuple[int, int]:
    """broker.py and python -m chat.irc: (IRC port, the gateway's PID)."""
    _, line = start([sys.executable, "broker.py", "--host", HOST, "--port", "0", "--pub-port", "0", "--db", ":memory:",
                     "--rate", "0", "--max-per-address", "0", "--join-rate", "0"], stack, r"listening on tcp://")
    router = re.search(r"tcp://127\.0\.0\.1:(\d+) \(ROUTER", line)
    assert router
    gateway, line = start([sys.executable, "-m", "chat.irc", "--host", HOST, "--port", router[1], "--listen", f"{HOST}:0",
                           "--max-per-address", "10000", "--history", "0"], stack, r"^irc: IRC clients connect")
    return int(line.rsplit(":", 1)[1]), gateway.pid


def ngircd(stack: ExitStack) -> tuple[int, int]:
    folder = Path(tempfile.mkdtemp(prefix="bench-ngircd-"))
    stack.callback(shutil.rmtree, folder, True)
    port = free_port()
    conf = folder / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(port=port, folder=folder, uid=os.getuid(), gid=os.getgid()))
    binary = shutil.which("ngircd") or "/usr/sbin/ngircd"
    proc = subprocess.Popen([binary, "--nodaemon", "--config", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(stop, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return port, proc.pid
        except OSError:
            time.sleep(0.1)  # polling for the port, with a deadline
    raise SystemExit("ngircd did not start")


class Client:
    def __init__(self, index: int, sample: bool) -> None:
        self.nick = f"u{index}"
        self.sample = sample
        self.lines = 0
        self.latencies: list[float] = []
        self.closed = False
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        self.writer.write(f"NICK {self.nick}\r\nUSER b 0 * :b\r\nJOIN {CHANNEL}\r\n".encode())
        buffer = b""
        while b" 366 " not in buffer:
            data = await self.reader.read(65536)
            if not data:
                raise SystemExit(f"{self.nick}: closed while joining: {buffer[-300:]!r}")
            buffer += data

    async def read(self, pause: tuple[float, float] | None = None) -> None:
        rest = b""
        while True:
            if pause is not None and pause[0] <= time.monotonic() < pause[1]:
                await asyncio.sleep(pause[1] - time.monotonic())  # the slow reader: reads nothing meanwhile
            data = await self.reader.read(65536)
            if not data:
                self.closed = True
                return
            if b"PING" in data:
                for token in re.findall(rb"(?:^|\n)(?::\S+ )?PING :?(\S+)", data):
                    self.writer.write(b"PONG :" + token + b"\r\n")
            if self.sample:
                now = time.time_ns()
                data, rest = rest + data, b""
                complete, _, rest = data.rpartition(b"\n")
                for match in LINE.finditer(complete):
                    self.latencies.append((now - int(match[3])) / 1e6)
                    self.lines += 1
            else:
                self.lines += data.count(b" PRIVMSG ")


async def run(port: int, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    clients = [Client(i, i % (args.clients // LATENCY_SAMPLE) == 1) for i in range(args.clients)]
    slow = Client(args.clients, False)
    for i in range(0, len(clients), 20):
        await asyncio.gather(*(c.connect(port) for c in clients[i:i + 20]))
    await slow.connect(port)
    begin = time.monotonic()
    pause = (begin + (args.seconds - args.slow) / 2, begin + (args.seconds + args.slow) / 2)
    readers = [asyncio.ensure_future(c.read()) for c in clients] + [asyncio.ensure_future(slow.read(pause))]
    senders = clients[: args.senders]
    cpu0 = cpu_seconds(pid)
    total = int(args.rate * args.seconds)
    interval = args.senders / args.rate
    sent = 0
    for n in range(total // args.senders):
        due = begin + n * interval
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        stamp = time.time_ns()
        for s, sender in enumerate(senders):
            sender.writer.write(f"PRIVMSG {CHANNEL} :b {s} {n} {stamp}\r\n".encode())
            sent += 1
    expected_each = sent  # every receiver but a sender gets every line; a sender gets the others'
    deadline = time.monotonic() + 30
    want = sum(expected_each - (1 if c in senders else 0) * (sent // args.senders) for c in clients)
    while time.monotonic() < deadline and (sum(c.lines for c in clients) < want or slow.lines < expected_each):
        await asyncio.sleep(0.1)  # polling for the tail to arrive, with a deadline
    cpu = cpu_seconds(pid) - cpu0
    got = sum(c.lines for c in clients)
    for reader in readers:
        reader.cancel()
    latencies = sorted(x for c in clients for x in c.latencies)
    closed = sum(c.closed for c in clients)
    for c in [*clients, slow]:
        c.writer.close()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {
        "sent": sent, "delivered": got, "expected": want, "p50_ms": p(0.50), "p99_ms": p(0.99), "max_ms": p(1.0),
        "cpu_s": cpu, "cpu_us_per_delivery": cpu / max(got, 1) * 1e6, "disconnected": closed,
        "slow_reader": {"closed": slow.closed, "lines": slow.lines, "expected": expected_each},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.bench.irc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--rate", type=float, default=500.0, help="lines a second, all senders together")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--slow", type=float, default=10.0, help="seconds the slow reader reads nothing")
    parser.add_argument("--target", choices=("ours", "ngircd", "both"), default="both")
    args = parser.parse_args(argv)
    for target in (("ours", "ngircd") if args.target == "both" else (args.target,)):
        with ExitStack() as stack:
            port, pid = (ours if target == "ours" else ngircd)(stack)
            result = asyncio.run(run(port, pid, args))
        slow = result["slow_reader"]
        print(f"{target:7} sent {result['sent']}, delivered {result['delivered']}/{result['expected']}; latency p50 "
              f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; server CPU "
              f"{result['cpu_s']:.2f} s = {result['cpu_us_per_delivery']:.1f} us per delivered line; "
              f"{result['disconnected']} readers dropped; slow reader ({args.slow:g} s): "
              f"{'DROPPED' if slow['closed'] else 'kept'}, {slow['lines']}/{slow['expected']} lines", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
