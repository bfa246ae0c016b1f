"""The plain line formats scripts depend on (chat/ui/format.py), in the viewer's local time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from chat import protocol as p
from chat.ui.format import LineFormatter, name_colour, stamp

TS = 1_764_190_001_456  # 2025-11-26 20:46:41.456 UTC
WHEN = "[2025-11-27 02:16:41]"  # the same instant in India (UTC+5:30, no daylight saving)


def set_tz(monkeypatch: pytest.MonkeyPatch, tz: str) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()


@pytest.fixture(autouse=True)
def india(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """POSIX TZ strings need no zoneinfo files; the zone is restored after each test."""
    set_tz(monkeypatch, "IST-5:30")
    yield
    monkeypatch.undo()
    time.tzset()


def line(kind: str, name: str = "alice", text: str = "", colour: bool = False) -> str:
    return LineFormatter(colour).event(p.Event(seq=1, ts=TS, kind=kind, name=name, text=text))


# --------------------------------------------------------------------------- the formats


def test_message_line() -> None:
    assert line(p.KIND_MSG, text="hello, world") == f"{WHEN} alice: hello, world"


def test_action_line() -> None:
    assert line(p.KIND_ACTION, text="waves") == f"{WHEN} * alice waves"


def test_join_line() -> None:
    assert line(p.KIND_JOIN) == f"{WHEN} alice has joined the chat."


def test_leave_line() -> None:
    assert line(p.KIND_LEAVE, text=p.LEFT_QUIT) == f"{WHEN} alice has left the chat."


def test_leave_by_timeout_line() -> None:
    assert line(p.KIND_LEAVE, text=p.LEFT_TIMEOUT) == f"{WHEN} alice has left the chat. (timed out)"


def test_private_line() -> None:
    private = p.Private(name="bob", to="alice", text="psst", ts=TS)
    assert LineFormatter().private(private) == f"{WHEN} bob (private): psst"


def test_roster_line() -> None:
    roster = p.Roster(room="", names=["alice", "bob"], ts=TS)
    assert LineFormatter().roster(roster) == f"{WHEN} online (2): alice, bob"


def test_roster_line_of_a_room() -> None:
    roster = p.Roster(room="#general", names=["carol"], ts=TS)
    assert LineFormatter().roster(roster) == f"{WHEN} online in #general (1): carol"


def test_unknown_kind_is_shown_generically() -> None:
    assert line("dance", text="lunch at noon") == f"{WHEN} alice (dance): lunch at noon"


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    "tz, ts, expected",
    [
        ("UTC0", TS, "2025-11-26 20:46:41"),
        ("IST-5:30", TS, "2025-11-27 02:16:41"),  # across midnight
        ("EST5EDT,M3.2.0,M11.1.0", TS, "2025-11-26 15:46:41"),  # winter time
        ("EST5EDT,M3.2.0,M11.1.0", 1_751_371_200_000, "2025-07-01 08:00:00"),  # summer time
        ("CET-1CEST,M3.5.0,M10.5.0/3", 1_751_371_200_000, "2025-07-01 14:00:00"),
    ],
)
def test_times_are_the_viewers_local_time(monkeypatch: pytest.MonkeyPatch, tz: str, ts: int, expected: str) -> None:
    set_tz(monkeypatch, tz)
    assert stamp(ts) == expected
    assert line(p.KIND_MSG, text="hi").startswith(f"[{stamp(TS)}] ")


def test_milliseconds_are_cut_not_rounded() -> None:
    assert stamp(TS - 456 + 999) == "2025-11-27 02:16:41"


# --------------------------------------------------------------------------- colour


def every_line(formatter: LineFormatter, name: str = "alice", text: str = "hello") -> list[str]:
    lines = [
        formatter.event(p.Event(seq=1, ts=TS, kind=kind, name=name, text=text))
        for kind in (p.KIND_MSG, p.KIND_ACTION, p.KIND_JOIN, p.KIND_LEAVE, "topic")
    ]
    lines.append(formatter.private(p.Private(name, "bob", text, TS)))
    lines.append(formatter.roster(p.Roster("", [name, "bob"], TS)))
    return lines


def test_colour_off_writes_no_escape_sequences() -> None:
    for text in every_line(LineFormatter(colour=False)):
        assert "\x1b" not in text


def test_colour_on_colours_the_name_and_dims_joins_and_leaves() -> None:
    formatter = LineFormatter(colour=True)
    colour = name_colour("alice")
    assert formatter.event(p.Event(1, TS, p.KIND_MSG, "alice", "hi")) == f"{WHEN} \x1b[{colour}malice\x1b[0m: hi"
    assert formatter.event(p.Event(1, TS, p.KIND_JOIN, "alice")) == f"\x1b[2m{WHEN} alice has joined the chat.\x1b[0m"


def test_a_name_has_the_same_colour_everywhere_whatever_its_case() -> None:
    assert name_colour("Alice") == name_colour("alice") == name_colour("ALICE")
    assert len({name_colour(n) for n in ["alice", "bob", "carol", "dave", "eve", "frank", "grace"]}) > 1
    assert all(30 <= name_colour(n) <= 97 for n in ["a", "b", "ü", "🦊"])


# --------------------------------------------------------------------------- hostile names and text


def test_escape_sequences_in_text_are_neutralised() -> None:
    assert line(p.KIND_MSG, text="\x1b[2J\x1b]0;pwned\x07hi") == f"{WHEN} alice: ^[[2J^[]0;pwned^Ghi"
    assert line(p.KIND_ACTION, text="\u202eevil\x9b") == f"{WHEN} * alice \ufffdevil\ufffd"


def test_escape_sequences_in_names_are_neutralised() -> None:
    evil = "\x1b[31mmallory\x1b[0m"
    assert line(p.KIND_MSG, name=evil, text="hi") == f"{WHEN} ^[[31mmallory^[[0m: hi"
    assert line(p.KIND_LEAVE, name=evil, text="quit") == f"{WHEN} ^[[31mmallory^[[0m has left the chat."
    private = p.Private(name=evil, to="alice", text="x\x1b[Ay", ts=TS)
    assert LineFormatter().private(private) == f"{WHEN} ^[[31mmallory^[[0m (private): x^[[Ay"
    roster = p.Roster(room="", names=["alice", evil], ts=TS)
    assert LineFormatter().roster(roster) == f"{WHEN} online (2): alice, ^[[31mmallory^[[0m"
    assert line("\x1b[5m", text="blink") == f"{WHEN} alice (^[[5m): blink"


@pytest.mark.parametrize("colour", [False, True])
def test_only_the_formatters_own_escapes_reach_the_terminal(colour: bool) -> None:
    hostile = "\x1b]8;;http://evil\x07x\x1b[K\x9b2J\u2066"
    plain = every_line(LineFormatter(colour), name=hostile, text=hostile)
    own = every_line(LineFormatter(colour), name="n", text="t")
    for got, reference in zip(plain, own):
        assert got.count("\x1b") == reference.count("\x1b")
        assert "\x07" not in got and "\x9b" not in got and "\u2066" not in got
