"""The broker's socket loop: ROUTER in, ROUTER and PUB out. All decisions are in ``chat.broker.core``."""

from __future__ import annotations

import signal
import sys
import time
from typing import Callable, TextIO

import zmq

from chat import protocol as p
from chat.broker.core import Broker, Outgoing, Reply
from chat.broker.history import History

DRAIN_BATCH = 1000  # messages read from the ROUTER before the loop looks at timers again
EXPIRE_EVERY = 0.25  # seconds between checks for silent sessions
POLL_MS = 200  # longest wait in poll, which bounds how late a stop request is seen
SHUTDOWN_LINGER_MS = 1000  # time given to the goodbye messages to leave
PUB_HWM = 1000  # events queued per subscriber; a slower one loses the rest and fetches it (bounded memory)


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
        *,
        session_timeout: float,
        history: History | None = None,
        pub_hwm: int = PUB_HWM,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.ctx = ctx or zmq.Context.instance()
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
        self.broker = Broker(pub_port=self.pub_port, history=history, session_timeout=session_timeout)
        self.stopping = False

    def _socket(self, kind: int, host: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if ":" in host:
            sock.setsockopt(zmq.IPV6, 1)
        return sock

    def send(self, outgoing: list[Outgoing]) -> None:
        for item in outgoing:
            if isinstance(item, Reply):
                self.router.send_multipart([item.identity, *p.encode(item.message)])
            else:
                self.pub.send_multipart(p.encode_event(item))

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
            self._commit(outgoing)
        self._commit(self.broker.shutdown())

    def _drain(self) -> list[Outgoing]:
        """Handle what the ROUTER holds, up to a batch."""
        outgoing: list[Outgoing] = []
        for _ in range(DRAIN_BATCH):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            outgoing += self.broker.handle(frames[0], frames[1:])
        return outgoing

    def _commit(self, outgoing: list[Outgoing]) -> None:
        """Store the batch's events in one write, then send: nothing is acknowledged before it is stored."""
        self.broker.history.flush()
        self.send(outgoing)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def close(self) -> None:
        self.router.close(linger=SHUTDOWN_LINGER_MS)
        self.pub.close(linger=0)


def serve(
    host: str,
    port: int,
    pub_port: int,
    *,
    session_timeout: float,
    history: History | None = None,
    pub_hwm: int = PUB_HWM,
    out: TextIO = sys.stdout,
) -> int:
    """Run a broker in this process until SIGINT or SIGTERM. Returns the exit code."""
    try:
        server = BrokerServer(
            host, port, pub_port, session_timeout=session_timeout, history=history, pub_hwm=pub_hwm
        )
    except zmq.ZMQError as exc:
        print(f"broker: cannot listen on {host} ports {port} and {pub_port}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGINT, server.stop)
    signal.signal(signal.SIGTERM, server.stop)
    print(
        f"broker: listening on {p.endpoint(host, server.port)} (ROUTER: joins, commands, chat) "
        f"and {p.endpoint(host, server.pub_port)} (PUB: fan-out)",
        file=out,
        flush=True,
    )
    print(f"broker: clients join with: python client.py --host HOST --port {server.port}", file=out, flush=True)
    try:
        server.run()
    finally:
        server.close()
    print("broker: stopped", file=out, flush=True)
    return 0
