"""The message pane of the full-screen client: what a line says (``Entry``) and how it is drawn (``ChatLog``).

A line is drawn as weechat and irssi do::

    ── Thursday, 2026-11-26 ───────────────────   (the first line of each day)
    14:03 <bob> hello alice, long lines wrap
          under the text, not under the time
    14:03  * bob waves
    14:04 --> carol has joined the chat
    14:05 [private] <bob> just between us
    --:-- <alice> mine, until the broker acknowledges it

``ChatLog`` is a Line API widget: it keeps every entry, renders each one (cached per width) when it is
first drawn, re-wraps on resize, inserts older lines at the top without moving what the reader is looking
at, and follows the newest line only while the reader is at the bottom.

Whatever comes from other people goes through ``safe`` and into ``rich.text.Text`` objects as plain
text, never as markup: a name like ``[bold]x`` or a text with escape sequences is shown as it is.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Iterable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.events import Resize
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from chat import protocol as p
from chat.ui.format import name_colour

MAX_ENTRIES = 5000  # lines kept in the pane; the oldest go first (the broker can show them again)
TIME_WIDTH = 6  # "HH:MM "
PENDING_TIME = "--:--"  # an own line the broker has not acknowledged yet
MIN_TEXT_WIDTH = 10  # narrower than this, lines are cut rather than wrapped to nothing

# The ANSI colours of chat.ui.format, by name, so that a user has the same colour in both front ends.
_ANSI_NAMES = {
    31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta", 36: "cyan",
    91: "bright_red", 92: "bright_green", 93: "bright_yellow", 94: "bright_blue", 95: "bright_magenta",
    96: "bright_cyan",
}  # fmt: skip
_SURROGATES = re.compile("[\ud800-\udfff]")

# Entry kinds.
MSG = "msg"
ACTION = "action"
JOIN = "join"
LEAVE = "leave"
EVENT = "event"  # a public event of a kind this client does not know
PRIVATE = "private"  # a private message to us
OWN = "own"  # our own line: detail is msg, action or pm
NOTICE = "notice"
ERROR = "error"


def safe(text: str) -> str:
    """``text`` as it may reach a terminal: control characters neutralised, lone surrogates replaced.

    (A JSON body can carry a lone surrogate; it cannot be encoded for the terminal.)
    """
    return _SURROGATES.sub("\ufffd", p.neutralise(text))


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
    # Rendering cache: the strips for (width, with day header, colour).
    _key: tuple[int, bool, bool] | None = field(default=None, repr=False)
    _strips: list[Strip] = field(default_factory=list, repr=False)

    @classmethod
    def from_event(cls, event: p.Event) -> Entry:
        known = event.kind in (MSG, ACTION, JOIN, LEAVE)
        kind = event.kind if known else EVENT
        return cls(kind, event.ts, event.name, event.text, detail="" if known else event.kind)

    def day(self, tz: tzinfo | None) -> str:
        return _local(self.ts, tz).strftime("%Y-%m-%d")

    def invalidate(self) -> None:
        self._key = None


def _local(ts_ms: int, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz)


def name_style(name: str, colour: bool) -> Style:
    """The style of a name: a colour from a hash of the name (the same for everyone), bold without colour."""
    if not colour:
        return Style(bold=True)
    return Style(color=_ANSI_NAMES[name_colour(name)])


def day_header(ts_ms: int, tz: tzinfo | None) -> Text:
    return Text(f"── {_local(ts_ms, tz):%A, %Y-%m-%d} ", style="dim")


def render_text(entry: Entry, tz: tzinfo | None, colour: bool) -> tuple[Text, Text]:
    """The time column and the body of an entry (plain ``Text``, never markup)."""
    when = PENDING_TIME if entry.pending else f"{_local(entry.ts, tz):%H:%M}"
    time = Text(when.ljust(TIME_WIDTH), style="dim")
    name, text = safe(entry.name), safe(entry.text)
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
        why = " (timed out)" if entry.text == p.LEFT_TIMEOUT else ""
        body = Text.assemble(("<--", "red" if colour else ""), f" {name} has left the chat{why}", style=dim)
    elif entry.kind == EVENT:
        body = Text(f"-!- {name} ({safe(entry.detail)}): {text}", style=dim)
    elif entry.kind == PRIVATE:
        body = Text.assemble(("[private]", mark), " <", (name, who), "> ", text)
    elif entry.kind == OWN:
        own = who + Style(bold=True)
        line = Style(dim=True) if entry.pending else Style()
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
    return time, body


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
        self, *, tz: tzinfo | None = None, colour: bool = True, limit: int = MAX_ENTRIES, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.tz = tz
        self.colour = colour
        self.limit = limit
        self.entries: list[Entry] = []
        self._starts: list[int] = []  # first visual line of each entry
        self._width = 0
        self._follow = True  # at the bottom: new lines scroll into view

    # ------------------------------------------------------------------ content

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)
        removed = self._trim()
        self._changed(shift=-removed)

    def prepend(self, entries: Iterable[Entry]) -> None:
        """Older lines go on top; what the reader is looking at stays where it is."""
        before = self.virtual_size.height
        self.entries[:0] = list(entries)
        if self.entries:
            self.entries[0].invalidate()
        self._layout()
        if not self._follow:
            self.scroll_to(y=self.scroll_y + self.virtual_size.height - before, animate=False, immediate=True)
        else:
            self.scroll_end(animate=False, immediate=True)
        self.refresh()

    def changed(self, entry: Entry) -> None:
        """``entry`` was updated in place (acknowledged)."""
        entry.invalidate()
        self._changed()

    def text_lines(self) -> list[str]:
        """The text of every visual line, for tests and debugging."""
        self._layout()
        return [strip.text.rstrip() for entry in self.entries for strip in entry._strips]

    def _trim(self) -> int:
        """Drop the oldest entries beyond the limit; returns how many visual lines went."""
        excess = len(self.entries) - self.limit
        if excess <= 0:
            return 0
        gone = self._starts[excess] if excess < len(self._starts) else 0
        del self.entries[:excess]
        self.entries[0].invalidate()  # it may need a day header now
        return gone

    def _changed(self, shift: int = 0) -> None:
        self._layout()
        if self._follow:
            self.scroll_end(animate=False, immediate=True)
        elif shift:
            self.scroll_to(y=max(0, self.scroll_y + shift), animate=False, immediate=True)
        self.refresh()

    # ------------------------------------------------------------------ layout

    def _layout(self) -> None:
        width = self.scrollable_content_region.width
        if width <= 0:
            return  # not laid out yet: on_resize comes back here
        self._width = width
        console = self.app.console
        starts: list[int] = []
        total = 0
        previous_day = ""
        for entry in self.entries:
            day = entry.day(self.tz)
            key = (width, day != previous_day, self.colour)
            previous_day = day
            if entry._key != key:
                entry._strips = self._render(entry, key[1], width, console)
                entry._key = key
            starts.append(total)
            total += len(entry._strips)
        self._starts = starts
        self.virtual_size = Size(width, total)

    def _render(self, entry: Entry, header: bool, width: int, console: object) -> list[Strip]:
        from rich.console import Console

        assert isinstance(console, Console)
        time, body = render_text(entry, self.tz, self.colour)
        text_width = max(MIN_TEXT_WIDTH, width - TIME_WIDTH)
        options = console.options.update(width=text_width, no_wrap=False, overflow="fold", height=None)
        lines = console.render_lines(body, options, pad=True)
        time_segments = list(time.render(console))
        indent = [Segment(" " * TIME_WIDTH)]
        strips = [Strip([*(time_segments if i == 0 else indent), *line]) for i, line in enumerate(lines)]
        if header:
            rule = day_header(entry.ts, self.tz)
            rule.append("─" * max(0, width - rule.cell_len), style="dim")
            strips.insert(0, Strip(list(rule.render(console))))
        return strips

    def on_resize(self, event: Resize) -> None:
        anchor = self._anchor()
        self._layout()
        if self._follow or anchor is None:
            self.scroll_end(animate=False, immediate=True)
        else:
            index, offset = anchor
            entry = self.entries[index]
            self.scroll_to(
                y=self._starts[index] + min(offset, len(entry._strips) - 1), animate=False, immediate=True
            )
        self.refresh()

    def _anchor(self) -> tuple[int, int] | None:
        """The entry at the top of the view, and how far into it: kept in view across a re-wrap."""
        if not self._starts:
            return None
        top = round(self.scroll_y)
        index = max(0, bisect_right(self._starts, top) - 1)
        return index, top - self._starts[index]

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._follow = round(new_value) >= self.max_scroll_y

    def notify_style_update(self) -> None:
        super().notify_style_update()
        for entry in self.entries:
            entry.invalidate()

    # ------------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        line = round(self.scroll_y) + y
        index = bisect_right(self._starts, line) - 1
        if index < 0 or line >= self.virtual_size.height:
            return Strip.blank(width, self.rich_style)
        entry = self.entries[index]
        strip = entry._strips[line - self._starts[index]]
        return strip.crop_extend(0, width, self.rich_style).apply_style(self.rich_style)
