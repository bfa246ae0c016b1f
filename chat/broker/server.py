"""The broker's socket loop: ROUTER in, ROUTER and PUB out. All decisions are in ``chat.broker.core``."""

from __future__ import annotations

import gc
import resource
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import zmq
from zmq.auth import CURVE_ALLOW_ANY
from zmq.auth.thread import ThreadAuthenticator

from chat import protocol as p
from chat.broker.core import Broker, Outgoing, Reply
from chat.discovery import Announcer, beacon

DRAIN_BATCH = 1000  # messages read from the ROUTER before the loop looks at timers again
EXPIRE_EVERY = 0.25  # seconds between checks for silent sessions
POLL_MS = 200  # longest wait in poll, which bounds how late a stop request is seen
SHUTDOWN_LINGER_MS = 1000  # time given to the goodbye messages to leave
PUB_HWM = 1000  # messages (batches of events) queued per subscriber; a slower one loses the rest and fetches it
BACKLOG = 4096  # pending TCP connections per socket (libzmq's default, 100, refuses a crowd joining at once)
FILES_PER_CLIENT = 2  # a client holds two connections: DEALER and SUB
WANTED_FILES = 65536  # open files the broker asks for at start (about 30,000 clients)
ENOUGH_CLIENTS = 4000  # below room for this many clients, the broker warns at start


@dataclass(frozen=True)
class Announce:
    """Where the broker's LAN beacon goes (--announce), and the name it carries."""

    target: str
    beacon_port: int
    name: str


@dataclass(frozen=True)
class Curve:
    """The broker's CURVE key pair, and the folder of client public keys it admits (None: any key)."""

    public: bytes
    secret: bytes
    allow: Path | None = None


_SNDMORE = int(zmq.SNDMORE)  # a plain int: enum arithmetic on every frame showed up in the profile


def bound_port(sock: zmq.Socket) -> int:
    last = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    return int(last.rsplit(":", 1)[1])


class BrokerServer:
    """Binds the two sockets and runs a ``Broker`` until asked to stop."""

    def __init__(
        self,
        host: str,
        port: int,
        pub_port: int,
        broker: Broker,
        *,
        pub_hwm: int = PUB_HWM,
        curve: Curve | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.curve = curve
        self.auth: ThreadAuthenticator | None = None
        if curve is not None:
            # ZAP (zmq.auth) checks every client key during the CURVE handshake, on both sockets.
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.reload_allowed()
        self.router = self._socket(zmq.ROUTER, host)
        # libzmq disconnects a peer that sends a frame larger than this, before Python sees it.
        self.router.setsockopt(zmq.MAXMSGSIZE, p.MAX_FRAME_BYTES)
        self.router.bind(p.endpoint(host, port))
        self.pub = self._socket(zmq.PUB, host)
        self.pub.setsockopt(zmq.SNDHWM, pub_hwm)
        self.pub.bind(p.endpoint(host, pub_port))
        self.host = host
        self.port = bound_port(self.router)
        self.pub_port = bound_port(self.pub)
        self.broker = broker
        broker.pub_port = self.pub_port
        self.stopping = False
        self.reload_requested = False

    def _socket(self, kind: int, host: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.BACKLOG, BACKLOG)
        if ":" in host:
            sock.setsockopt(zmq.IPV6, 1)
        if self.curve is not None:
            sock.curve_server = True
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
        return sock

    def reload_allowed(self) -> None:
        """(Re-)read the folder of admitted client keys (at start, and on SIGHUP)."""
        assert self.auth is not None and self.curve is not None
        location = str(self.curve.allow) if self.curve.allow is not None else CURVE_ALLOW_ANY
        self.auth.configure_curve(domain="*", location=location)

    def send(self, outgoing: list[Outgoing]) -> None:
        """Publish the batch's events, then send the replies: an ACK or a PONG never overtakes the event
        it reports. Events are packed per room (``encode_events``): libzmq copies a message to each
        subscriber's queue, so one message per batch instead of per line keeps that cost off each line."""
        # Frame by frame: send_multipart type-checks every frame and builds flags each time, which the
        # profile showed as a quarter of the broker's CPU.
        router_send, pub_send = self.router.send, self.pub.send
        for topic, tag, kind, body in p.encode_events([item for item in outgoing if not isinstance(item, Reply)]):
            pub_send(topic, _SNDMORE)
            pub_send(tag, _SNDMORE)
            pub_send(kind, _SNDMORE)
            pub_send(body)
        for item in outgoing:
            if isinstance(item, Reply):
                tag, kind, body = p.encode(item.message, item.tag)
                router_send(item.identity, _SNDMORE)
                router_send(tag, _SNDMORE)
                router_send(kind, _SNDMORE)
                router_send(body)

    def run(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Serve until ``stop()`` (or a signal handler calling it); then say goodbye to every client."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        next_expiry = clock() + EXPIRE_EVERY
        while not self.stopping:
            timeout = max(0, min(POLL_MS, int((next_expiry - clock()) * 1000)))
            outgoing = self._drain() if poller.poll(timeout) else []
            if clock() >= next_expiry:
                outgoing += self.broker.expire_idle()
                next_expiry = clock() + EXPIRE_EVERY
            if self.reload_requested and self.auth is not None:
                self.reload_requested = False
                self.reload_allowed()
            self._commit(outgoing)
        self._commit(self.broker.shutdown())

    def _drain(self) -> list[Outgoing]:
        """Handle what the ROUTER holds, up to a batch."""
        outgoing: list[Outgoing] = []
        secure = self.curve is not None
        recv = self.router.recv
        for _ in range(DRAIN_BATCH):
            # Frame objects: their .more is cheaper than getsockopt(RCVMORE), which pyzmq turns into an
            # enum on every call (measured 5.3 vs 12.1 us per 3-frame message), and the ZAP User-Id
            # (the client's public key, with --secure) rides on them.
            try:
                frame = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            identity = frame.bytes
            frames: list[bytes] = []
            while frame.more:
                frame = recv(copy=False)
                frames.append(frame.bytes)
            key = (frame.get("User-Id") or "") if secure else ""
            outgoing += self.broker.handle(identity, frames, key)
        return outgoing

    def _commit(self, outgoing: list[Outgoing]) -> None:
        """Store the batch's events in one write, then send: nothing is acknowledged before it is stored."""
        self.send(self.broker.commit(outgoing))

    def stop(self, *_: object) -> None:
        self.stopping = True

    def request_reload(self, *_: object) -> None:
        self.reload_requested = True

    def close(self) -> None:
        self.router.close(linger=SHUTDOWN_LINGER_MS)
        self.pub.close(linger=0)
        if self.auth is not None:
            self.auth.stop()


def raise_file_limit(wanted: int = WANTED_FILES) -> str:
    """Raise the soft open-file limit towards ``wanted`` (up to the hard limit); say what came of it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            return f"could not raise the open-file limit from {soft} ({exc})"
    clients = soft // FILES_PER_CLIENT - 16 if soft != resource.RLIM_INFINITY else None
    if clients is not None and clients < ENOUGH_CLIENTS:
        return (
            f"the open-file limit is {soft} (hard limit {hard}): room for about {clients} clients; "
            f"raise it with 'ulimit -n {wanted}' before starting the broker for more"
        )
    return ""


def client_command(host: str, port: int, curve: Curve | None) -> str:
    """The exact command a user on another machine runs to join this broker."""
    if host in ("0.0.0.0", "::", "*", ""):
        host = socket.gethostname()
    command = f"python client.py --host {shlex.quote(host)} --port {port}"
    if curve is not None:
        # "=": a Z85 key may begin with "-", which would otherwise read as an option
        command += f" --server-key={shlex.quote(curve.public.decode())}"
    return command


def serve(
    host: str,
    port: int,
    pub_port: int,
    broker: Broker,
    *,
    pub_hwm: int = PUB_HWM,
    curve: Curve | None = None,
    announce: Announce | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run a broker in this process until SIGINT or SIGTERM. Returns the exit code."""
    warning = raise_file_limit()
    if warning:
        print(f"broker: warning: {warning}", file=sys.stderr, flush=True)
    try:
        server = BrokerServer(host, port, pub_port, broker, pub_hwm=pub_hwm, curve=curve)
    except zmq.ZMQError as exc:
        print(f"broker: cannot listen on {host} ports {port} and {pub_port}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, server.stop)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGHUP, server.request_reload)
    print(
        f"broker: listening on {p.endpoint(host, server.port)} (ROUTER: joins, commands, chat) "
        f"and {p.endpoint(host, server.pub_port)} (PUB: fan-out)",
        file=out,
        flush=True,
    )
    if curve is not None:
        admitted = f"client keys in {curve.allow} only (SIGHUP re-reads it)" if curve.allow else "any client key"
        print(f"broker: encrypted (CURVE), admitting {admitted}", file=out, flush=True)
    print(f"broker: clients join with: {client_command(host, server.port, curve)}", file=out, flush=True)
    announcer = None
    if announce is not None:
        key = curve.public.decode() if curve is not None else ""
        announcer = Announcer(announce.target, announce.beacon_port, beacon(server.port, announce.name, key))
        announcer.start()
        print(
            f"broker: announcing itself as {announce.name!r} to {announce.target} UDP port {announce.beacon_port}",
            file=out,
            flush=True,
        )
    # What start-up made (modules, the history's indexes) lives as long as the process: out of the
    # collector's sight, a full collection no longer walks it (it took 13 ms, a latency spike, in the bench).
    gc.freeze()
    try:
        server.run()
    finally:
        if announcer is not None:
            announcer.stop()
        server.close()
        # Wait (up to the ROUTER's linger) until the goodbyes are on the wire: without it the process
        # could exit while libzmq's I/O thread still held them, and a client would wait for its time-out.
        server.ctx.term()
    print("broker: stopped", file=out, flush=True)
    return 0
