"""The full-screen terminal client (Textual), in the manner of weechat, irssi and gomuks::

    ┌─ title: the buffer shown, what this is, how to get help ───┐
    │ message pane of the buffer (chat.ui.chatlog) │ user list   │
    │ 14:03 <bob> hello                            │ #general (2)│
    │                                              │ alice       │
    ├─ status: broker, connection, encryption, buffers, name ────┤
    └─ [alice] the input line, focused from the start ───────────┘

A buffer (``chat.ui.buffers``) per room and per private talk, each with its own pane; one is shown.
Textual owns the screen, so traffic never garbles what is being typed. The client core stays UI-agnostic:
``Connection.run()`` drives it in a thread of its own and hands every ``events.Show`` item to this app as
a message (``post_message`` is thread-safe); what the user types goes back with ``Connection.submit``,
and what the app asks for itself (rosters, older lines, the room typed into) with ``Connection.request``.
The plain line mode (``chat.ui.plain``) consumes the very same items.

Why not ``App.call_from_thread``: it blocks the connection thread until the callback has run, and a
callback still queued when the app closes never runs, so that thread would wait forever.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections import deque
from datetime import tzinfo
from typing import Callable, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Static

from chat import protocol as p
from chat.client import events as ev
from chat.ui.buffers import LOBBY, Buffer, Buffers, talk_key
from chat.ui.chatlog import ERROR, NOTICE, OWN, PRIVATE, ChatLog, Entry, name_style, safe
from chat.ui.format import LineFormatter, progress_bar
from chat.ui.widgets import ChatInput, StatusLine, UserList

OLDER_LINES = 20  # lines asked for each time the reader scrolls past the top
OLDER_TIMEOUT = 5.0  # seconds after which an unanswered request for older lines may be made again
LEAVE_JOIN_TIMEOUT = 2.0  # seconds run_tui waits for the connection to finish after the screen closed
NAME_PROMPT = "name:"
NAME_PLACEHOLDER = "your name: 1-32 characters, no spaces; Enter to join"
CHAT_PLACEHOLDER = "type a message; /help for commands, Tab completes, Ctrl-C leaves"
USER_LIST_FROM = 60  # columns from which the user list is shown


class ConnectionLike(Protocol):
    """What the app needs of ``chat.client.net.Connection``."""

    def run(self) -> ev.Exit: ...

    def submit(self, line: str) -> None: ...

    def submit_eof(self) -> None: ...

    def request(self, request: ev.Request) -> None: ...


ShowCallback = Callable[[ev.Show], None]
Connect = Callable[[ShowCallback], ConnectionLike]


class ShowItem(Message):
    """An item from the core, posted by the connection thread."""

    def __init__(self, item: ev.Show) -> None:
        super().__init__()
        self.item = item


class ConnectionEnded(Message):
    """``Connection.run()`` returned: the app closes with its exit code."""

    def __init__(self, result: ev.Exit) -> None:
        super().__init__()
        self.result = result


class ChatApp(App[int]):
    """The chat on one screen. ``connect(show)`` makes the connection; its ``run()`` is called in a thread.

    ``clock`` (seconds since the epoch) times the client's own lines and ``tz`` the display (None: local
    time): tests give fixed ones.
    """

    TITLE = "LAN chat"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "#input"
    # Narrower than this, the user list gives way: the messages and the status line need the room.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (USER_LIST_FROM, "-wide")]
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $primary-muted; color: $foreground; text-style: bold; }
    #main { height: 1fr; }
    #logs { width: 1fr; }
    ChatLog { width: 1fr; height: 1fr; }
    #users { width: 18; height: 1fr; border-left: vkey $foreground 30%; padding: 0 0 0 1; }
    .-narrow #users { display: none; }
    #status { height: 1; background: $panel; color: $foreground; }
    #bottom { height: 1; }
    #prompt { width: auto; padding: 0 1 0 0; text-style: bold; }
    #input { width: 1fr; }
    """
    BINDINGS = [
        Binding("ctrl+c", "leave", "Leave", show=False, priority=True),
        Binding("ctrl+q", "leave", "Leave", show=False, priority=True),
        Binding("pageup", "page(-1)", "Scroll back", show=False, priority=True),
        Binding("pagedown", "page(1)", "Scroll forward", show=False, priority=True),
        Binding("ctrl+n", "step(1)", "Next buffer", show=False, priority=True),
        Binding("ctrl+p", "step(-1)", "Previous buffer", show=False, priority=True),
        *(Binding(f"alt+{n % 10}", f"buffer({n})", f"Buffer {n}", show=False, priority=True) for n in range(1, 11)),
        Binding("alt+a", "next_active", "Next active buffer", show=False, priority=True),
    ]

    def __init__(
        self,
        connect: Connect,
        *,
        address: str,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
        encrypted: bool = False,
        handle_signals: bool = False,
        bell: bool = True,
    ) -> None:
        super().__init__()
        self.ring_bell = bell  # once per line that mentions us (--no-bell: never)
        self.connect = connect
        self.address = address
        self.clock = clock
        self.tz = tz
        self.encrypted = encrypted
        self.handle_signals = handle_signals
        self._signals: list[int] = []  # those add_leave_handlers could set
        self.colour = not self.no_color
        self.nick = ""
        self.room = ""  # the room we type into, as the core last said
        self.rooms: tuple[str, ...] = ()
        self.buffers = Buffers(Buffer(LOBBY, "", self._new_log()))
        self.state = "starting"
        self.naming = False
        self.leaving = False
        self.exit_reason = ""
        self.failure: BaseException | None = None  # a bug in the connection thread, re-raised by run_tui
        self.conn: ConnectionLike | None = None
        self.thread: threading.Thread | None = None
        self.connection_running = False  # True from start until Connection.run() has returned
        self._pending: dict[str, tuple[Buffer, Entry]] = {}  # own lines not yet acknowledged, by id
        self._joined_once = False
        self._roster_due = False  # (re)connected: the user list needs a fresh roster
        self.rosters: dict[str, list[str]] = {}  # room -> its members, once asked for; kept up by events
        self._typing_into: deque[str] = deque()  # the rooms of our TypeInto requests, until answered
        self.transfers: dict[tuple[str, int], ev.Progress] = {}  # file transfers under way: their bars

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal(id="main"):
            with Vertical(id="logs"):
                yield self.buffers.shown.log
            yield UserList(colour=self.colour, id="users")
        yield StatusLine(id="status")
        with Horizontal(id="bottom"):
            yield Static(">", id="prompt")  # until the core asks for a name or says which one we have
            yield ChatInput(placeholder=CHAT_PLACEHOLDER, id="input")

    def _new_log(self) -> ChatLog:
        return ChatLog(tz=self.tz, colour=self.colour)

    @property
    def log_pane(self) -> ChatLog:
        """The pane of the buffer shown."""
        return self.buffers.shown.log

    @property
    def users(self) -> UserList:
        return self.query_one("#users", UserList)

    @property
    def input_line(self) -> ChatInput:
        return self.query_one("#input", ChatInput)

    @property
    def unread(self) -> dict[str, int]:
        """Unread lines by buffer title, for the buffers that have some."""
        return {b.title: b.unread for b in self.buffers.ordered() if b.unread}

    def on_mount(self) -> None:
        self.input_line.names = self._completion_names
        self.input_line.rooms = lambda: list(self.rooms)
        self._refresh_status()
        if self.handle_signals:
            self._signals = add_leave_handlers(asyncio.get_running_loop(), self.action_leave)
        self.conn = self.connect(self._show_from_thread)
        self.thread = threading.Thread(target=self._run_connection, name="chat-connection", daemon=True)
        self.connection_running = True
        self.thread.start()

    def on_unmount(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            loop.remove_signal_handler(signum)
        if self.connection_running and not self.leaving:
            self._submit_eof()  # the screen closed some other way: still leave the chat properly

    # ------------------------------------------------------------------ the connection thread

    def _run_connection(self) -> None:
        assert self.conn is not None
        try:
            result = self.conn.run()
        except Exception as exc:  # a bug: end the screen, then run_tui re-raises it with its traceback
            self.failure = exc
            result = ev.Exit(ev.EXIT_UNREACHABLE, f"the connection failed: {exc!r}")
        finally:
            self.connection_running = False  # from now on, nothing may be submitted to it
        self._post(ConnectionEnded(result))

    def _show_from_thread(self, item: ev.Show) -> None:
        self._post(ShowItem(item))

    def _post(self, message: Message) -> None:
        try:
            self.post_message(message)  # returns False once the app is closing: nobody left to show it to
        except RuntimeError:
            pass  # the app's event loop has already closed: likewise

    def on_show_item(self, message: ShowItem) -> None:
        self.show(message.item)

    def on_connection_ended(self, message: ConnectionEnded) -> None:
        self.exit_reason = message.result.reason
        if self.is_running:
            self.exit(message.result.code, return_code=message.result.code)

    # ------------------------------------------------------------------ what the core shows

    def show(self, item: ev.Show) -> None:
        """Show one item from the core (on the app's thread)."""
        if not self.is_running:
            return  # shutting down: the widgets are going away
        if isinstance(item, ev.Public):
            self._public(item)
        elif isinstance(item, ev.Older):
            self._older(item.events)
        elif isinstance(item, ev.NothingOlder):
            self._nothing_older(item)
        elif isinstance(item, ev.PrivateIn):
            private = item.private
            self._add(self._talk(private.name), Entry(PRIVATE, private.ts, private.name, private.text), news=True)
        elif isinstance(item, ev.Sent):
            self._sent(item)
        elif isinstance(item, ev.Acked):
            if item.id in self._pending:
                buffer, entry = self._pending.pop(item.id)
                entry.ts, entry.pending = item.ts, False
                entry.name = entry.name or self.nick  # typed before the WELCOME named us
                buffer.log.changed(entry)
        elif isinstance(item, ev.Failed):
            if item.id in self._pending:  # the reason follows as a notice
                buffer, entry = self._pending.pop(item.id)
                entry.pending, entry.failed = False, True
                buffer.log.changed(entry)
        elif isinstance(item, ev.RosterShown):
            self._roster(item.roster, item.asked)
        elif isinstance(item, ev.RoomsChanged):
            self._rooms_changed(item.rooms, item.current)
        elif isinstance(item, ev.RoomsListed):
            self._room_list(item.listing)
        elif isinstance(item, ev.Notice):
            self._notice(item.text, item.level)
        elif isinstance(item, ev.AskName):
            self._ask_name(item.reason)
        elif isinstance(item, ev.Status):
            self._status(item)
        elif isinstance(item, ev.Renamed):
            self.nick = self.users.own = item.name
            self._set_prompt(f"[{safe(item.name)}]")
            self._refresh_status()
        elif isinstance(item, ev.Found):
            for event in item.events:
                self.buffers.shown.log.append(Entry.from_event(event, show_room=True, history=True))
            self._notice(LineFormatter.found_summary(item.text, len(item.events), item.more))
        elif isinstance(item, ev.Progress):
            self._progress(item)

    def _progress(self, item: ev.Progress) -> None:
        """A transfer's bar in the status line while it runs."""
        key = (item.direction, item.number)
        if item.done >= item.total:
            self.transfers.pop(key, None)
        else:
            self.transfers[key] = item
        self._refresh_status()

    def _add(self, buffer: Buffer, entry: Entry, *, news: bool = False) -> None:
        """A line into ``buffer``; ``news`` (a line from someone else) counts as unread there if not shown."""
        buffer.log.append(entry)
        if news and buffer is not self.buffers.shown:
            buffer.unread += 1
            self._refresh_status()

    def _public(self, item: ev.Public) -> None:
        event = item.event
        buffer = self.buffers.get(p.room_key(event.room)) or self.buffers.shown
        entry = Entry.from_event(event, history=item.history, mention=item.mention)
        if item.history:
            buffer.log.add_history(entry)
            return
        self._follow_roster(event)
        if item.mention:
            self._mentioned(buffer)
        self._add(buffer, entry, news=event.kind in (p.KIND_MSG, p.KIND_ACTION))

    def _sent(self, item: ev.Sent) -> None:
        buffer = self._talk(item.to) if item.kind == "pm" else self.buffers.get(p.room_key(item.room))
        buffer = buffer or self.buffers.shown
        entry = Entry(OWN, self._now_ms(), self.nick, item.text, item.kind, item.to, item.id, pending=True)
        entry.room = item.room
        self._pending[item.id] = (buffer, entry)
        self._add(buffer, entry)

    def _notice(self, text: str, level: str = "info", buffer: Buffer | None = None) -> None:
        """A line of the client's own, in the buffer shown (or ``buffer``)."""
        buffer = buffer or self.buffers.shown
        for line in text.splitlines() or [""]:
            buffer.log.append(Entry(ERROR if level == "error" else NOTICE, self._now_ms(), text=line))

    def _older(self, events: tuple[p.Event, ...]) -> None:
        buffer = self.buffers.get(p.room_key(events[0].room)) if events else None
        if buffer is None:
            return
        buffer.older_since = None
        if events[0].seq <= 1:
            buffer.at_beginning = True
        buffer.log.prepend(Entry.from_event(e, history=True) for e in events)

    def _nothing_older(self, item: ev.NothingOlder) -> None:
        buffer = self.buffers.get(p.room_key(item.room))
        if buffer is not None:
            buffer.older_since, buffer.at_beginning = None, True
        self._notice(item.reason, buffer=buffer)

    def _ask_name(self, reason: str) -> None:
        self.naming = True
        self.state = "choosing a name"
        self._notice(reason or "choose a name to join the chat", "error" if reason else "info")
        self.input_line.placeholder = NAME_PLACEHOLDER
        self._set_prompt(NAME_PROMPT)
        self._refresh_status()

    def _status(self, status: ev.Status) -> None:
        self.state = status.state
        if status.state == "connecting":
            self.naming = False
        if status.state == "connected":
            self.nick = self.users.own = status.name
            self.input_line.placeholder = CHAT_PLACEHOLDER
            self._set_prompt(f"[{safe(status.name)}]")
            self._roster_due = True  # asked for when the core says which rooms we are in (next item)
            self.rosters.clear()  # what changed while we were away is not all in the events we get
            if not self._joined_once:
                self._joined_once = True
                self._notice(f"joined as {safe(status.name)}; type /help for commands")
        self._refresh_status()

    # ------------------------------------------------------------------ buffers

    def _rooms_changed(self, rooms: tuple[str, ...], current: str) -> None:
        # The core moved to another room: show it, unless that answers our TypeInto (the reader may be
        # somewhere else by now).
        while self._typing_into and self._typing_into[0] not in rooms:
            self._typing_into.popleft()  # refused: we left that room meanwhile
        answer = bool(self._typing_into) and self._typing_into[0] == current
        if answer:
            self._typing_into.popleft()
        moved = current != self.room and not answer
        self.rooms, self.room = rooms, current
        by_key = {b.key: b for b in self.buffers.rooms}
        lobby = by_key.pop(LOBBY, None)
        ordered = []
        for room in rooms:
            buffer = by_key.pop(p.room_key(room), None)
            if buffer is None and lobby is not None and room == (current or rooms[0]):
                buffer, lobby = lobby, None  # what was shown before we knew our room is that room's
                buffer.key, buffer.title = p.room_key(room), room
            ordered.append(buffer or self._buffer(p.room_key(room), room))
        if not ordered:  # in no room at all: keep one buffer to show notices in
            ordered = [lobby or self._buffer(LOBBY, "")]
        gone = list(by_key.values())
        self.rosters = {room: names for room, names in self.rosters.items() if room in rooms}
        self.buffers.rooms = ordered
        for buffer in gone:  # rooms we left: their panes go
            if buffer is self.buffers.shown:
                self.buffers.shown = ordered[0]
                moved = True
            buffer.log.remove()
        target = self.buffers.get(p.room_key(current)) if current else None
        if moved and target is not None:
            self._view(target, tell_core=False)
        elif moved or self._roster_due:
            self._view(self.buffers.shown, tell_core=False)
        self._refresh_status()

    def _buffer(self, key: str, title: str) -> Buffer:
        log = self._new_log()
        log.display = False
        self.query_one("#logs", Vertical).mount(log)
        return Buffer(key, title, log)

    def _talk(self, name: str) -> Buffer:
        """The buffer of a private talk with ``name``, begun if need be."""
        buffer = self.buffers.get(talk_key(name))
        if buffer is None:
            buffer = self._buffer(talk_key(name), name)
            self.buffers.talks.append(buffer)
            self._refresh_status()
        return buffer

    def _view(self, buffer: Buffer, *, tell_core: bool = True) -> None:
        """Show ``buffer``: its pane, its members, and the "new" rule above what came while away."""
        old = self.buffers.shown
        if buffer is not old:
            old.last_seen = old.log.entries[-1] if old.log.entries else None
            old.log.display = False
            buffer.log.mark_new(buffer.last_seen)
            buffer.unread = buffer.mentions = 0
            self.buffers.shown = buffer
        buffer.log.display = True
        typing_into = self._typing_into[-1] if self._typing_into else p.room_key(self.room)
        if tell_core and buffer.room and buffer.room != typing_into:
            self._typing_into.append(buffer.room)
            self.request(ev.TypeInto(buffer.room))  # what is typed here goes to this room
        if buffer.peer:
            self.users.show_talk(buffer.peer, self.nick)
        elif buffer.room != p.room_key(self.users.room) or self._roster_due:
            self._roster_due = False
            self.users.show_room(buffer.room)
            if buffer.room in self.rosters:
                self.users.set_names(self.rosters[buffer.room])
            elif buffer.room:
                # The core reports rosters only when asked: ask, then keep the list up to date from events.
                self.request(ev.AskRoster(buffer.room))
        self._refresh_status()

    def _mentioned(self, buffer: Buffer) -> None:
        """A live line that mentions us: the bell, once, and a mark on its buffer if it is not shown."""
        if self.ring_bell:
            self.bell()
        if buffer is not self.buffers.shown:
            buffer.mentions += 1  # _add counts it as unread and refreshes the status line

    def action_next_active(self) -> None:
        """Alt+A: the next buffer with mentions, else with unread lines (as in weechat and irssi)."""
        buffer = self.buffers.next_active()
        if buffer is not None:
            self._view(buffer)

    def action_step(self, by: int) -> None:
        self._view(self.buffers.step(by))

    def action_buffer(self, number: int) -> None:
        buffer = self.buffers.number(number)
        if buffer is not None:
            self._view(buffer)

    def _switch(self, target: str) -> None:
        """/switch #room, /switch NAME (a private talk, begun if need be) or /switch N (buffer N)."""
        buffer = self.buffers.find(target)
        if buffer is None and not target.startswith("#") and not target.isdigit():
            if problem := p.name_problem(target):
                self._notice(f"usage: /switch #room, NAME or N ({problem})", "error")
                return
            buffer = self._talk(target)
        if buffer is None:
            problem = f"no buffer {safe(target)}: /join a room first" if target else "usage: /switch #room, NAME or N"
            self._notice(problem, "error")
            return
        self._view(buffer)

    # ------------------------------------------------------------------ rosters and the status line

    def _roster(self, roster: p.Roster, asked: bool) -> None:
        room = p.room_key(roster.room)
        if room in self.rooms:
            self.rosters[room] = list(roster.names)
        if room and room == p.room_key(self.users.room):
            self.users.set_names(roster.names)
        if not asked:
            return  # asked for by the app: the list is all it is for
        where = f" in {safe(roster.room)}" if roster.room else ""
        names = ", ".join(safe(n) for n in roster.names)
        self._notice(f"online{where} ({len(roster.names)}): {names}")

    def _follow_roster(self, event: p.Event) -> None:
        """Joins and leaves in a room whose roster is known (before, they are in the roster)."""
        room = p.room_key(event.room)
        names = self.rosters.get(room)
        if names is not None and event.kind == p.KIND_JOINS:  # names not given: ask for the roster again
            del self.rosters[room]
            if room == p.room_key(self.users.room):
                self._roster_due = True
                self._view(self.buffers.shown, tell_core=False)
            return
        if names is None or event.kind not in (p.KIND_JOIN, p.KIND_ENTER, p.KIND_LEAVE, p.KIND_PART):
            return
        names[:] = [n for n in names if p.name_key(n) != p.name_key(event.name)]
        if event.kind in (p.KIND_JOIN, p.KIND_ENTER):
            names.append(event.name)
        if room == p.room_key(self.users.room) and self.users.known:
            self.users.set_names(names)

    def _room_list(self, listing: p.RoomList) -> None:
        rooms = []
        for entry in listing.rooms:
            about = f" - {safe(str(entry.get('topic')))}" if entry.get("topic") else ""
            rooms.append(f"{safe(str(entry.get('room')))} ({entry.get('members')}){about}")
        self._notice(f"rooms ({len(rooms)}): {', '.join(rooms)}")

    def _refresh_status(self) -> None:
        shown = self.buffers.shown
        title = f" {safe(shown.title)} — LAN chat" if shown.title else " LAN chat"
        self.query_one("#title", Static).update(
            Text(f"{title} — /help for commands, Ctrl-C to leave", no_wrap=True, overflow="ellipsis")
        )
        states = {"connected": "green", "reconnecting": "yellow", "leaving": "yellow"}
        colour = states.get(self.state, "") if self.colour else ""
        state = self.state + ("…" if self.state in ("connecting", "reconnecting", "leaving") else "")
        # (text, priority): on a narrow terminal the lowest go first; your name stays longest.
        parts = [(Text(safe(self.address)), 1), (Text(state, colour), 4)]
        parts.append((Text("encrypted (CURVE)" if self.encrypted else "not encrypted"), 2))
        listed = [b for b in self.buffers.ordered() if b.title]
        if listed:
            parts.append((self._buffer_list(listed), 3))
        for progress in self.transfers.values():
            parts.append((Text(progress_bar(progress, 10)), 2))
        if self.nick:
            parts.append((Text(safe(self.nick), name_style(self.nick, self.colour)), 5))
        self.query_one("#status", StatusLine).set_parts(parts)

    def _buffer_list(self, listed: list[Buffer]) -> Text:
        """``1:#general 2:#dev[2] 3:bob``: the buffer shown in bold, unread counts where there are some."""
        text = Text()
        for n, buffer in enumerate(listed, 1):
            if n > 1:
                text.append(" ")
            here = buffer is self.buffers.shown
            text.append(f"{n}:{safe(buffer.title)}", style="bold" if here else "dim")
            if buffer.unread:  # not dim, so that they catch the eye
                text.append(f"[{unread_marker(buffer)}]", style="bold")
        return text

    def _set_prompt(self, prompt: str) -> None:
        self.query_one("#prompt", Static).update(Text(prompt))

    # ------------------------------------------------------------------ what the user does

    def on_input_submitted(self, event: Input.Submitted) -> None:
        line = event.value.rstrip()  # a completed name leaves a space behind: do not send it
        self.input_line.value = ""
        self._typed(line)

    def on_chat_input_lines(self, message: ChatInput.Lines) -> None:
        for line in message.lines:
            self._typed(line)

    def on_chat_input_end_of_input(self, message: ChatInput.EndOfInput) -> None:
        self.action_leave()

    def _typed(self, line: str) -> None:
        """A line the user entered: a name, a command, or a line for the buffer shown."""
        if self.naming:
            self.naming = False  # the core takes the next line as the name
            self._submit(line)
            return
        self.input_line.recall.add(line)
        word, _, rest = line.strip().partition(" ")
        word = word.lower()
        if word in ("/quit", "/exit"):
            self._start_leaving()
        if word == "/switch":
            self._switch(rest.strip())
            return
        peer = self.buffers.shown.peer
        if peer and line.strip() and (not line.startswith("/") or line.startswith("//")):
            line = f"/msg {peer} {line[1:] if line.startswith('//') else line}"  # a private talk's buffer
        self._submit(line)

    def _submit(self, line: str | None) -> None:
        """Hand a line (None: end of input) to the connection, unless it has already finished."""
        self._to_connection(lambda conn: conn.submit_eof() if line is None else conn.submit(line))

    def request(self, request: ev.Request) -> None:
        """Ask the core for something on the app's own account (a roster, older lines, a room to type into)."""
        self._to_connection(lambda conn: conn.request(request))

    def _to_connection(self, hand: Callable[[ConnectionLike], None]) -> None:
        if self.conn is None or not self.connection_running:
            return
        try:
            hand(self.conn)
        except OSError as exc:
            # Connection.run() returned (closing its wake-up pipe) just now: this came too late.
            self._notice(f"not sent, the connection has closed ({exc.strerror})", "error")

    def _submit_eof(self) -> None:
        self._submit(None)

    def action_leave(self) -> None:
        """Ctrl-C, Ctrl-D on an empty line, SIGTERM: leave the chat cleanly; a second time, close at once."""
        if self.leaving or not self.connection_running:
            self.exit(ev.EXIT_OK)
            return
        self._start_leaving()
        self._notice("leaving… (Ctrl-C again to close at once)")
        self._submit_eof()

    async def action_quit(self) -> None:  # Textual's own quit (Ctrl-Q): leave cleanly too
        self.action_leave()

    def _start_leaving(self) -> None:
        self.leaving = True
        self.state = "leaving"
        self._refresh_status()

    def action_page(self, direction: int) -> None:
        log = self.log_pane
        if direction < 0:
            if round(log.scroll_y) <= 0:
                self._ask_older()
            else:
                log.scroll_page_up(animate=False)
        else:
            log.scroll_page_down(animate=False)

    def _ask_older(self) -> None:
        """Scrolling past the top of a room: the core fetches older lines (``Older``) or says there are none."""
        now = self.clock()
        buffer = self.buffers.shown
        if not buffer.room or buffer.at_beginning or self.state != "connected" or self.naming:
            return
        if buffer.older_since is not None and now - buffer.older_since < OLDER_TIMEOUT:
            return
        buffer.older_since = now
        self.request(ev.AskOlder(buffer.room, OLDER_LINES))

    def _completion_names(self) -> list[str]:
        return [n for n in self.users.sorted() if p.name_key(n) != p.name_key(self.nick)]

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)


def unread_marker(buffer: Buffer) -> str:
    """What the status line shows in brackets after a buffer: ``5`` unread lines, ``2!`` when those are
    2 mentions, ``5,2!`` when 2 of the 5 mention you."""
    if not buffer.mentions:
        return str(buffer.unread)
    if buffer.mentions == buffer.unread:
        return f"{buffer.mentions}!"
    return f"{buffer.unread},{buffer.mentions}!"


def add_leave_handlers(loop: asyncio.AbstractEventLoop, leave: Callable[[], None]) -> list[int]:
    """SIGTERM and SIGINT leave the chat cleanly, where the event loop can handle signals.

    Windows' event loops cannot (``add_signal_handler`` raises NotImplementedError): there Ctrl-C
    reaches the app as a key, which the ctrl+c binding turns into the same leave. Returns the signals set.
    """
    done = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, leave)
        except NotImplementedError:
            break
        done.append(signum)
    return done


def alt_digits_as_keys() -> None:
    """Let Alt+digit reach the app as ``alt+2`` and so on, for switching buffers.

    Terminals (tmux, xterm, GNOME's...) send Alt+2 as ESC 2, which Textual turns into the character
    WezTerm on macOS means by it ("™"), so the key could not be told from typing that character.
    Without those entries its parser reads ESC 2 as it reads ESC a: Alt and the key.
    """
    from textual import _ansi_sequences  # no public way to change how a key sequence is read

    keys = _ansi_sequences.ANSI_SEQUENCES_KEYS
    for digit in "0123456789":
        if isinstance(keys, dict) and isinstance(keys.get(f"\x1b{digit}"), str):
            del keys[f"\x1b{digit}"]


def run_tui(connect: Connect, *, address: str, encrypted: bool = False, bell: bool = True) -> int:
    """Run the full-screen client until the user leaves; returns the exit code of ``client.py``."""
    alt_digits_as_keys()
    app = ChatApp(connect, address=address, encrypted=encrypted, handle_signals=True, bell=bell)
    app.run()
    if app.thread is not None and app.thread.is_alive():
        app.thread.join(LEAVE_JOIN_TIMEOUT)  # the LEAVE sent by on_unmount gets out before the process ends
    if app.failure is not None:
        raise app.failure
    if app.exit_reason:
        print(f"client: {safe(app.exit_reason)}", file=sys.stderr)
    code = app.return_code
    return ev.EXIT_OK if code is None else code
