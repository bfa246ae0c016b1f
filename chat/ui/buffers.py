"""The buffers of the full-screen client, as in weechat and irssi: one per room, one per private talk.

Each buffer has its own pane (a ``ChatLog``); one is shown at a time. They are numbered from 1 in the
order the status line lists them (rooms in the order joined, then private talks in the order they
began), for Alt+number; Ctrl+N/P step through them.
"""

from __future__ import annotations

from dataclasses import dataclass

from chat import protocol as p
from chat.ui.chatlog import ChatLog, Entry

LOBBY = ""  # the key of the first buffer, until the core says which room it is


def talk_key(name: str) -> str:
    """The key of a private talk with ``name`` (never a room's: room keys start with "#")."""
    return "@" + p.name_key(name)


@dataclass(eq=False)
class Buffer:
    key: str  # a room's key ("#dev"), a private talk's ("@bob"), or LOBBY
    title: str  # "#dev", "bob"
    log: ChatLog
    unread: int = 0  # lines from others since the reader last looked
    mentions: int = 0  # of those, the lines that mention the reader
    last_seen: Entry | None = None  # the newest line when the reader left: the "new" rule goes below it
    at_beginning: bool = False  # the oldest line of the room is on screen: nothing more to fetch
    older_since: float | None = None  # when older lines were asked for, while unanswered

    @property
    def room(self) -> str:
        return self.key if self.key.startswith("#") else ""

    @property
    def peer(self) -> str:
        """The other person of a private talk ("" for a room)."""
        return self.title if self.key.startswith("@") else ""


class Buffers:
    """The buffers in their order, and the one shown."""

    def __init__(self, first: Buffer) -> None:
        self.rooms: list[Buffer] = [first]
        self.talks: list[Buffer] = []
        self.shown = first

    def ordered(self) -> list[Buffer]:
        return self.rooms + self.talks

    def get(self, key: str) -> Buffer | None:
        return next((b for b in self.ordered() if b.key == key), None)

    def number(self, n: int) -> Buffer | None:
        """Buffer ``n``, counted from 1."""
        ordered = self.ordered()
        return ordered[n - 1] if 1 <= n <= len(ordered) else None

    def step(self, by: int) -> Buffer:
        """The buffer ``by`` places after the shown one, round the ends."""
        ordered = self.ordered()
        return ordered[(ordered.index(self.shown) + by) % len(ordered)]

    def next_active(self) -> Buffer | None:
        """Where Alt+A goes, as in weechat and irssi: the first buffer after the shown one with mentions
        (a private talk's lines count as such), else the first with unread lines; None when all are read."""
        ordered = self.ordered()
        start = ordered.index(self.shown)
        after = ordered[start + 1 :] + ordered[: start + 1]
        urgent = [b for b in after if b.mentions or (b.peer and b.unread)]
        return next(iter(urgent or [b for b in after if b.unread]), None)

    def find(self, name: str) -> Buffer | None:
        """The buffer named ``name``: a room ("#dev"), a person ("bob") or a number ("2")."""
        if name.isdigit():
            return self.number(int(name))
        return self.get(p.room_key(name) if name.startswith("#") else talk_key(name))
