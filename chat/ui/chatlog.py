"""The message pane of the full-screen client: what a line says (``Entry``) and how it is drawn (``ChatLog``).

A line is drawn as weechat and irssi do::

    ── Thursday, 2026-11-26 ───────────────────   (the first line of each day)
    14:03 <bob> hello alice, long lines wrap
          under the text, not under the time
    14:03  * bob waves
    14:04 --> carol has joined the chat
    14:05 [private] <bob> just between us
    14:06 #dev <bob> the room is named when you are in several
    --:-- <alice> mine, until the broker acknowledges it

``ChatLog`` is a Line API widget: it keeps every entry, renders each one (cached per width) when it is
first drawn, re-wraps on resize, inserts older lines at the top without moving what the reader is looking
at, and follows the newest line only while the reader is at the bottom.

Whatever comes from other people goes through ``safe`` and into ``rich.text.Text`` objects as plain
text, never as markup: a name like ``[bold]x`` or a text with escape sequences is shown as it is.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Iterable

from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.events import Resize
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from chat import protocol as p
from chat.ui.format import name_colour

MAX_ENTRIES = 2000  # lines kept in the pane (re-wrapped on every resize); the oldest go first
TRIM_SLACK = 200  # lines beyond MAX_ENTRIES before the oldest are dropped, in one go
TIME_WIDTH = 6  # "HH:MM "
PENDING_TIME = "--:--"  # an own line the broker has not acknowledged yet
FAILED_TIME = "!!:!!"  # an own line the broker refused for good (the reason follows as an error line)
MIN_TEXT_WIDTH = 10  # narrower than this, lines are cut rather than wrapped to nothing

# The ANSI colours of chat.ui.format, by name, so that a user has the same colour in both front ends.
_ANSI_NAMES = {
    31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta", 36: "cyan",
    91: "bright_red", 92: "bright_green", 93: "bright_yellow", 94: "bright_blue", 95: "bright_magenta",
    96: "bright_cyan",
}  # fmt: skip

# Entry kinds.
MSG = "msg"
ACTION = "action"
JOIN = "join"  # connected to the chat
LEAVE = "leave"  # left the chat, or timed out
ENTER = "enter"  # joined one room
PART = "part"  # left one room
TOPIC = "topic"
NICK = "nick"  # a user changed name (name: the old one, text: the new one)
FILE = "file"  # a file offered to a room (text: "offers NAME (SIZE, sha256 ...) - /get N")
EVENT = "event"  # a public event of a kind this client does not know
PRIVATE = "private"  # a private message to us
OWN = "own"  # our own line: detail is msg, action or pm
NOTICE = "notice"
ERROR = "error"


def safe(text: str) -> str:
    """``text`` as it may reach a terminal: controls, escapes, bidi overrides and lone surrogates neutralised."""
    return p.neutralise(text)


@dataclass(eq=False)
class Entry:
    """One line of the pane, in the viewer's terms. ``ts`` is ms since the epoch (the broker's when known)."""

    kind: str
    ts: int
    name: str = ""
    text: str = ""
    detail: str = ""  # OWN: msg, action or pm; EVENT: the unknown kind
    to: str = ""  # OWN pm: the addressee
    id: str = ""  # OWN: the id the core gave the line, for Acked
    pending: bool = False
    failed: bool = False  # OWN: refused by the broker, never delivered
    room: str = ""  # the room of a public line
    show_room: bool = False  # the viewer is in several rooms: name it before the line
    history: bool = False  # a public line from before we joined (or older, asked for): shown dim
    mention: bool = False  # a line that mentions the viewer's name: highlighted
    # Rendering cache: the strips for (width, rules above, colour), and the day.
    _key: tuple[int, tuple[str, ...], bool] | None = field(default=None, repr=False)
    _strips: list[Strip] = field(default_factory=list, repr=False)
    _day: str = field(default="", repr=False)

    @classmethod
    def from_event(cls, event: p.Event, show_room: bool = False, history: bool = False, mention: bool = False) -> Entry:
        known = event.kind in (MSG, ACTION, JOIN, LEAVE, ENTER, PART, TOPIC, NICK, FILE)
        kind = event.kind if known else EVENT
        detail = "" if known else event.kind
        return cls(
            kind, event.ts, event.name, event.text, detail, room=event.room, show_room=show_room, history=history,
            mention=mention,
        )

    def day(self, tz: tzinfo | None) -> str:
        if not self._day:
            self._day = _local(self.ts, tz).strftime("%Y-%m-%d")
        return self._day

    def invalidate(self) -> None:
        self._key = None
        self._day = ""


def _local(ts_ms: int, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz)


def name_style(name: str, colour: bool) -> Style:
    """The style of a name: a colour from a hash of the name (the same for everyone), bold without colour."""
    if not colour:
        return Style(bold=True)
    return Style(color=_ANSI_NAMES[name_colour(name)])


def day_rule(ts_ms: int, tz: tzinfo | None) -> str:
    return f"── {_local(ts_ms, tz):%A, %Y-%m-%d} "


MENTION_COLOUR = Style(bold=True, color="bright_yellow")
MENTION_PLAIN = Style(reverse=True)
HISTORY_RULE = "── history: before you joined "  # above the history lines at the top of a pane
NEW_RULE = "── new since you were last here "  # above the first line that came in while away


def render_text(entry: Entry, tz: tzinfo | None, colour: bool) -> tuple[Text, Text]:
    """The time column and the body of an entry (plain ``Text``, never markup)."""
    when = FAILED_TIME if entry.failed else PENDING_TIME if entry.pending else f"{_local(entry.ts, tz):%H:%M}"
    time = Text(when.ljust(TIME_WIDTH), style="dim")
    name, text, room = safe(entry.name), safe(entry.text), safe(entry.room)
    who = name_style(entry.name, colour)
    dim = Style(dim=True)
    mark = Style(bold=True, color="magenta") if colour else Style(bold=True, reverse=True)
    if entry.kind == MSG:
        body = Text.assemble(("<", dim), (name, who), ("> ", dim), text)
    elif entry.kind == ACTION:
        body = Text.assemble(" * ", (name, who), " ", text, style=Style(italic=True))
    elif entry.kind == JOIN:
        body = Text.assemble(("-->", "green" if colour else ""), f" {name} has joined the chat", style=dim)
    elif entry.kind == LEAVE:
        why = f" ({p.LEAVE_REASONS[entry.text]})" if entry.text in p.LEAVE_REASONS else ""
        body = Text.assemble(("<--", "red" if colour else ""), f" {name} has left the chat{why}", style=dim)
    elif entry.kind == ENTER:
        body = Text.assemble(("-->", "green" if colour else ""), f" {name} has joined {room}", style=dim)
    elif entry.kind == PART:
        body = Text.assemble(("<--", "red" if colour else ""), f" {name} has left {room}", style=dim)
    elif entry.kind == TOPIC:
        body = Text.assemble("-!- ", (name, who), f" set the topic of {room}: ", (text, "bold"), style=dim)
    elif entry.kind == NICK:
        body = Text(f"-!- {name} is now known as {text}", style=dim)
    elif entry.kind == FILE:
        body = Text.assemble(("-!- ", dim), (name, who), " ", (text, "bold"))
    elif entry.kind == EVENT:
        body = Text(f"-!- {name} ({safe(entry.detail)}): {text}", style=dim)
    elif entry.kind == PRIVATE:
        body = Text.assemble(("[private]", mark), " <", (name, who), "> ", text)
    elif entry.kind == OWN:
        own = who + Style(bold=True)
        line = Style(dim=True) if entry.pending else Style(strike=True) if entry.failed else Style()
        if entry.detail == "pm":
            body = Text.assemble((f"[private → {safe(entry.to)}]", mark), " <", (name, own), "> ", text, style=line)
        elif entry.detail == ACTION:
            body = Text.assemble(" * ", (name, own), " ", text, style=line + Style(italic=True))
        else:
            body = Text.assemble(("<", dim), (name, own), ("> ", dim), text, style=line)
    elif entry.kind == ERROR:
        body = Text(f"-!- {text}", style=Style(color="red") if colour else Style(bold=True))
    else:
        body = Text(f"-!- {text}", style=dim)
    if entry.show_room and entry.kind not in (ENTER, PART, TOPIC):  # those name their room already
        body = Text.assemble((f"{room} ", "bold"), body)
    if entry.mention:  # as weechat highlights: the line stands out, in colour or, without, in reverse
        body.stylize(MENTION_COLOUR if colour else MENTION_PLAIN)
    if entry.history:
        body.stylize(dim)
    return time, body


def _segments(text: Text, console: Console) -> list[Segment]:
    """``text`` as segments, its own style included (``Text.render`` leaves that to its caller)."""
    segments = text.render(console)
    if text.style:
        segments = Segment.apply_style(segments, console.get_style(text.style))
    return list(segments)


class ChatLog(ScrollView, can_focus=False):
    """The scrolling message pane. Not focusable: typing always goes to the input line."""

    DEFAULT_CSS = """
    ChatLog {
        overflow-x: hidden;
        overflow-y: scroll;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(
        self,
        *,
        tz: tzinfo | None = None,
        colour: bool = True,
        limit: int = MAX_ENTRIES,
        slack: int = TRIM_SLACK,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.tz = tz
        self.colour = colour
        self.limit = limit
        self.slack = slack
        self.entries: list[Entry] = []
        self._starts: list[int] = []  # first visual line of each entry, valid for _laid_out_width
        self._laid_out_width = 0  # 0: the layout must be redone
        self._follow = True  # at the bottom: new lines scroll into view
        self._shift = 0  # lines the content moved under the reader since the last _settle
        self._settling = False
        self.marked: Entry | None = None  # the first line that came in while the reader was away

    # ------------------------------------------------------------------ content

    def add_history(self, entry: Entry) -> None:
        """A history line (``entry.history``): after the history at the top, before everything since
        joined (the join notice, our own lines), so that the pane stays in time order."""
        index = 0
        while index < len(self.entries) and self.entries[index].history:
            index += 1
        self.entries.insert(index, entry)
        self._relayout()
        self._scrolled()

    def mark_new(self, last_seen: Entry | None) -> None:
        """Put the "new since you were last here" rule above the first line after ``last_seen`` (None:
        the reader saw nothing: above the first line), or nowhere when nothing is newer."""
        index = self.entries.index(last_seen) + 1 if last_seen in self.entries else 0
        self.marked = self.entries[index] if index < len(self.entries) else None
        self._relayout()
        self._scrolled()

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)
        excess = len(self.entries) - self.limit
        if excess > self.slack:  # in batches, as a full relayout is O(entries)
            gone = self._starts[excess] if self._laid_out_width and excess < len(self._starts) else 0
            del self.entries[:excess]
            self.entries[0].invalidate()  # it may need a day header now
            self._relayout()
            self._scrolled(-gone)
            return
        width = self.scrollable_content_region.width
        if width > 0 and width == self._laid_out_width and len(self._starts) == len(self.entries) - 1:
            # The usual case: lay out the new line only.
            previous = self.entries[-2].day(self.tz) if len(self.entries) > 1 else ""
            self._place(entry, self._rules(entry, entry.day(self.tz) != previous, first=len(self.entries) == 1), width)
            self._starts.append(self.virtual_size.height)
            self.virtual_size = Size(width, self.virtual_size.height + len(entry._strips))
        else:
            self._relayout()
        self._scrolled()

    def prepend(self, entries: Iterable[Entry]) -> None:
        """Older lines go on top; what the reader is looking at stays where it is."""
        before = self.virtual_size.height
        self.entries[:0] = list(entries)
        self._relayout()
        self._scrolled(self.virtual_size.height - before)

    def changed(self, entry: Entry) -> None:
        """``entry`` was updated in place (acknowledged: its time, and maybe its day, changed)."""
        entry.invalidate()
        self._relayout()
        self._scrolled()

    def text_lines(self) -> list[str]:
        """The text of every visual line, for tests and debugging."""
        self._relayout()
        return [strip.text.rstrip() for entry in self.entries for strip in entry._strips]

    def _scrolled(self, shift: int = 0) -> None:
        """After a change: follow the newest line, or keep the reader's place (``shift`` lines moved).

        Once per burst of changes, not per line: a flood of lines is laid out one by one but scrolled once.
        """
        self._shift += shift
        if not self._settling:
            self._settling = True
            self.call_later(self._settle)

    def _settle(self) -> None:
        self._settling = False
        shift, self._shift = self._shift, 0
        if self._follow:
            self.scroll_end(animate=False, immediate=True)
        elif shift:
            self.scroll_to(y=max(0, self.scroll_y + shift), animate=False, immediate=True)
        self.refresh()

    # ------------------------------------------------------------------ layout

    def _relayout(self) -> None:
        width = self.scrollable_content_region.width
        if width <= 0:
            self._laid_out_width = 0
            return  # not laid out yet: on_resize comes back here
        starts: list[int] = []
        total = 0
        previous_day = ""
        for index, entry in enumerate(self.entries):
            day = entry.day(self.tz)
            self._place(entry, self._rules(entry, day != previous_day, first=index == 0), width)
            previous_day = day
            starts.append(total)
            total += len(entry._strips)
        self._starts = starts
        self._laid_out_width = width
        self.virtual_size = Size(width, total)

    def _rules(self, entry: Entry, new_day: bool, *, first: bool) -> tuple[str, ...]:
        """The rules above ``entry``: a day's, then the history's (above the first line), then the new lines'."""
        rules = [day_rule(entry.ts, self.tz)] if new_day else []
        if first and entry.history:
            rules.append(HISTORY_RULE)
        if entry is self.marked:
            rules.append(NEW_RULE)
        return tuple(rules)

    def _place(self, entry: Entry, rules: tuple[str, ...], width: int) -> None:
        """Render ``entry`` unless what it looks like is cached."""
        key = (width, rules, self.colour)
        if entry._key != key:
            entry._strips = self._render_entry(entry, rules, width, self.app.console)
            entry._key = key

    def _render_entry(self, entry: Entry, rules: tuple[str, ...], width: int, console: Console) -> list[Strip]:
        time, body = render_text(entry, self.tz, self.colour)
        lines = body.wrap(console, max(MIN_TEXT_WIDTH, width - TIME_WIDTH), overflow="fold") or [Text()]
        first = _segments(time, console)
        indent = [Segment(" " * TIME_WIDTH)]
        strips = [Strip([*(first if i == 0 else indent), *_segments(line, console)]) for i, line in enumerate(lines)]
        for text in reversed(rules):
            style = "dim" if text != NEW_RULE else "bold yellow" if self.colour else "bold"
            rule = Text(text, style=style)
            rule.append("─" * max(0, width - rule.cell_len))
            strips.insert(0, Strip(_segments(rule, console)))
        return strips

    def on_resize(self, event: Resize) -> None:
        top = self._top_entry()
        self._relayout()
        if self._follow or top is None or top[0] not in self.entries:
            self.scroll_end(animate=False, immediate=True)
        else:
            entry, offset = top
            index = self.entries.index(entry)
            y = self._starts[index] + min(offset, len(entry._strips) - 1)
            self.scroll_to(y=y, animate=False, immediate=True)
        self.refresh()

    def _top_entry(self) -> tuple[Entry, int] | None:
        """The entry at the top of the view, and how far into it: kept in view across a re-wrap."""
        if not self._laid_out_width or not self._starts:
            return None
        top = round(self.scroll_y)
        index = max(0, bisect_right(self._starts, top) - 1)
        return self.entries[index], top - self._starts[index]

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._follow = round(new_value) >= self.max_scroll_y

    def notify_style_update(self) -> None:
        super().notify_style_update()
        for entry in self.entries:
            entry.invalidate()
        self._laid_out_width = 0

    # ------------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        line = round(self.scroll_y) + y
        index = bisect_right(self._starts, line) - 1
        if not self._laid_out_width or index < 0 or index >= len(self.entries):
            return Strip.blank(width, self.rich_style)
        strips = self.entries[index]._strips
        offset = line - self._starts[index]
        if offset >= len(strips):
            return Strip.blank(width, self.rich_style)
        return strips[offset].crop_extend(0, width, self.rich_style).apply_style(self.rich_style)
