"""The client's own logs, as IRC clients keep them: one plain-text file per room (and private talk) per day.

    LOGDIR/#general.2026-12-03.log     [2026-12-03 14:03:09] bob: hello
                                       [2026-12-03 14:03:12] * bob waves
                                       [2026-12-03 14:03:15] alice: mine, once the broker has it
    LOGDIR/@bob.2026-12-03.log         [2026-12-03 14:05:00] bob: just between us

Lines are those of plain mode (``chat.ui.format``), without colour and without the room (the file names
it). A line goes into the file of the day of its own time stamp, the broker's, in the local time zone
(``tz`` for tests): a file's lines all carry its date. What is logged is what this client shows live:
lines, actions, joins, leaves and topics, private messages, and our own lines once the broker has
acknowledged them (with its time). The history shown on joining and older lines fetched by scrolling
are not logged again (they were logged when they came in, by whoever was there), nor are lines of
ignored users (the core does not show them). Each line is flushed as it is written.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Callable, TextIO

from chat import protocol as p
from chat.client import events as ev
from chat.ui.format import LineFormatter

MAX_OPEN_FILES = 32  # log files kept open at once; the one used longest ago is closed first
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.#")


def file_part(key: str) -> str:
    """A room's key ("#dev") or a talk's ("@bob"), as a file name on every system: what is not a lowercase
    ASCII letter, a digit or one of ``-_.#`` becomes %XX (of its UTF-8 bytes), so ``x/y`` or ``CON``'s
    friends cannot name another file, and case-insensitive file systems see distinct names."""
    head, rest = key[:1], key[1:]
    return head + "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in rest)


class ChatLogs:
    """Writes what a front end is shown into ``folder``; ``record`` each ``events.Show`` item."""

    def __init__(self, folder: Path, *, tz: tzinfo | None = None) -> None:
        self.folder = folder
        self.tz = tz
        self.fmt = LineFormatter(colour=False, tz=tz)
        self.name = ""  # ours, as the broker last said
        self.failed = ""  # why logging stopped, once it has
        self._sent: dict[str, ev.Sent] = {}  # our lines not yet acknowledged, by id
        self._open: OrderedDict[str, tuple[str, TextIO]] = OrderedDict()  # file key -> (day, file)

    def record(self, item: ev.Show) -> ev.Notice | None:
        """Log ``item`` if it is logged; a notice to show when logging has just failed (it then stops)."""
        if self.failed:
            return None
        try:
            self._record(item)
        except OSError as exc:
            self.failed = f"could not write the log in {self.folder} ({exc}); logging stopped"
            self.close()
            return ev.Notice(self.failed, "error")
        return None

    def _record(self, item: ev.Show) -> None:
        if isinstance(item, ev.Public) and not item.history:
            self._write(p.room_key(item.event.room), item.event.ts, self.fmt.event(item.event))
        elif isinstance(item, ev.PrivateIn):
            private = item.private
            self._write(talk(private.name), private.ts, self._line(private.ts, private.name, private.text))
        elif isinstance(item, ev.Status) and item.name:
            self.name = item.name
        elif isinstance(item, ev.Sent):
            self._sent[item.id] = item
        elif isinstance(item, ev.Failed):
            self._sent.pop(item.id, None)
        elif isinstance(item, ev.Acked) and (sent := self._sent.pop(item.id, None)) is not None:
            kind = p.KIND_ACTION if sent.kind == p.KIND_ACTION else p.KIND_MSG
            key = talk(sent.to) if sent.kind == "pm" else p.room_key(sent.room)
            self._write(key, item.ts, self._line(item.ts, self.name, sent.text, kind))

    def _line(self, ts: int, name: str, text: str, kind: str = p.KIND_MSG) -> str:
        return self.fmt.event(p.Event(0, ts, kind, name, text, ""))

    def _write(self, key: str, ts: int, line: str) -> None:
        if not key:
            return
        day = datetime.fromtimestamp(ts / 1000, self.tz).strftime("%Y-%m-%d")
        opened = self._open.get(key)
        if opened is None or opened[0] != day:  # a new conversation, or a new day: the next file
            if opened is not None:
                opened[1].close()
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{file_part(key)}.{day}.log"
            opened = self._open[key] = (day, path.open("a", encoding="utf-8", errors="replace", newline="\n"))
            while len(self._open) > MAX_OPEN_FILES:
                self._open.popitem(last=False)[1][1].close()
        self._open.move_to_end(key)
        opened[1].write(line + "\n")
        opened[1].flush()  # a client killed now has still logged every line it showed

    def close(self) -> None:
        for _, handle in self._open.values():
            handle.close()
        self._open.clear()


def talk(name: str) -> str:
    """The log key of a private talk with ``name``."""
    return "@" + p.name_key(name)


def logging_to(logs: ChatLogs | None, show: Callable[[ev.Show], None]) -> Callable[[ev.Show], None]:
    """``show``, with every item logged first (unchanged when there are no logs)."""
    if logs is None:
        return show

    def logged(item: ev.Show) -> None:
        notice = logs.record(item)
        show(item)
        if notice is not None:
            show(notice)

    return logged
