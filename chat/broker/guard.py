"""A bound on what a peer may send the broker without finishing a message.

libzmq hands a multipart message over only once its last frame is in, and it bounds a frame
(``ZMQ_MAXMSGSIZE``) and a queue in whole messages (the high-water marks), never the frames of one
message: a peer that sends frames with MORE forever grows the broker without limit, and no socket option
stops it. So, for every TCP connection of the broker's sockets (learnt from a socket monitor), the guard
compares the bytes the kernel has received with the bytes of the messages libzmq has delivered from that
connection (the frame property ``ZMQ_SRCFD`` says which one), and cuts a connection that runs more than
``PENDING_BYTES`` ahead: every connection as soon as the broker has grown by ``GROWTH``, and otherwise
``SWEEP`` connections in turn at each tick of the server (with thousands of clients, every connection at
every tick was most of the broker's CPU). The PUB socket delivers nothing to the broker (subscriptions stay in libzmq), so
a subscriber may send ``PENDING_BYTES`` in all.

The guard also tells how much the broker has written to a connection that the peer has not taken yet
(``unread``): a client that asks for history and does not read it is sent no more of it (see the core).

The byte counts come from Linux (``TCP_INFO``'s ``tcpi_bytes_received``, and ``SIOCOUTQ``); elsewhere
the guard does nothing and the broker says so at start.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from types import ModuleType
from typing import Callable

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import zmq
from zmq.utils.monitor import parse_monitor_message

GROWTH = 16 * 1024 * 1024  # the broker's own growth (resident memory) that brings the next check forward
SWEEP = 1024  # connections a periodic ``sweep`` looks at (a system call each); growth checks them all
PENDING_BYTES = 8 * 1024 * 1024  # received and not yet part of a delivered message (a client's 500-line window fits)
FRAME_OVERHEAD = 9  # the most a ZMTP frame header takes on the wire
CURVE_OVERHEAD = 33  # what a CURVE MESSAGE command adds to each frame (command name, nonce, MAC, flags)
_TCP_INFO_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in Linux's struct tcp_info (since 4.1)
_TCP_INFO_SIZE = _TCP_INFO_BYTES_RECEIVED + 8

_SIOCOUTQ = 0x5411  # Linux: bytes in a socket's send queue, not yet acknowledged by the peer
SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO") and fcntl is not None


def bytes_received(sock: socket.socket) -> int | None:
    """What the kernel has received on TCP socket ``sock`` (None if it is not one, or no longer open)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    return int(_RECEIVED.unpack_from(info, _TCP_INFO_BYTES_RECEIVED)[0])


_RECEIVED = struct.Struct("=Q")


def borrow(fd: int) -> socket.socket | None:
    """A Python socket on libzmq's descriptor ``fd``, to ask the kernel about it; ``detach`` it, never
    close it (None when ``fd`` is no longer open)."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        return None


def unread(fd: int) -> int:
    """Bytes written to ``fd`` that its peer has not taken, when they fill half its send buffer or more
    (a reader that does not read); else 0, as for a peer that reads (or when it cannot be known)."""
    if fcntl is None:
        return 0
    try:
        queued = int(struct.unpack("=i", fcntl.ioctl(fd, _SIOCOUTQ, b"\0" * 4))[0])
        if not queued:
            return 0
        sock = socket.socket(fileno=fd)
        try:
            capacity = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        finally:
            sock.detach()
    except OSError:
        return 0
    return queued if 2 * queued >= capacity else 0


def cut(fd: int) -> str:
    """Shut a connection down under libzmq, which then closes it as if the peer had gone; its peer's address."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return "?"
    try:
        try:
            peer = str(sock.getpeername()[0])
        except OSError:
            peer = "?"
        sock.shutdown(socket.SHUT_RDWR)
        return peer
    except OSError:
        return peer
    finally:
        sock.detach()


class PendingGuard:
    """Watches the connections of some sockets; ``delivered`` is told each message, ``check`` cuts."""

    def __init__(
        self,
        sockets: list[zmq.Socket],
        *,
        secure: bool,
        budget: int = PENDING_BYTES,
        notice: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.budget = budget
        self.notice = notice
        self.per_frame = FRAME_OVERHEAD + (CURVE_OVERHEAD if secure else 0)
        self.accounted: dict[int, int] = {}  # fd -> bytes of it explained by delivered messages (and credit)
        # fd -> a Python socket on it, made once per connection: making one per check was most of the
        # broker's CPU while thousands of clients joined (each check visits every connection).
        self.borrowed: dict[int, socket.socket] = {}
        self._sweep_at = 0  # where the next sweep begins, in the order of ``accounted``
        self.sockets = sockets
        self.monitors = [s.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED) for s in sockets]
        # Checking every connection costs a system call each; reading our own size costs one in all. The
        # server calls ``watch`` often, and it checks the connections as soon as the broker grows.
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._checked_at_size = self._resident()

    def _resident(self) -> int:
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page

    def watch(self) -> None:
        """Check the connections now if the broker has grown by GROWTH since the last check."""
        if self._resident() - self._checked_at_size > GROWTH:
            self.check()

    def delivered(self, fd: int, frames: list[bytes]) -> None:
        """A message came in from connection ``fd``."""
        accounted = self.accounted.get(fd)
        if accounted is not None:
            self.accounted[fd] = accounted + sum(map(len, frames)) + self.per_frame * len(frames)

    def sweep(self, count: int = SWEEP) -> None:
        """Check the next ``count`` connections, in turn: with thousands of clients, looking at every one
        at each tick was most of the broker's CPU. A peer that grows the broker fast is caught sooner by
        ``watch``, which checks every connection once the broker has grown by GROWTH."""
        self.follow_connections()
        fds = list(self.accounted)
        if len(fds) <= count:
            self._check(fds)
            return
        start = self._sweep_at % len(fds)
        self._sweep_at = start + count
        self._check(fds[start : start + count] + fds[: max(0, start + count - len(fds))])

    def check(self) -> None:
        """Cut every connection that is more than the budget ahead of what it delivered."""
        self._checked_at_size = self._resident()
        self.follow_connections()
        self._check(list(self.accounted))

    def _check(self, fds: list[int]) -> None:
        for fd in fds:
            accounted = self.accounted.get(fd)
            if accounted is None:
                continue
            sock = self.borrowed.get(fd)
            received = bytes_received(sock) if sock is not None else None
            if received is None:
                continue
            ahead = received - accounted
            if ahead < 0:  # the overhead is counted high: no credit for it
                self.accounted[fd] = received
            elif ahead > self.budget:
                self._forget(fd)
                peer = cut(fd)
                self.notice(
                    f"cut a connection from {peer}: {ahead // 1024} KiB sent without finishing a message "
                    f"(at most {self.budget // 1024} KiB)"
                )

    def follow_connections(self) -> None:
        for monitor in self.monitors:
            while True:
                try:
                    event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                fd = int(event["value"])
                self._forget(fd)  # an ACCEPTED on a descriptor not yet seen closed: it was reused
                if event["event"] == zmq.EVENT_ACCEPTED:
                    self.accounted[fd] = 0
                    sock = borrow(fd)
                    if sock is not None:
                        self.borrowed[fd] = sock

    def _forget(self, fd: int) -> None:
        self.accounted.pop(fd, None)
        sock = self.borrowed.pop(fd, None)
        if sock is not None:
            sock.detach()  # the descriptor is libzmq's: never close it here

    def close(self) -> None:
        for fd in list(self.borrowed):
            self._forget(fd)
        os.close(self._statm)
        for sock, monitor in zip(self.sockets, self.monitors):
            sock.disable_monitor()
            monitor.close(linger=0)
