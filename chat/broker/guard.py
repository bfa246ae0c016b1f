"""A bound on what a peer may send the broker without finishing a message.

libzmq hands a multipart message over only once its last frame is in, and it bounds a frame
(``ZMQ_MAXMSGSIZE``) and a queue in whole messages (the high-water marks), never the frames of one
message: a peer that sends frames with MORE forever grows the broker without limit, and no socket option
stops it. So, for every TCP connection of the broker's sockets (learnt from a socket monitor), the guard
compares the bytes the kernel has received with the bytes of the messages libzmq has delivered from that
connection (the frame property ``ZMQ_SRCFD`` says which one), and cuts a connection that runs more than
``PENDING_BYTES`` ahead. The PUB socket delivers nothing to the broker (subscriptions stay in libzmq), so
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
PENDING_BYTES = 8 * 1024 * 1024  # received and not yet part of a delivered message (a client's 500-line window fits)
FRAME_OVERHEAD = 9  # the most a ZMTP frame header takes on the wire
CURVE_OVERHEAD = 33  # what a CURVE MESSAGE command adds to each frame (command name, nonce, MAC, flags)
_TCP_INFO_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in Linux's struct tcp_info (since 4.1)
_TCP_INFO_SIZE = _TCP_INFO_BYTES_RECEIVED + 8

_SIOCOUTQ = 0x5411  # Linux: bytes in a socket's send queue, not yet acknowledged by the peer
SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "TCP_INFO") and fcntl is not None


def bytes_received(fd: int) -> int | None:
    """What the kernel has received on TCP socket ``fd`` (None if it is not one, or no longer open)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    finally:
        sock.detach()  # the descriptor is libzmq's: never close it here
    if len(info) < _TCP_INFO_SIZE:
        return None
    return int(struct.unpack_from("=Q", info, _TCP_INFO_BYTES_RECEIVED)[0])


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

    def check(self) -> None:
        """Cut every connection that is more than the budget ahead of what it delivered."""
        self._checked_at_size = self._resident()
        self.follow_connections()
        for fd, accounted in list(self.accounted.items()):
            received = bytes_received(fd)
            if received is None:
                continue
            ahead = received - accounted
            if ahead < 0:  # the overhead is counted high: no credit for it
                self.accounted[fd] = received
            elif ahead > self.budget:
                del self.accounted[fd]
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
                if event["event"] == zmq.EVENT_ACCEPTED:
                    self.accounted[fd] = 0
                else:
                    self.accounted.pop(fd, None)

    def close(self) -> None:
        os.close(self._statm)
        for sock, monitor in zip(self.sockets, self.monitors):
            sock.disable_monitor()
            monitor.close(linger=0)
