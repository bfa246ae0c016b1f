"""The IRC gateway: one client-core session per IRC connection, over asyncio streams.

A gateway translates; it does not decide. Names, time, order and rights stay with the broker: a nick
is registered when the broker's WELCOME says so, a line is echoed when the broker acknowledges it (with
the broker's time), a channel is joined when the broker says ENTERED. IRC lines are parsed and written
by ``chat.irc.lines``; each command has one entry in ``COMMANDS`` (ergo's habit), and each thing a
session shows has one handler in ``SHOWN``: the whole mapping, both ways, on two screens.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from chat import protocol as p
from chat.client import events as ev
from chat.client.host import MAX_SESSIONS, MAX_SESSIONS_PER_ADDRESS, BrokerAddress, Session, SessionHost, SessionLimit
from chat.irc import lines as irc
from chat.irc.lines import Line

SERVER = "lanchat"  # the server name in replies and the host part of every user's mask
VERSION = "lanchat-irc-1"
CAPS = ("server-time", "message-tags", "echo-message", "batch")
PING_INTERVAL = 60.0  # seconds of silence from a client before the gateway sends it a PING...
PING_TIMEOUT = 60.0  # ...and then before it drops the client, whose broker session then times out
SEND_QUEUE = 256 * 1024  # bytes waiting for a slow reader: the gateway stops reading its SUB (libzmq
# queues, the core refills any gap from history), and reads it again below a quarter of this
SLOW_TIMEOUT = 30.0  # seconds a reader may stay above SEND_QUEUE before it is dropped...
SOCKET_SEND_BUFFER = 64 * 1024  # the kernel's part (SO_SNDBUF): fixed, so that a client that does not
# read is noticed by the send queue above instead of vanishing into megabytes of autotuned buffer
WRITE_LIMIT_FACTOR = 16  # ...and SEND_QUEUE times this is the most that may wait for it at all
MAX_WAITING = 1000  # lines typed and not yet acknowledged: beyond, a line is refused (flood)
READ_CHUNK = 16 * 1024
NAMES_PER_LINE = 20
ISUPPORT = (
    "CHANTYPES=#", f"NICKLEN={p.MAX_NAME_CHARS}", "CASEMAPPING=rfc7613", f"CHANNELLEN={p.MAX_ROOM_CHARS + 1}",
    f"TOPICLEN={p.MAX_TOPIC_CHARS}", "PREFIX=()", "CHANMODES=,,,", f"MAXTARGETS=4", "NETWORK=lanchat", "UTF8ONLY",
)
QUIT_REASONS = {p.LEFT_QUIT: "Quit", p.LEFT_TIMEOUT: "Ping timeout"}
ENCODED_KEPT = 4096  # room lines whose IRC form is kept for the other connections that get them

log = logging.getLogger(__name__)


def mask(nick: str) -> str:
    return f"{nick}!{nick}@{SERVER}"


def said(source: str, command: str, target: str, text: str, tags: dict[str, str]) -> list[Line]:
    """PRIVMSG (or NOTICE) from ``source``, cut into lines that fit in 512 bytes; CTCP ACTION kept
    around each piece."""
    action = text.startswith(irc.CTCP)
    body = text[len("\x01ACTION "):-1] if action else text
    room = irc.MAX_LINE_BYTES - len(f":{mask(source)} {command} {target} :\x01ACTION \x01\r\n".encode())
    return [
        Line(command, (target, f"\x01ACTION {piece}\x01" if action else piece), mask(source), tags)
        for piece in irc.split_text(body, room)
    ]


class RoomLines:
    """A live line of a room as IRC bytes, written once for every connection in the room: the sessions
    of a gateway share their decoded events (``chat.client.aio.SharedDecoder``), so the same event
    object comes to each of them. Two forms: with the ``time`` tag (server-time or message-tags asked
    for) and without. Known by identity; the event is kept with it, so that its id is not reused."""

    def __init__(self, kept: int = ENCODED_KEPT) -> None:
        self.kept = kept
        self._encoded: dict[tuple[int, bool], tuple[p.Event, bytes]] = {}

    def __call__(self, event: p.Event, timed: bool) -> bytes:
        key = (id(event), timed)
        known = self._encoded.get(key)
        if known is not None and known[0] is event:
            return known[1]
        text = f"\x01ACTION {event.text}\x01" if event.kind == p.KIND_ACTION else event.text
        tags = {"time": irc.server_time(event.ts)} if timed else {}
        encoded = b"".join(line.encode() for line in said(irc.shown_nick(event.name), "PRIVMSG", event.room, text, tags))
        self._encoded[key] = (event, encoded)
        if len(self._encoded) > self.kept:
            del self._encoded[next(iter(self._encoded))]
        return encoded


@dataclass(frozen=True)
class Limits:
    """Time and space one IRC connection gets (flags of ``python -m chat.irc``)."""

    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT
    send_queue: int = SEND_QUEUE
    slow_timeout: float = SLOW_TIMEOUT


@dataclass(frozen=True)
class Command:
    """How an IRC command is taken: its handler, its least number of parameters, and whether it needs
    a registered connection (``False``: also before registration, as CAP, NICK, USER, PASS)."""

    handler: Callable[[Connection, Line], None]
    min_params: int = 0
    registered: bool = True


class Connection:
    """One IRC client: its stream, its broker session, and what it asked that the broker will answer."""

    def __init__(self, host: SessionHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 limits: Limits = Limits(), room_lines: RoomLines | None = None) -> None:
        self.host = host
        self.room_lines = room_lines or RoomLines()
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.address = str(peer[0]) if peer else ""
        self.limits = limits
        self.nick = ""  # asked for; the broker's name once registered
        self.user = False
        self.caps: set[str] = set()
        self.negotiating = False  # CAP LS or REQ came before registration: wait for CAP END
        self.registered = False
        self.session: Session | None = None
        self.channels: dict[str, set[str]] = {}  # our rooms -> the name keys of their members
        self.queries: deque[tuple[str, str]] = deque()  # (purpose, argument) per WHO or ROOMS asked
        self.sent: dict[str, tuple[str, str, str]] = {}  # line id -> (target, kind, text) until acked
        self.last_failed = ""  # the reason of the last Failed line: the core's notice repeats it
        self.closing = False
        self.last_heard = time.monotonic()
        self.slow_since: float | None = None
        self.batches = 0
        self._history: dict[str, list[tuple[str, str, int]]] = {}
        self._out: list[bytes] = []  # lines written in this turn of the loop, sent together at its end
        self._out_bytes = 0
        self._naming: set[str] = set()  # rooms just joined whose NAMES have not come: playback waits  # room -> playback waiting for the end of its reply

    # ------------------------------------------------------------------ writing

    def send(self, line: Line) -> None:
        if self.closing or self.writer.is_closing():
            return
        if "server-time" not in self.caps and "message-tags" not in self.caps:
            line = Line(line.command, line.params, line.source)
        elif "message-tags" not in self.caps:
            line = Line(line.command, line.params, line.source, {k: v for k, v in line.tags.items() if k in ("time", "batch")})
        self._write(line.encode())

    def _write(self, data: bytes) -> None:
        """Queue ``data`` for the end of this turn of the loop: one write (one send to the kernel) per
        connection and turn, however many lines the turn brought; at once past ``send_queue``, so that a
        slow reader's SUB is held before the turn has queued more for it."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > self.limits.send_queue:
            self._flush()

    def _flush(self) -> None:
        if not self._out:
            return
        data, self._out, self._out_bytes = b"".join(self._out), [], 0
        if self.closing or self.writer.is_closing():
            return
        behind = self.writer.transport.get_write_buffer_size()
        self.writer.write(data)
        self._watch_backlog(behind)

    @property
    def client(self) -> str:
        """The first parameter of every numeric: our nick, or ``*`` before registration."""
        return self.nick if self.registered else "*"

    def reply(self, numeric: str, *params: str) -> None:
        self.send(Line(numeric, (self.client, *params), SERVER))

    def notice(self, text: str) -> None:
        self.send(Line("NOTICE", (self.client, text), SERVER))

    def say(self, source: str, command: str, target: str, text: str, ts: int | None, batch: str = "") -> None:
        """PRIVMSG (or NOTICE) from ``source``, cut into lines that fit in 512 bytes."""
        tags = {"time": irc.server_time(ts)} if ts is not None else {}
        if batch:
            tags["batch"] = batch
        for line in said(source, command, target, text, tags):
            self.send(line)

    def _watch_backlog(self, behind: int) -> None:
        """A slow reader: stop taking from its SUB above ``send_queue`` (libzmq queues, and drops past
        its high-water mark; the core fetches what it missed once reading goes on); drop a client that
        reads nothing at all: one that was ``behind`` by the limit already before this turn's lines (a
        turn brings at most a batch of the SUB or one history answer, so what waits stays bounded)."""
        waiting = self.writer.transport.get_write_buffer_size()
        if behind > self.limits.send_queue * WRITE_LIMIT_FACTOR:
            self.drop("SendQ exceeded")
        elif waiting > self.limits.send_queue and self.slow_since is None:
            self.slow_since = time.monotonic()
            if self.session is not None:
                self.session.conn.hold_published(True)
            asyncio.ensure_future(self._drained())

    async def _drained(self) -> None:
        try:
            await self.writer.drain()  # returns below the transport's low-water mark
        except ConnectionError:
            return
        self.slow_since = None
        if self.session is not None:
            self.session.conn.hold_published(False)

    def drop(self, reason: str, timed_out: bool = False) -> None:
        """End this connection now (ERROR, then close). A silent client's session is dropped without a
        goodbye, so that the broker says it timed out; otherwise it leaves once its lines are delivered."""
        if self.closing:
            return
        self._flush()  # what was written before the ERROR
        if self.closing:
            return  # the flush found the reader hopelessly behind, and dropped it
        try:
            self.writer.write(Line("ERROR", (f"Closing link: {reason}",)).encode())
        except (ConnectionError, RuntimeError):
            pass
        self.closing = True
        if self.session is not None:
            if timed_out:
                self.session.close()
            else:
                self.session.leave()
        if self.slow_since is not None:
            self.writer.transport.abort()  # what waits for it would never be read
        else:
            self.writer.close()

    # ------------------------------------------------------------------ reading

    async def serve(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SEND_BUFFER)
        self.writer.transport.set_write_buffer_limits(self.limits.send_queue, self.limits.send_queue // 4)
        buffer = bytearray()
        skipping = False  # the rest of a line that was too long
        timer = asyncio.ensure_future(self._keepalive())
        try:
            while not self.closing:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                self.last_heard = time.monotonic()
                buffer += data
                for raw in irc.split_lines(buffer):
                    if skipping:
                        skipping = False
                        continue
                    self.receive(raw)
                    if self.closing:
                        break
                if len(buffer) > irc.MAX_TAGS_BYTES + irc.MAX_LINE_BYTES:
                    buffer.clear()
                    if not skipping:
                        self.reply("417", "Input line was too long")
                    skipping = True
        except ConnectionError:
            pass
        finally:
            timer.cancel()
            if not self.closing:
                self.closing = True
                if self.session is not None:
                    self.session.leave()  # the client went away: its lines are delivered, then LEAVE
            self.writer.close()

    async def _keepalive(self) -> None:
        pinged = False
        while not self.closing:
            now = time.monotonic()
            if self.slow_since is not None and now - self.slow_since > self.limits.slow_timeout:
                self.drop(f"reads too slowly (not drained for {self.limits.slow_timeout:g} s)")
                return
            silent = now - self.last_heard
            if silent >= self.limits.ping_interval + self.limits.ping_timeout:
                self.drop(f"Ping timeout: {silent:.0f} seconds", timed_out=True)
                return
            if silent >= self.limits.ping_interval and not pinged:
                self.send(Line("PING", (SERVER,)))
                pinged = True
            elif silent < self.limits.ping_interval:
                pinged = False
            await asyncio.sleep(min(1.0, self.limits.ping_interval / 4))

    def receive(self, raw: bytes) -> None:
        """One line from the client: parsed, checked against its table entry, handled. Never raises."""
        try:
            line = irc.parse(raw)
        except irc.LineError as exc:
            self.reply(exc.numeric, exc.reason)
            return
        command = COMMANDS.get(line.command)
        if command is None:
            if self.registered:
                self.reply("421", line.command, "Unknown command")
            else:
                self.reply("451", "You have not registered")
            return
        if command.registered and not self.registered:
            self.reply("451", "You have not registered")
            return
        if len(line.params) < command.min_params:
            self.reply("461", line.command, "Not enough parameters")
            return
        command.handler(self, line)

    # ------------------------------------------------------------------ registration

    def _cap(self, line: Line) -> None:
        sub = line.params[0].upper()
        if sub == "LS":
            self.negotiating = not self.registered
            self.send(Line("CAP", (self.client, "LS", " ".join(CAPS)), SERVER))
        elif sub == "LIST":
            self.send(Line("CAP", (self.client, "LIST", " ".join(sorted(self.caps))), SERVER))
        elif sub == "REQ" and len(line.params) > 1:
            self.negotiating = not self.registered
            wanted = line.params[1].split()
            if all(cap.lstrip("-") in CAPS for cap in wanted):
                for cap in wanted:
                    self.caps.discard(cap[1:]) if cap.startswith("-") else self.caps.add(cap)
                self.send(Line("CAP", (self.client, "ACK", line.params[1]), SERVER))
            else:
                self.send(Line("CAP", (self.client, "NAK", line.params[1]), SERVER))
        elif sub == "END":
            self.negotiating = False
            self._register()
        else:
            self.reply("410", sub, "Invalid CAP command")

    def _pass(self, line: Line) -> None:
        if self.registered:
            self.reply("462", "You may not reregister")
        # Otherwise accepted and unused: the broker has no passwords (--secure keys are the gateway's).

    def _nick(self, line: Line) -> None:
        nick = line.params[0]
        problem = irc.nick_problem(nick) or p.name_problem(nick)
        if problem:
            self.reply("432", nick, f"Erroneous nickname: {problem}")
            return
        if self.registered:  # /nick: the broker renames the session; its nick events say so (NICK)
            assert self.session is not None
            self.session.submit(f"/nick {nick}")
            return
        self.nick = nick
        if self.session is not None:  # the broker refused the last one: this is the next try
            self.session.submit(nick)
        else:
            self._register()

    def _user(self, line: Line) -> None:
        if self.registered or self.user:
            self.reply("462", "You may not reregister")
            return
        self.user = True
        self._register()

    def _register(self) -> None:
        if self.registered or self.session is not None or not (self.nick and self.user) or self.negotiating:
            return
        try:
            self.session = self.host.open(self.address, self.show, name=self.nick, on_exit=self.ended)
        except SessionLimit as exc:
            self.drop(str(exc))

    def _welcome(self, name: str) -> None:
        self.nick = irc.shown_nick(name)
        self.registered = True
        self.reply("001", f"Welcome to the LAN chat, {self.nick}")
        self.reply("002", f"Your host is {SERVER}, running {VERSION}")
        self.reply("003", "This server was created when its broker started")
        self.reply("004", SERVER, VERSION, "i", "nt")
        self.reply("005", *ISUPPORT, "are supported by this server")
        self.reply("422", "MOTD File is missing")

    # ------------------------------------------------------------------ commands

    def _ping(self, line: Line) -> None:
        self.send(Line("PONG", (SERVER, line.params[0] if line.params else SERVER), SERVER))

    def _pong(self, line: Line) -> None:
        pass  # any line counts as a sign of life (last_heard)

    def _quit(self, line: Line) -> None:
        self.drop(f"Quit: {line.params[0]}" if line.params else "Quit")

    def _join(self, line: Line) -> None:
        assert self.session is not None
        if line.params[0] == "0":
            for room in list(self.channels):
                self.session.submit(f"/leave {room}")
            return
        for room in line.params[0].split(","):
            problem = p.room_problem(room)
            if problem:
                self.reply("403" if not room.startswith("#") else "479", room, problem)
            elif p.room_key(room) not in self.channels:
                self.session.submit(f"/join {room}")

    def _part(self, line: Line) -> None:
        assert self.session is not None
        for room in line.params[0].split(","):
            if p.room_key(room) not in self.channels:
                self.reply("442", room, "You're not on that channel")
            else:
                self.session.submit(f"/leave {p.room_key(room)}")

    def _topic(self, line: Line) -> None:
        assert self.session is not None
        room = p.room_key(line.params[0])
        if room not in self.channels:
            self.reply("442", line.params[0], "You're not on that channel")
        elif len(line.params) > 1 and line.params[1].strip():
            self.session.submit(f"/topic {room} {irc.strip_formatting(line.params[1])}")
        elif len(line.params) > 1:
            self.reply("482", room, "The chat cannot clear a topic; set another")
        else:
            self._ask("topic", room, "/rooms")

    def _names(self, line: Line) -> None:
        if not line.params:
            self.reply("366", "*", "End of /NAMES list")
            return
        for room in line.params[0].split(","):
            if p.room_problem(room):
                self.reply("366", room, "End of /NAMES list")
            else:
                self._ask("names", p.room_key(room), f"/who {p.room_key(room)}")

    def _who(self, line: Line) -> None:
        target = line.params[0] if line.params else "*"
        if target.startswith("#"):
            if p.room_problem(target):
                self.reply("315", target, "End of /WHO list")
            else:
                self._ask("who", p.room_key(target), f"/who {p.room_key(target)}")
        else:
            self._ask("who", target, "/who")

    def _whois(self, line: Line) -> None:
        self._ask("whois", line.params[-1], "/who")

    def _list(self, line: Line) -> None:
        self._ask("list", "", "/rooms")

    def _mode(self, line: Line) -> None:
        target = line.params[0]
        if target.startswith("#"):
            if len(line.params) == 1:
                self.reply("324", p.room_key(target), "+nt")
            elif line.params[1] in ("b", "+b"):
                self.reply("368", p.room_key(target), "End of channel ban list")
            else:
                self.reply("482", p.room_key(target), "Channel modes are fixed in this chat")
        elif p.name_key(target) == p.name_key(self.nick):
            self.reply("221", "+i")
        else:
            self.reply("502", "Cannot change mode for other users")

    def _motd(self, line: Line) -> None:
        self.reply("422", "MOTD File is missing")

    def _away(self, line: Line) -> None:
        """AWAY :message is /away, AWAY alone is /back: kept by the broker, shown in WHO replies."""
        assert self.session is not None
        message = line.params[0] if line.params else ""
        self.session.submit(f"/away {message}" if message else "/back")
        if message:
            self.reply("306", "You have been marked as being away")
        else:
            self.reply("305", "You are no longer marked as being away")

    def _renamed(self, renamed: ev.Renamed) -> None:
        self.nick = irc.shown_nick(renamed.name)

    def _privmsg(self, line: Line) -> None:
        self._message(line, notice=False)

    def _notice(self, line: Line) -> None:
        self._message(line, notice=True)

    def _message(self, line: Line, notice: bool) -> None:
        """PRIVMSG and NOTICE: to a channel, a line in its room; to a nick, a private message. A NOTICE
        never gets an error back (RFC 2812: no automatic replies to notices)."""
        assert self.session is not None
        if len(line.params) < 2 or not line.params[1]:
            if not notice:
                self.reply("412" if len(line.params) > 1 else "411", "No text to send")
            return
        text = line.params[1]
        request = irc.ctcp(text)
        if request is not None and request[0] != "ACTION":
            if not notice:
                self._answer_ctcp(line.params[0], *request)
            return
        for target in line.params[0].split(",")[:4]:
            self._deliver(target, request[1] if request else text, action=request is not None, notice=notice)

    def _deliver(self, target: str, text: str, *, action: bool, notice: bool) -> None:
        assert self.session is not None
        text = irc.strip_formatting(text)
        core = self.session.core
        if len(core.waiting) + len(core.unacked) >= MAX_WAITING:
            if not notice:
                self.reply("404", target, f"{MAX_WAITING} lines wait for the broker already; this one was not sent")
            return
        if not text.strip():
            return
        if target.startswith("#"):
            room = p.room_key(target)
            if room not in self.channels:
                if not notice:
                    self.reply("404", target, "Cannot send to channel (join it first)")
                return
            core.current = room  # the room the core types into: the channel of this line
            self.session.submit(f"/me {text}" if action else ("/" + text if text.startswith("/") else text))
        else:
            self.session.submit(f"/pm {target} {'* ' + self.nick + ' ' + text if action else text}")

    def _answer_ctcp(self, target: str, verb: str, arg: str) -> None:
        """CTCP VERSION and PING to anyone are answered by the gateway (the chat's users have no CTCP);
        the rest is ignored, as many clients do."""
        answers = {"VERSION": f"{VERSION} (a gateway to a ZeroMQ chat)", "PING": arg}
        if verb in answers:
            self.send(Line("NOTICE", (self.nick, f"\x01{verb} {answers[verb]}\x01"), mask(target)))

    def _ask(self, purpose: str, arg: str, request: str) -> None:
        """A request whose answer (ROSTER or ROOM_LIST) comes back in order: remember what it was for."""
        assert self.session is not None
        self.queries.append((purpose, arg))
        self.session.submit(request)

    # ------------------------------------------------------------------ what the session shows

    def show(self, item: ev.Show) -> None:
        handler = SHOWN.get(type(item))
        if handler is not None:
            handler(self, item)

    def ended(self, exit: ev.Exit) -> None:
        if not self.closing:
            self.drop(exit.reason or "the session ended")

    def _status(self, status: ev.Status) -> None:
        if status.state == "connected" and not self.registered:
            self._welcome(status.name)
        elif status.state == "reconnecting":
            self.notice("the broker went away; getting back in (what you type waits)")
        elif status.state == "connected":
            self.notice("back in: reconnected to the broker")

    def _ask_name(self, ask: ev.AskName) -> None:
        if ask.reason:
            self.reply("433", self.nick, f"Nickname is already in use: {ask.reason}")
        self.nick = ""

    def _rooms_changed(self, changed: ev.RoomsChanged) -> None:
        loop = asyncio.get_running_loop()
        for room in changed.rooms:
            if room not in self.channels:
                self.channels[room] = set()
                self._naming.add(room)
                self.send(Line("JOIN", (room,), mask(self.nick)))
                # Deferred: the core is in the middle of its own step; answers come in this order.
                loop.call_soon(self._ask, "jointopic", room, "/rooms")
                loop.call_soon(self._ask, "names", room, f"/who {room}")
        for room in [r for r in self.channels if r not in changed.rooms]:
            del self.channels[room]
            self.send(Line("PART", (room,), mask(self.nick)))

    def _public(self, public: ev.Public) -> None:
        event = public.event
        room, nick, key = event.room, irc.shown_nick(event.name), p.name_key(event.name)
        feed = self.session.core.feeds.get(room) if self.session is not None else None
        if feed is not None and event.seq < feed.live_from:
            self._play_back(event)
            return
        tags = {"time": irc.server_time(event.ts)}
        members = self.channels.get(room)
        if event.kind in (p.KIND_MSG, p.KIND_ACTION):  # nearly everything under load: written once for all
            if not self.closing and not self.writer.is_closing():
                self._write(self.room_lines(event, "server-time" in self.caps or "message-tags" in self.caps))
        elif event.kind in (p.KIND_JOIN, p.KIND_ENTER):
            if members is not None:
                members.add(key)
            self.send(Line("JOIN", (room,), mask(nick), tags))
        elif event.kind == p.KIND_PART:
            if members is not None:
                members.discard(key)
            self.send(Line("PART", (room,), mask(nick), tags))
        elif event.kind == p.KIND_LEAVE:
            # One leave event per room of the session; IRC says QUIT once, when no shared room is left.
            if members is not None:
                members.discard(key)
            if not any(key in others for others in self.channels.values()):
                self.send(Line("QUIT", (QUIT_REASONS.get(event.text, event.text or "Quit"),), mask(nick), tags))
        elif event.kind == p.KIND_TOPIC:
            self.send(Line("TOPIC", (room, event.text), mask(nick), tags))
        elif event.kind == p.KIND_NICK:
            # One nick event per room of the user; IRC says NICK once, for every shared channel.
            new_key = p.name_key(event.text)
            shared = [others for others in self.channels.values() if key in others]
            for others in shared:
                others.discard(key)
                others.add(new_key)
            if shared or key == p.name_key(self.session.core.name if self.session else ""):
                self.send(Line("NICK", (irc.shown_nick(event.text),), mask(nick), tags))
        else:
            self.send(Line("NOTICE", (room, f"{event.kind}: {event.name} {event.text}".rstrip()), SERVER, tags))

    def _play_back(self, event: p.Event) -> None:
        """A line from before we joined: in a ``chathistory`` batch when the client takes batches, with
        its time as a tag (``server-time``) or else in front of the text, as bouncers replay."""
        if event.kind not in (p.KIND_MSG, p.KIND_ACTION):
            return  # old joins and leaves would confuse the client's member list
        text = event.text
        if "server-time" not in self.caps:
            stamp = time.strftime("%H:%M", time.localtime(event.ts / 1000))
            text = f"[{stamp}] {text}"
        if event.kind == p.KIND_ACTION:
            text = f"\x01ACTION {text}\x01"
        pending = self._history.get(event.room)
        if pending is None:
            pending = self._history[event.room] = []
            if event.room not in self._naming:  # else the NAMES answer flushes it, as servers order it
                asyncio.get_running_loop().call_soon(self._flush_history, event.room)
        pending.append((irc.shown_nick(event.name), text, event.ts))

    def _flush_history(self, room: str) -> None:
        """One HISTORY answer's lines (all shown in one step of the core) as one batch."""
        lines = self._history.pop(room, [])
        batch = ""
        if "batch" in self.caps and lines:
            self.batches += 1
            batch = f"h{self.batches}"
            self.send(Line("BATCH", (f"+{batch}", "chathistory", room), SERVER))
        for nick, text, ts in lines:
            self.say(nick, "PRIVMSG", room, text, ts, batch)
        if batch:
            self.send(Line("BATCH", (f"-{batch}",), SERVER))

    def _private(self, private: ev.PrivateIn) -> None:
        message = private.private
        self.say(irc.shown_nick(message.name), "PRIVMSG", self.nick, message.text, message.ts)

    def _sent(self, sent: ev.Sent) -> None:
        assert self.session is not None
        target = irc.shown_nick(sent.to) if sent.kind == "pm" else self.session.core.current
        self.sent[sent.id] = (target, sent.kind, sent.text)

    def _acked(self, acked: ev.Acked) -> None:
        target, kind, text = self.sent.pop(acked.id, ("", "", ""))
        if target and "echo-message" in self.caps:
            self.say(self.nick, "PRIVMSG", target, f"\x01ACTION {text}\x01" if kind == p.KIND_ACTION else text, acked.ts)

    def _failed(self, failed: ev.Failed) -> None:
        target, kind, _ = self.sent.pop(failed.id, ("", "", ""))
        self.last_failed = failed.reason
        if kind == "pm":
            self.reply("401", target, f"No such nick: {failed.reason}")
        else:
            self.reply("404", target or "*", f"Cannot send to channel: {failed.reason}")

    def _roster(self, shown: ev.RosterShown) -> None:
        purpose, arg = self.queries.popleft() if self.queries else ("", "")
        roster = shown.roster
        nicks = [irc.shown_nick(name) for name in roster.names]
        if purpose == "names":
            room = roster.room or arg
            if room in self.channels:
                self.channels[room] = {p.name_key(name) for name in roster.names}
            for i in range(0, len(nicks), NAMES_PER_LINE):
                self.reply("353", "=", room, " ".join(nicks[i:i + NAMES_PER_LINE]))
            self.reply("366", room, "End of /NAMES list")
            if room in self._naming:
                self._naming.discard(room)
                self._flush_history(room)
        elif purpose == "who":
            room = roster.room or "*"
            chosen = nicks if roster.room or arg in ("*", "0") else [n for n in nicks if p.name_key(n) == p.name_key(arg)]
            for nick in chosen:
                self.reply("352", room, nick, SERVER, SERVER, nick, "H", f"0 {nick}")
            self.reply("315", arg, "End of /WHO list")
        elif purpose == "whois":
            found = [n for n in nicks if p.name_key(n) == p.name_key(arg)]
            if found:
                self.reply("311", found[0], found[0], SERVER, "*", found[0])
            else:
                self.reply("401", arg, "No such nick")
            self.reply("318", arg, "End of /WHOIS list")

    def _rooms_listed(self, listed: ev.RoomsListed) -> None:
        purpose, arg = self.queries.popleft() if self.queries else ("", "")
        rooms = {str(r.get("room")): r for r in listed.listing.rooms}
        if purpose == "list":
            self.reply("321", "Channel", "Users  Name")
            for room, entry in rooms.items():
                self.reply("322", room, str(entry.get("members", 0)), str(entry.get("topic") or ""))
            self.reply("323", "End of /LIST")
        elif purpose in ("topic", "jointopic"):
            topic = str(rooms.get(arg, {}).get("topic") or "")
            if topic:
                self.reply("332", arg, topic)
            elif purpose == "topic":
                self.reply("331", arg, "No topic is set")

    def _notice_shown(self, notice: ev.Notice) -> None:
        """The core's own errors, as a server NOTICE; its chatter ("now talking in #x") is what IRC says
        with JOIN and PART already, and is left out."""
        if notice.level == "error" and notice.text != self.last_failed:
            self.notice(notice.text)
        self.last_failed = ""


# ergo's habit: every IRC command with its handler, parameter count and registration rule, on one screen.
COMMANDS: dict[str, Command] = {
    "CAP": Command(Connection._cap, 1, registered=False),
    "PASS": Command(Connection._pass, 1, registered=False),
    "NICK": Command(Connection._nick, 1, registered=False),
    "USER": Command(Connection._user, 4, registered=False),
    "PING": Command(Connection._ping, 1, registered=False),
    "PONG": Command(Connection._pong, 0, registered=False),
    "QUIT": Command(Connection._quit, 0, registered=False),
    "JOIN": Command(Connection._join, 1),
    "PART": Command(Connection._part, 1),
    "TOPIC": Command(Connection._topic, 1),
    "NAMES": Command(Connection._names),
    "WHO": Command(Connection._who),
    "WHOIS": Command(Connection._whois, 1),
    "LIST": Command(Connection._list),
    "MODE": Command(Connection._mode, 1),
    "MOTD": Command(Connection._motd),
    "AWAY": Command(Connection._away),
    "PRIVMSG": Command(Connection._privmsg, 1),
    "NOTICE": Command(Connection._notice, 1),
}

# ...and the other direction: what a session shows, to what the IRC client sees.
SHOWN: dict[type, Callable[[Connection, Any], None]] = {
    ev.Status: Connection._status,
    ev.AskName: Connection._ask_name,
    ev.RoomsChanged: Connection._rooms_changed,
    ev.Public: Connection._public,
    ev.PrivateIn: Connection._private,
    ev.Sent: Connection._sent,
    ev.Acked: Connection._acked,
    ev.Failed: Connection._failed,
    ev.RosterShown: Connection._roster,
    ev.RoomsListed: Connection._rooms_listed,
    ev.Notice: Connection._notice_shown,
    ev.Renamed: Connection._renamed,
}


async def run_gateway(
    broker: BrokerAddress,
    listen_host: str,
    listen_port: int,
    *,
    stop: asyncio.Event,
    ready: Callable[[str, int], None],
    history_lines: int = 20,
    limits: Limits = Limits(),
    max_sessions: int = MAX_SESSIONS,
    per_address: int = MAX_SESSIONS_PER_ADDRESS,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve IRC clients until ``stop`` is set (over TLS with ``ssl_context``); ``ready`` gets the
    address and port once it listens."""
    host = SessionHost(broker, history_lines=history_lines, max_sessions=max_sessions, per_address=per_address)
    connections: set[asyncio.Task[None]] = set()
    room_lines = RoomLines()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(host, reader, writer, limits, room_lines)
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await connection.serve()
        except Exception:  # one connection's bug must not end the gateway: log it with its context
            log.exception("irc: the connection from %s failed", connection.address)
            connection.drop("internal error")
        finally:
            connections.discard(task)

    server = await asyncio.start_server(accept, listen_host, listen_port, limit=READ_CHUNK, ssl=ssl_context)
    try:
        port = server.sockets[0].getsockname()[1]
        ready(listen_host, port)
        await stop.wait()
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
        host.close_all()
