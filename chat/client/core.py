"""The client's decisions, with no sockets and no terminal: input in, actions out.

States::

    naming --name--> joining --WELCOME--> joined --broker silent / BYE--> lost --WELCOME--> joined
       ^                |                    |                              |
       +--name refused--+                    +--/quit, end of input--> closing --BYE or timeout--> (exit)

Every public event carries a per-room sequence number; a ``Feed`` per room (``chat.client.feed``) shows
each exactly once, in order, and says which gaps to fetch over the DEALER (``FETCH``). ``PONG`` carries
the broker's latest numbers, so a client also notices what it missed at the tail (the slow-joiner
case: events published before its SUB was connected).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from datetime import datetime
from pathlib import Path
from typing import Callable, Union

import msgspec

from chat import protocol as p
from chat.client import events as ev
from chat.client.feed import Feed, Fetching, Range
from chat.client.personal import IGNORED_KINDS, MAX_MENTIONS, MENTION_KINDS, PERSONAL_HELP, IgnoreList, MentionRule
from chat.client.files import UP_ID, GET_ID, Transfers
from chat.errors import RemoteProtocolError

CONNECT_TIMEOUT = 5.0  # seconds to wait for the first WELCOME before giving up
RETRY_INTERVAL = 1.0  # seconds between attempts to get back in after the broker went away
RESEND_AFTER = 3.0  # seconds before an unacknowledged line is sent again
QUIT_TIMEOUT = 1.0  # seconds to wait for the broker's goodbye after LEAVE
DRAIN_TIMEOUT = 15.0  # seconds /quit waits for what was typed to be acknowledged (reconnecting if need be)
FETCH_RETRY = 2.0  # seconds before an unanswered FETCH is asked again
HANDSHAKE_FAILURES = 3  # unexplained failed handshakes in a row that mean "refused"
MAX_IN_FLIGHT = 500  # unacknowledged lines at once; below the broker's DEDUP_IDS_PER_NAME
RATE_RETRY = 0.25  # seconds before a line refused by flood control is sent again
DEFAULT_HEARTBEAT = 1.0
MIN_HEARTBEAT = 0.1  # seconds: a broker asking for more pings than this is not obeyed
DEFAULT_TIMEOUT = 5.0
DEFAULT_OLDER = 20  # lines shown by /history without a number
QUIT_COMMANDS = ("/quit", "/exit")
GAP_FETCH = "gap"  # the id of a FETCH that fills a gap is this and the room; of a /history one, OLDER_FETCH's
OLDER_FETCH = "older"
PERSONAL_COMMANDS = ("/ignore", "/unignore", "/mentions")  # the client's own, never sent to the broker
SEARCH_PREFIX = "search-"  # the ids of SEARCH requests
NEEDS_SESSION = (  # held until joined
    "/who", "/whosonline", "/history", "/join", "/leave", "/rooms", "/topic", "/nick", "/away", "/back", "/search", "/send", "/get",
)
DEFAULT_AWAY = "away"  # the away message of /away without one

HELP = """commands:
  /who, /whosonline      list everyone online; /who #room: the members of a room
  /join #room            join a room (made when new), or switch to it if you are in it
  /switch #room          type into another of your rooms
  /leave [#room]         leave a room (default: the current one)
  /rooms                 every room, with its member count and topic
  /topic [#room] [text]  show or set a room's topic
  /pm NAME TEXT          private message to NAME (alias /msg); it never goes through the fan-out
  /me ACTION             say what you are doing: * alice waves
  /send NAME PATH        offer a file to NAME (or /send #room PATH: to everyone in a room)
  /get N [DIR]           download offered file N (to DIR, else the downloads folder)
  /files                 the files offered to you
  /history [N]           show N older lines (default 20)
  /nick NEW              change your name (your earlier lines keep the old one)
  /away [message]        say you are away (the first PM from each sender is answered with it)
  /back                  you are back
  /search [#room] WORDS  the newest lines with all these words, in your rooms (/search: older ones)
  /help                  this help
  /quit                  leave the chat (so does end of input)
  //text                 send a line that starts with '/'"""


Outgoing = Union[p.Say, p.Pm]
_HIDDEN_OWN_KINDS = frozenset((p.KIND_MSG, p.KIND_ACTION, p.KIND_ENTER, p.KIND_PART))


def split_text(text: str, limit: int = p.MAX_TEXT_CHARS) -> list[str]:
    """``text`` as pieces of at most ``limit`` characters, broken at the last space that fits, or inside a
    word longer than ``limit``. Only the white space at a break goes."""
    pieces: list[str] = []
    while len(text) > limit:
        cut = max(text.rfind(" ", 1, limit + 1), text.rfind("\t", 1, limit + 1))
        if cut > 0:
            pieces.append(text[:cut].rstrip())
            text = text[cut + 1 :].lstrip()
        else:
            pieces.append(text[:limit])
            text = text[limit:]
    pieces.append(text)
    return [piece for piece in pieces if piece]


def published_events(frames: list[bytes]) -> list[p.Event]:
    """The events of a published message as a client takes them: decoded, every text neutralised. One
    function of the frames alone, so that a gateway's sessions can share its result."""
    return [p.neutralised(event) for event in p.decode_events(frames)]


class ClientCore:
    """One user's view of the chat. ``interactive`` means a person can be asked again for a name."""

    def __init__(
        self,
        name: str | None,
        *,
        interactive: bool,
        history_lines: int = 0,
        room: str = p.DEFAULT_ROOM,
        ignore: IgnoreList | None = None,
        download_dir: Path | None = None,
        file_rate: int = 0,
        local_files: bool = True,
    ) -> None:
        self.name = name or ""
        self.ignore = ignore if ignore is not None else IgnoreList()  # without a file: this session only
        self.mentioned: deque[p.Event] = deque(maxlen=MAX_MENTIONS)  # for /mentions, oldest first
        self._mentions = MentionRule()
        self.rooms: list[str] = [p.room_key(room)]  # our rooms, in the order joined
        self.current = self.rooms[0]  # the room we type into
        self.pub_port = 0
        self.room_queries: deque[str] = deque()  # per ROOMS request: "" to list rooms, or a room's topic
        self.roster_queries: deque[tuple[str, bool]] = deque()  # per WHO: (room key, asked by the user)
        self.interactive = interactive
        self.history_lines = history_lines
        self.state = "naming"
        self.token = secrets.token_hex(16)  # lets a JOIN on a new connection take this session back
        self.history_id = ""
        self.private_seq = 0  # the last PRIVATE shown: a lower or equal one is a resend, not shown again
        self._private_asked = 0  # the highest PONG.private_seq we rejoined for: asked once, not every PONG
        self._carried_on = False  # set by carry_on: the first WELCOME is a takeover, not a new session
        self.heartbeat = DEFAULT_HEARTBEAT
        self.max_text = p.MAX_TEXT_CHARS  # characters in one line, as the broker's WELCOME says
        self.timeout = DEFAULT_TIMEOUT
        self.feeds: dict[str, Feed] = {}  # room -> its events' order and gaps
        self.unacked: OrderedDict[str, tuple[Outgoing, float]] = OrderedDict()  # sent, in flight
        self.waiting: deque[Outgoing] = deque()  # typed, not sent yet (away, or the window is full)
        # Lines typed behind a room change that has not been answered (or, before the WELCOME, behind a
        # command that needs a session): taken in the order typed once it is, so that a line goes to the
        # room the user is typing into by then (``/leave #dev`` then ``text``: the text goes elsewhere).
        self.held: deque[str] = deque()
        self.changing: p.Enter | p.Part | None = None  # the ENTER or PART sent and not yet answered
        self.quit_requested = False
        self._quit_deadline = 0.0
        self._slowed_at = -RESEND_AFTER  # when we last told the user to slow down
        # Flood control: once the broker refuses a line, lines go one at a time, the refused ones first,
        # until everything typed is delivered, so that nothing newer overtakes them.
        self._throttled = False
        self._rate_refused: set[str] = set()  # ids in flight refused with rate_limited
        self._resume_at = 0.0  # when refused lines may be sent again
        self._handshake_failures = 0
        self._handshake_problem = ""  # the last failed handshake's reason, until the broker answers
        self._own_key = ""
        self._commands: dict[str, str] = {}  # id -> what it was, of NICK and AWAY requests not answered
        self._search: tuple[str, str, int] | None = None  # the last search (words, room) and its cursor
        self._id_prefix = secrets.token_hex(4)
        self._counter = 0
        self._deadline = 0.0  # meaning depends on the state: give up, retry, or quit
        self._last_heard = 0.0
        self._last_ping = 0.0
        self.files = Transfers(download_dir, file_rate, next_id=self._next_id)  # /send, /get, /files
        # False where the core runs for someone elsewhere (a web or IRC gateway): /send and /get would
        # read and write the gateway's own disk, not the user's.
        self.local_files = local_files

    # ------------------------------------------------------------------ inputs

    def start(self, now: float) -> list[ev.Action]:
        if self.name:
            return self._join(now)
        return [ev.AskName()]

    def carry_on(
        self,
        token: str,
        history_id: str,
        rooms: dict[str, int],
        current: str,
        pending: list[Outgoing],
        private_seq: int = -1,
    ) -> None:
        """Go on with a session that another driver began (a gateway restarted while a browser kept its
        page), before ``start``: the same token takes the broker's session back, each room goes on after
        the last event shown there, and lines never acknowledged go again under their own ids (the
        broker drops those it already has)."""
        self.token = token
        self.history_id = history_id
        if rooms:
            self.rooms = list(rooms)
        self.current = current if current in self.rooms else self.rooms[0]
        self.feeds = {room: Feed.starting_after(last, 0) for room, last in rooms.items()}
        self.waiting.extend(pending)
        # -1: the private messages the page already showed are not known, so none is asked for again.
        self.private_seq = private_seq
        self._carried_on = True  # its WELCOME takes a session over: no join event of ours to fetch

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
        if self._must_wait(line):
            self.held.append(line)
            return []
        return self._take(line, now)

    def _must_wait(self, line: str) -> bool:
        """Whether a typed line has to wait for what was typed before it (``/quit`` never does: it
        waits for every held line by itself)."""
        word = line.partition(" ")[0].lower() if line.startswith("/") and not line.startswith("//") else ""
        if word in QUIT_COMMANDS:
            return False
        if self.held or self.changing is not None:
            return True
        return self.state != "joined" and word in NEEDS_SESSION

    def _take(self, line: str, now: float) -> list[ev.Action]:
        if line.startswith("//"):
            return self._say(line[1:], p.KIND_MSG, now)
        if line.startswith("/"):
            return self._command(line, now)
        return self._say(line, p.KIND_MSG, now)

    def _release(self, now: float) -> list[ev.Action]:
        """Take the held lines, in order, until one of them is a room change that must be answered first."""
        out: list[ev.Action] = []
        while self.held and self.changing is None and self.state == "joined":
            out += self._take(self.held.popleft(), now)
        if self.quit_requested:
            out += self._quit(now)
        return out

    def on_request(self, request: ev.Request, now: float) -> list[ev.Action]:
        """What a front end asks for itself (a user list, older lines, another room): see ``events``."""
        if isinstance(request, ev.TypeInto):
            if self.held or self.changing is not None:
                self.held.append(f"/switch {request.room}")  # after the lines typed before it, in order
                return []
            room = p.room_key(request.room)
            if room not in self.rooms:
                return [ev.Notice(f"you are not in {p.neutralise(request.room)}: /join it first", "error")]
            self.current = room
            return [self._rooms_changed()]
        if self.state != "joined":
            return []  # a front end asks again once connected (it gets a RoomsChanged then)
        if isinstance(request, ev.AskRoster):
            return self._who(request.room, asked=False)
        return self._older(request.room, request.lines)

    def on_eof(self, now: float) -> list[ev.Action]:
        """End of input means /quit."""
        return self._quit(now)

    def on_direct(self, frames: list[bytes], now: float) -> list[ev.Action]:
        """Frames received on the DEALER."""
        try:
            message = p.neutralised(p.decode_broker(frames))  # nothing from the broker reaches a screen raw
        except RemoteProtocolError as exc:
            if exc.code == p.BAD_VERSION and self.state in ("joining", "lost"):
                reason = p.neutralise(exc.reason)
                return [ev.Exit(ev.EXIT_REFUSED, f"the broker speaks another protocol version: {reason}")]
            return [ev.Notice(f"ignored a malformed message from the broker ({p.neutralise(str(exc))})", "error")]
        self._last_heard = now
        self._handshake_failures = 0
        self._handshake_problem = ""
        if isinstance(message, p.Chunk):  # first: the many messages of a download
            return self._files_done(self.files.chunk(message, p.data_of(frames), now), now)
        if isinstance(message, p.PutAck):
            return self._files_done(self.files.put_ack(message, now), now)
        if isinstance(message, p.Uploading):
            return self.files.uploading(message, now)
        if isinstance(message, p.Welcome):
            return self._welcome(message, now)
        if isinstance(message, p.Error):
            return self._error(message, now)
        if isinstance(message, p.Ack):
            return self._ack(message, now)
        if isinstance(message, p.Acks):
            return [action for ack in message.each() for action in self._ack(ack, now)]
        if isinstance(message, p.Pong):
            return self._pong(message, now)
        if isinstance(message, p.History):
            return self._history(message, now)
        if isinstance(message, p.Private):
            return self._private(message)
        if isinstance(message, p.Roster):
            return self._roster(message)
        if isinstance(message, p.Bye):
            return self._bye(message, now)
        if isinstance(message, p.Entered):
            return self._entered(message, now)
        if isinstance(message, p.Parted):
            return self._parted(message, now)
        if isinstance(message, p.RoomList):
            return self._room_list(message)
        if isinstance(message, p.Renamed):
            return self._renamed(message)
        if isinstance(message, p.Found):
            return self._found(message)
        return []  # pragma: no cover - decode_broker returns only the types above

    def on_published(
        self, frames: list[bytes], now: float, decode: Callable[[list[bytes]], list[p.Event]] | None = None
    ) -> list[ev.Action]:
        """Frames received on the SUB. ``decode`` may be a shared one (a gateway decodes each published
        message once for all its sessions: ``chat.client.aio.SharedDecoder``)."""
        try:
            events = (decode or published_events)(frames)
        except RemoteProtocolError as exc:
            return [ev.Notice(f"ignored a malformed event ({p.neutralise(str(exc))})", "error")]
        actions: list[ev.Action] = []
        for event in events:
            actions += self._receive(event, now)
        return actions

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
        if self.quit_requested and self.files.active():  # a transfer that moves may take its time
            self._quit_deadline = max(self._quit_deadline, self.files.last_moved() + DRAIN_TIMEOUT)
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
        if self._throttled and not self.unacked:
            out += self._pump(now)
        for msg_id, (message, sent_at) in list(self.unacked.items()):
            if msg_id not in self._rate_refused and now - sent_at >= RESEND_AFTER:
                self.unacked[msg_id] = (message, now)
                out.append(ev.Send(message))
        for room, feed in self.feeds.items():
            if feed.fetching is not None and now - feed.fetching.sent_at >= FETCH_RETRY:
                out += self._fetch(room, (feed.fetching.first, feed.fetching.last), now)
        if self.files.active():
            out += self._files_done(self.files.tick(now), now)
        return out

    def next_wakeup(self, now: float) -> float:
        """Seconds until ``tick`` has something to do, at most."""
        wakeup = 1.0
        if self.state in ("joining", "closing", "lost"):
            wakeup = self._deadline - now
        elif self.state == "joined":
            wakeup = min(self._last_ping + self.heartbeat, self._last_heard + self.timeout) - now
            wakeup = min(wakeup, self.files.next_wakeup(now))
            if self._throttled and self.waiting and not self.unacked:
                wakeup = min(wakeup, self._resume_at - now)
        if self.quit_requested:
            wakeup = min(wakeup, self._quit_deadline - now)
        return max(0.0, wakeup)

    # ------------------------------------------------------------------ commands

    def _command(self, line: str, now: float) -> list[ev.Action]:
        word, _, rest = line.partition(" ")
        word = word.lower()
        rest = rest.strip()
        if word in QUIT_COMMANDS:
            return self._quit(now)
        if word in ("/who", "/whosonline"):
            if rest and (problem := p.room_problem(rest)):
                return [ev.Notice(problem, "error")]
            return self._who(rest, asked=True)
        if word in ("/join", "/switch"):
            return self._join_room(word, rest)
        if word == "/leave":
            room = rest or self.current
            if p.room_key(room) not in self.rooms:
                return [ev.Notice(f"you are not in {p.neutralise(room) or 'any room'}", "error")]
            return self._change_room(p.Part(room))
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
            if rest and not rest.isdigit() or rest == "0":
                return [ev.Notice("usage: /history [N], N a number of lines", "error")]
            return self._older(self.current, int(rest or DEFAULT_OLDER))
        if word == "/nick":
            if not rest or (problem := p.name_problem(rest)):
                return [ev.Notice(problem if rest and problem else "usage: /nick NEW", "error")]
            return self._request(p.Nick(self._next_id(), rest), "nick")
        if word == "/away":
            text = rest or DEFAULT_AWAY
            if len(text) > p.MAX_AWAY_CHARS:
                return [ev.Notice(f"an away message can be at most {p.MAX_AWAY_CHARS} characters long", "error")]
            return self._request(p.Away(self._next_id(), text), "away")
        if word == "/back":
            return self._request(p.Away(self._next_id(), ""), "back")
        if word == "/search":
            return self._search_command(rest)
        if word in PERSONAL_COMMANDS:
            return self._personal_command(word, rest)
        if word in ("/send", "/get") and not self.local_files:
            return [ev.Notice(f"{word} is not available here: files are sent and saved by client.py", "error")]
        if word == "/send":
            return self.files.send(rest, now)
        if word == "/get":
            return self.files.get(rest, now)
        if word == "/files":
            return self.files.listing()
        if word == "/help":
            return [ev.Notice(HELP + "\n" + PERSONAL_HELP)]
        return [ev.Notice(f"unknown command {p.neutralise(word)}; type /help for the list", "error")]

    def _request(self, request: p.Nick | p.Away, what: str) -> list[ev.Action]:
        """A request answered once (RENAMED, ACK or ERROR): lost in a reconnect, it is typed again."""
        if len(self._commands) > MAX_IN_FLIGHT:
            self._commands.clear()  # answers lost to reconnects: they will not come
        self._commands[request.id] = what
        return [ev.Send(request)]

    def _search_command(self, rest: str) -> list[ev.Action]:
        room, _, words = rest.partition(" ") if rest.startswith("#") else ("", "", rest)
        if room and (problem := p.room_problem(room)):
            return [ev.Notice(problem, "error")]
        before = 0
        if not words.strip():
            if room or self._search is None or not self._search[2]:
                return [ev.Notice("usage: /search [#room] WORDS (/search alone: older matches of the last one)", "error")]
            words, room, before = self._search
        self._search = (words, room, 0)
        return [ev.Send(p.Search(SEARCH_PREFIX + self._next_id(), words, room, before))]

    def _found(self, found: p.Found) -> list[ev.Action]:
        if not found.id.startswith(SEARCH_PREFIX) or self._search is None:
            return []
        words, room, _ = self._search
        self._search = (words, room, found.before)
        events = []
        for raw in reversed(found.events):  # oldest first, as lines are read
            try:
                events.append(msgspec.convert(raw, p.Event))
            except msgspec.ValidationError:
                continue  # a malformed one is left out; the rest is shown
        return [ev.Found(words, tuple(events), bool(found.before))]

    def _renamed(self, renamed: p.Renamed) -> list[ev.Action]:
        if self._commands.pop(renamed.id, None) is None:
            return []
        self.name = renamed.name
        self._own_key = p.name_key(renamed.name)
        self.private_seq = self._private_asked = renamed.private_seq  # private messages go by name
        return [ev.Renamed(renamed.name)]

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
        return self._change_room(p.Enter(room))

    def _change_room(self, request: p.Enter | p.Part) -> list[ev.Action]:
        """Send an ENTER or PART; what is typed after it waits for the answer (``_release``)."""
        self.changing = request
        return [ev.Send(request)]

    def _room_changed(self, room: str) -> None:
        """The broker answered the room change about ``room`` (ENTERED, PARTED or an ERROR)."""
        if self.changing is not None and p.room_key(self.changing.room) == room:
            self.changing = None

    def _topic(self, rest: str) -> list[ev.Action]:
        first, _, text = rest.partition(" ")
        if first.startswith("#"):
            room, text = first, text.strip()
            if problem := p.room_problem(room):
                return [ev.Notice(problem, "error")]
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
        self._room_changed(room)
        self.current = room
        topic = f" (topic: {p.neutralise(entered.topic)})" if entered.topic else ""
        if room in self.rooms:
            return [self._rooms_changed(), ev.Notice(f"now talking in {room}{topic}"), *self._release(now)]
        self.rooms.append(room)
        out: list[ev.Action] = [
            ev.Subscribe(self.pub_port, (room,)),
            self._rooms_changed(),
            ev.Notice(f"joined {room}{topic}; now talking there"),
        ]
        return out + self._follow(room, entered.last_seq, now) + self._release(now)

    def _parted(self, parted: p.Parted, now: float) -> list[ev.Action]:
        room = parted.room
        self._room_changed(room)
        if room in self.rooms:
            self.rooms.remove(room)
        self.feeds.pop(room, None)
        if self.current == room:
            self.current = self.rooms[0] if self.rooms else ""
        where = f"; now talking in {self.current}" if self.current else "; you are in no room now"
        out: list[ev.Action] = [ev.Unsubscribe(room), self._rooms_changed(), ev.Notice(f"left {room}{where}")]
        return out + self._release(now)

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
        """Queue a line; one over the text limit goes as several, broken between words as IRC clients do."""
        if len(message.text) > self.max_text:
            texts = split_text(message.text, self.max_text)
            pieces = [msgspec.structs.replace(message, id=self._next_id(), text=t) for t in texts]
        elif problem := p.text_problem(message.text):
            return [ev.Notice(problem, "error")]
        else:
            pieces = [message]
        self.waiting.extend(pieces)
        shown: list[ev.Action] = [
            ev.Sent(m.id, kind, m.text, getattr(m, "to", ""), getattr(m, "room", "")) for m in pieces
        ]
        return shown + self._pump(now)

    def _pump(self, now: float) -> list[ev.Action]:
        """Send waiting lines, in the order typed, while fewer than MAX_IN_FLIGHT are unacknowledged.

        The window keeps every resend within the ids the broker remembers, so none is shown twice. Under
        flood control the window is one line: the broker handles a connection's requests in order, so a
        line sent only once the one before it is acknowledged can never overtake it.
        """
        if self.state != "joined" or self._throttled and now < self._resume_at:
            return []
        if self._throttled and not self._pending():
            self._throttled = False  # everything typed is delivered: full speed again
        window = 1 if self._throttled else MAX_IN_FLIGHT
        out: list[ev.Action] = []
        while self.waiting and len(self.unacked) < window:
            message = self.waiting.popleft()
            self.unacked[message.id] = (message, now)
            out.append(ev.Send(message))
        return out

    def _pending(self) -> int:
        """What /quit waits for: lines not yet acknowledged, typed lines not yet taken, and file transfers."""
        return len(self.unacked) + len(self.waiting) + len(self.held) + (self.changing is not None) + self.files.active()

    def _files_done(self, actions: list[ev.Action], now: float) -> list[ev.Action]:
        """What a transfer did; when it was the last thing a /quit waited for, leave now."""
        if self.quit_requested and not self._pending():
            actions = actions + self._quit(now)
        return actions

    def _requeue_refused(self, now: float) -> None:
        """Once every line in flight has been refused, queue them again, in order, ahead of newer ones."""
        if not self.unacked or not self._rate_refused.issuperset(self.unacked):
            return  # answers still to come: a line sent before a refused one may yet be accepted
        self.waiting.extendleft(reversed([message for message, _ in self.unacked.values()]))
        self.unacked.clear()
        self._rate_refused.clear()
        self._resume_at = now + RATE_RETRY

    def _older(self, room: str, lines: int) -> list[ev.Action]:
        room = p.room_key(room)
        feed = self.feeds.get(room)
        wanted = feed.older(lines) if feed is not None else None
        if wanted is None:
            return [ev.NothingOlder(room, f"there is nothing older in {room}")]
        return [ev.Send(p.Fetch(room, *wanted, id=OLDER_FETCH + room))]

    def _who(self, room: str, *, asked: bool) -> list[ev.Action]:
        self.roster_queries.append((p.room_key(room), asked))
        return [ev.Send(p.Who(room))]

    def _roster(self, roster: p.Roster) -> list[ev.Action]:
        """A WHO's answer: printed if the user asked, for a front end's list if it did (replies come in
        the order asked; one lost in a reconnect is passed over)."""
        room = p.room_key(roster.room)
        for index, (asked_room, asked) in enumerate(self.roster_queries):
            if asked_room == room:
                for _ in range(index + 1):
                    self.roster_queries.popleft()
                return [ev.RosterShown(roster, asked)]
        return [ev.RosterShown(roster)]

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
        """JOIN names our rooms too, so that a restarted broker puts us back in all of them, and the last
        private message we have shown, so that it sends again any later one that went astray."""
        return p.Join(self.name, self.token, list(self.rooms), self.private_seq, batch_acks=True)

    def _refused(self, reason: str) -> list[ev.Action]:
        if self.interactive:
            self.state = "naming"
            return [ev.AskName(reason)]
        return [ev.Exit(ev.EXIT_REFUSED, reason)]

    def _welcome(self, welcome: p.Welcome, now: float) -> list[ev.Action]:
        if self.state not in ("joining", "lost"):
            return []  # a late answer to a retried JOIN
        was_lost = self.state == "lost"
        # A first WELCOME is always a new session, so the broker has just published our join event in
        # each room, right after rooms[room]: fetch it with the history, to show it as everyone sees it.
        # (After a reconnect the session may have been taken over, with no join event: if there is one,
        # the next gap brings it.)
        own_join = 0 if was_lost or self._carried_on else 1
        self.state = "joined"
        self.name = welcome.name
        self._own_key = p.name_key(welcome.name)  # compared with every event's sender: computed once
        self.heartbeat = max(welcome.heartbeat_ms / 1000, MIN_HEARTBEAT)
        self.timeout = welcome.timeout_ms / 1000
        self.max_text = min(max(1, welcome.max_text), p.MAX_TEXT_CHARS)
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
            self.feeds.clear()  # another history: its numbers are not ours
            self.private_seq = self._private_asked = 0
        self.history_id = welcome.history_id
        for room, last in welcome.rooms.items():
            out += self._follow(room, last, now, own_join)
        # What was never acknowledged goes again first, then what was typed while away, in order.
        self.waiting.extendleft(reversed([m for m, _ in self.unacked.values()]))
        self.unacked.clear()
        self._rate_refused.clear()
        out += self._pump(now)
        if was_lost:
            out += self.files.resume(now)
        out += self._resume_room_change(welcome)
        return out + self._release(now)

    def _resume_room_change(self, welcome: p.Welcome) -> list[ev.Action]:
        """A room change that was not answered before we got back in: done if the WELCOME says so,
        else sent again (so that the lines held behind it still go where they were meant to)."""
        change = self.changing
        if change is None:
            return []
        room = p.room_key(change.room)
        if (room in welcome.rooms) == isinstance(change, p.Enter):
            self.changing = None
            if isinstance(change, p.Enter):
                self.current = room
                return [self._rooms_changed()]
            return [ev.Unsubscribe(room)]
        return [ev.Send(change)]

    def _follow(self, room: str, last: int, now: float, own_events: int = 0) -> list[ev.Action]:
        """Start (or go on) showing ``room`` after its event ``last``, with history_lines before it, and
        the ``own_events`` published for us right after ``last`` (our join)."""
        feed = self.feeds.get(room)
        if feed is None:
            feed = self.feeds[room] = Feed.starting_after(last, self.history_lines)
        out = self._show(feed.resume())  # heard while getting back in, and now known to follow on
        if feed.expected <= last + own_events:
            out += self._fetch(room, (feed.expected, last + own_events), now)
        return out

    def _error(self, error: p.Error, now: float) -> list[ev.Action]:
        if error.ref == p.Join.TYPE.decode() and self.state in ("joining", "lost"):
            if self.state == "lost" and error.code in (p.RATE_LIMITED, p.ADDRESS_FULL, p.SERVER_FULL):
                return []  # a crowd getting back in at once: the next retry may be let in
            if error.code in (p.NAME_TAKEN, p.NAME_INVALID, p.NAME_OWNED):
                return self._refused(error.reason)
            return [ev.Exit(ev.EXIT_REFUSED, error.reason)]
        if error.code == p.NOT_JOINED:
            # The broker forgot us (it restarted, or expired us): get back in at once. What it refused
            # stays unacknowledged and is sent again after the WELCOME.
            if self.state == "joined":
                return self._lost("the broker no longer knows this session", now)
            return []
        if error.ref.startswith((UP_ID, GET_ID)):
            return self._files_done(self.files.error(error, now), now)
        if error.code == p.RATE_LIMITED and error.ref in self.unacked:
            # Kept, and sent again before anything newer: a paste goes out at the broker's pace, in order.
            self._throttled = True
            self._rate_refused.add(error.ref)
            self._requeue_refused(now)
            if now - self._slowed_at < RESEND_AFTER:
                return []
            self._slowed_at = now
            return [ev.Notice(f"{error.reason}; your lines will follow", "error")]
        if error.ref in self.unacked:
            del self.unacked[error.ref]  # refused for good: resending would not help
            self._requeue_refused(now)
            return [ev.Failed(error.ref, error.reason), ev.Notice(error.reason, "error"), *self._pump(now)]
        if error.code == p.RATE_LIMITED and (error.ref.startswith(GAP_FETCH + "#") or error.ref == p.Fetch.TYPE.decode()):
            return []  # the history is there, only not so fast: the gap's FETCH is sent again after FETCH_RETRY
        unreadable = [ev.Notice(error.reason, "error")] if error.code == p.STORE_FAILED else []
        if error.ref.startswith(GAP_FETCH + "#"):  # only that room's gap cannot be filled
            return unreadable + self._skip_unrecoverable(error.ref[len(GAP_FETCH) :])
        if error.ref == p.Fetch.TYPE.decode():  # a broker that does not echo ids: which room is unknown
            return unreadable + self._skip_unrecoverable()
        if self._commands.pop(error.ref, None) is not None:  # a /nick or /away refused: the reason says why
            return [ev.Notice(error.reason, "error")]
        if self.changing is not None and error.ref == self.changing.TYPE.decode():
            self.changing = None  # refused: what was typed after it goes on as if it had not been typed
            return [ev.Notice(error.reason, "error"), *self._release(now)]
        return [ev.Notice(error.reason, "error")]

    def _private(self, private: p.Private) -> list[ev.Action]:
        if private.seq:  # 0: a broker that does not number private messages
            if private.seq <= self.private_seq:
                return []  # sent again on our JOIN, and shown already
            self.private_seq = private.seq
        if private.name in self.ignore:
            return []  # /ignore: delivered, and numbered as shown, but not shown (nor offered, if a file)
        if private.file:
            self.files.seen(private.file, private.name, private.text, "private")
        return [ev.PrivateIn(private)]

    def _bye(self, bye: p.Bye, now: float) -> list[ev.Action]:
        if self.state == "closing":
            return [ev.Exit(ev.EXIT_OK)]
        return self._lost(bye.reason, now)

    def _lost(self, why: str, now: float) -> list[ev.Action]:
        """Start getting back in: a fresh DEALER at once (the old one may hold stale requests), then retries."""
        self.state = "lost"
        self._deadline = now + RETRY_INTERVAL
        self.roster_queries.clear()  # their answers went with the old DEALER
        for feed in self.feeds.values():
            feed.reported = None
        return [
            ev.Status("reconnecting"),
            ev.Notice(f"lost the broker: {why}; trying to get back in", "error"),
            ev.Reconnect(),
            ev.Send(self._join_message()),
        ]

    def _ack(self, ack: p.Ack, now: float) -> list[ev.Action]:
        what = self._commands.pop(ack.id, None)
        if what == "away":
            return [ev.Notice("you are marked as away; /back when you are back")]
        if what == "back":
            return [ev.Notice("you are no longer marked as away")]
        sent = self.unacked.pop(ack.id, None)
        if sent is None:
            return []  # an ack for a resend we already had
        self._requeue_refused(now)
        out: list[ev.Action] = [ev.Acked(ack.id, ack.seq, ack.ts), *self._pump(now)]
        if ack.away and isinstance(sent[0], p.Pm):
            out.append(ev.Notice(f"{sent[0].to} is away: {ack.away}"))
        if ack.queued and isinstance(sent[0], p.Pm):
            out.append(ev.Notice(f"{sent[0].to} is offline: the message waits for them and is delivered when they join"))
        if self.quit_requested and not self._pending():
            out += self._quit(now)
        return out

    # ------------------------------------------------------------------ ordering and gaps

    def _receive(self, event: p.Event, now: float) -> list[ev.Action]:
        feed = self.feeds.get(event.room)
        if feed is None:
            return []  # not a room of ours
        shown, gap = feed.receive(event, trusted=self.state == "joined")
        return self._show(shown) + (self._fetch(event.room, gap, now) if gap else [])

    def _show(self, events: list[p.Event]) -> list[ev.Action]:
        several = len(self.rooms) > 1
        for event in events:
            if event.kind == p.KIND_FILE:
                self.files.seen(p.offer_number(event.text), event.name, event.text, event.room)
        return [self._public(e, several) for e in events if not self._is_own(e) and not self._ignored(e)]

    def _is_history(self, event: p.Event) -> bool:
        """From before we joined its room: the lines shown on joining (--history)."""
        feed = self.feeds.get(event.room)
        return feed is not None and event.seq < feed.live_from

    def _is_own(self, event: p.Event) -> bool:
        """Our own events since we joined that are not shown back to us: our lines and actions (shown
        as typed, then ACKed), our room changes (ENTERED and PARTED stand for them) and the leave of
        the session we are ending. Our join is shown, as everyone else sees it, and so is the leave of
        a session the broker ended (timed out) while we were away; so is a topic we set: it is how the
        change is confirmed."""
        if event.kind not in _HIDDEN_OWN_KINDS and not (event.kind == p.KIND_LEAVE and self.state == "closing"):
            return False
        feed = self.feeds.get(event.room)
        own = p.name_key(event.name) == self._own_key
        return own and feed is not None and event.seq >= feed.live_from

    def _fetch(self, room: str, wanted: Range, now: float) -> list[ev.Action]:
        self.feeds[room].fetching = Fetching(wanted[0], wanted[1], now)
        return [ev.Send(p.Fetch(room, *wanted, id=GAP_FETCH + room))]

    def _history(self, history: p.History, now: float) -> list[ev.Action]:
        try:
            events = p.history_events(history)
        except RemoteProtocolError as exc:
            return [ev.Notice(f"ignored a malformed history reply ({p.neutralise(str(exc))})", "error")]
        room = history.room
        feed = self.feeds.get(room)
        if feed is None:
            return []
        asked = (history.first, history.last)  # the range this answers, echoed by the broker
        if feed.browsing == asked:
            feed.browsing = None
            if not events:
                return [ev.NothingOlder(room, f"nothing older is kept in {room}")]
            return [self._older_shown(events)]
        shown, ask, lost = feed.answered(events, asked)
        out = self._lost_events(room, lost) + self._show(shown)
        return out + (self._fetch(room, ask, now) if ask else [])

    def _skip_unrecoverable(self, only: str = "") -> list[ev.Action]:
        """The broker refused a FETCH (of room ``only``, or of any room): what we are missing is gone;
        move on to what we hold."""
        out: list[ev.Action] = []
        for room, feed in self.feeds.items():
            if only and room != only:
                continue
            shown, lost = feed.skip_unrecoverable()
            out += self._lost_events(room, lost) + self._show(shown)
        return out

    @staticmethod
    def _lost_events(room: str, lost: int) -> list[ev.Action]:
        return [ev.Notice(f"{lost} event(s) in {room} could not be recovered", "error")] if lost else []

    def _pong(self, pong: p.Pong, now: float) -> list[ev.Action]:
        out: list[ev.Action] = []
        if pong.private_seq > max(self.private_seq, self._private_asked) and self.state == "joined":
            # A PRIVATE travels before the PONG on the same connection: one we lack went astray. A JOIN
            # again (on this connection: no new session) brings it, and the broker's WELCOME is ignored.
            self._private_asked = pong.private_seq
            out.append(ev.Send(self._join_message()))
        for room, last in pong.rooms.items():
            feed = self.feeds.get(room)
            gap = feed.pong(last) if feed is not None else None
            if gap:
                out += self._fetch(room, gap, now)
        return out

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}-{self._counter}"

    # ------------------------------------------------------------------ mentions and /ignore (chat.client.personal)

    def _public(self, event: p.Event, several: bool) -> ev.Public:
        """A public event to show, marked when it mentions us; a live mention is kept for /mentions."""
        history = self._is_history(event)
        mention = event.kind in MENTION_KINDS and self._mentions(self.name, event.text)
        if mention and not history:
            self.mentioned.append(event)
        return ev.Public(event, several, history, mention)

    def _older_shown(self, events: list[p.Event]) -> ev.Older:
        """Older lines, without those of ignored users, marking those that mention us."""
        kept = tuple(e for e in events if not self._ignored(e))
        mentioning = frozenset(e.seq for e in kept if e.kind in MENTION_KINDS and self._mentions(self.name, e.text))
        return ev.Older(kept, mentioning)

    def _ignored(self, event: p.Event) -> bool:
        return event.kind in IGNORED_KINDS and event.name in self.ignore

    def _personal_command(self, word: str, rest: str) -> list[ev.Action]:
        """/ignore [NAME], /unignore NAME, /mentions: answered by the client alone."""
        if word == "/mentions":
            return [self._mentions_listed()]
        if not rest:
            if word == "/unignore":
                return [ev.Notice("usage: /unignore NAME", "error")]
            ignored = self.ignore.names()
            if not ignored:
                return [ev.Notice("you ignore nobody; /ignore NAME hides someone's lines and private messages")]
            return [ev.Notice(f"ignored ({len(ignored)}): {', '.join(p.neutralise(n) for n in ignored)}")]
        name = rest.split()[0]
        if problem := p.name_problem(name):
            return [ev.Notice(f"usage: {word} NAME ({problem})", "error")]
        if word == "/ignore" and p.name_key(name) == p.name_key(self.name):
            return [ev.Notice("you cannot ignore yourself", "error")]
        shown = p.neutralise(name)
        try:
            changed = self.ignore.add(name) if word == "/ignore" else self.ignore.remove(name)
        except OSError as exc:
            return [ev.Notice(f"could not save the ignore list ({exc}); {word} not done", "error")]
        if word == "/ignore":
            said = f"ignoring {shown}: their lines and private messages are hidden" if changed else f"{shown} is ignored already"
        else:
            said = f"no longer ignoring {shown}" if changed else f"{shown} was not ignored"
        return [ev.Notice(said)]

    def _mentions_listed(self) -> ev.Notice:
        if not self.mentioned:
            return ev.Notice("no line has mentioned you yet")
        lines = [f"mentions ({len(self.mentioned)}), oldest first:"]
        for event in self.mentioned:
            who = f"* {event.name}" if event.kind == p.KIND_ACTION else f"{event.name}:"
            when = datetime.fromtimestamp(event.ts / 1000).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"  {when} {event.room} {p.neutralise(who)} {p.neutralise(event.text)}")
        return ev.Notice("\n".join(lines))
