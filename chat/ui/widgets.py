"""The input line and the user list of the full-screen client (the message pane is ``chat.ui.chatlog``)."""

from __future__ import annotations

from typing import Callable

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, Static

from chat import protocol as p
from chat.ui.chatlog import name_style, safe
from chat.ui.editing import Completer, InputHistory


class ChatInput(Input):
    """The input line: Enter sends, Up/Down recall, Tab completes (instead of moving the focus)."""

    BINDINGS = [
        Binding("up", "recall(-1)", "Previous line", show=False),
        Binding("down", "recall(1)", "Next line", show=False),
        Binding("tab", "complete", "Complete", show=False),
    ]

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

    def set_names(self, names: list[str]) -> None:
        self.names = {p.name_key(n): n for n in names}
        self.known = True
        self._redraw()

    def add_name(self, name: str) -> None:
        self.names[p.name_key(name)] = name
        self._redraw()

    def remove_name(self, name: str) -> None:
        self.names.pop(p.name_key(name), None)
        self._redraw()

    def sorted(self) -> list[str]:
        return [self.names[k] for k in sorted(self.names)]

    def _redraw(self) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.room:
            text.append(f"{safe(self.room)} ({len(self.names)})" if self.known else safe(self.room), style="bold")
        for name in self.sorted():
            style = name_style(name, self.colour)
            if p.name_key(name) == p.name_key(self.own):
                style += Style(bold=True, underline=True)
            text.append("\n")
            text.append(safe(name), style=style)
        self._body.update(text)
