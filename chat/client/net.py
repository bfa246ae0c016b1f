"""The client's socket loop: a DEALER to send, a SUB to receive, and a queue of user input.

It runs in one thread. Front ends call ``submit`` from any thread and receive what to show through the
``show`` callback, which is called on the loop's thread.
"""

from __future__ import annotations

import os
import queue
import time
from typing import Callable

import zmq

from chat import protocol as p
from chat.client import events as ev
from chat.client.core import ClientCore

SUB_RCVHWM = 100_000  # events queued for a slow reader before libzmq drops (and the core fetches them)
_EOF = object()


class Connection:
    """Drives a ``ClientCore`` over real sockets until it asks to exit."""

    def __init__(
        self,
        core: ClientCore,
        host: str,
        port: int,
        show: Callable[[ev.Show], None],
        *,
        ctx: zmq.Context | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
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
        self._wake_r, self._wake_w = os.pipe()
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.exit: ev.Exit | None = None

    # ------------------------------------------------------------------ for front ends (any thread)

    def submit(self, line: str) -> None:
        self._inbox.put(line)
        os.write(self._wake_w, b".")

    def submit_eof(self) -> None:
        self._inbox.put(_EOF)
        os.write(self._wake_w, b".")

    # ------------------------------------------------------------------ the loop

    def run(self) -> ev.Exit:
        self._new_dealer()
        try:
            self._apply(self.core.start(self.clock()))
            while self.exit is None:
                timeout_ms = int(self.core.next_wakeup(self.clock()) * 1000) + 1
                for sock, _ in self.poller.poll(timeout_ms):
                    if sock is self.dealer:
                        self._drain(self.dealer, self.core.on_direct)
                    elif sock is self.sub:
                        self._drain(self.sub, self.core.on_published)
                    elif sock == self._wake_r:
                        self._read_inbox()
                    if self.exit is not None:
                        break
                if self.exit is None:
                    self._apply(self.core.tick(self.clock()))
        finally:
            self.close()
        return self.exit

    def _drain(self, sock: zmq.Socket, handle: Callable[[list[bytes], float], list[ev.Action]]) -> None:
        for _ in range(1000):  # bounded, so that one busy socket cannot starve the others
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._apply(handle(frames, self.clock()))
            if self.exit is not None:
                return

    def _read_inbox(self) -> None:
        os.read(self._wake_r, 4096)
        while self.exit is None:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            now = self.clock()
            if item is _EOF:
                self._apply(self.core.on_eof(now))
            else:
                assert isinstance(item, str)
                self._apply(self.core.on_input(item, now))

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
            elif isinstance(action, ev.Exit):
                self.exit = action
                return
            else:
                self.show(action)

    # ------------------------------------------------------------------ sockets

    def _new_dealer(self) -> None:
        if self.dealer is not None:
            self.poller.unregister(self.dealer)
            self.dealer.close(linger=0)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self._ipv6(self.dealer)
        self.dealer.connect(p.endpoint(self.host, self.port))
        self.poller.register(self.dealer, zmq.POLLIN)

    def _subscribe(self, action: ev.Subscribe) -> None:
        if self.sub is None or self.sub_port != action.pub_port:
            if self.sub is not None:
                self.poller.unregister(self.sub)
                self.sub.close(linger=0)
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
            self._ipv6(self.sub)
            self.sub.connect(p.endpoint(self.host, action.pub_port))
            self.poller.register(self.sub, zmq.POLLIN)
            self.sub_port = action.pub_port
            self.rooms = set()
        for room in set(action.rooms) - self.rooms:
            self.sub.setsockopt(zmq.SUBSCRIBE, p.topic_frame(room))
        self.rooms |= set(action.rooms)

    def _ipv6(self, sock: zmq.Socket) -> None:
        if ":" in self.host:
            sock.setsockopt(zmq.IPV6, 1)

    def close(self) -> None:
        for sock in (self.dealer, self.sub):
            if sock is not None:
                sock.close(linger=0)
        self.dealer = self.sub = None
        os.close(self._wake_r)
        os.close(self._wake_w)
