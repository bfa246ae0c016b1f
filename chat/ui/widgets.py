"""The input line, the user list and the status line of the full-screen client (the message pane is
``chat.ui.chatlog``)."""

from __future__ import annotations

from typing import Callable, Sequence

from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Static

from chat import protocol as p
from chat.ui.chatlog import name_style, safe
from chat.ui.editing import Completer, InputHistory


class ChatInput(Input):
    """The input line: Enter sends, Up/Down recall, Tab completes (instead of moving the focus), Ctrl-D
    on an empty line is the end of input; a paste of several lines is every one of them, as if typed."""

    BINDINGS = [
        Binding("up", "recall(-1)", "Previous line", show=False),
        Binding("down", "recall(1)", "Next line", show=False),
        Binding("tab", "complete", "Complete", show=False),
        Binding("ctrl+d", "end_or_delete", "Leave on an empty line", show=False),
    ]

    class Lines(Message):
        """Lines to send, in order, each as if typed and Enter pressed (a paste of several lines)."""

        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

    class EndOfInput(Message):
        """Ctrl-D on an empty line."""

    def __init__(self, *, placeholder: str, id: str | None = None) -> None:
        super().__init__(placeholder=placeholder, compact=True, id=id, select_on_focus=False)
        self.recall = InputHistory()
        self.completer = Completer()
        self.names: Callable[[], list[str]] = list  # who can be completed: set by the app
        self.rooms: Callable[[], list[str]] = list

    def action_recall(self, step: int) -> None:
        line = self.recall.previous(self.value) if step < 0 else self.recall.following()
        if line is not None:
            self.value = line
            self.cursor_position = len(line)

    def action_end_or_delete(self) -> None:
        if self.value:
            self.action_delete_right()
        else:
            self.post_message(self.EndOfInput())

    def _on_paste(self, event: events.Paste) -> None:
        # Textual's Input keeps the first line of a paste and drops the rest: here the pasted text goes
        # where the cursor is, and every line of the result is sent, the last one included.
        # (Textual calls this handler of every class in the MRO: prevent_default keeps Input's from running.)
        if "\n" not in event.text and "\r" not in event.text:
            return
        event.prevent_default()
        event.stop()
        start, end = sorted(self.selection)
        lines = (self.value[:start] + event.text + self.value[end:]).splitlines()
        self.value = ""
        self.post_message(self.Lines(lines))

    def action_complete(self) -> None:
        done = self.completer.complete(self.value, self.cursor_position, self.names(), self.rooms())
        if done is not None:
            self.value = done.value
            self.cursor_position = done.cursor


class UserList(VerticalScroll, can_focus=False):
    """The members of one room (everyone online, while everyone is in #general), kept up to date by the app."""

    def __init__(self, *, colour: bool, id: str | None = None) -> None:
        super().__init__(id=id)
        self.colour = colour
        self.room = ""
        self.known = False  # a roster of ``room`` has arrived: from then on, joins and leaves are news
        self.names: dict[str, str] = {}  # name_key -> name as registered
        self.own = ""
        self._body = Static()

    def compose(self) -> ComposeResult:
        yield self._body

    def show_room(self, room: str) -> None:
        """Start showing another room: empty until its roster comes."""
        self.room, self.known, self.names = room, False, {}
        self._redraw()

    def show_talk(self, peer: str, own: str) -> None:
        """A private talk: the two of you."""
        self.room, self.known = "", True
        self.names = {p.name_key(n): n for n in (peer, own) if n}
        self._redraw()

    def set_names(self, names: list[str]) -> None:
        self.names = {p.name_key(n): n for n in names}
        self.known = True
        self._redraw()

    def sorted(self) -> list[str]:
        return [self.names[k] for k in sorted(self.names)]

    def _redraw(self) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.room:
            text.append(f"{safe(self.room)} ({len(self.names)})" if self.known else safe(self.room), style="bold")
        elif self.known:
            text.append("private", style="bold")
        for name in self.sorted():
            style = name_style(name, self.colour)
            if p.name_key(name) == p.name_key(self.own):
                style += Style(bold=True, underline=True)
            text.append("\n")
            text.append(safe(name), style=style)
        self._body.update(text)


class StatusLine(Widget):
    """One line of parts, the least important dropped first when the terminal is too narrow.

    ``parts`` are (text, priority): the lowest priorities go first, until the rest fits; what is left is
    shown in its order, and cut only when even the most important part is too wide.
    """

    DEFAULT_CSS = "StatusLine { height: 1; }"
    SEPARATOR = " │ "

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.parts: list[tuple[Text, int]] = []

    def set_parts(self, parts: Sequence[tuple[Text, int]]) -> None:
        self.parts = list(parts)
        self.refresh()

    def fitted(self, width: int) -> Text:
        kept = list(self.parts)
        while len(kept) > 1 and self._joined(kept).cell_len > width:
            kept.remove(min(kept, key=lambda part: part[1]))
        line = self._joined(kept)
        line.truncate(width, overflow="ellipsis")
        return line

    def _joined(self, parts: list[tuple[Text, int]]) -> Text:
        line = Text(" ", no_wrap=True)
        for n, (text, _) in enumerate(parts):
            if n:
                line.append(self.SEPARATOR, style="dim")
            line.append_text(text)
        return line

    def render(self) -> Text:
        return self.fitted(self.size.width)
