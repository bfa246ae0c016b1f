"""The client's decisions, with no sockets and no terminal: input in, actions out.

States::

    naming --name--> joining --WELCOME--> joined --broker silent / BYE--> lost --WELCOME--> joined
       ^                |                    |                              |
       +--name refused--+                    +--/quit, end of input--> closing --BYE or timeout--> (exit)

Every public event carries a per-room sequence number. The core shows each exactly once, in order: an
event that arrives early is held back, a gap is fetched over the DEALER (``FETCH``), a duplicate is
dropped. ``PONG`` carries the broker's latest numbers, so a client also notices what it missed at the
tail (the slow-joiner case: events published before its SUB was connected).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Union

from chat import protocol as p
from chat.client import events as ev
from chat.errors import RemoteProtocolError

CONNECT_TIMEOUT = 5.0  # seconds to wait for the first WELCOME before giving up
RETRY_INTERVAL = 1.0  # seconds between attempts to get back in after the broker went away
RESEND_AFTER = 3.0  # seconds before an unacknowledged line is sent again
QUIT_TIMEOUT = 1.0  # seconds to wait for the broker's goodbye after LEAVE
DRAIN_TIMEOUT = 15.0  # seconds /quit waits for what was typed to be acknowledged (reconnecting if need be)
FETCH_RETRY = 2.0  # seconds before an unanswered FETCH is asked again
HANDSHAKE_FAILURES = 3  # unexplained failed handshakes in a row that mean "refused"
MAX_IN_FLIGHT = 500  # unacknowledged lines at once; below the broker's DEDUP_IDS_PER_NAME
MAX_HELD = 10_000  # early events held back per room while a gap is fetched
DEFAULT_HEARTBEAT = 1.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_OLDER = 20  # lines shown by /history without a number

HELP = """commands:
  /who, /whosonline      list everyone online; /who #room: the members of a room
  /join #room            join a room (made when new), or switch to it if you are in it
  /switch #room          type into another of your rooms
  /leave [#room]         leave a room (default: the current one)
  /rooms                 every room, with its member count and topic
  /topic [#room] [text]  show or set a room's topic
  /pm NAME TEXT          private message to NAME (alias /msg); it never goes through the fan-out
  /me ACTION             say what you are doing: * alice waves
  /history [N]           show N older lines (default 20)
  /help                  this help
  /quit                  leave the chat (so does end of input)
  //text                 send a line that starts with '/'"""


@dataclass
class _Fetching:
    first: int
    last: int
    sent_at: float


Outgoing = Union[p.Say, p.Pm]


class ClientCore:
    """One user's view of the chat. ``interactive`` means a person can be asked again for a name."""

    def __init__(
        self, name: str | None, *, interactive: bool, history_lines: int = 0, room: str = p.DEFAULT_ROOM
    ) -> None:
        self.name = name or ""
        self.rooms: list[str] = [p.room_key(room)]  # our rooms, in the order joined
        self.current = self.rooms[0]  # the room we type into
        self.pub_port = 0
        self.room_queries: deque[str] = deque()  # per ROOMS request: "" to list rooms, or a room's topic
        self.interactive = interactive
        self.history_lines = history_lines
        self.state = "naming"
        self.token = secrets.token_hex(16)  # lets a JOIN on a new connection take this session back
        self.history_id = ""
        self.heartbeat = DEFAULT_HEARTBEAT
        self.timeout = DEFAULT_TIMEOUT
        self.expected: dict[str, int] = {}  # room -> next sequence number to show
        self.held: dict[str, dict[int, p.Event]] = {}
        self.fetching: dict[str, _Fetching] = {}
        self.reported: dict[str, int] = {}  # room -> last number a PONG reported
        self.live_from: dict[str, int] = {}  # room -> first number of this session: our own from here are not shown
        self.oldest: dict[str, int] = {}  # room -> oldest number shown so far, for /history
        self.browsing: dict[str, tuple[int, int]] = {}  # room -> range asked for by /history
        self.unacked: OrderedDict[str, tuple[Outgoing, float]] = OrderedDict()  # sent, in flight
        self.waiting: deque[Outgoing] = deque()  # typed, not sent yet (away, or the window is full)
        self.deferred: list[str] = []  # commands typed before the WELCOME
        self.quit_requested = False
        self._quit_deadline = 0.0
        self._slowed_at = -RESEND_AFTER  # when we last told the user to slow down
        self._handshake_failures = 0
        self._handshake_problem = ""  # the last failed handshake's reason, until the broker answers
        self._id_prefix = secrets.token_hex(4)
        self._counter = 0
        self._deadline = 0.0  # meaning depends on the state: give up, retry, or quit
        self._last_heard = 0.0
        self._last_ping = 0.0

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[ev.Action]:
        if self.name:
            return self._join(now)
        return [ev.AskName()]

    def on_input(self, line: str, now: float) -> list[ev.Action]:
        """A line the user typed."""
        line = line.rstrip("\r\n")
        if self.state == "naming":
            self.name = line.strip()
            problem = p.name_problem(self.name)
            if problem:
                return self._refused(problem)
            return self._join(now)
        if not line.strip():
            return []
        if line.startswith("//"):
            return self._say(line[1:], p.KIND_MSG, now)
        if line.startswith("/"):
            return self._command(line, now)
        return self._say(line, p.KIND_MSG, now)

    def on_eof(self, now: float) -> list[ev.Action]:
        """End of input means /quit."""
        return self._quit(now)

    def on_direct(self, frames: list[bytes], now: float) -> list[ev.Action]:
        """Frames received on the DEALER."""
        try:
            message = p.decode_broker(frames)
        except RemoteProtocolError as exc:
            return [ev.Notice(f"ignored a malformed message from the broker ({exc})", "error")]
        self._last_heard = now
        self._handshake_failures = 0
        self._handshake_problem = ""
        if isinstance(message, p.Welcome):
            return self._welcome(message, now)
        if isinstance(message, p.Error):
            return self._error(message, now)
        if isinstance(message, p.Ack):
            return self._ack(message, now)
        if isinstance(message, p.Pong):
            return self._pong(message, now)
        if isinstance(message, p.History):
            return self._history(message, now)
        if isinstance(message, p.Private):
            return [ev.PrivateIn(message)]
        if isinstance(message, p.Roster):
            return [ev.RosterShown(message)]
        if isinstance(message, p.Bye):
            return self._bye(message, now)
        if isinstance(message, p.Entered):
            return self._entered(message, now)
        if isinstance(message, p.Parted):
            return self._parted(message)
        if isinstance(message, p.RoomList):
            return self._room_list(message)
        return []  # pragma: no cover - decode_broker returns only the types above

    def on_published(self, frames: list[bytes], now: float) -> list[ev.Action]:
        """Frames received on the SUB."""
        try:
            event = p.decode_event(frames)
        except RemoteProtocolError as exc:
            return [ev.Notice(f"ignored a malformed event ({exc})", "error")]
        return self._receive(event, now)

    def on_handshake_failed(self, reason: str, certain: bool, now: float) -> list[ev.Action]:
        """The connection itself was refused (CURVE: wrong key, no key, key not admitted).

        ``certain`` failures (the broker said no) end the client at once. Others also happen when a
        broker stops in the middle of a handshake, so only HANDSHAKE_FAILURES of them in a row, with
        nothing heard from the broker in between, do.
        """
        if self.state == "closing":
            return []
        self._handshake_failures = self._handshake_failures + 1
        self._handshake_problem = reason
        if certain or self._handshake_failures >= HANDSHAKE_FAILURES:
            return [ev.Exit(ev.EXIT_REFUSED, reason)]
        return []

    def tick(self, now: float) -> list[ev.Action]:
        """Timers: heartbeats, broker loss, retries. Call at least every ``next_wakeup`` seconds."""
        if self.quit_requested and self.state != "closing" and now >= self._quit_deadline:
            unsent = self._pending()
            return [ev.Exit(ev.EXIT_UNREACHABLE, f"leaving with {unsent} line(s) not delivered")]
        if self.state == "joining" and now >= self._deadline:
            if self._handshake_problem:  # refused, if less clearly than HANDSHAKE_FAILURES times
                return [ev.Exit(ev.EXIT_REFUSED, self._handshake_problem)]
            return [ev.Exit(ev.EXIT_UNREACHABLE, f"could not reach the broker within {CONNECT_TIMEOUT:g} s")]
        if self.state == "closing" and now >= self._deadline:
            return [ev.Exit(ev.EXIT_OK)]
        if self.state == "lost" and now >= self._deadline:
            self._deadline = now + RETRY_INTERVAL
            return [ev.Reconnect(), ev.Send(self._join_message())]
        if self.state != "joined":
            return []
        if now - self._last_heard > self.timeout:
            return self._lost("the broker stopped answering", now)
        out: list[ev.Action] = []
        if now - self._last_ping >= self.heartbeat:
            self._last_ping = now
            out.append(ev.Send(p.Ping()))
        for msg_id, (message, sent_at) in list(self.unacked.items()):
            if now - sent_at >= RESEND_AFTER:
                self.unacked[msg_id] = (message, now)
                out.append(ev.Send(message))
        for room, fetching in list(self.fetching.items()):
            if now - fetching.sent_at >= FETCH_RETRY:
                out += self._fetch(room, fetching.first, fetching.last, now)
        return out

    def next_wakeup(self, now: float) -> float:
        """Seconds until ``tick`` has something to do, at most."""
        wakeup = 1.0
        if self.state in ("joining", "closing", "lost"):
            wakeup = self._deadline - now
        elif self.state == "joined":
            wakeup = min(self._last_ping + self.heartbeat, self._last_heard + self.timeout) - now
        if self.quit_requested:
            wakeup = min(wakeup, self._quit_deadline - now)
        return max(0.0, wakeup)

    # ------------------------------------------------------------------ commands

    def _command(self, line: str, now: float) -> list[ev.Action]:
        word, _, rest = line.partition(" ")
        word = word.lower()
        rest = rest.strip()
        if word in ("/who", "/whosonline", "/history", "/join", "/leave", "/rooms", "/topic") and self.state != "joined":
            self.deferred.append(line)  # answered once (re)joined, in the order typed
            return []
        if word in ("/quit", "/exit"):
            return self._quit(now)
        if word in ("/who", "/whosonline"):
            if rest and p.room_problem(rest):
                return [ev.Notice(p.room_problem(rest) or "", "error")]
            return [ev.Send(p.Who(rest))]
        if word in ("/join", "/switch"):
            return self._join_room(word, rest)
        if word == "/leave":
            room = rest or self.current
            if room not in self.rooms and p.room_key(room) not in self.rooms:
                return [ev.Notice(f"you are not in {p.neutralise(room) or 'any room'}", "error")]
            return [ev.Send(p.Part(room))]
        if word == "/rooms":
            self.room_queries.append("")
            return [ev.Send(p.Rooms())]
        if word == "/topic":
            return self._topic(rest)
        if word in ("/pm", "/msg"):
            to, _, text = rest.partition(" ")
            if not to or not text.strip():
                return [ev.Notice(f"usage: {word} NAME TEXT", "error")]
            return self._send_line(p.Pm(self._next_id(), to, text), "pm", now)
        if word == "/me":
            if not rest:
                return [ev.Notice("usage: /me ACTION", "error")]
            return self._say(rest, p.KIND_ACTION, now)
        if word == "/history":
            return self._older(rest, now)
        if word == "/help":
            return [ev.Notice(HELP)]
        return [ev.Notice(f"unknown command {p.neutralise(word)}; type /help for the list", "error")]

    def _say(self, text: str, kind: str, now: float) -> list[ev.Action]:
        if not self.current:
            return [ev.Notice("you are in no room: /join one first", "error")]
        return self._send_line(p.Say(self._next_id(), text, self.current, kind), kind, now)

    def _join_room(self, word: str, arg: str) -> list[ev.Action]:
        problem = p.room_problem(arg)
        if problem:
            return [ev.Notice(f"usage: {word} #room ({problem})", "error")]
        room = p.room_key(arg)
        if room in self.rooms:
            self.current = room
            return [self._rooms_changed(), ev.Notice(f"now talking in {room}")]
        if word == "/switch":
            return [ev.Notice(f"you are not in {room}: /join it first", "error")]
        return [ev.Send(p.Enter(room))]

    def _topic(self, rest: str) -> list[ev.Action]:
        first, _, text = rest.partition(" ")
        if first.startswith("#"):
            room, text = first, text.strip()
            if p.room_problem(room):
                return [ev.Notice(p.room_problem(room) or "", "error")]
        else:
            room, text = self.current, rest
        if not room:
            return [ev.Notice("usage: /topic [#room] [text]", "error")]
        if text:
            return [ev.Send(p.Topic(self._next_id(), room, text))]
        self.room_queries.append(p.room_key(room))
        return [ev.Send(p.Rooms())]

    def _rooms_changed(self) -> ev.RoomsChanged:
        return ev.RoomsChanged(tuple(self.rooms), self.current)

    def _entered(self, entered: p.Entered, now: float) -> list[ev.Action]:
        room = entered.room
        self.current = room
        topic = f" (topic: {p.neutralise(entered.topic)})" if entered.topic else ""
        if room in self.rooms:
            return [self._rooms_changed(), ev.Notice(f"now talking in {room}{topic}")]
        self.rooms.append(room)
        out: list[ev.Action] = [
            ev.Subscribe(self.pub_port, (room,)),
            self._rooms_changed(),
            ev.Notice(f"joined {room}{topic}; now talking there"),
        ]
        return out + self._follow(room, entered.last_seq, now)

    def _parted(self, parted: p.Parted) -> list[ev.Action]:
        room = parted.room
        if room in self.rooms:
            self.rooms.remove(room)
        for table in (self.expected, self.held, self.fetching, self.reported, self.live_from, self.oldest, self.browsing):
            table.pop(room, None)  # type: ignore[attr-defined]
        if self.current == room:
            self.current = self.rooms[0] if self.rooms else ""
        where = f"; now talking in {self.current}" if self.current else "; you are in no room now"
        return [ev.Unsubscribe(room), self._rooms_changed(), ev.Notice(f"left {room}{where}")]

    def _room_list(self, listing: p.RoomList) -> list[ev.Action]:
        query = self.room_queries.popleft() if self.room_queries else ""
        if not query:
            return [ev.RoomsListed(listing)]
        for entry in listing.rooms:
            if entry.get("room") == query:
                topic = str(entry.get("topic") or "")
                return [ev.Notice(f"topic of {query}: {p.neutralise(topic)}" if topic else f"{query} has no topic")]
        return [ev.Notice(f"there is no room {query}", "error")]

    def _send_line(self, message: Outgoing, kind: str, now: float) -> list[ev.Action]:
        problem = p.text_problem(message.text)
        if problem:
            return [ev.Notice(problem, "error")]
        self.waiting.append(message)
        shown = ev.Sent(message.id, kind, message.text, getattr(message, "to", ""))
        return [shown, *self._pump(now)]

    def _pump(self, now: float) -> list[ev.Action]:
        """Send waiting lines, in the order typed, while fewer than MAX_IN_FLIGHT are unacknowledged.

        The window keeps every resend within the ids the broker remembers, so none is shown twice.
        """
        if self.state != "joined":
            return []
        out: list[ev.Action] = []
        while self.waiting and len(self.unacked) < MAX_IN_FLIGHT:
            message = self.waiting.popleft()
            self.unacked[message.id] = (message, now)
            out.append(ev.Send(message))
        return out

    def _pending(self) -> int:
        return len(self.unacked) + len(self.waiting)

    def _older(self, arg: str, now: float) -> list[ev.Action]:
        if arg and not arg.isdigit() or arg == "0":
            return [ev.Notice("usage: /history [N], N a number of lines", "error")]
        room = self.current
        oldest = self.oldest.get(room, 1)
        if oldest <= 1:
            return [ev.Notice(f"there is nothing older in {room}")]
        first = max(1, oldest - int(arg or DEFAULT_OLDER))
        self.browsing[room] = (first, oldest - 1)
        self.oldest[room] = first
        return [ev.Send(p.Fetch(room, first, oldest - 1))]

    def _quit(self, now: float) -> list[ev.Action]:
        """Leave, but only once every line typed has been acknowledged (or DRAIN_TIMEOUT has passed)."""
        if self.state == "naming":
            return [ev.Exit(ev.EXIT_REFUSED if not self.interactive else ev.EXIT_OK, "no name given")]
        if not self.quit_requested:
            self.quit_requested = True
            self._quit_deadline = now + DRAIN_TIMEOUT
        if self.state == "joined" and not self._pending():
            self.state = "closing"
            self._deadline = now + QUIT_TIMEOUT
            return [ev.Send(p.Leave())]
        if self.state == "lost" and not self._pending():
            return [ev.Exit(ev.EXIT_OK)]  # nothing to deliver, nobody to say goodbye to
        return []  # _ack, _welcome and tick come back here

    # ------------------------------------------------------------------ joining

    def _join(self, now: float) -> list[ev.Action]:
        self.state = "joining"
        self._deadline = now + CONNECT_TIMEOUT
        self._last_heard = now
        return [ev.Status("connecting"), ev.Send(self._join_message())]

    def _join_message(self) -> p.Join:
        """JOIN names our rooms too, so that a restarted broker puts us back in all of them."""
        return p.Join(self.name, self.token, list(self.rooms))

    def _refused(self, reason: str) -> list[ev.Action]:
        if self.interactive:
            self.state = "naming"
            return [ev.AskName(reason)]
        return [ev.Exit(ev.EXIT_REFUSED, reason)]

    def _welcome(self, welcome: p.Welcome, now: float) -> list[ev.Action]:
        if self.state not in ("joining", "lost"):
            return []  # a late answer to a retried JOIN
        was_lost = self.state == "lost"
        self.state = "joined"
        self.name = welcome.name
        self.heartbeat = welcome.heartbeat_ms / 1000
        self.timeout = welcome.timeout_ms / 1000
        self._last_ping = now
        self.pub_port = welcome.pub_port
        self.rooms = list(welcome.rooms)
        if self.current not in self.rooms:
            self.current = self.rooms[0] if self.rooms else ""
        out: list[ev.Action] = [
            ev.Subscribe(welcome.pub_port, tuple(welcome.rooms)),
            ev.Status("connected", welcome.name),
            self._rooms_changed(),
        ]
        if was_lost:
            out.append(ev.Notice("back in: reconnected to the broker"))
        if welcome.history_id != self.history_id:
            self.expected.clear()  # another history: its numbers are not ours
        self.history_id = welcome.history_id
        for room, last in welcome.rooms.items():
            out += self._follow(room, last, now)
        # What was never acknowledged goes again first, then what was typed while away, in order.
        self.waiting.extendleft(reversed([m for m, _ in self.unacked.values()]))
        self.unacked.clear()
        out += self._pump(now)
        deferred, self.deferred = self.deferred, []
        for line in deferred:
            out += self._command(line, now)
        if self.quit_requested:
            out += self._quit(now)
        return out

    def _follow(self, room: str, last: int, now: float) -> list[ev.Action]:
        """Start (or go on) showing ``room`` from its event ``last``, with history_lines before it."""
        if room not in self.expected:
            self.expected[room] = self.oldest[room] = max(1, last + 1 - self.history_lines)
            self.live_from[room] = last + 1
            for table in (self.held, self.fetching, self.browsing):
                table.pop(room, None)  # type: ignore[attr-defined]
        out: list[ev.Action] = []
        held = self.held.get(room, {})
        if self.expected[room] in held:  # heard while getting back in, and now known to follow on
            out += self._deliver(held.pop(self.expected[room]))
        if self.expected[room] <= last:
            out += self._fetch(room, self.expected[room], last, now)
        return out

    def _error(self, error: p.Error, now: float) -> list[ev.Action]:
        if error.ref == p.Join.TYPE.decode() and self.state in ("joining", "lost"):
            if error.code in (p.NAME_TAKEN, p.NAME_INVALID, p.NAME_OWNED):
                return self._refused(error.reason)
            return [ev.Exit(ev.EXIT_REFUSED, error.reason)]
        if error.code == p.NOT_JOINED:
            # The broker forgot us (it restarted, or expired us): get back in at once. What it refused
            # stays unacknowledged and is sent again after the WELCOME.
            if self.state == "joined":
                return self._lost("the broker no longer knows this session", now)
            return []
        if error.code == p.RATE_LIMITED and error.ref in self.unacked:
            # Kept, and sent again after RESEND_AFTER: a paste goes out at the broker's pace.
            if now - self._slowed_at < RESEND_AFTER:
                return []
            self._slowed_at = now
            return [ev.Notice(f"{error.reason}; your lines will follow", "error")]
        if error.ref in self.unacked:
            del self.unacked[error.ref]  # refused for good: resending would not help
            return [ev.Failed(error.ref, error.reason), ev.Notice(error.reason, "error"), *self._pump(now)]
        if error.ref == p.Fetch.TYPE.decode():
            return self._skip_unrecoverable(now)
        return [ev.Notice(error.reason, "error")]

    def _bye(self, bye: p.Bye, now: float) -> list[ev.Action]:
        if self.state == "closing":
            return [ev.Exit(ev.EXIT_OK)]
        return self._lost(bye.reason, now)

    def _lost(self, why: str, now: float) -> list[ev.Action]:
        """Start getting back in: a fresh DEALER at once (the old one may hold stale requests), then retries."""
        self.state = "lost"
        self._deadline = now + RETRY_INTERVAL
        self.reported.clear()
        return [
            ev.Status("reconnecting"),
            ev.Notice(f"lost the broker: {why}; trying to get back in", "error"),
            ev.Reconnect(),
            ev.Send(self._join_message()),
        ]

    def _ack(self, ack: p.Ack, now: float) -> list[ev.Action]:
        if self.unacked.pop(ack.id, None) is None:
            return []  # an ack for a resend we already had
        out: list[ev.Action] = [ev.Acked(ack.id, ack.seq, ack.ts), *self._pump(now)]
        if self.quit_requested and not self._pending():
            out += self._quit(now)
        return out

    # ------------------------------------------------------------------ ordering and gaps

    def _receive(self, event: p.Event, now: float) -> list[ev.Action]:
        expected = self.expected.get(event.room)
        if expected is None or event.seq < expected:
            return []  # not a room of ours, or a duplicate
        if event.seq > expected or self.state != "joined":
            # Early, or heard while getting back in: until the WELCOME names the broker's history,
            # a restarted broker's numbers cannot be trusted to follow on from ours.
            held = self.held.setdefault(event.room, {})
            if len(held) < MAX_HELD:
                held[event.seq] = event
            if event.room in self.fetching or self.state != "joined":
                return []
            return self._fetch(event.room, expected, event.seq - 1, now)
        return self._deliver(event)

    def _deliver(self, event: p.Event) -> list[ev.Action]:
        """Show ``event`` (the expected one) and whatever was held back behind it."""
        room = event.room
        held = self.held.get(room, {})
        out: list[ev.Action] = []
        while True:
            self.expected[room] = event.seq + 1
            if not self._is_own(event):
                out.append(ev.Public(event, show_room=len(self.rooms) > 1))
            next_event = held.pop(event.seq + 1, None)
            if next_event is None:
                break
            event = next_event
        fetching = self.fetching.get(room)
        if fetching and self.expected[room] > fetching.last:
            del self.fetching[room]
        return out

    def _is_own(self, event: p.Event) -> bool:
        """Our own events since we joined are not shown back to us: ACK, WELCOME and ENTERED stand for
        them. A topic we set is shown: it is how the change is confirmed."""
        live_from = self.live_from.get(event.room, 0)
        own = p.name_key(event.name) == p.name_key(self.name)
        return own and event.seq >= live_from and event.kind != p.KIND_TOPIC

    def _fetch(self, room: str, first: int, last: int, now: float) -> list[ev.Action]:
        self.fetching[room] = _Fetching(first, last, now)
        return [ev.Send(p.Fetch(room, first, last))]

    def _history(self, history: p.History, now: float) -> list[ev.Action]:
        try:
            events = p.history_events(history)
        except RemoteProtocolError as exc:
            return [ev.Notice(f"ignored a malformed history reply ({exc})", "error")]
        room = history.room
        asked = (history.first, history.last)  # the range this answers, echoed by the broker
        if self.browsing.get(room) == asked:
            del self.browsing[room]
            return [ev.Older(tuple(events))] if events else [ev.Notice(f"nothing older is kept in {room}")]
        out: list[ev.Action] = []
        for event in events:
            out += self._receive(event, now)
        fetching = self.fetching.get(room)
        if fetching is None or (fetching.first, fetching.last) != asked:
            return out  # the answer to an earlier request (a retry): its events are used, nothing more
        if self.expected[room] > fetching.last:
            return out
        if events and self.expected[room] > events[-1].seq:  # cut short to fit a frame: ask for the rest
            return out + self._fetch(room, self.expected[room], fetching.last, now)
        return out + self._skip_unrecoverable(now, room)  # the broker no longer has the start of the range

    def _skip_unrecoverable(self, now: float, only: str | None = None) -> list[ev.Action]:
        """The broker no longer has what we are missing: say so and move on to what we hold."""
        out: list[ev.Action] = []
        for room, fetching in list(self.fetching.items()):
            if only is not None and room != only:
                continue
            del self.fetching[room]
            held = self.held.get(room, {})
            resume = min(held) if held else fetching.last + 1
            lost = resume - self.expected[room]
            if lost > 0:
                out.append(ev.Notice(f"{lost} event(s) in {room} could not be recovered", "error"))
                self.expected[room] = resume
            if resume in held:
                out += self._deliver(held.pop(resume))
        return out

    def _pong(self, pong: p.Pong, now: float) -> list[ev.Action]:
        out: list[ev.Action] = []
        for room, last in pong.rooms.items():
            previous = self.reported.get(room)
            self.reported[room] = last
            expected = self.expected.get(room)
            # Only what the previous PONG reported counts as missing: newer events may still be on the way.
            if expected is not None and previous is not None and previous >= expected:
                if room not in self.fetching:
                    out += self._fetch(room, expected, previous, now)
        return out

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}-{self._counter}"
