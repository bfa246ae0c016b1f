"""The client's socket loop: a DEALER to send, a SUB to receive, and a queue of user input.

It runs in one thread. Front ends call ``submit`` from any thread and receive what to show through the
``show`` callback, which is called on the loop's thread.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from chat.client import events as ev
from chat.client.core import ClientCore
from chat.client.driver import ClientCurve, CoreDriver

_EOF = object()
_wake_numbers = itertools.count()  # one inproc address per Connection of this process


class Connection(CoreDriver):
    """Drives a ``ClientCore`` over real sockets, in one thread with a poller, until it asks to exit."""

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
        super().__init__(core, host, port, show, curve=curve, ctx=ctx or zmq.Context.instance(), clock=clock)
        self.poller = zmq.Poller()
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
            self._monitor_event(int(event["event"]), int(event["value"]))

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

    def _watch(self, sock: zmq.Socket) -> None:
        self.poller.register(sock, zmq.POLLIN)

    def _unwatch(self, sock: zmq.Socket) -> None:
        self.poller.unregister(sock)

    def close(self) -> None:
        self._close_sockets()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._waker.close(linger=0)
                self._wake.close(linger=0)
