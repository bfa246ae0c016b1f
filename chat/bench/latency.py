"""Workload 2: latency. C clients send R lines a second between them, round robin, for S seconds; every
client's SUB receives every line.

The clients' inlets (DEALERs, each JOINed under its own name) are in one load process and their SUBs in
another (``chat.bench.receivers``), so that sending on time and reading promptly do not wait for each
other. Latency is measured per delivery: from just before the inlet's ``send`` (the time rides in the
line's text) to the moment the SUB hands the event to the receiving process; both processes read the
same system-wide monotonic clock. Lines are sent when due, not when the previous one came back (no
coordinated omission); the lag between due and sent is reported, so that a late load process shows.

Checks: towards the broker every SUB must get every seq of the timed range once, in order; towards a
baseline (many senders, no global order) every SUB must get each sender's lines once, in its order.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zmq

from chat.bench import wire
from chat.bench.fanout import warm_up
from chat.bench.load import (
    DRAIN_BATCH, POLL_MS, SYNC_TIMEOUT, WARM_EVERY, Control, LoadError, Sockets, cpu_seconds, percentiles,
)
from chat.bench.procs import Worker, cpu_seconds as pid_cpu_seconds, memory_kib
from chat.bench.receivers import WARM_SRC, receivers
from chat.bench.targets import Running, Target, start

PING_CHECK_EVERY = 0.1  # seconds between looks for clients that must ping


class Senders:
    """C inlets, JOINed (broker), their ACKs and heartbeats."""

    def __init__(self, ctl: Control, cfg: dict[str, Any]) -> None:
        self.peer = cfg["peer"]
        self.chat = self.peer.chat
        self.count: int = cfg["clients"]
        self.socks = Sockets(self.peer, max_sockets=self.count)
        self.inlets = [self.socks.inlet() for _ in range(self.count)]
        self.index = {sock: i for i, sock in enumerate(self.inlets)}
        self.poller = zmq.Poller()
        self.poller.register(ctl.fileno(), zmq.POLLIN)  # only to end a wait: ``Control`` reads the pipe
        if self.chat:
            for sock in self.inlets:
                self.poller.register(sock, zmq.POLLIN)
        self.heartbeat = 1.0
        self.last_request = [time.monotonic()] * self.count
        self.next_ping_check = 0.0
        self.acked = 0
        self.ack_seq: dict[str, int] = {}
        self.sent_at: dict[str, int] = {}  # id -> send time (ns), for the ACK round trip
        self.ack_ns: list[int] = []
        self.errors: list[str] = []

    def join(self) -> None:
        if not self.chat:
            return
        for i, sock in enumerate(self.inlets):
            sock.send_multipart(wire.join(f"lat{i}", f"token{i}"))
        welcomed: set[int] = set()
        deadline = time.monotonic() + SYNC_TIMEOUT
        while len(welcomed) < self.count and time.monotonic() < deadline:
            for sock, _ in self.poller.poll(POLL_MS):
                if sock in self.index:
                    kind, body = wire.reply(sock.recv_multipart())
                    if kind != b"WELCOME":
                        raise LoadError(f"JOIN answered with {kind.decode()}: {body}")
                    welcomed.add(self.index[sock])
                    self.heartbeat = body["heartbeat_ms"] / 1000
        if len(welcomed) < self.count:
            raise LoadError(f"only {len(welcomed)} of {self.count} clients welcomed within {SYNC_TIMEOUT:g} s")

    def send(self, i: int, msg_id: str, text: str, n: int, src: int) -> None:
        """One line from client ``i``: a SAY to the broker; to a baseline, an event numbered by sender."""
        if self.chat:
            wire.send(self.inlets[i], wire.say(msg_id, text))
        else:
            wire.send(self.inlets[i], wire.raw_event(n, text, src, n))
        self.last_request[i] = time.monotonic()

    def pump(self, timeout_ms: float) -> None:
        # Rounded up: a wait shorter than a millisecond must not become a busy poll.
        for sock, _ in self.poller.poll(max(0, math.ceil(timeout_ms))):
            if sock in self.index:
                self._replies(sock)
        now = time.monotonic()
        if self.chat and now >= self.next_ping_check:
            self.next_ping_check = now + PING_CHECK_EVERY
            for i, at in enumerate(self.last_request):
                if now - at > self.heartbeat:
                    self.inlets[i].send_multipart(wire.PING)
                    self.last_request[i] = now

    def _replies(self, sock: zmq.Socket) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, body = wire.reply(frames)
            if kind == b"ACK":
                self.acked += 1
                self.ack_seq[body["id"]] = body["seq"]
                sent = self.sent_at.pop(body["id"], None)
                if sent is not None:
                    self.ack_ns.append(time.monotonic_ns() - sent)
            elif kind != b"PONG":
                self.errors.append(f"{kind.decode()} {body}"[:200])


def latency_senders(ctl: Control, cfg: dict[str, Any]) -> None:
    s = Senders(ctl, cfg)
    s.join()
    ctl.send("ready")
    ctl.wait("warm", SYNC_TIMEOUT, lambda t: s.pump(t * 1000))
    text = wire.padded("warm", cfg["text_bytes"])
    warm, next_line, stopping = 0, 0.0, False
    deadline = time.monotonic() + SYNC_TIMEOUT
    while not stopping:  # client 0 sends warm-up lines until the receivers have all heard one
        if time.monotonic() > deadline:
            raise LoadError("the warm-up did not end in time")
        if time.monotonic() >= next_line:
            warm += 1
            s.send(0, f"w{warm}", text, warm, WARM_SRC)
            next_line = time.monotonic() + WARM_EVERY
        s.pump(WARM_EVERY * 1000 / 2)
        command = ctl.take()
        stopping = command is not None and command[0] == "stop"
    while s.chat and s.acked < warm and time.monotonic() < deadline:
        s.pump(POLL_MS)
    if s.errors or (s.chat and s.acked < warm):
        raise LoadError(f"warm-up lines not acknowledged: {s.acked} of {warm}; {s.errors[:3]}")
    ctl.send("warmed", last=s.ack_seq[f"w{warm}"] if s.chat else warm)
    ctl.wait("go", SYNC_TIMEOUT, lambda t: s.pump(t * 1000))

    total = int(cfg["rate"] * cfg["seconds"])
    interval = 1 / cfg["rate"]
    pad = "." * max(0, cfg["text_bytes"] - 20)
    lag_ns: list[int] = []
    sent_n = [0] * s.count
    s.acked = 0
    cpu0, started = cpu_seconds(), time.monotonic()
    started_ns = time.monotonic_ns()
    deadline = started + cfg["max_seconds"]
    k = 0
    while k < total and time.monotonic() < deadline:
        due_ns = started_ns + int(k * interval * 1e9)
        now_ns = time.monotonic_ns()
        if now_ns < due_ns:
            s.pump((due_ns - now_ns) / 1e6)
            continue
        i = k % s.count
        sent_n[i] += 1
        msg_id = f"t{k}"
        if s.chat:
            s.sent_at[msg_id] = now_ns
        s.send(i, msg_id, f"{now_ns} {pad}", sent_n[i], i)
        lag_ns.append(now_ns - due_ns)
        k += 1
    seconds = time.monotonic() - started
    while s.chat and s.acked < k and time.monotonic() < deadline:
        s.pump(POLL_MS)
    ctl.send(
        "done",
        seconds=seconds,
        sent=k,
        acked=s.acked if s.chat else None,
        errors=len(s.errors),
        error_samples=s.errors[:5],
        ack_ms=percentiles([x / 1e6 for x in s.ack_ns]) if s.chat else None,
        send_lag_ms=percentiles([x / 1e6 for x in lag_ns]),
        cpu=cpu_seconds() - cpu0,
    )
    s.socks.close()


def run_latency(target: Target, opts: Any, tmp: Path, running: Running | None = None) -> dict[str, Any]:
    """One latency run; against ``running`` (a target started by the caller) when given."""
    clients, total = opts.latency_clients, int(opts.latency_rate * opts.latency_seconds)
    max_seconds = opts.latency_seconds * 3 + 10
    cfg = {"clients": clients, "rate": opts.latency_rate, "seconds": opts.latency_seconds,
           "text_bytes": opts.line_bytes, "max_seconds": max_seconds}
    rx_cfg = {"receivers": clients, "senders": clients, "latency": True, "max_seconds": max_seconds}
    with ExitStack() as stack:
        rx = Worker("latency receivers", receivers, rx_cfg)
        stack.callback(rx.stop)
        tx = Worker("latency senders", latency_senders, cfg)
        stack.callback(tx.stop)
        running = start(target, stack, tmp, "latency") if running is None else running
        relay, pid = running.relay, running.pid
        # Towards a baseline, many senders and no global order: each SUB checks each sender's numbers.
        rx.send("start", peer=running.peer, by_sender=not target.broker)
        tx.send("start", peer=running.peer)
        warm_last = warm_up(tx, rx, relay)
        if target.broker:
            rx.send("count", first=warm_last + 1, final=warm_last + total)
        else:
            rx.send("count", per_socket=total)
        rx.expect("counting", SYNC_TIMEOUT, relay)
        cpu0, t0 = pid_cpu_seconds(pid), time.monotonic()
        tx.send("go")
        sent = tx.expect("done", max_seconds + SYNC_TIMEOUT, relay)
        got = rx.expect("done", max_seconds + 4 * SYNC_TIMEOUT, relay)
        cpu, wall = pid_cpu_seconds(pid) - cpu0, time.monotonic() - t0
        rss = memory_kib(pid)
    return {
        "workload": "latency",
        "target": target.name,
        "clients": clients,
        "rate": opts.latency_rate,
        "seconds": opts.latency_seconds,
        "sent": sent["sent"],
        "acked": sent["acked"],
        "deliveries": got["received"],
        "expected": got["expected"],
        "loss": got["loss"],
        "disorder": got["disorder"],
        "bad_frames": got["bad"],
        "errors": sent["errors"],
        "error_samples": sent["error_samples"],
        "timed_out": sent["sent"] < total or got["complete"] < clients,
        "latency_ms": got["latency_ms"],
        "ack_ms": sent["ack_ms"],
        "send_lag_ms": sent["send_lag_ms"],
        "cpu_pct": 100 * cpu / wall,
        "rss_kib": rss,
        "senders_cpu_pct": 100 * sent["cpu"] / max(sent["seconds"], 1e-9),
        "receivers_cpu_pct": 100 * got["cpu"] / max(sent["seconds"], 1e-9),
    }
