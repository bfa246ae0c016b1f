"""The full-screen terminal client (Textual), in the manner of weechat, irssi and gomuks::

    ┌─ title: the room, what this is, how to get help ───────────┐
    │ message pane (chat.ui.chatlog)               │ user list   │
    │ 14:03 <bob> hello                            │ #general (2)│
    │                                              │ alice       │
    ├─ status: broker, connection, encryption, rooms, name ──────┤
    └─ [alice] the input line, focused from the start ───────────┘

Textual owns the screen, so traffic never garbles what is being typed. The client core stays UI-agnostic:
``Connection.run()`` drives it in a thread of its own and hands every ``events.Show`` item to this app as
a message (``post_message`` is thread-safe); what the user types goes back with ``Connection.submit``.
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
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Static

from chat import protocol as p
from chat.client import events as ev
from chat.ui.chatlog import ERROR, NOTICE, OWN, PRIVATE, ChatLog, Entry, name_style, safe
from chat.ui.widgets import ChatInput, UserList

OLDER_LINES = 20  # lines asked for each time the reader scrolls past the top
OLDER_TIMEOUT = 5.0  # seconds after which an unanswered request for older lines may be made again
LEAVE_JOIN_TIMEOUT = 2.0  # seconds run_tui waits for the connection to finish after the screen closed
NAME_PROMPT = "name:"
NAME_PLACEHOLDER = "your name: 1-32 characters, no spaces; Enter to join"
CHAT_PLACEHOLDER = "type a message; /help for commands, Tab completes, Ctrl-C leaves"
# The core's answers to /history when there is nothing more to show.
_NOTHING_OLDER = ("there is nothing older", "nothing older is kept")


class ConnectionLike(Protocol):
    """What the app needs of ``chat.client.net.Connection``."""

    def run(self) -> ev.Exit: ...

    def submit(self, line: str) -> None: ...

    def submit_eof(self) -> None: ...


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
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $primary-muted; color: $foreground; text-style: bold; }
    #main { height: 1fr; }
    #log { width: 1fr; }
    #users { width: 18; height: 1fr; border-left: vkey $foreground 30%; padding: 0 0 0 1; }
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
    ) -> None:
        super().__init__()
        self.connect = connect
        self.address = address
        self.clock = clock
        self.tz = tz
        self.encrypted = encrypted
        self.handle_signals = handle_signals
        self.colour = not self.no_color
        self.nick = ""
        self.room = ""  # the room we type into, once the core has said
        self.rooms: tuple[str, ...] = ()
        self.unread: dict[str, int] = {}  # lines in our other rooms since we last typed there
        self.state = "starting"
        self.naming = False
        self.leaving = False
        self.exit_reason = ""
        self.failure: BaseException | None = None  # a bug in the connection thread, re-raised by run_tui
        self.conn: ConnectionLike | None = None
        self.thread: threading.Thread | None = None
        self.connection_running = False  # True from start until Connection.run() has returned
        self._pending: dict[str, Entry] = {}  # own lines not yet acknowledged, by id
        self._joined_once = False
        self._roster_due = False  # (re)connected: the user list needs a fresh roster
        self._auto_rosters: deque[str] = deque()  # rooms of the /who the app sent itself, oldest first
        self._older_since: float | None = None  # when older lines were asked for, while unanswered
        self._at_beginning: set[str] = set()  # rooms whose oldest line is on screen

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal(id="main"):
            yield ChatLog(tz=self.tz, colour=self.colour, id="log")
            yield UserList(colour=self.colour, id="users")
        yield Static(id="status")
        with Horizontal(id="bottom"):
            yield Static(">", id="prompt")  # until the core asks for a name or says which one we have
            yield ChatInput(placeholder=CHAT_PLACEHOLDER, id="input")

    @property
    def log_pane(self) -> ChatLog:
        return self.query_one("#log", ChatLog)

    @property
    def users(self) -> UserList:
        return self.query_one("#users", UserList)

    @property
    def input_line(self) -> ChatInput:
        return self.query_one("#input", ChatInput)

    def on_mount(self) -> None:
        self.input_line.names = self._completion_names
        self.input_line.rooms = lambda: list(self.rooms)
        self._refresh_status()
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.action_leave)
        self.conn = self.connect(self._show_from_thread)
        self.thread = threading.Thread(target=self._run_connection, name="chat-connection", daemon=True)
        self.connection_running = True
        self.thread.start()

    def on_unmount(self) -> None:
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
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
        log = self.log_pane
        if isinstance(item, ev.Public):
            log.append(Entry.from_event(item.event, item.show_room))
            self._follow_roster(item.event)
            if item.event.room != self.room and item.event.kind in (p.KIND_MSG, p.KIND_ACTION):
                self.unread[item.event.room] = self.unread.get(item.event.room, 0) + 1
                self._refresh_status()
        elif isinstance(item, ev.Older):
            self._older(item.events)
        elif isinstance(item, ev.PrivateIn):
            log.append(Entry(PRIVATE, item.private.ts, item.private.name, item.private.text))
        elif isinstance(item, ev.Sent):
            entry = Entry(OWN, self._now_ms(), self.nick, item.text, item.kind, item.to, item.id, pending=True)
            if item.kind != "pm":
                entry.room, entry.show_room = self.room, len(self.rooms) > 1
            self._pending[item.id] = entry
            log.append(entry)
        elif isinstance(item, ev.Acked):
            if item.id in self._pending:
                entry = self._pending.pop(item.id)
                entry.ts, entry.pending = item.ts, False
                entry.name = entry.name or self.nick  # typed before the WELCOME named us
                log.changed(entry)
        elif isinstance(item, ev.Failed):
            if item.id in self._pending:  # the reason follows as a notice
                entry = self._pending.pop(item.id)
                entry.pending, entry.failed = False, True
                log.changed(entry)
        elif isinstance(item, ev.RosterShown):
            self._roster(item.roster)
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

    def _notice(self, text: str, level: str = "info") -> None:
        if self._older_since is not None and text.startswith(_NOTHING_OLDER):
            self._older_since = None
            self._at_beginning.add(self.room)
        for line in text.splitlines() or [""]:
            self.log_pane.append(Entry(ERROR if level == "error" else NOTICE, self._now_ms(), text=line))

    def _older(self, events: tuple[p.Event, ...]) -> None:
        self._older_since = None
        if events and events[0].seq <= 1:
            self._at_beginning.add(events[0].room)
        several = len(self.rooms) > 1
        self.log_pane.prepend(Entry.from_event(e, several) for e in events)

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
            if not self._joined_once:
                self._joined_once = True
                self._notice(f"joined as {safe(status.name)}; type /help for commands")
        self._refresh_status()

    def _rooms_changed(self, rooms: tuple[str, ...], current: str) -> None:
        self.rooms, self.room = rooms, current
        self.unread = {r: n for r, n in self.unread.items() if r in rooms and r != current}
        if current != self.users.room or self._roster_due:
            # The core reports rosters only when asked: ask, then keep the list up to date from events.
            self._roster_due = False
            self.users.show_room(current)
            if current:
                self._auto_rosters.append(p.room_key(current))
                self._submit(f"/who {current}")
        self._refresh_status()

    def _roster(self, roster: p.Roster) -> None:
        room = p.room_key(roster.room)
        if room and room == p.room_key(self.users.room):
            self.users.set_names(roster.names)
        if room and self._auto_rosters and self._auto_rosters[0] == room:
            self._auto_rosters.popleft()  # asked for by the app: the list is all it is for
            return
        where = f" in {safe(roster.room)}" if roster.room else ""
        names = ", ".join(safe(n) for n in roster.names)
        self._notice(f"online{where} ({len(roster.names)}): {names}")

    def _follow_roster(self, event: p.Event) -> None:
        """Joins and leaves in the listed room, once its roster is known (before, they are history)."""
        if not self.users.known or p.room_key(event.room) != p.room_key(self.users.room):
            return
        if event.kind in (p.KIND_JOIN, p.KIND_ENTER):
            self.users.add_name(event.name)
        elif event.kind in (p.KIND_LEAVE, p.KIND_PART):
            self.users.remove_name(event.name)

    def _room_list(self, listing: p.RoomList) -> None:
        rooms = []
        for entry in listing.rooms:
            about = f" - {safe(str(entry.get('topic')))}" if entry.get("topic") else ""
            rooms.append(f"{safe(str(entry.get('room')))} ({entry.get('members')}){about}")
        self._notice(f"rooms ({len(rooms)}): {', '.join(rooms)}")

    def _refresh_status(self) -> None:
        title = f" {safe(self.room)} — LAN chat" if self.room else " LAN chat"
        self.query_one("#title", Static).update(
            Text(f"{title} — /help for commands, Ctrl-C to leave", no_wrap=True, overflow="ellipsis")
        )
        states = {"connected": "green", "reconnecting": "yellow", "leaving": "yellow"}
        colour = states.get(self.state, "") if self.colour else ""
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {safe(self.address)} ")
        text.append("│ ", style="dim")
        text.append(self.state + ("…" if self.state in ("connecting", "reconnecting", "leaving") else ""), colour)
        text.append(" │ ", style="dim")
        text.append("encrypted (CURVE)" if self.encrypted else "not encrypted")
        if self.room:
            text.append(" │ ", style="dim")
            text.append(safe(self.room), style="bold")
            others = [safe(r) for r in self.rooms if r != self.room]
            if others:
                text.append(" (also", style="dim")
                for room in others:
                    count = self.unread.get(room, 0)
                    text.append(f" {room}", style="dim")
                    if count:  # unread lines: not dim, so that they catch the eye
                        text.append(f"[{count}]", style="bold")
                text.append(")", style="dim")
        if self.nick:
            text.append(" │ ", style="dim")
            text.append(safe(self.nick), name_style(self.nick, self.colour))
        self.query_one("#status", Static).update(text)

    def _set_prompt(self, prompt: str) -> None:
        self.query_one("#prompt", Static).update(Text(prompt))

    # ------------------------------------------------------------------ what the user does

    def on_input_submitted(self, event: Input.Submitted) -> None:
        line = event.value.rstrip()  # a completed name leaves a space behind: do not send it
        field = self.input_line
        field.value = ""
        if self.naming:
            self.naming = False  # the core takes the next line as the name
            self._submit(line)
            return
        field.recall.add(line)
        if line.strip().split(" ", 1)[0].lower() in ("/quit", "/exit"):
            self._start_leaving()
        self._submit(line)

    def _submit(self, line: str | None) -> None:
        """Hand a line (None: end of input) to the connection, unless it has already finished."""
        if self.conn is None or not self.connection_running:
            return
        try:
            if line is None:
                self.conn.submit_eof()
            else:
                self.conn.submit(line)
        except OSError as exc:
            # Connection.run() returned (closing its wake-up pipe) just now: this line came too late.
            self._notice(f"not sent, the connection has closed ({exc.strerror})", "error")

    def _submit_eof(self) -> None:
        self._submit(None)

    def action_leave(self) -> None:
        """Ctrl-C, SIGTERM: leave the chat cleanly; a second time, close at once."""
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
        """Scrolling past the top: the core fetches older lines (an ``Older`` item) or says there are none."""
        now = self.clock()
        if self.room in self._at_beginning or self.state != "connected" or self.naming:
            return
        if self._older_since is not None and now - self._older_since < OLDER_TIMEOUT:
            return
        self._older_since = now
        self._submit(f"/history {OLDER_LINES}")

    def _completion_names(self) -> list[str]:
        return [n for n in self.users.sorted() if p.name_key(n) != p.name_key(self.nick)]

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)


def run_tui(connect: Connect, *, address: str, encrypted: bool = False) -> int:
    """Run the full-screen client until the user leaves; returns the exit code of ``client.py``."""
    app = ChatApp(connect, address=address, encrypted=encrypted, handle_signals=True)
    app.run()
    if app.thread is not None and app.thread.is_alive():
        app.thread.join(LEAVE_JOIN_TIMEOUT)  # the LEAVE sent by on_unmount gets out before the process ends
    if app.failure is not None:
        raise app.failure
    if app.exit_reason:
        print(f"client: {safe(app.exit_reason)}", file=sys.stderr)
    code = app.return_code
    return ev.EXIT_OK if code is None else code
