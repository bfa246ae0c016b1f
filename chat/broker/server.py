"""The broker's socket loop: ROUTER in, ROUTER and PUB out. All decisions are in ``chat.broker.core``."""

from __future__ import annotations

import gc
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
from chat.broker import guard
from chat.broker.core import Broker, Outgoing, Reply
from chat.defaults import PUB_HWM
from chat.discovery import Announcer, beacon
from chat.errors import StartupError

try:  # POSIX only: Windows has no per-process open-file limit to raise
    import resource
except ImportError:  # pragma: no cover - exercised by tests/test_platforms.py in a Windows-like process
    resource = None  # type: ignore[assignment]

DRAIN_BATCH = 1000  # messages read from the ROUTER before the loop looks at timers again
EXPIRE_EVERY = 0.25  # seconds between checks for silent sessions (and of every connection's unfinished bytes)
ALLOW_CHECK_EVERY = 1.0  # seconds between looks at the --allow folder, re-read when its keys change
WATCH_EVERY = 0.02  # seconds between looks at the broker's own size (see chat.broker.guard)
POLL_MS = 200  # longest wait in poll, which bounds how late a stop request is seen
SHUTDOWN_LINGER_MS = 1000  # time given to the goodbye messages to leave
BACKLOG = 4096  # pending TCP connections per socket (libzmq's default, 100, refuses a crowd joining at once)
FILES_PER_CLIENT = 2  # a client holds two connections: DEALER and SUB
WANTED_FILES = 65536  # open files the broker asks for at start (about 30,000 clients)
ENOUGH_CLIENTS = 4000  # below room for this many clients, the broker warns at start
MACOS_OPEN_MAX = 10240  # the most open files macOS lets a process ask for (its OPEN_MAX)


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
    """Binds the two sockets, then runs the ``Broker`` given to ``attach`` until asked to stop.

    The sockets come first so that a broker that cannot listen stops before it opens (or creates) its
    history: raises StartupError, with nothing left open.
    """

    def __init__(
        self,
        host: str,
        port: int,
        pub_port: int,
        *,
        pub_hwm: int = PUB_HWM,
        curve: Curve | None = None,
        ctx: zmq.Context | None = None,
        notice: Callable[[str], None] = lambda text: None,
        unlimited: frozenset[str] = frozenset(),
    ) -> None:
        self.ctx = ctx or zmq.Context.instance()
        # Source addresses whose sessions the per-address limits do not count: the broker's own gateways
        # (--web, --irc) bring every one of their users from this machine, and bound them per browser/IRC host.
        self.unlimited = unlimited
        self.curve = curve
        self.auth: ThreadAuthenticator | None = None
        self.announce_reloads = False
        if curve is not None:
            # ZAP (zmq.auth) checks every client key during the CURVE handshake, on both sockets.
            self.auth = ThreadAuthenticator(self.ctx)
            self.auth.start()
            self.reload_allowed()
        self.announce_reloads = True  # from now on, say so on stdout
        self._allow_seen = allow_snapshot(curve.allow) if curve is not None else None
        self.router = self._socket(zmq.ROUTER, host)
        # libzmq disconnects a peer that sends a frame larger than this, before Python sees it; the margin
        # above MAX_FRAME_BYTES lets a frame a little too large get a too_large answer and keep its session.
        self.router.setsockopt(zmq.MAXMSGSIZE, p.MAX_RECEIVED_FRAME_BYTES)
        self.pub = self._socket(zmq.PUB, host)
        self.pub.setsockopt(zmq.SNDHWM, pub_hwm)
        # Before the binds, so that the guard hears of every connection.
        self.guard: guard.PendingGuard | None = None
        if guard.SUPPORTED:
            self.guard = guard.PendingGuard([self.router, self.pub], secure=curve is not None, notice=notice)
        try:
            self._bind(self.router, host, port, "ROUTER", "--port")
            self._bind(self.pub, host, pub_port, "PUB", "--pub-port")
        except StartupError:
            self.close()
            raise
        self.host = host
        self.port = bound_port(self.router)
        self.pub_port = bound_port(self.pub)
        self.broker: Broker  # given by attach(), once the history is open
        self.stopping = False
        self.reload_requested = False

    @staticmethod
    def _bind(sock: zmq.Socket, host: str, port: int, what: str, flag: str) -> None:
        endpoint = p.endpoint(host, port)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            hint = f"; is another broker running? choose another port with {flag}" if exc.errno == zmq.EADDRINUSE else ""
            raise StartupError(f"cannot listen on {endpoint} ({what}): {zmq.strerror(exc.errno)}{hint}") from None

    def attach(self, broker: Broker) -> None:
        """The broker this server runs; it learns the PUB port its WELCOME announces."""
        self.broker = broker
        broker.pub_port = self.pub_port

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
        """(Re-)read the folder of admitted client keys (at start, when it changes, and on SIGHUP)."""
        if self.auth is None or self.curve is None:
            return
        location = str(self.curve.allow) if self.curve.allow is not None else CURVE_ALLOW_ANY
        self.auth.configure_curve(domain="*", location=location)
        if self.curve.allow is not None and self.announce_reloads:
            admitted = len(self.auth.certs.get("*", {}))
            print(f"broker: re-read {self.curve.allow}: {admitted} client key(s) admitted", flush=True)

    def _look_at_allowed(self) -> None:
        """Re-read the --allow folder when its keys changed: where there is no SIGHUP (Windows), this is
        how a key copied into it takes effect; elsewhere it saves the operator the kill -HUP."""
        if self.curve is None or self.curve.allow is None:
            return
        seen = allow_snapshot(self.curve.allow)
        if seen != self._allow_seen:
            self._allow_seen = seen
            self.reload_requested = True

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
                if item.data:  # a CHUNK's file data, as a fourth frame
                    router_send(body, _SNDMORE)
                    router_send(item.data, copy=False)
                else:
                    router_send(body)

    def run(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Serve until ``stop()`` (or a signal handler calling it); then say goodbye to every client."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        next_expiry = clock() + EXPIRE_EVERY
        next_allow_check = clock() + ALLOW_CHECK_EVERY
        next_watch = clock() + WATCH_EVERY if self.guard is not None else float("inf")
        while not self.stopping:
            # held joins are due on the broker's own clock
            wait = min(next_expiry, next_watch) - clock()
            timeout = max(0, min(POLL_MS, int(min(wait, self.broker.joins_due - self.broker.clock()) * 1000)))
            outgoing = self._drain() if poller.poll(timeout) else []
            outgoing += self.broker.release_joins()
            if not outgoing:  # idle: deferred work (the search index), a few ms at a time
                self.broker.idle()
            if self.guard is not None and clock() >= next_watch:
                self.guard.watch()
                next_watch = clock() + WATCH_EVERY
            if clock() >= next_expiry:
                if self.guard is not None:
                    self.guard.sweep()
                outgoing += self.broker.expire_idle()
                next_expiry = clock() + EXPIRE_EVERY
            if clock() >= next_allow_check:
                next_allow_check = clock() + ALLOW_CHECK_EVERY
                self._look_at_allowed()
            if self.reload_requested:
                self.reload_requested = False
                self.reload_allowed()
            self._commit(outgoing)
        self._commit(self.broker.shutdown())

    def _drain(self) -> list[Outgoing]:
        """Handle what the ROUTER holds, up to a batch."""
        outgoing: list[Outgoing] = []
        secure = self.curve is not None
        recv = self.router.recv
        watch = self.guard
        if watch is not None:
            watch.follow_connections()
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
            unread = 0
            if watch is not None:
                fd = frame.get(zmq.SRCFD)
                watch.delivered(fd, frames)
                if len(frames) > 1 and frames[1] == b"FETCH":  # what it has not taken yet of earlier answers
                    unread = guard.unread(fd)
            key = (frame.get("User-Id") or "") if secure else ""
            address = frame.get("Peer-Address") or ""
            if address in self.unlimited:
                address = ""
            outgoing += self.broker.handle(identity, frames, key, address, unread)
        return outgoing

    def _commit(self, outgoing: list[Outgoing]) -> None:
        """Store the batch's events in one write, then send: nothing is acknowledged before it is stored."""
        self.send(self.broker.pack_acks(self.broker.commit(outgoing)))

    def stop(self, *_: object) -> None:
        self.stopping = True

    def request_reload(self, *_: object) -> None:
        self.reload_requested = True

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        self.router.close(linger=SHUTDOWN_LINGER_MS)
        self.pub.close(linger=0)
        if self.auth is not None:
            self.auth.stop()


def allow_snapshot(folder: Path | None) -> tuple[tuple[str, int, int], ...] | None:
    """What identifies the --allow folder's keys as they are now (name, mtime, size): a change means re-read."""
    if folder is None:
        return None
    try:
        return tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in folder.glob("*.key")))
    except OSError:  # the folder went away or is unreadable for now: compare again at the next look
        return None


def raise_file_limit(wanted: int = WANTED_FILES) -> str:
    """Raise the soft open-file limit towards ``wanted`` (up to the hard limit); say what came of it.

    Where there is no such limit to raise (Windows: no ``resource`` module), there is nothing to say."""
    if resource is None:
        return ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if sys.platform == "darwin":
        # macOS reports an unlimited hard limit but refuses a soft one above OPEN_MAX (setrlimit: EINVAL).
        target = min(target, MACOS_OPEN_MAX)
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


RELOAD_HINT = "re-read when its keys change" + (", and on SIGHUP" if hasattr(signal, "SIGHUP") else "")


def client_command(host: str, port: int, curve: Curve | None, launcher: str = "python client.py") -> str:
    """The exact command a user on another machine runs to join this broker."""
    if host in ("0.0.0.0", "::", "*", ""):
        host = socket.gethostname()
    command = f"{launcher} --host {shlex.quote(host)} --port {port}"
    if curve is not None:
        # "=": a Z85 key may begin with "-", which would otherwise read as an option
        command += f" --server-key={shlex.quote(curve.public.decode())}"
    return command


def serve(
    server: BrokerServer,
    *,
    announce: Announce | None = None,
    launcher: str = "python client.py",
    beside: Callable[[int], Callable[[], None]] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run a bound server, with its broker attached, in this process until SIGINT or SIGTERM. Returns
    the exit code. ``launcher``: how users start a client, for the command the broker prints.

    ``beside`` starts something with the broker once it listens (the web and IRC gateways: ``--web``,
    ``--irc``), given the ROUTER port, and returns what stops it when the broker stops."""
    host, curve = server.host, server.curve
    signal.signal(signal.SIGINT, server.stop)
    signal.signal(signal.SIGTERM, server.stop)
    if hasattr(signal, "SIGHUP"):  # POSIX; everywhere, the --allow folder is also re-read when it changes
        signal.signal(signal.SIGHUP, server.request_reload)
    print(
        f"broker: listening on {p.endpoint(host, server.port)} (ROUTER: joins, commands, chat) "
        f"and {p.endpoint(host, server.pub_port)} (PUB: fan-out)",
        file=out,
        flush=True,
    )
    if curve is not None:
        admitted = f"client keys in {curve.allow} only ({RELOAD_HINT})" if curve.allow else "any client key"
        print(f"broker: encrypted (CURVE), admitting {admitted}", file=out, flush=True)
    print(f"broker: clients join with: {client_command(host, server.port, curve, launcher)}", file=out, flush=True)
    if server.guard is None:
        print(
            "broker: warning: this system gives no per-connection byte counts (TCP_INFO): a peer that never "
            "finishes a message is not cut off",
            file=sys.stderr,
            flush=True,
        )
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
    stop_beside = beside(server.port) if beside is not None else None
    # What start-up made (modules, the history's indexes) lives as long as the process: out of the
    # collector's sight, a full collection no longer walks it (it took 13 ms, a latency spike, in the bench).
    gc.freeze()
    try:
        server.run()
    finally:
        if stop_beside is not None:
            stop_beside()
        if announcer is not None:
            announcer.stop()
        server.close()
        # Wait (up to the ROUTER's linger) until the goodbyes are on the wire: without it the process
        # could exit while libzmq's I/O thread still held them, and a client would wait for its time-out.
        server.ctx.term()
    print("broker: stopped", file=out, flush=True)
    return 0
