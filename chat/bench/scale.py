"""Workload 3: scale. N clients join at once and stay, heartbeating, all from one load process.

Each client is a DEALER that sends JOIN with a unique name as soon as it exists, and then a PING every
``heartbeat_ms`` of its WELCOME. Measured: the time from the first socket to the last WELCOME; the
broker's resident memory per client (VmRSS after, minus before, over N); the broker's CPU while all of
them heartbeat and nobody says anything.

Each client also gets a SUB, as a real client has, so that the memory per client includes both of its
connections. The SUBs connect after the last WELCOME: a SUB that connected on its own WELCOME would
receive the join event of every later client (N*N/2 events), which measures the load process, not the
joining. They carry no events while idle (PINGs publish nothing); any that come (a leave on a time-out)
are counted, since they mean a client was dropped.

With ``--scale-sub-on-welcome`` each client connects its SUB when its WELCOME arrives, as the reference
client does: the join storm's presence events then reach every client already in, and the run reports
how many events each client received while the crowd joined (one join event per session would be N/2 a
client, N²/2 in all; the broker's join summaries keep it to a few a second).
"""

from __future__ import annotations

import heapq
import json
import os
import resource
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zmq

from chat.bench import wire

from chat.bench.load import DRAIN_BATCH, SYNC_TIMEOUT, Control, LoadError, Sockets, cpu_seconds, raise_open_files
from chat.bench.procs import BenchError, Worker, cpu_seconds as pid_cpu_seconds, memory_kib
from chat.bench.targets import BROKER, start

FDS_PER_CLIENT = 4  # in the load process: a DEALER and a SUB, each a TCP connection and a mailbox
BROKER_FDS_PER_CLIENT = 2  # in the broker: the two TCP connections
FD_SLACK = 256
SUB_CHECK_EVERY = 1.0  # seconds between reads of the (normally silent) SUBs


class Crowd:
    def __init__(self, ctl: Control, cfg: dict[str, Any]) -> None:
        self.ctl = ctl
        self.n: int = cfg["clients"]
        self.socks = Sockets(cfg["peer"], max_sockets=2 * self.n)
        self.inlets: list[zmq.Socket] = []
        self.subs: list[zmq.Socket] = []
        self.index: dict[zmq.Socket, int] = {}
        self.poller = zmq.Poller()
        self.poller.register(ctl.fileno(), zmq.POLLIN)
        self.welcomed = 0
        self.welcomed_at = 0.0
        self.heartbeat = 1.0
        self.schedule: list[tuple[float, int]] = []  # (due, client): the heartbeat schedule
        self.pongs = 0
        self.ping_lag = 0.0
        self.errors: list[str] = []
        self.error_count = 0
        self.events = 0
        self.leaves = 0
        self.next_sub_check = 0.0
        self.pings_sent = 0
        self.sub_on_welcome: bool = cfg.get("sub_on_welcome", False)
        self.sub_every = SUB_CHECK_EVERY

    def join_all(self) -> float:
        """Create every client and send its JOIN; return the seconds that took."""
        started = time.monotonic()
        for i in range(self.n):
            try:
                sock = self.socks.inlet()
            except zmq.ZMQError as exc:
                raise LoadError(f"could not open client {i + 1} of {self.n}: {exc} ({self.limits()})") from None
            sock.send_multipart(wire.join(f"scale{i:05d}", f"token{i}"))
            self.inlets.append(sock)
            self.index[sock] = i
            self.poller.register(sock, zmq.POLLIN)
        return time.monotonic() - started

    def connect_subs(self) -> None:
        for _ in range(self.n):
            try:
                self.subs.append(self.socks.sub())
            except zmq.ZMQError as exc:
                raise LoadError(f"could not open SUB {len(self.subs) + 1} of {self.n}: {exc} ({self.limits()})") from None

    def limits(self) -> str:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"open-file limit {soft} (hard {hard}), about {self.n * FDS_PER_CLIENT + FD_SLACK} needed"

    def pump(self, timeout: float) -> None:
        now = time.monotonic()
        while self.schedule and self.schedule[0][0] <= now:
            due, i = heapq.heappop(self.schedule)
            self.inlets[i].send_multipart(wire.PING)
            self.pings_sent += 1
            self.ping_lag = max(self.ping_lag, now - due)
            heapq.heappush(self.schedule, (due + self.heartbeat, i))
        if self.schedule:
            timeout = min(timeout, max(0.0, self.schedule[0][0] - now))
        for sock, _ in self.poller.poll(int(timeout * 1000)):
            if sock in self.index:
                self._replies(sock)
        if self.subs and now >= self.next_sub_check:
            self.next_sub_check = now + self.sub_every
            for sub in self.subs:
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    events = json.loads(frames[-1])["events"] if len(frames) == 4 else [{}]
                    self.events += len(events)
                    # a leave means a client was dropped; a join summary that came late does not
                    self.leaves += sum(1 for event in events if event.get("kind", "leave") == "leave")

    def _replies(self, sock: zmq.Socket) -> None:
        for _ in range(DRAIN_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, body = wire.reply(frames)
            if kind == b"PONG":
                self.pongs += 1
            elif kind == b"WELCOME":
                self.welcomed += 1
                self.welcomed_at = time.monotonic()
                self.heartbeat = body["heartbeat_ms"] / 1000
                heapq.heappush(self.schedule, (self.welcomed_at + self.heartbeat, self.index[sock]))
                if self.sub_on_welcome:
                    self.subs.append(self.socks.sub())
            else:
                self.error_count += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{kind.decode()} {body}"[:200])

    def report(self) -> dict[str, Any]:
        return {
            "welcomed": self.welcomed,
            "pings": self.pings_sent,
            "pongs": self.pongs,
            "errors": self.error_count,
            "error_samples": self.errors,
            "events": self.events,
            "leaves": self.leaves,
            "ping_lag_ms": self.ping_lag * 1000,
            "heartbeat_ms": self.heartbeat * 1000,
        }


def scale_clients(ctl: Control, cfg: dict[str, Any]) -> None:
    limits = raise_open_files(cfg["clients"] * FDS_PER_CLIENT + FD_SLACK)
    crowd = Crowd(ctl, cfg)
    ctl.send("ready", open_files=limits)
    ctl.wait("go", SYNC_TIMEOUT)
    started = time.monotonic()
    create_s = crowd.join_all()
    deadline = started + cfg["join_timeout"]
    crowd.sub_every = SUB_CHECK_EVERY / 5  # read often while the crowd joins: a SUB's queue is bounded (RCVHWM)
    while crowd.welcomed + crowd.error_count < crowd.n and time.monotonic() < deadline:
        crowd.pump(0.05)
    crowd.sub_every = SUB_CHECK_EVERY
    if crowd.sub_on_welcome:  # what the last joins published (held ones within a window) has come
        settle = time.monotonic() + 2 * SUB_CHECK_EVERY
        while time.monotonic() < settle:
            crowd.pump(0.05)
    join_events = crowd.events
    ctl.send("joined", join_seconds=crowd.welcomed_at - started, create_seconds=create_s, join_events=join_events,
             **crowd.report())
    if crowd.welcomed < crowd.n:
        return
    crowd.events = crowd.leaves = 0
    if cfg["sub"] and not crowd.sub_on_welcome:
        crowd.connect_subs()
    ctl.send("subscribed")
    # Heartbeat until told to report (the bench measures the broker meanwhile), within a bound.
    cpu0, t0 = cpu_seconds(), time.monotonic()
    deadline = t0 + cfg["max_seconds"]
    while time.monotonic() < deadline:
        crowd.pump(0.05)
        command = ctl.take()
        if command is not None:
            break
    load_cpu_pct = 100 * (cpu_seconds() - cpu0) / (time.monotonic() - t0)
    ctl.send("report", load_cpu_pct=load_cpu_pct, **crowd.report())
    crowd.socks.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_files_limit(pid: int) -> str:
    """The soft open-file limit of a process, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return line.split()[3]
    return "?"


def run_scale(opts: Any, tmp: Path, open_files: int | None) -> dict[str, Any]:
    n = opts.scale_clients
    cfg = {
        "clients": n,
        "sub": not opts.scale_no_sub,
        "sub_on_welcome": opts.scale_sub_on_welcome and not opts.scale_no_sub,
        "join_timeout": opts.scale_join_timeout,
        "max_seconds": opts.scale_idle_seconds + 4 * SYNC_TIMEOUT,
    }
    with ExitStack() as stack:
        load = Worker("scale clients", scale_clients, cfg)
        stack.callback(load.stop)
        running = start(BROKER, stack, tmp, "scale", open_files=open_files, max_sessions=n + 16)
        relay, pid = running.relay, running.pid
        load.send("start", peer=running.peer)
        ready = load.expect("ready", SYNC_TIMEOUT, relay)
        rss0, fds0 = memory_kib(pid), open_fds(pid)
        cpu_join0, t_join0 = pid_cpu_seconds(pid), time.monotonic()
        load.send("go")
        joined = load.expect("joined", opts.scale_join_timeout + SYNC_TIMEOUT, relay)
        result: dict[str, Any] = {
            "workload": "scale",
            "target": BROKER.name,
            "clients": n,
            "with_sub": cfg["sub"],
            "sub_on_welcome": cfg["sub_on_welcome"],
            "join_events_per_client": joined["join_events"] / n,
            "joined": joined["welcomed"],
            "join_seconds": joined["join_seconds"] if joined["welcomed"] == n else None,
            "create_seconds": joined["create_seconds"],
            "join_errors": joined["errors"],
            "join_error_samples": joined["error_samples"],
            "heartbeat_ms": joined["heartbeat_ms"],
            "rss_kib_start": rss0,
            "rss_kib_joined": memory_kib(pid),
            "open_files": {"load": ready["open_files"], "broker": open_files},
        }
        if joined["welcomed"] < n:
            relay.check_alive()
            result["failure"] = (
                f"only {joined['welcomed']} of {n} clients joined within {opts.scale_join_timeout:g} s; the broker "
                f"holds {open_fds(pid)} open files (limit {open_files_limit(pid)}), used "
                f"{100 * (pid_cpu_seconds(pid) - cpu_join0) / (time.monotonic() - t_join0):.0f}% CPU meanwhile\n"
                + relay.output()
            )
            return result
        load.expect("subscribed", SYNC_TIMEOUT, relay)
        # Every connection of every client is open in the broker before the idle window starts.
        wanted = fds0 + n * (BROKER_FDS_PER_CLIENT if cfg["sub"] else 1)
        deadline = time.monotonic() + SYNC_TIMEOUT
        while open_fds(pid) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)  # polling /proc with a deadline: the connections are made by libzmq threads
        if open_fds(pid) < wanted:
            raise BenchError(f"the broker holds {open_fds(pid)} open files, not {wanted}\n{relay.output()}")
        cpu0, t0 = pid_cpu_seconds(pid), time.monotonic()
        end = t0 + opts.scale_idle_seconds
        while time.monotonic() < end:
            relay.check_alive()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))  # the measured window itself: the broker idles
        cpu, wall = pid_cpu_seconds(pid) - cpu0, time.monotonic() - t0
        rss = memory_kib(pid)
        load.send("report")
        idle = load.expect("report", SYNC_TIMEOUT, relay)
    result.update(
        rss_kib_idle=rss,
        rss_kib_per_client=(rss - rss0) / n,
        rss_kib_per_client_joined=(result["rss_kib_joined"] - rss0) / n,
        idle_seconds=wall,
        idle_cpu_pct=100 * cpu / wall,
        pings=idle["pings"],
        pongs=idle["pongs"],
        idle_errors=idle["errors"] - joined["errors"],
        idle_error_samples=idle["error_samples"],
        events_while_idle=idle["events"],
        dropped_while_idle=idle["leaves"],
        ping_lag_ms=idle["ping_lag_ms"],
        load_cpu_pct=idle["load_cpu_pct"],
    )
    return result
