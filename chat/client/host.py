"""Many client-core sessions on one asyncio loop: what every gateway (web, IRC) needs from the client.

A gateway maps one foreign session (a browser tab, an IRC connection) onto one ``ClientCore`` driven
by ``AsyncConnection``, and back. ``SessionHost`` opens those sessions towards one broker, enforces the
gateway's limits (sessions in all, and per remote address), and closes every one of them at the end.
It knows nothing of HTTP, WebSocket or IRC: a front end gives it a ``show`` callback and gets a
``Session`` to type into.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import zmq.asyncio

from chat import protocol as p
from chat.client import events as ev
from chat.client.aio import AsyncConnection
from chat.client.core import ClientCore, Outgoing
from chat.client.driver import ClientCurve
from chat.errors import ChatError

MAX_SESSIONS = 1000  # sessions one gateway hosts at once
MAX_SESSIONS_PER_ADDRESS = 20  # from one remote address (a person with many tabs; a NAT)
HISTORY_LINES = 20  # recent lines a new session shows


class SessionLimit(ChatError):
    """The gateway has as many sessions as it may: in all, or from that address."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where the hosted sessions connect, and with which CURVE keys (None: not encrypted)."""

    host: str
    port: int
    curve: ClientCurve | None = None


@dataclass(frozen=True)
class Resume:
    """What a front end kept of a session whose gateway went away: enough to go on without a gap."""

    token: str
    history_id: str
    rooms: dict[str, int]  # room -> the last sequence number shown there
    current: str = ""
    pending: list[Outgoing] = field(default_factory=list)  # sent, never acknowledged


class Session:
    """One hosted user: type into it; what it shows goes to the front end's ``show``."""

    def __init__(self, host: SessionHost, address: str, conn: AsyncConnection) -> None:
        self.address = address
        self.conn = conn
        self._host = host

    @property
    def core(self) -> ClientCore:
        return self.conn.core

    def submit(self, line: str) -> None:
        self.conn.submit(line)

    def focus(self, room: str) -> None:
        """Type into ``room`` from now on, if the session is in it: what ``/switch`` does, without its
        notice. A gateway's conversation (a browser's open room, IRC's ``PRIVMSG #room``) names it."""
        key = p.room_key(room)
        if key in self.core.rooms:
            self.core.current = key

    def leave(self) -> None:
        """Leave politely: the lines typed are delivered first (the core's drain), then LEAVE."""
        self.conn.submit_eof()

    def close(self) -> None:
        """Drop the sockets at once; the broker times the session out."""
        self.conn.close()

    async def wait(self) -> ev.Exit:
        return await asyncio.shield(self.conn.done)


class SessionHost:
    """Opens sessions towards one broker on the running loop, within the gateway's limits."""

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        max_sessions: int = MAX_SESSIONS,
        per_address: int = MAX_SESSIONS_PER_ADDRESS,
        history_lines: int = HISTORY_LINES,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.broker = broker
        self.max_sessions = max_sessions
        self.per_address = per_address
        self.history_lines = history_lines
        self.ctx = ctx or zmq.asyncio.Context()
        self._own_ctx = ctx is None
        self.sessions: set[Session] = set()
        self._by_address: Counter[str] = Counter()

    def open(
        self,
        address: str,
        show: Callable[[ev.Show], None],
        *,
        name: str = "",
        room: str = p.DEFAULT_ROOM,
        resume: Resume | None = None,
        on_exit: Callable[[ev.Exit], None] | None = None,
    ) -> Session:
        """Start a session for the front end at ``address``. Raises ``SessionLimit`` when full."""
        if len(self.sessions) >= self.max_sessions:
            raise SessionLimit(f"this gateway hosts {self.max_sessions} sessions already; try again later")
        if self._by_address[address] >= self.per_address:
            raise SessionLimit(f"{self.per_address} sessions from one address at most")
        # local_files=False: a /send or /get from a browser or an IRC client must not touch this machine's disk.
        core = ClientCore(name or None, interactive=True, history_lines=self.history_lines, room=room, local_files=False)
        if resume is not None:
            core.carry_on(resume.token, resume.history_id, resume.rooms, resume.current, resume.pending)
        conn = AsyncConnection(core, self.broker.host, self.broker.port, show, ctx=self.ctx, curve=self.broker.curve)
        session = Session(self, address, conn)
        self.sessions.add(session)
        self._by_address[address] += 1

        def ended(done: asyncio.Future[ev.Exit]) -> None:
            self.sessions.discard(session)
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]
            if on_exit is not None and not done.cancelled():
                on_exit(done.result())

        conn.done.add_done_callback(ended)
        conn.start()
        return session

    def close_all(self) -> None:
        """Drop every session's sockets, without a goodbye: a front end that comes back to another
        gateway takes its session back (``Resume``) before the broker times it out, with no leave and
        join lines in between."""
        for session in list(self.sessions):
            session.close()
        if self._own_ctx:
            self.ctx.term()
