"""Snapshots of the full-screen client (pytest-textual-snapshot): layout, colours and line formats.

No broker here: a scripted stand-in for the connection, and the core's ``Show`` items handed to the app
directly, with fixed times (a fixed clock, UTC), fixed names and a fixed broker address, so that every
run draws the same screen. After an intended change of the layout, look at the report and accept the new
pictures with ``pytest tests/test_tui_snapshot.py --snapshot-update``.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Callable

import pytest
from textual.pilot import Pilot

from chat import protocol as p
from chat.client import events as ev
from chat.ui.tui import ChatApp

NOW = datetime(2026, 11, 26, 9, 43, 30, tzinfo=timezone.utc)
ADDRESS = "chat.example.lan:5555"
SIZE = (80, 24)
STOP_TIMEOUT = 10.0


def at(day: int, hour: int, minute: int) -> int:
    """A broker time stamp (ms since the epoch) in November 2026, UTC."""
    return int(datetime(2026, 11, day, hour, minute, tzinfo=timezone.utc).timestamp() * 1000)


class ScriptedConnection:
    """Stands in for ``chat.client.net.Connection``: no sockets; it runs until end of input."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self._ended = threading.Event()

    def run(self) -> ev.Exit:
        self._ended.wait(STOP_TIMEOUT)
        return ev.Exit(ev.EXIT_OK)

    def submit(self, line: str) -> None:
        self.submitted.append(line)

    def submit_eof(self) -> None:
        self._ended.set()


def event(seq: int, ts: int, kind: str, name: str, text: str = "") -> ev.Public:
    return ev.Public(p.Event(seq, ts, kind, name, text))


def morning() -> list[ev.Show]:
    """alice joins at 09:41 and chats a little; then she scrolls back into yesterday."""
    return [
        ev.Status("connecting"),
        ev.Status("connected", "alice"),
        ev.RoomsChanged(("#general",), "#general"),
        ev.RosterShown(p.Roster("#general", ["alice", "bob", "carol", "dave"], at(26, 9, 41))),  # for the list
        event(40, at(26, 9, 30), "msg", "bob", "morning all"),
        event(41, at(26, 9, 31), "msg", "carol", "hi bob"),
        event(42, at(26, 9, 35), "join", "dave"),
        event(43, at(26, 9, 40), "action", "bob", "waves at alice"),
        event(
            44,
            at(26, 9, 41),
            "msg",
            "carol",
            "the build is green again; I'll merge the release branch after lunch unless someone objects",
        ),
        ev.PrivateIn(p.Private("bob", "alice", "got a minute?", at(26, 9, 41))),
        ev.Sent("a1-1", "msg", "sure, in five"),
        ev.Acked("a1-1", 45, at(26, 9, 42)),
        ev.Sent("a1-2", "pm", "call you at 10", "bob"),
        ev.Acked("a1-2", 0, at(26, 9, 42)),
        event(46, at(26, 9, 43), "leave", "dave", "timeout"),
        ev.Notice("no user called eve is online", "error"),
        ev.Sent("a1-3", "msg", "anyone seen eve?"),  # not acknowledged yet: pending
        ev.Older((event(38, at(25, 17, 58), "msg", "carol", "see you tomorrow").event,
                  event(39, at(25, 18, 2), "leave", "carol", "quit").event)),  # fmt: skip
    ]


def app_showing(items: list[ev.Show], typed: str = "") -> tuple[ChatApp, Callable[[Pilot[int]], object]]:
    connection = ScriptedConnection()
    app = ChatApp(lambda show: connection, address=ADDRESS, clock=NOW.timestamp, tz=timezone.utc)

    async def run_before(pilot: Pilot[int]) -> None:
        field = app.input_line
        field.cursor_blink = False  # a blinking cursor would make the picture depend on timing
        for item in items:
            app.show(item)
        field.insert_text_at_cursor(typed)
        await pilot.pause()

    return app, run_before


@pytest.mark.timeout(30)
def test_main_screen(snap_compare: Callable[..., bool]) -> None:
    app, run_before = app_showing(morning(), typed="see you at 1")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.timeout(30)
def test_main_screen_without_colour(snap_compare: Callable[..., bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app, run_before = app_showing(morning(), typed="see you at 1")
    assert not app.colour
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.timeout(30)
def test_name_prompt(snap_compare: Callable[..., bool]) -> None:
    items: list[ev.Show] = [
        ev.AskName(),
        ev.Status("connecting"),
        ev.AskName("the name bob is taken; choose another"),
    ]
    app, run_before = app_showing(items, typed="ali")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
