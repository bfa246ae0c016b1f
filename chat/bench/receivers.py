"""The receiving side of the fan-out and latency workloads: R SUB sockets in one load process.

Every event on every socket is checked, so that no loss can hide:

- by ``seq`` (the broker; a baseline with one sender, which numbers its lines): each socket must get
  every seq of the timed range exactly once and in order. An event at or below the last seq is counted
  as out of order and not as received; a jump shows as loss.
- by sender (a baseline with many senders, whose relay keeps no global order): each socket must get each
  sender's lines ``n`` = 1, 2, 3, ... in order.

The bench drives the phases over the control pipe (commands -> reports): ``heard`` -> "heard" once every
socket has got an event; ``sync`` -> "synced" once every socket has the last warm-up line; ``count`` ->
"counting" at once, then "done" when every socket has everything, when nothing has come for ``QUIET``
seconds (what is missing is lost), or at the time bound.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from chat.bench import wire
from chat.bench.load import DRAIN_BATCH, POLL_MS, SYNC_TIMEOUT, Control, LoadError, Sockets, cpu_seconds, percentiles
from chat.bench.wire import EVENTS, POLLIN

QUIET = 5.0  # seconds without any event after which the receivers stop waiting (longer than any stall seen)
WARM_SRC = -1  # by sender: warm-up lines come from this sender number


def sent_ns(text: str) -> int:
    """The send time a latency line carries at the start of its text."""
    return int(text[: text.index(" ")])


def count_in_order(seqs: list[int], prev: int, lo: int, hi: int) -> tuple[int, int, int]:
    """What ``seqs``, arriving on a socket whose last seq was ``prev``, add: (its new last seq, seqs of the
    timed range ``lo``..``hi`` received, seqs out of order). A seq at or below the last is out of order and
    not counted; a jump is not counted either, so what was skipped shows as loss."""
    count = len(seqs)
    if seqs == list(range(prev + 1, prev + 1 + count)):  # the usual case, checked in C: the next ones
        return prev + count, max(0, min(hi, prev + count) - max(lo, prev + 1) + 1), 0
    got = disorder = 0
    for seq in seqs:
        if seq <= prev:
            disorder += 1
            continue
        prev = seq
        if lo <= seq <= hi:
            got += 1
    return prev, got, disorder


class Receivers:
    def __init__(self, ctl: Control, cfg: dict[str, Any]) -> None:
        self.ctl = ctl
        self.count: int = cfg["receivers"]
        self.by_sender: bool = cfg.get("by_sender", False)
        self.senders: int = cfg.get("senders", 1)
        self.latency: list[int] | None = [] if cfg.get("latency") else None
        self.socks = Sockets(cfg["peer"], max_sockets=self.count)
        self.subs = [self.socks.sub() for _ in range(self.count)]
        self.index = {sock: i for i, sock in enumerate(self.subs)}
        self.poller = zmq.Poller()
        for sock in self.subs:
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(ctl.fileno(), zmq.POLLIN)
        self.last: list[int] = [0] * self.count  # by seq: the last seq; by sender: the last warm-up line
        self.next_n = [[1] * self.senders for _ in range(self.count)]  # by sender
        self.got = [0] * self.count
        self.disorder = 0
        self.bad = 0
        self.lo, self.hi = 1, 0  # by seq: the timed range (empty until told)
        self.per_socket = 0  # by sender: timed lines each socket must get
        self.last_event_at = time.monotonic()

    # ------------------------------------------------------------------ reading

    def drain(self, sock: zmq.Socket) -> None:
        i = self.index[sock]
        if self.by_sender:
            self._drain_by_sender(sock, i)
        else:
            self._drain_by_seq(sock, i)
        self.last_event_at = time.monotonic()

    def _drain_by_seq(self, sock: zmq.Socket, i: int) -> None:
        recv_events, recv_seqs, now_ns = wire.recv_events, wire.recv_seqs, time.monotonic_ns
        prev, lo, hi, got, latency = self.last[i], self.lo, self.hi, 0, self.latency
        for _ in range(DRAIN_BATCH):
            if not int(sock.get(EVENTS)) & POLLIN:  # cheaper than the zmq.Again of an empty recv
                break
            try:
                if latency is None:  # fan-out: the seqs are all there is to check
                    prev, timed, disorder = count_in_order(recv_seqs(sock), prev, lo, hi)
                    got += timed
                    self.disorder += disorder
                    continue
                events = recv_events(sock)
            except zmq.Again:
                break
            except wire.WireError:
                self.bad += 1
                continue
            for event in events:
                seq = event.seq
                if seq <= prev:
                    self.disorder += 1
                    continue
                prev = seq
                if lo <= seq <= hi:
                    got += 1
                    try:
                        latency.append(now_ns() - sent_ns(event.text))
                    except ValueError:
                        self.bad += 1
        self.last[i] = prev
        self.got[i] += got

    def _drain_by_sender(self, sock: zmq.Socket, i: int) -> None:
        expected, latency, now_ns = self.next_n[i], self.latency, time.monotonic_ns
        for _ in range(DRAIN_BATCH):
            if not int(sock.get(EVENTS)) & POLLIN:  # cheaper than the zmq.Again of an empty recv
                break
            try:
                events = wire.recv_events(sock)
            except zmq.Again:
                break
            except wire.WireError:
                self.bad += 1
                continue
            for event in events:
                src, n = event.src, event.n
                if src == WARM_SRC:
                    self.last[i] = max(self.last[i], n)
                    continue
                if src is None or not 0 <= src < self.senders:
                    self.bad += 1
                    continue
                if n < expected[src]:
                    self.disorder += 1
                    continue
                expected[src] = n + 1  # a jump: what was skipped shows as loss
                self.got[i] += 1
                if latency is not None:
                    try:
                        latency.append(now_ns() - sent_ns(event.text))
                    except ValueError:
                        self.bad += 1

    # ------------------------------------------------------------------ phases

    def heard(self) -> bool:
        return all(self.last)

    def reached(self, last: int) -> bool:
        return all(x >= last for x in self.last)

    def complete(self) -> int:
        """Sockets that have every timed line."""
        if self.by_sender:
            return sum(1 for g in self.got if g >= self.per_socket)
        return sum(1 for x in self.last if x >= self.hi)

    def expected(self) -> int:
        return self.count * (self.per_socket if self.by_sender else self.hi - self.lo + 1)

    def run(self, max_seconds: float) -> None:
        waiting: tuple[str, int] | None = None  # ("heard", 0), ("synced", W) or ("done", 0)
        finished_at, cpu0 = 0.0, 0.0
        deadline = time.monotonic() + max_seconds + 4 * SYNC_TIMEOUT
        self.ctl.send("ready")
        while time.monotonic() < deadline:
            for sock, _ in self.poller.poll(POLL_MS):
                if sock != self.ctl.fileno():
                    self.drain(sock)
                    continue
                command = self.ctl.take()
                if command is None:
                    continue
                kind, data = command
                if kind == "heard":
                    waiting = ("heard", 0)
                elif kind == "sync":
                    waiting = ("synced", data["last"])
                elif kind == "count":
                    self.lo, self.hi = data.get("first", 1), data.get("final", 0)
                    self.per_socket = data.get("per_socket", 0)
                    waiting, self.last_event_at, cpu0 = ("done", 0), time.monotonic(), cpu_seconds()
                    self.ctl.send("counting")
            if waiting is None:
                continue
            what, last = waiting
            if what == "heard" and self.heard():
                self.ctl.send("heard")
                waiting = None
            elif what == "synced" and self.reached(last):
                self.ctl.send("synced")
                waiting = None
            elif what == "done" and (
                self.complete() == self.count or time.monotonic() - self.last_event_at > QUIET
            ):
                finished_at = self.last_event_at
                break
        if waiting is None or waiting[0] != "done":
            raise LoadError("the receivers ran out of time before the timed run")
        expected = self.expected()
        self.ctl.send(
            "done",
            finished_at=finished_at or self.last_event_at,
            received=sum(self.got),
            expected=expected,
            loss=expected - sum(self.got),
            disorder=self.disorder,
            bad=self.bad,
            complete=self.complete(),
            cpu=cpu_seconds() - cpu0,
            latency_ms=percentiles([x / 1e6 for x in self.latency]) if self.latency is not None else None,
        )
        self.socks.close()


def receivers(ctl: Control, cfg: dict[str, Any]) -> None:
    Receivers(ctl, cfg).run(cfg["max_seconds"])
