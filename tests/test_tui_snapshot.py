"""Snapshots of the full-screen client (pytest-textual-snapshot): layout, colours and line formats.

No broker here: a scripted stand-in for the connection, and the core's ``Show`` items handed to the app
directly, with fixed times (a fixed clock, UTC), fixed names and a fixed broker address, so that every
run draws the same screen. After an intended change of the layout, look at the report and accept the new
pictures with ``pytest tests/test_tui_snapshot.py --snapshot-update``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Union

import pytest
from textual.pilot import Pilot

from chat import protocol as p
from chat.client import events as ev
from chat.ui.tui import ChatApp
from conftest import ScriptedConnection

NOW = datetime(2026, 11, 26, 9, 43, 30, tzinfo=timezone.utc)
ADDRESS = "chat.example.lan:5555"
SIZE = (80, 24)


def at(day: int, hour: int, minute: int) -> int:
    """A broker time stamp (ms since the epoch) in November 2026, UTC."""
    return int(datetime(2026, 11, day, hour, minute, tzinfo=timezone.utc).timestamp() * 1000)


def event(seq: int, ts: int, kind: str, name: str, text: str = "", history: bool = False) -> ev.Public:
    return ev.Public(p.Event(seq, ts, kind, name, text), history=history)


def morning() -> list[ev.Show]:
    """alice joins at 09:41 (the lines before are history) and chats a little."""
    return [
        ev.Status("connecting"),
        ev.Status("connected", "alice"),
        ev.RoomsChanged(("#general", "#dev"), "#general"),
        ev.RosterShown(p.Roster("#general", ["alice", "bob", "carol", "dave"], at(26, 9, 41)), asked=False),
        event(40, at(26, 9, 30), "msg", "bob", "morning all", history=True),
        event(41, at(26, 9, 31), "msg", "carol", "hi bob", history=True),
        event(42, at(26, 9, 35), "join", "dave", history=True),
        event(43, at(26, 9, 40), "action", "bob", "waves at alice", history=True),
        event(
            44,
            at(26, 9, 41),
            "msg",
            "carol",
            "the build is green again; I'll merge the release branch after lunch unless someone objects",
        ),
        ev.PrivateIn(p.Private("bob", "alice", "got a minute?", at(26, 9, 41))),  # in bob's buffer
        ev.Sent("a1-1", "msg", "sure, in five", room="#general"),
        ev.Acked("a1-1", 45, at(26, 9, 42)),
    ]


def while_away() -> list[ev.Show]:
    """What comes in while alice reads #dev."""
    return [
        event(46, at(26, 9, 43), "leave", "dave", "timeout"),
        event(47, at(26, 9, 43), "msg", "bob", "anyone seen eve?"),
        ev.Public(p.Event(3, at(26, 9, 43), "msg", "dave", "in dev", "#dev")),
    ]


def back() -> list[ev.Show]:
    """Back in #general: alice scrolls back into yesterday and says something."""
    return [
        ev.RosterShown(p.Roster("#general", ["alice", "bob", "carol"], at(26, 9, 43)), asked=False),  # asked again
        ev.Notice("no user called eve is online", "error"),
        ev.Sent("a1-3", "msg", "not since friday", room="#general"),  # not acknowledged yet: pending
        ev.Older((p.Event(38, at(25, 17, 58), "msg", "carol", "see you tomorrow"),
                  p.Event(39, at(25, 18, 2), "leave", "carol", "quit"))),  # fmt: skip
    ]


Step = Union[ev.Show, Callable[[ChatApp], object]]  # an item from the core, or something the user does


def app_showing(steps: list[Step], typed: str = "") -> tuple[ChatApp, Callable[[Pilot[int]], object]]:
    connection = ScriptedConnection()
    app = ChatApp(lambda show: connection, address=ADDRESS, clock=NOW.timestamp, tz=timezone.utc)

    async def run_before(pilot: Pilot[int]) -> None:
        field = app.input_line
        field.cursor_blink = False  # a blinking cursor would make the picture depend on timing
        for step in steps:
            if callable(step):
                step(app)
            else:
                app.show(step)
        field.insert_text_at_cursor(typed)
        await pilot.pause()

    return app, run_before


def away_and_back() -> list[Step]:
    """morning(), a look at #dev (Alt+2) while lines come in, and back (Alt+1): the "new" rule."""
    return [*morning(), lambda app: app.action_buffer(2), *while_away(), lambda app: app.action_buffer(1), *back()]


@pytest.mark.timeout(30)
def test_main_screen(snap_compare: Callable[..., bool]) -> None:
    app, run_before = app_showing(away_and_back(), typed="see you at 1")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.timeout(30)
def test_main_screen_without_colour(snap_compare: Callable[..., bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app, run_before = app_showing(away_and_back(), typed="see you at 1")
    assert not app.colour
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.timeout(30)
def test_a_small_terminal_drops_the_user_list_and_keeps_the_name(snap_compare: Callable[..., bool]) -> None:
    """50x15: the user list gives way, and the status line drops the address before your name."""
    app, run_before = app_showing(away_and_back(), typed="see you at 1")
    assert snap_compare(app, terminal_size=(50, 15), run_before=run_before)


@pytest.mark.timeout(30)
def test_name_prompt(snap_compare: Callable[..., bool]) -> None:
    items: list[ev.Show] = [
        ev.AskName(),
        ev.Status("connecting"),
        ev.AskName("the name bob is taken; choose another"),
    ]
    app, run_before = app_showing(items, typed="ali")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
