"""What every driver of a ``ClientCore`` does with the core's actions, whatever waits on the sockets.

A driver owns one session's sockets: a DEALER (with a monitor that reports refused handshakes) and a
SUB. ``CoreDriver`` turns the core's actions into socket calls and hands the rest to the front end; a
subclass only says how it waits: ``chat.client.net`` with a poller in a thread, ``chat.client.aio``
with asyncio tasks (``zmq.asyncio``), as pyzmq's ``zmq/auth`` has ``thread.py`` and ``asyncio.py`` over
one ``base.py``. Both run the same core, so acks, resends, gap refill and reconnects are one code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import zmq

from chat import protocol as p
from chat.client import events as ev
from chat.client.core import ClientCore

SUB_RCVHWM = 100_000  # events queued for a slow reader before libzmq drops (and the core fetches them)
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


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


_FOR_THE_DRIVER = frozenset({ev.Send, ev.Reconnect, ev.Subscribe, ev.Unsubscribe, ev.Exit})


class CoreDriver:
    """One session's sockets and the core's actions applied to them. Subclasses say how to wait:
    ``_watch`` a new socket (DEALER, its monitor, SUB) and ``_unwatch`` one about to be closed."""

    def __init__(
        self,
        core: ClientCore,
        host: str,
        port: int,
        show: Callable[[ev.Show], None],
        *,
        curve: ClientCurve | None,
        ctx: zmq.Context,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.host = host
        self.port = port
        self.show = show
        self.curve = curve
        self.ctx = ctx
        self.clock = clock
        self.dealer: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None
        self.sub_port: int | None = None
        self.rooms: set[str] = set()
        self.exit: ev.Exit | None = None

    def _watch(self, sock: zmq.Socket) -> None:
        raise NotImplementedError

    def _unwatch(self, sock: zmq.Socket) -> None:
        raise NotImplementedError

    def _send(self, frames: list[bytes]) -> None:
        """Send without blocking; a full queue (the broker is away) drops it: the core resends what matters."""
        assert self.dealer is not None
        try:
            self.dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: list[ev.Action]) -> None:
        for action in actions:
            if type(action) not in _FOR_THE_DRIVER:  # most actions are things to show: one test for them
                self.show(action)  # type: ignore[arg-type]
            elif isinstance(action, ev.Send):
                frames = p.encode(action.message)
                self._send(frames + [action.data] if action.data else frames)
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

    def _monitor_event(self, event: int, value: int) -> None:
        problem = handshake_problem(event, value, self.curve is not None)
        self._apply(self.core.on_handshake_failed(problem, handshake_certain(event, value), self.clock()))

    # ------------------------------------------------------------------ sockets

    def _new_dealer(self) -> None:
        self._close_dealer()
        self.dealer = self._socket(zmq.DEALER)
        # The monitor reports a refused handshake (wrong key, no key, key not allowed), which would
        # otherwise look like a broker that never answers.
        self.monitor = self.dealer.get_monitor_socket(HANDSHAKE_EVENTS)
        self.dealer.connect(p.endpoint(self.host, self.port))
        self._watch(self.dealer)
        self._watch(self.monitor)

    def _close_dealer(self) -> None:
        if self.dealer is None:
            return
        self._unwatch(self.dealer)
        if self.monitor is not None:
            self._unwatch(self.monitor)
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
            self._close_sub()
            self.sub = self._socket(zmq.SUB)
            self.sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
            self.sub.connect(p.endpoint(self.host, action.pub_port))
            self._watch(self.sub)
            self.sub_port = action.pub_port
            self.rooms = set()
        for room in set(action.rooms) - self.rooms:
            self.sub.setsockopt(zmq.SUBSCRIBE, p.topic_frame(room))
        self.rooms |= set(action.rooms)

    def _close_sub(self) -> None:
        if self.sub is not None:
            self._unwatch(self.sub)
            self.sub.close(linger=0)
            self.sub = None

    def _close_sockets(self) -> None:
        self._close_dealer()
        self._close_sub()
