"""Plain-text rendering of what the client shows: the line formats scripts depend on.

    [YYYY-MM-DD HH:MM:SS] alice: text
    [YYYY-MM-DD HH:MM:SS] * alice waves
    [YYYY-MM-DD HH:MM:SS] alice has joined the chat.
    [YYYY-MM-DD HH:MM:SS] alice and 11 others have joined the chat.   (a join storm, summed up)
    [YYYY-MM-DD HH:MM:SS] alice has left the chat.
    [YYYY-MM-DD HH:MM:SS] alice has left the chat. (timed out)
    [YYYY-MM-DD HH:MM:SS] alice has left the chat. (broker restarted)
    [YYYY-MM-DD HH:MM:SS] alice (private): text
    [YYYY-MM-DD HH:MM:SS] online (2): alice, bob
    [YYYY-MM-DD HH:MM:SS] #dev alice: text          (in several rooms: the room after the time)
    [YYYY-MM-DD HH:MM:SS] alice has joined #dev.
    [YYYY-MM-DD HH:MM:SS] alice has left #dev.
    [YYYY-MM-DD HH:MM:SS] alice set the topic of #dev: text
    [YYYY-MM-DD HH:MM:SS] rooms (2): #dev (1) - topic, #general (3)
    [YYYY-MM-DD HH:MM:SS] alice offers report.pdf (2.4 MB, sha256 1a2b3c4d...) - /get 7   (a room's or a private file)

Times are the broker's, shown in the viewer's local time zone. Everything from other people goes through
``neutralise`` so that it cannot move the cursor, recolour the screen or reorder text.
"""

from __future__ import annotations

import zlib
from datetime import datetime, tzinfo

from typing import TYPE_CHECKING

from chat import protocol as p

if TYPE_CHECKING:
    from chat.client import events as ev

_NAME_COLOURS = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)


def stamp(ts_ms: int, tz: tzinfo | None = None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in ``tz`` (None: the local time zone)."""
    return datetime.fromtimestamp(ts_ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")


def name_colour(name: str) -> int:
    """An ANSI colour for a name, the same for everyone and every run."""
    return _NAME_COLOURS[zlib.crc32(p.name_key(name).encode()) % len(_NAME_COLOURS)]


class LineFormatter:
    """Turns events into single lines, with colour only when asked."""

    def __init__(self, colour: bool = False, tz: tzinfo | None = None) -> None:
        self.colour = colour
        self.tz = tz  # None: the local time zone

    def name(self, name: str) -> str:
        safe = p.neutralise(name)
        return f"\x1b[{name_colour(name)}m{safe}\x1b[0m" if self.colour else safe

    def dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self.colour else text

    def event(self, event: p.Event, show_room: bool = False) -> str:
        when = f"[{stamp(event.ts, self.tz)}]"
        text = p.neutralise(event.text)
        room = p.neutralise(event.room)
        if event.kind == p.KIND_ENTER:
            return self.dim(f"{when} {p.neutralise(event.name)} has joined {room}.")
        if event.kind == p.KIND_PART:
            return self.dim(f"{when} {p.neutralise(event.name)} has left {room}.")
        if event.kind == p.KIND_TOPIC:
            return f"{when} {p.neutralise(event.name)} set the topic of {room}: {text}"
        if event.kind == p.KIND_NICK:
            return self.dim(f"{when} {p.neutralise(event.name)} is now known as {text}.")
        if show_room:
            when = f"{when} {room}"
        if event.kind == p.KIND_MSG:
            return f"{when} {self.name(event.name)}: {text}"
        if event.kind == p.KIND_ACTION:
            return f"{when} * {self.name(event.name)} {text}"
        if event.kind == p.KIND_FILE:
            return f"{when} {self.name(event.name)} {text}"
        if event.kind == p.KIND_JOIN:
            return self.dim(f"{when} {p.neutralise(event.name)} has joined the chat.")
        if event.kind == p.KIND_JOINS and event.text.isdecimal() and int(event.text) > 1:
            others = int(event.text) - 1
            return self.dim(
                f"{when} {p.neutralise(event.name)} and {others} other{'s' if others > 1 else ''} have joined the chat."
            )
        if event.kind == p.KIND_LEAVE:
            why = f" ({p.LEAVE_REASONS[event.text]})" if event.text in p.LEAVE_REASONS else ""
            return self.dim(f"{when} {p.neutralise(event.name)} has left the chat.{why}")
        return f"{when} {p.neutralise(event.name)} ({p.neutralise(event.kind)}): {text}"

    @staticmethod
    def _member(roster: p.Roster, name: str) -> str:
        away = roster.away.get(name) if isinstance(roster.away, dict) else None
        return f"{p.neutralise(name)} (away: {p.neutralise(str(away))})" if away else p.neutralise(name)

    @staticmethod
    def found_summary(text: str, count: int, more: bool) -> str:
        """What a search found, after its lines (shown as the log shows them, with their room)."""
        return f"search for {p.neutralise(text)}: {count} lines" + ("; /search for older ones" if more else "")

    def private(self, private: p.Private) -> str:
        if private.file:
            return f"[{stamp(private.ts, self.tz)}] {self.name(private.name)} {p.neutralise(private.text)}"
        marker = "private, while you were away" if private.queued else "private"
        return f"[{stamp(private.ts, self.tz)}] {self.name(private.name)} ({marker}): {p.neutralise(private.text)}"

    def room_list(self, listing: p.RoomList) -> str:
        rooms = []
        for entry in listing.rooms:
            room, members, topic = entry.get("room"), entry.get("members"), entry.get("topic")
            about = f" - {p.neutralise(str(topic))}" if topic else ""
            rooms.append(f"{p.neutralise(str(room))} ({members}){about}")
        return f"[{stamp(listing.ts, self.tz)}] rooms ({len(rooms)}): {', '.join(rooms)}"

    def roster(self, roster: p.Roster) -> str:
        where = f" in {roster.room}" if roster.room else ""
        names = ", ".join(self._member(roster, n) for n in roster.names)
        return f"[{stamp(roster.ts, self.tz)}] online{where} ({len(roster.names)}): {names}"


def progress_text(item: "ev.Progress") -> str:
    """A transfer's progress as a line: ``receiving report.pdf: 40% (1.0 MB of 2.4 MB)``."""
    percent = item.done * 100 // item.total if item.total else 100
    done, total = p.file_size_text(item.done), p.file_size_text(item.total)
    return f"{item.direction} {p.neutralise(item.name)}: {percent}% ({done} of {total})"


def progress_bar(item: "ev.Progress", width: int = 20) -> str:
    """The same as a bar, for the full-screen client: ``report.pdf [########------------] 40%``."""
    filled = item.done * width // item.total if item.total else width
    percent = item.done * 100 // item.total if item.total else 100
    arrow = "↑" if item.direction == "sending" else "↓"
    return f"{arrow} {p.neutralise(item.name)} [{'#' * filled}{'-' * (width - filled)}] {percent}%"
