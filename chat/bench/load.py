"""What every load process shares: where the relay under test is, the control pipe, sockets.

A load process is started by the bench (multiprocessing, "spawn": no ZeroMQ state is inherited), holds
many sockets in one context and one poller, and talks to the bench over a pipe: it says what it is
ready for, the bench tells it what to do next. Every loop in a load process is bounded in time; a load
process also ends when the bench goes away (its end of the pipe closes).
"""

from __future__ import annotations

import math
import os
import resource
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

import zmq

from chat.bench.wire import TOPIC

POLL_MS = 20  # longest wait in a load loop's poll, so that the control pipe and the clock are seen in time
SYNC_TIMEOUT = 15.0  # seconds for each step of getting every socket in place (joins, subscriptions)
WARM_EVERY = 0.005  # seconds between warm-up lines, sent until every subscription is in place
START_TIMEOUT = 60.0  # seconds a load process waits for the relay under test to be up
DRAIN_BATCH = 256  # messages read from one socket before the poller is asked again (fair between sockets)


class LoadError(Exception):
    """A load process could not do what it was asked: the run is reported as failed, with this reason."""


@dataclass(frozen=True)
class Peer:
    """How the load reaches the relay under test."""

    mode: str  # "chat": the broker, which speaks the protocol; "raw": a baseline, which relays frames as they are
    inlet: int  # zmq.DEALER (the broker, the floor) or zmq.PUSH (the limit)
    endpoint: str  # where requests go (ROUTER or PULL)
    pub_endpoint: str  # where events come from (PUB)
    server_key: bytes | None = None  # the broker's CURVE public key (--secure)
    batch_acks: bool = False  # JOIN with batch_acks: the broker may answer several lines in one ACKS

    @property
    def chat(self) -> bool:
        return self.mode == "chat"


class Control:
    """The load process's end of the pipe to the bench."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def fileno(self) -> int:
        return self.conn.fileno()

    def send(self, kind: str, **data: Any) -> None:
        self.conn.send((kind, data))

    def take(self) -> tuple[str, dict[str, Any]] | None:
        """The next command, if one is waiting (EOFError when the bench has gone: the process ends)."""
        if self.conn.poll():
            kind, data = self.conn.recv()
            return kind, data
        return None

    def wait(self, kind: str, timeout: float, pump: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Wait for the command ``kind``; ``pump`` keeps the sockets served meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pump is not None:
                pump(POLL_MS / 1000)
                command = self.take()
            else:
                command = self.conn.recv() if self.conn.poll(deadline - time.monotonic()) else None
            if command is not None:
                if command[0] != kind:
                    raise LoadError(f"expected the command {kind!r}, got {command[0]!r}")
                return command[1]
        raise LoadError(f"no {kind!r} command within {timeout:g} s")


class Sockets:
    """One context, the load's sockets, one CURVE client key pair shared by all of them (when secure)."""

    def __init__(self, peer: Peer, max_sockets: int = 1024) -> None:
        self.peer = peer
        self.ctx = zmq.Context()
        # libzmq refuses more than 1023 sockets per context unless told otherwise.
        self.ctx.set(zmq.MAX_SOCKETS, max_sockets + 16)
        self.keys = zmq.curve_keypair() if peer.server_key else None
        self.all: list[zmq.Socket] = []

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        # No high-water marks: a run must never drop anything by design, so any loss it shows is real.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if self.keys is not None and self.peer.server_key is not None:
            sock.curve_serverkey = self.peer.server_key
            sock.curve_publickey, sock.curve_secretkey = self.keys
        self.all.append(sock)
        return sock

    def inlet(self) -> zmq.Socket:
        sock = self._socket(self.peer.inlet)
        sock.connect(self.peer.endpoint)
        return sock

    def sub(self) -> zmq.Socket:
        sock = self._socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
        sock.connect(self.peer.pub_endpoint)
        return sock

    def close(self) -> None:
        for sock in self.all:
            sock.close(linger=0)
        self.ctx.term()


def cpu_seconds() -> float:
    """CPU time of this process, every thread (libzmq's I/O thread too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_files(needed: int) -> dict[str, int | bool]:
    """Raise this process's open-file soft limit towards ``needed`` (up to the hard limit); say how it went."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return {"soft": soft, "hard": hard, "needed": needed, "enough": soft == resource.RLIM_INFINITY or soft >= needed}


def percentiles(samples: list[float], points: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles and the maximum of ``samples`` (empty: all zero)."""
    if not samples:
        return {**{f"p{q:g}": 0.0 for q in points}, "max": 0.0}
    ordered = sorted(samples)
    out = {f"p{q:g}": ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)] for q in points}
    out["max"] = ordered[-1]
    return out


def run_worker(body: Callable[[Control, dict[str, Any]], None], conn: Connection, cfg: dict[str, Any]) -> None:
    """Entry point of a load process: run ``body``; report a failure over the pipe instead of dying silently."""
    # Ctrl-C reaches the whole process group: the bench, not each load process, decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = Control(conn)
    try:
        # The process starts while the relay under test does; where that relay listens comes after.
        body(ctl, {**cfg, **ctl.wait("start", START_TIMEOUT)})
    except EOFError:
        pass  # the bench has gone: nothing to report to
    except BaseException:  # reported to the bench, which shows it and fails the run
        try:
            ctl.send("error", reason=traceback.format_exc())
        except OSError:
            pass
    finally:
        conn.close()
        os._exit(0)  # skip interpreter teardown: every socket is already closed or abandoned with linger 0
