"""The client's asyncio driver: many sessions on one event loop (``zmq.asyncio``), for gateways.

The same ``ClientCore`` as the thread driver (``chat.client.net``), and the same action handling
(``chat.client.driver``); only the waiting differs. Each socket has a reader task, and one timer per
session calls the core's ``tick`` when ``next_wakeup`` says. Front ends call ``submit`` on the loop's
thread; ``show`` is called there too, synchronously, so a front end only queues what it shows.

What the sessions of one gateway share sits between their SUBs and their cores: a ``SharedDecoder``
decodes each published message once for all the sessions that receive it (every session still has
its own SUB, and its core its own order, gaps and refills).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from chat import protocol as p
from chat.client import events as ev
from chat.client.core import ClientCore, published_events
from chat.client.driver import ClientCurve, CoreDriver

TIMER_SLACK = 0.0005  # seconds: a wake-up this close to the one already set is not set again
DRAIN_BATCH = 200  # messages handled from one socket before the loop turns to the others (and the writers)
MAX_DEFERRED = 64  # HISTORY answers kept while the SUB is held (the core asks again for what is dropped)
DECODED_KEPT = 4096  # published messages a SharedDecoder remembers: sessions that lag further decode again


class SharedDecoder:
    """``chat.client.core.published_events`` once per published message for every session of a process.

    The sessions of a gateway subscribe to the same rooms, so each of their SUBs receives the same
    frames: the first one decodes them, the others get the same (immutable) events. A malformed
    message is not remembered: it raises for every session, as ``published_events`` does."""

    def __init__(self, kept: int = DECODED_KEPT) -> None:
        self.kept = kept
        self._decoded: dict[tuple[bytes, ...], list[p.Event]] = {}

    def __call__(self, frames: list[bytes]) -> list[p.Event]:
        key = tuple(frames)
        events = self._decoded.get(key)
        if events is None:
            events = self._decoded[key] = published_events(frames)
            if len(self._decoded) > self.kept:
                del self._decoded[next(iter(self._decoded))]  # the oldest: dicts keep their order
        return events


class AsyncConnection(CoreDriver):
    """Drives a ``ClientCore`` on the running asyncio loop until it asks to exit or is closed."""

    def __init__(
        self,
        core: ClientCore,
        host: str,
        port: int,
        show: Callable[[ev.Show], None],
        *,
        ctx: zmq.asyncio.Context,
        curve: ClientCurve | None = None,
        clock: Callable[[], float] = time.monotonic,
        decode: Callable[[list[bytes]], list[p.Event]] = published_events,
    ) -> None:
        super().__init__(core, host, port, show, curve=curve, ctx=ctx, clock=clock)
        self.decode = decode
        self._loop = asyncio.get_running_loop()
        self._readers: dict[zmq.Socket, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf
        self.done: asyncio.Future[ev.Exit] = self._loop.create_future()
        self._published_flowing = asyncio.Event()
        self._published_flowing.set()
        self._deferred: list[list[bytes]] = []  # HISTORY answers that came while the SUB was held

    # ------------------------------------------------------------------ for front ends (the loop's thread)

    def start(self) -> None:
        self._new_dealer()
        self._step(self.core.start(self.clock()))

    def submit(self, line: str) -> None:
        self._step(self.core.on_input(line, self.clock()))

    def submit_eof(self) -> None:
        self._step(self.core.on_eof(self.clock()))

    def hold_published(self, held: bool) -> None:
        """Stop (or go on) reading the SUB, for a front end whose own reader is slow: libzmq's queue
        then fills and drops, and the core's gap refill (``FETCH``) catches up once reading goes on.
        ``HISTORY`` answers wait too (a PONG would otherwise have the core fetch the held events over
        the DEALER, past the hold); everything else on the DEALER goes on, so the session stays alive."""
        if held:
            self._published_flowing.clear()
            return
        self._published_flowing.set()
        deferred, self._deferred = self._deferred, []
        for frames in deferred:
            if self.dealer is not None and self.exit is None:
                self._handle(self.dealer, frames)

    async def run(self) -> ev.Exit:
        """Start, and wait until the core exits (or ``close``)."""
        self.start()
        return await asyncio.shield(self.done)

    def close(self, reason: str = "closed") -> None:
        """Close the sockets at once (no goodbye: ``submit_eof`` is the polite way out)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_sockets()
        if not self.done.done():
            self.done.set_result(self.exit or ev.Exit(ev.EXIT_OK, reason))

    # ------------------------------------------------------------------ the driver's waiting

    def _watch(self, sock: zmq.Socket) -> None:
        self._readers[sock] = self._loop.create_task(self._read(sock))

    def _unwatch(self, sock: zmq.Socket) -> None:
        task = self._readers.pop(sock, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # the current one sees its socket closed and ends by itself

    def _send(self, frames: list[bytes]) -> None:
        assert self.dealer is not None
        sent = self.dealer.send_multipart(frames, zmq.NOBLOCK)
        # An asyncio socket never raises here: Again (the broker is away) comes back in the future,
        # already done. Read it, so that it is not reported as never retrieved; the core resends.
        if sent.done() and not sent.cancelled():
            sent.exception()

    async def _read(self, sock: zmq.Socket) -> None:
        # The same socket, not awaited: what is queued already is read at once, up to DRAIN_BATCH, which
        # saves a turn of the event loop per message under load (the thread driver drains the same way).
        queued = zmq.Socket.shadow(sock.underlying)
        while not sock.closed and self.exit is None:
            if sock is self.sub and not self._published_flowing.is_set():
                await self._published_flowing.wait()
                continue
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError:
                if sock.closed:
                    return
                raise
            for _ in range(DRAIN_BATCH):
                self._handle(sock, frames)
                if sock.closed or self.exit is not None:
                    return
                if sock is self.sub and not self._published_flowing.is_set():
                    break
                try:
                    frames = queued.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
            else:
                # A full batch: give the other sessions and the front end's writers their turn. (The
                # await above does not: a message already queued makes its future done at once.)
                self._after()
                await asyncio.sleep(0)
                continue
            self._after()  # once a batch, not once a line: the core's wake-up moves little meanwhile

    def _handle(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        now = self.clock()
        if sock is self.dealer:
            if not self._published_flowing.is_set() and frames[1:2] == [p.History.TYPE]:
                if len(self._deferred) < MAX_DEFERRED:
                    self._deferred.append(frames)
                return
            self._step(self.core.on_direct(frames, now))
        elif sock is self.sub:
            self._apply(self.core.on_published(frames, now, self.decode))
            if self.exit is not None:
                self.close()
        elif sock is self.monitor:
            event = parse_monitor_message(frames)
            self._monitor_event(int(event["event"]), int(event["value"]))
            self._after()

    def _tick(self) -> None:
        self._timer = None
        self._timer_due = math.inf
        self._step(self.core.tick(self.clock()))

    def _step(self, actions: list[ev.Action]) -> None:
        if self.exit is not None:
            return
        self._apply(actions)
        self._after()

    def _after(self) -> None:
        """Finish when the core said so; otherwise make sure ``tick`` comes when the core needs it."""
        if self.exit is not None:
            self.close()
            return
        now = self.clock()
        due = now + self.core.next_wakeup(now)
        if due < self._timer_due - TIMER_SLACK:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(due - now, self._tick)
            self._timer_due = due
