"""Workload 1 (and 4): fan-out throughput. One sender, R receivers, L lines as fast as they are accepted.

Two load processes: the sender (one inlet socket and its own SUB) and the receivers (R SUB sockets, one
poller). A run goes through these steps, each acknowledged over the control pipes, so that no
measurement starts before every subscription is in place (the slow joiner):

1. warm-up: the sender sends a line every few ms until every receiver socket has heard one;
2. sync: the sender stops and reports the last warm-up seq W; every receiver reaches W;
3. the timed run: the sender sends lines W+1 .. W+L, keeping at most ``window`` unacknowledged
   (ACKs from the broker; from a baseline, which sends none, the lines seen on the sender's own SUB);
   the receivers check that each socket gets every seq exactly once and in order, and count.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zmq

from chat.bench import wire
from chat.bench.load import DRAIN_BATCH, POLL_MS, SYNC_TIMEOUT, WARM_EVERY, Control, LoadError, Peer, Sockets, cpu_seconds
from chat.bench.procs import Relay, Worker, cpu_seconds as pid_cpu_seconds, main_thread_cpu_seconds, memory_kib
from chat.bench.receivers import count_in_order, receivers as receivers_body
from chat.bench.targets import Target, start
from chat.bench.wire import EVENTS, POLLIN

SENDER_NAME = "bench-sender"


# --------------------------------------------------------------------------- the sender (a load process)


class Sender:
    def __init__(self, ctl: Control, peer: Peer, text_bytes: int) -> None:
        self.ctl = ctl
        self.peer = peer
        self.socks = Sockets(peer)
        self.inlet = self.socks.inlet()
        self.sub = self.socks.sub()
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        if peer.chat:
            self.poller.register(self.inlet, zmq.POLLIN)
        self.text = wire.padded("bench", text_bytes)
        self.sent = 0  # lines sent (warm-up and timed), which is also the seq a baseline gives them
        self.accepted = 0  # ACKs (broker) or lines seen on our own SUB (baseline)
        self.sub_last = 0
        self.sub_disorder = 0  # our own SUB, checked as a receiver is (not counted in deliveries)
        self.last_ack: list[bytes] | None = None
        self.errors: list[str] = []
        self.heartbeat = 1.0
        self.last_request = time.monotonic()

    def join(self, timeout: float = SYNC_TIMEOUT) -> None:
        if not self.peer.chat:
            return
        self.inlet.send_multipart(wire.join(SENDER_NAME, "bench-token", self.peer.batch_acks))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inlet.poll(POLL_MS):
                kind, body = wire.reply(self.inlet.recv_multipart())
                if kind != b"WELCOME":
                    raise LoadError(f"JOIN answered with {kind.decode()}: {body}")
                self.heartbeat = body["heartbeat_ms"] / 1000
                return
        raise LoadError(f"no WELCOME within {timeout:g} s")

    def send_line(self, msg_id: str) -> None:
        self.sent += 1
        if self.peer.chat:
            wire.send(self.inlet, wire.say(msg_id, self.text))
        else:
            wire.send(self.inlet, wire.raw_event(self.sent, self.text))
        self.last_request = time.monotonic()

    def pump(self, timeout: float) -> None:
        """Read what has come (ACKs, our own events); ping when idle for a heartbeat."""
        for sock, _ in self.poller.poll(int(timeout * 1000)):
            if sock is self.sub:
                self._drain_sub()
            else:
                self._drain_replies()
        if self.peer.chat and time.monotonic() - self.last_request > self.heartbeat:
            self.inlet.send_multipart(wire.PING)
            self.last_request = time.monotonic()

    def _drain_replies(self) -> None:
        sock, recv = self.inlet, self.inlet.recv_multipart
        for _ in range(DRAIN_BATCH):
            if not int(sock.get(EVENTS)) & POLLIN:  # cheaper than the zmq.Again of an empty recv
                break
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = frames[1] if len(frames) == 3 else b""
            if kind == b"ACK":
                self.accepted += 1
                self.last_ack = frames
            elif kind == b"ACKS":
                self.accepted += len(wire.acks(*wire.reply(frames)))
                self.last_ack = frames
            elif kind != b"PONG":
                self.accepted += 1  # answered, though not accepted: the line will be missing, and counted so
                self.errors.append(repr(frames)[:200])

    def _drain_sub(self) -> None:
        sock = self.sub
        for _ in range(DRAIN_BATCH):
            if not int(sock.get(EVENTS)) & POLLIN:  # cheaper than the zmq.Again of an empty recv
                break
            try:
                seqs = wire.recv_seqs(sock)
            except zmq.Again:
                return
            # The receivers' rule (an empty timed range: our own SUB's lines are not deliveries).
            self.sub_last, _, disorder = count_in_order(seqs, self.sub_last, 1, 0)
            self.sub_disorder += disorder
            if not self.peer.chat:
                self.accepted = self.sub_last  # a baseline acknowledges nothing: a line is in when it is published

    def ack_seq(self) -> int:
        """The seq of the last acknowledged line (broker) or of the last line sent (baseline)."""
        if not self.peer.chat:
            return self.sent
        return wire.acks(*wire.reply(self.last_ack))[-1][1] if self.last_ack is not None else 0


def fanout_sender(ctl: Control, cfg: dict[str, Any]) -> None:
    s = Sender(ctl, cfg["peer"], cfg["text_bytes"])
    s.join()
    ctl.send("ready")
    ctl.wait("warm", SYNC_TIMEOUT, s.pump)
    stopping, next_line = False, time.monotonic()
    deadline = time.monotonic() + SYNC_TIMEOUT
    while not (stopping and s.sub_last > 0):  # our own SUB must be in place too before the timed run
        if time.monotonic() > deadline:
            raise LoadError("the warm-up did not end in time (no event on the sender's own SUB?)")
        if time.monotonic() >= next_line:
            s.send_line(f"w{s.sent}")
            next_line += WARM_EVERY
        s.pump(WARM_EVERY / 2)
        command = ctl.take()
        if command is not None:
            stopping = command[0] == "stop" or stopping
    while s.accepted < s.sent and time.monotonic() < deadline:
        s.pump(POLL_MS / 1000)
    warm_last = s.ack_seq()
    while s.sub_last < warm_last and time.monotonic() < deadline:
        s.pump(POLL_MS / 1000)
    if s.accepted < s.sent or s.sub_last < warm_last:
        raise LoadError(f"warm-up lines unaccounted for: {s.sent} sent, {s.accepted} accepted, seen {s.sub_last}")
    ctl.send("warmed", last=warm_last, heard=s.sub_last)
    ctl.wait("go", SYNC_TIMEOUT * 2, s.pump)

    lines, window = cfg["lines"], cfg["window"]
    base_sent, base_accepted = s.sent, s.accepted
    cpu0, started = cpu_seconds(), time.monotonic()
    deadline = started + cfg["max_seconds"]
    while s.accepted - base_accepted < lines and time.monotonic() < deadline:
        while s.sent - base_sent < lines and s.sent - s.accepted < window:
            s.send_line(f"t{s.sent}")
        s.pump(POLL_MS / 1000)
    accepted_at = time.monotonic()
    ctl.send(
        "done",
        started=started,
        accepted_at=accepted_at,
        sent=s.sent - base_sent,
        accepted=s.accepted - base_accepted,
        last_seq=s.ack_seq(),
        errors=s.errors[:5],
        error_count=len(s.errors),
        timed_out=s.accepted - base_accepted < lines,
        sub_disorder=s.sub_disorder,
        cpu=cpu_seconds() - cpu0,
    )
    s.socks.close()


# --------------------------------------------------------------------------- the bench's side


def warm_up(tx: Worker, rx: Worker, relay: Relay) -> int:
    """Steps 1 and 2 with a sender and the receivers: the last warm-up seq, once every socket has it."""
    rx.expect("ready", SYNC_TIMEOUT, relay)
    tx.expect("ready", SYNC_TIMEOUT, relay)
    tx.send("warm")
    rx.send("heard")
    rx.expect("heard", SYNC_TIMEOUT, relay)
    tx.send("stop")
    warm_last: int = tx.expect("warmed", SYNC_TIMEOUT, relay)["last"]
    rx.send("sync", last=warm_last)
    rx.expect("synced", SYNC_TIMEOUT, relay)
    return warm_last


def run_fanout(target: Target, receivers: int, lines: int, opts: Any, tmp: Path) -> dict[str, Any]:
    """One fan-out run against ``target``: start it, the two load processes, sync, measure, end everything."""
    cfg_common = {"max_seconds": opts.run_timeout}  # the peer comes with "start", once the target listens
    with ExitStack() as stack:
        rx = Worker("receivers", receivers_body, {**cfg_common, "receivers": receivers})
        stack.callback(rx.stop)
        tx = Worker(
            "sender",
            fanout_sender,
            {**cfg_common, "lines": lines, "window": opts.window, "text_bytes": opts.line_bytes},
        )
        stack.callback(tx.stop)
        running = start(target, stack, tmp, f"fanout-{receivers}")
        relay, pid = running.relay, running.pid
        rx.send("start", peer=running.peer)
        tx.send("start", peer=running.peer)
        warm_last = warm_up(tx, rx, relay)
        rx.send("count", first=warm_last + 1, final=warm_last + lines)
        rx.expect("counting", SYNC_TIMEOUT, relay)

        rss0 = memory_kib(pid)
        cpu0, main0 = pid_cpu_seconds(pid), main_thread_cpu_seconds(pid)
        tx.send("go")
        sent = tx.expect("done", opts.run_timeout + SYNC_TIMEOUT, relay)
        got = rx.expect("done", opts.run_timeout + 4 * SYNC_TIMEOUT, relay)
        cpu = pid_cpu_seconds(pid) - cpu0
        main_cpu = main_thread_cpu_seconds(pid) - main0
        rss, peak = memory_kib(pid), memory_kib(pid, "VmHWM")

    input_s = max(sent["accepted_at"] - sent["started"], 1e-9)
    fan_s = max(got["finished_at"] - sent["started"], 1e-9)
    return {
        "workload": "fanout",
        "target": target.name,
        "receivers": receivers,
        "lines": lines,
        "line_bytes": opts.line_bytes,
        "accepted": sent["accepted"],
        "input_lines_per_s": sent["accepted"] / input_s,
        "input_seconds": input_s,
        "deliveries": got["received"],
        "deliveries_per_s": got["received"] / fan_s,
        "fanout_seconds": fan_s,
        "cpu_us_per_line": cpu / lines * 1e6,
        "main_thread_us_per_line": main_cpu / lines * 1e6,
        "cpu_seconds": cpu,
        "rss_kib_start": rss0,
        "rss_kib_end": rss,
        "rss_kib_peak": peak,
        "expected": got["expected"],
        "loss": got["loss"],
        "disorder": got["disorder"] + sent["sub_disorder"],
        "bad_frames": got["bad"],
        "errors": sent["error_count"],
        "error_samples": sent["errors"],
        "timed_out": sent["timed_out"] or got["complete"] < receivers,
        "sender_cpu_pct": 100 * sent["cpu"] / input_s,
        "receivers_cpu_pct": 100 * got["cpu"] / fan_s,
    }
