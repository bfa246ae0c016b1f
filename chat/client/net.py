"""The client's socket loop: a DEALER to send, a SUB to receive, and a queue of user input.

It runs in one thread. Front ends call ``submit`` from any thread and receive what to show through the
``show`` callback, which is called on the loop's thread.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from chat import protocol as p
from chat.client import events as ev
from chat.client.core import ClientCore

SUB_RCVHWM = 100_000  # events queued for a slow reader before libzmq drops (and the core fetches them)
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_EOF = object()
_wake_numbers = itertools.count()  # one inproc address per Connection of this process


@dataclass(frozen=True)
class ClientCurve:
    """CURVE keys of a client: the broker's public key, and our own pair."""

    server_key: bytes
    public: bytes
    secret: bytes


def handshake_certain(event: int, value: int) -> bool:
    """Whether a failed handshake is the broker saying no (rather than, say, a broker stopping)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return True
    return event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


def handshake_problem(event: int, value: int, encrypted: bool) -> str:
    """Plain words for a failed ZMTP handshake, as seen by the client's socket monitor."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            "the broker refused this client's key (not in its --allow folder); "
            "send the broker's admin your public key: python -m chat.keys show"
        )
    mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    if encrypted and mismatch:
        return "the broker does not use encryption: run without --server-key, or start it with --secure"
    if encrypted:
        return (
            "the encrypted handshake failed: --server-key is not this broker's public key, "
            "or the broker does not use encryption"
        )
    if mismatch:
        return "the broker requires encryption: run with --server-key KEY (the broker prints the command at start)"
    return (
        "the handshake with the broker failed; it probably requires encryption: "
        "run with --server-key KEY (the broker prints the command at start)"
    )


class Connection:
    """Drives a ``ClientCore`` over real sockets until it asks to exit."""

    def __init__(
        self,
        core: ClientCore,
        host: str,
        port: int,
        show: Callable[[ev.Show], None],
        *,
        curve: ClientCurve | None = None,
        ctx: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.curve = curve
        self.monitor: zmq.Socket | None = None
        self.host = host
        self.port = port
        self.show = show
        self.clock = clock
        self.ctx = ctx or zmq.Context.instance()
        self.poller = zmq.Poller()
        self.dealer: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None
        self.sub_port: int | None = None
        self.rooms: set[str] = set()
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Front ends wake the loop through an inproc PAIR, not a pipe: Windows' zmq_poll polls sockets only.
        address = f"inproc://chat-client-wake-{next(_wake_numbers)}"
        self._wake = self.ctx.socket(zmq.PAIR)
        self._wake.bind(address)
        self._waker = self.ctx.socket(zmq.PAIR)  # used by any thread, always under _lock
        self._waker.connect(address)
        self._lock = threading.RLock()  # re-entrant: a signal handler on the loop thread may submit
        self._closed = False
        self.poller.register(self._wake, zmq.POLLIN)
        self.exit: ev.Exit | None = None

    # ------------------------------------------------------------------ for front ends (any thread)

    def submit(self, line: str) -> None:
        self._submit(line)

    def submit_eof(self) -> None:
        self._submit(_EOF)

    def request(self, request: ev.Request) -> None:
        """What the front end asks for itself (``events.AskRoster``...), answered through ``show``."""
        self._submit(request)

    def _submit(self, item: object) -> None:
        with self._lock:  # never touch the wake socket once close() has closed it
            if self._closed:
                return
            self._inbox.put(item)
            try:
                self._waker.send(b"", zmq.NOBLOCK)
            except zmq.Again:
                pass  # a thousand wake-ups are queued already: the loop will see this item with them

    # ------------------------------------------------------------------ the loop

    def run(self) -> ev.Exit:
        self._new_dealer()
        try:
            self._apply(self.core.start(self.clock()))
            while self.exit is None:
                timeout_ms = int(self.core.next_wakeup(self.clock()) * 1000) + 1
                for sock, _ in self.poller.poll(timeout_ms):
                    if isinstance(sock, zmq.Socket) and sock.closed:
                        continue  # replaced by a reconnect while this batch was handled
                    if sock is self.dealer:
                        self._drain(self.dealer, self.core.on_direct)
                    elif sock is self.sub:
                        self._drain(self.sub, self.core.on_published)
                    elif sock is self._wake:
                        self._read_inbox()
                    elif sock is self.monitor:
                        self._read_monitor()
                    if self.exit is not None:
                        break
                if self.exit is None:
                    self._apply(self.core.tick(self.clock()))
        finally:
            self.close()
        return self.exit

    def _drain(self, sock: zmq.Socket, handle: Callable[[list[bytes], float], list[ev.Action]]) -> None:
        for _ in range(1000):  # bounded, so that one busy socket cannot starve the others
            if sock.closed:  # what we just handled replaced it (a reconnect)
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._apply(handle(frames, self.clock()))
            if self.exit is not None:
                return

    def _read_monitor(self) -> None:
        while self.exit is None and self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = int(event["event"]), int(event["value"])
            problem = handshake_problem(kind, value, self.curve is not None)
            self._apply(self.core.on_handshake_failed(problem, handshake_certain(kind, value), self.clock()))

    def _read_inbox(self) -> None:
        for _ in range(10_000):  # bounded; the loop polls again if more are left
            try:
                self._wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while self.exit is None:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            now = self.clock()
            if item is _EOF:
                self._apply(self.core.on_eof(now))
            elif isinstance(item, str):
                self._apply(self.core.on_input(item, now))
            else:
                self._apply(self.core.on_request(item, now))  # type: ignore[arg-type] # only requests are left

    def _apply(self, actions: list[ev.Action]) -> None:
        for action in actions:
            if isinstance(action, ev.Send):
                assert self.dealer is not None
                try:
                    self.dealer.send_multipart(p.encode(action.message), zmq.NOBLOCK)
                except zmq.Again:
                    pass  # queue full while the broker is away: the core resends what matters
            elif isinstance(action, ev.Reconnect):
                self._new_dealer()
            elif isinstance(action, ev.Subscribe):
                self._subscribe(action)
            elif isinstance(action, ev.Unsubscribe):
                if self.sub is not None and action.room in self.rooms:
                    self.sub.setsockopt(zmq.UNSUBSCRIBE, p.topic_frame(action.room))
                    self.rooms.discard(action.room)
            elif isinstance(action, ev.Exit):
                self.exit = action
                return
            else:
                self.show(action)

    # ------------------------------------------------------------------ sockets

    def _new_dealer(self) -> None:
        self._close_dealer()
        self.dealer = self._socket(zmq.DEALER)
        # The monitor reports a refused handshake (wrong key, no key, key not allowed), which would
        # otherwise look like a broker that never answers.
        self.monitor = self.dealer.get_monitor_socket(HANDSHAKE_EVENTS)
        self.dealer.connect(p.endpoint(self.host, self.port))
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def _close_dealer(self) -> None:
        if self.dealer is None:
            return
        self.poller.unregister(self.dealer)
        if self.monitor is not None:
            self.poller.unregister(self.monitor)
            self.dealer.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        self.dealer.close(linger=0)
        self.dealer = None

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if ":" in self.host:
            sock.setsockopt(zmq.IPV6, 1)
        if self.curve is not None:
            sock.curve_serverkey = self.curve.server_key
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
        return sock

    def _subscribe(self, action: ev.Subscribe) -> None:
        if self.sub is None or self.sub_port != action.pub_port:
            if self.sub is not None:
                self.poller.unregister(self.sub)
                self.sub.close(linger=0)
            self.sub = self._socket(zmq.SUB)
            self.sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
            self.sub.connect(p.endpoint(self.host, action.pub_port))
            self.poller.register(self.sub, zmq.POLLIN)
            self.sub_port = action.pub_port
            self.rooms = set()
        for room in set(action.rooms) - self.rooms:
            self.sub.setsockopt(zmq.SUBSCRIBE, p.topic_frame(room))
        self.rooms |= set(action.rooms)

    def close(self) -> None:
        self._close_dealer()
        if self.sub is not None:
            self.sub.close(linger=0)
            self.sub = None
        with self._lock:
            if not self._closed:
                self._closed = True
                self._waker.close(linger=0)
                self._wake.close(linger=0)
