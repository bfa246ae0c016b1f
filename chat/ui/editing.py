"""Line editing helpers of the full-screen client, with no terminal: input recall and Tab completion.

Both are pure, so that their rules are tested without a screen: ``InputHistory`` is readline's Up/Down
(the line being typed is kept as a draft while browsing), ``Completer`` is irssi's Tab (complete the word
at the cursor: a command at the start of the line, a room after "#", a user name elsewhere; Tab again
cycles through the other candidates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from chat import protocol as p

MAX_RECALL = 500  # lines kept for Up/Down

# The commands of chat.client.core, for completion (tests check that the core knows every one).
COMMANDS = (
    "/exit", "/help", "/history", "/ignore", "/join", "/leave", "/me", "/mentions", "/msg", "/pm", "/quit", "/rooms",
    "/switch", "/topic", "/unignore", "/who", "/whosonline",
)  # fmt: skip
NAME_SUFFIX = ": "  # a name completed at the start of a line addresses that person, as in irssi


class InputHistory:
    """What the user typed, for Up/Down. ``previous``/``following`` return the line to show, or None."""

    def __init__(self, limit: int = MAX_RECALL) -> None:
        self.limit = limit
        self.lines: list[str] = []
        self._index = 0  # len(lines) means "the draft"
        self._draft = ""

    def add(self, line: str) -> None:
        """Remember a submitted line (not a blank one, nor a repeat of the last) and stop browsing."""
        if line.strip() and (not self.lines or self.lines[-1] != line):
            self.lines.append(line)
            del self.lines[: -self.limit]
        self._index = len(self.lines)
        self._draft = ""

    def previous(self, current: str) -> str | None:
        if self._index == 0:
            return None
        if self._index == len(self.lines):
            self._draft = current  # what was being typed comes back after the newest line
        self._index -= 1
        return self.lines[self._index]

    def following(self) -> str | None:
        if self._index >= len(self.lines):
            return None
        self._index += 1
        return self._draft if self._index == len(self.lines) else self.lines[self._index]


@dataclass(frozen=True)
class Completion:
    value: str
    cursor: int


@dataclass
class _Cycle:
    """A Tab in progress: what was completed, so that the next Tab can offer the next candidate."""

    start: int
    candidates: list[str]
    index: int
    tail: str  # the text after the cursor, untouched
    suffix: str
    shown: Completion


class Completer:
    """Tab completion of commands (first word), rooms (words starting with "#") and user names."""

    def __init__(self, commands: Sequence[str] = COMMANDS) -> None:
        self.commands = tuple(commands)
        self._cycle: _Cycle | None = None

    def complete(
        self, value: str, cursor: int, names: Iterable[str], rooms: Iterable[str] = ()
    ) -> Completion | None:
        """The line after one Tab, or None when nothing fits."""
        cycle = self._cycle
        if cycle is not None and cycle.shown == Completion(value, cursor):
            cycle.index = (cycle.index + 1) % len(cycle.candidates)
            return self._show(value[: cycle.start], cycle)
        self._cycle = None
        start = cursor
        while start > 0 and not value[start - 1].isspace():
            start -= 1
        word, head, tail = value[start:cursor], value[:start], value[cursor:]
        candidates, suffix = self._candidates(word, head, names, rooms)
        if not candidates:
            return None
        self._cycle = _Cycle(start, candidates, 0, tail, suffix, Completion(value, cursor))
        return self._show(head, self._cycle)

    def _candidates(self, word: str, head: str, names: Iterable[str], rooms: Iterable[str]) -> tuple[list[str], str]:
        if not head and word.startswith("/"):
            return [c for c in self.commands if c.startswith(word.lower())], " "
        if word.startswith("#"):
            return sorted({r for r in rooms if p.room_key(r).startswith(p.room_key(word))}, key=p.room_key), " "
        key = p.name_key(word)
        matches = sorted({n for n in names if p.name_key(n).startswith(key)}, key=p.name_key)
        return matches, NAME_SUFFIX if not head.strip() else " "

    def _show(self, head: str, cycle: _Cycle) -> Completion:
        # One space between the completed word and what follows, never two.
        suffix = cycle.suffix.rstrip() if cycle.tail.startswith(" ") else cycle.suffix
        inserted = cycle.candidates[cycle.index] + suffix
        cycle.shown = Completion(head + inserted + cycle.tail, len(head) + len(inserted))
        return cycle.shown
