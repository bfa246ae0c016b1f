"""The full-screen client (``chat.ui.tui``): pure editing rules, then Textual's Pilot against a real broker.

Each Pilot test starts ``broker.py`` on 127.0.0.1 (OS-chosen ports) and drives a ``ChatApp`` in this
process, its ``Connection`` in a thread as in ``client.py``; other people are plain ``client.py``
processes. Nothing sleeps to synchronise: ``until`` polls a condition (between ``pilot.pause`` calls)
with a deadline, and a failure shows the screen and every process's output.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timezone
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator

import pytest
from textual import events
from textual.app import App, ComposeResult
from textual.pilot import Pilot

from chat import protocol as p
from chat.client import events as ev
from chat.client.core import ClientCore
from chat.client.net import Connection
from chat.client.personal import IgnoreList
from chat.ui.chatlog import HISTORY_RULE, MENTION_PLAIN, NEW_RULE, ChatLog, Entry, render_text, safe
from chat.ui.editing import COMMANDS, Completer, InputHistory
from chat.ui.tui import OLDER_LINES, ChatApp
from conftest import HOST, STOP_TIMEOUT, TS, Broker, Processes, ScriptedConnection, left, private, said

WAIT = 10.0  # seconds for anything to show up on the screen
SIZE = (80, 24)
TIME = r"\d\d:\d\d"


# --------------------------------------------------------------------------- pure: recall and completion


def test_up_and_down_recall_what_was_typed_and_keep_the_draft() -> None:
    recall = InputHistory()
    for line in ("first", "second", "second", "  "):
        recall.add(line)
    assert recall.lines == ["first", "second"]  # no repeats, no blanks
    assert recall.previous("a draft") == "second"
    assert recall.previous("second") == "first"
    assert recall.previous("first") is None  # the oldest: stays
    assert recall.following() == "second"
    assert recall.following() == "a draft"  # back to what was being typed
    assert recall.following() is None


def test_recall_keeps_a_bounded_number_of_lines() -> None:
    recall = InputHistory(limit=3)
    for n in range(10):
        recall.add(f"line {n}")
    assert recall.lines == ["line 7", "line 8", "line 9"]


def test_tab_completes_commands_at_the_start_and_cycles() -> None:
    completer = Completer()
    done = completer.complete("/wh", 3, [])
    assert done is not None and (done.value, done.cursor) == ("/who ", 5)
    again = completer.complete(done.value, done.cursor, [])
    assert again is not None and again.value == "/whosonline "
    back = completer.complete(again.value, again.cursor, [])
    assert back is not None and back.value == "/who "
    assert completer.complete("/nosuch", 7, []) is None


def test_tab_completes_rooms_after_a_hash() -> None:
    done = Completer().complete("/join #d", 8, ["dave"], ["#general", "#dev", "#Design"])
    assert done is not None and done.value == "/join #Design "
    done = Completer().complete("see #g", 6, [], ["#general"])
    assert done is not None and done.value == "see #general "


def test_tab_completes_names_case_insensitively_addressing_at_line_start() -> None:
    completer = Completer()
    names = ["Bob", "bea", "carol"]
    done = completer.complete("b", 1, names)
    assert done is not None and (done.value, done.cursor) == ("bea: ", 5)
    done = completer.complete(done.value, done.cursor, names)
    assert done is not None and done.value == "Bob: "
    # Inside a line: a space, and the text after the cursor is kept.
    done = Completer().complete("hi C and bea", 4, names)
    assert done is not None and (done.value, done.cursor) == ("hi carol and bea", 8)
    done = Completer().complete("/pm ca", 6, names)
    assert done is not None and done.value == "/pm carol "
    assert Completer().complete("hi x", 4, names) is None


def test_every_completed_command_is_one_the_core_knows() -> None:
    core = ClientCore("alice", interactive=True)
    core.start(0.0)
    welcome = p.Welcome("alice", 5556, {p.DEFAULT_ROOM: 5}, 1000, 5000, "h")
    core.on_direct(p.encode(welcome), 0.0)
    assert core.state == "joined"
    for command in COMMANDS:
        if command in ("/quit", "/exit"):
            continue
        shown = core.on_input(f"{command} bob hello", 0.0)
        unknown = [a for a in shown if isinstance(a, ev.Notice) and "unknown command" in a.text]
        assert unknown == [], command


def test_names_and_texts_are_shown_as_text_never_as_markup_or_escapes() -> None:
    entry = Entry("msg", 0, name="[bold]mallory", text="\x1b[2J[red]hi[/red] \ud800")
    _, body = render_text(entry, None, colour=True)
    assert body.plain == "<[bold]mallory> ^[[2J[red]hi[/red] \ufffd"
    assert safe("a\x07b\u202e") == "a^Gb\ufffd"
    time_column, pending = render_text(Entry("own", 0, name="me", text="x", pending=True), None, colour=False)
    assert time_column.plain.startswith("--:--")


def test_the_pane_follows_the_newest_line_keeps_the_readers_place_and_stays_bounded() -> None:
    class Pane(App[None]):
        def compose(self) -> ComposeResult:
            yield ChatLog(tz=timezone.utc, limit=30, slack=10)

    def line(n: int) -> Entry:
        return Entry("msg", 1_764_190_000_000 + n * 1000, "bob", f"line {n}")

    async def scenario() -> None:
        app = Pane()
        async with app.run_test(size=(60, 12)) as pilot:
            log = app.query_one(ChatLog)
            for n in range(20):
                log.append(line(n))
            await pilot.pause()
            assert log.is_vertical_scroll_end and log.render_line(log.size.height - 1).text.rstrip().endswith("line 19")
            log.scroll_to(y=5, animate=False, immediate=True)
            await pilot.pause()
            seen = log.render_line(0).text
            log.append(line(20))  # new at the bottom, while the reader is up there
            log.prepend([line(-2), line(-1)])  # older at the top
            await pilot.pause()
            assert log.render_line(0).text == seen and not log.is_vertical_scroll_end
            for n in range(21, 60):
                log.append(line(n))
            await pilot.pause()
            assert 30 <= len(log.entries) <= 40 and log.entries[-1].text == "line 59"
            log.scroll_end(animate=False, immediate=True)
            await pilot.pause()
            log.append(line(60))
            await pilot.pause()
            assert log.is_vertical_scroll_end

    run(scenario)


# --------------------------------------------------------------------------- Pilot helpers


@pytest.fixture
def apps() -> Iterator[list[ChatApp]]:
    """Every app made by a test; their connection threads are joined afterwards.

    A closing app ends its connection itself (it submits end of input), so this only waits.
    """
    made: list[ChatApp] = []
    yield made
    for app in made:
        if app.thread is not None:
            app.thread.join(STOP_TIMEOUT)
            assert not app.thread.is_alive(), "the connection thread did not end"


def chat_app(apps: list[ChatApp], broker: Broker, name: str | None, history: int = 0) -> ChatApp:
    core = ClientCore(name, interactive=True, history_lines=history)
    app = ChatApp(lambda show: Connection(core, HOST, broker.port, show), address=f"{HOST}:{broker.port}")
    apps.append(app)
    return app


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def screen_text(app: ChatApp) -> str:
    """What the app shows, as text: for failure messages."""
    try:
        strips = app.screen._compositor.render_strips()  # no public text export; good enough to debug
    except AttributeError as exc:  # a private API: only a failure message depends on it
        return f"(screen unavailable: {exc!r})"
    return "\n".join(strip.text.rstrip() for strip in strips)


async def until(
    pilot: Pilot[int], what: str, condition: Callable[[], bool], procs: Processes | None = None, timeout: float = WAIT
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            app = pilot.app
            assert isinstance(app, ChatApp)
            extra = procs.describe() if procs is not None else ""
            pytest.fail(f"waited {timeout:g} s for {what}\n--- screen:\n{screen_text(app)}\n{extra}")
        await pilot.pause(0.02)


def status_text(app: ChatApp) -> str:
    return str(app.query_one("#status").render())


def lines(app: ChatApp) -> list[str]:
    return app.log_pane.text_lines()


def matching(app: ChatApp, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [line for line in lines(app) if regex.search(line)]


def shown(app: ChatApp, pattern: str) -> Callable[[], bool]:
    return lambda: bool(matching(app, pattern))


async def joined(pilot: Pilot[int], app: ChatApp, procs: Processes) -> None:
    await until(pilot, "the WELCOME and the first roster", lambda: app.state == "connected" and app.users.known, procs)


async def paste(pilot: Pilot[int], text: str) -> None:
    """Text into the focused input as a terminal pastes it: quicker than one key press per character."""
    assert pilot.app.focused is not None
    pilot.app.focused.post_message(events.Paste(text))
    await pilot.pause()


async def type_line(pilot: Pilot[int], text: str) -> None:
    await paste(pilot, text)
    await pilot.press("enter")


# --------------------------------------------------------------------------- Pilot against a broker


@pytest.mark.timeout(30)
def test_typing_while_messages_arrive_keeps_the_input_intact(
    procs: Processes, broker: Broker, apps: list[ChatApp]
) -> None:
    bob = procs.join("bob", broker)
    app = chat_app(apps, broker, "alice")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            assert app.focused is app.input_line  # focused from the start
            typed = "half a thought"
            for n, key in enumerate(typed):
                bob.send(f"line {n}")
                if n == len(typed) - 1:  # the last key only once traffic is on screen mid-sentence
                    await until(pilot, "bob's first lines", shown(app, r"<bob> line 0$"), procs)
                    assert app.input_line.value == typed[:-1]
                await pilot.press(key)
            await until(pilot, "all of bob's lines", shown(app, rf"<bob> line {len(typed) - 1}$"), procs)
            field = app.input_line
            assert (field.value, field.cursor_position) == (typed, len(typed))
            assert app.focused is field
            await pilot.press("enter")
            assert field.value == ""
            bob.expect(said("alice", typed))
            await until(pilot, "the acknowledgement", lambda: not app._pending, procs)
            own = matching(app, rf"<alice> {typed}$")
            assert len(own) == 1 and re.match(rf"^{TIME} ", own[0]), own  # once, with the broker's time

    run(scenario)


@pytest.mark.timeout(30)
def test_user_list_follows_joins_and_leaves(procs: Processes, broker: Broker, apps: list[ChatApp]) -> None:
    app = chat_app(apps, broker, "alice")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            assert app.users.sorted() == ["alice"]
            bob = procs.join("bob", broker)
            await until(pilot, "bob in the list", lambda: app.users.sorted() == ["alice", "bob"], procs)
            carol = procs.join("carol", broker)
            await until(pilot, "carol in the list", lambda: app.users.sorted() == ["alice", "bob", "carol"], procs)
            bob.close_stdin()  # bob leaves
            await until(pilot, "bob gone from the list", lambda: app.users.sorted() == ["alice", "carol"], procs)
            assert matching(app, r"<-- bob has left the chat$")
            assert matching(app, r"--> carol has joined the chat$")
            assert matching(app, r"online \(") == []  # the app's own /who refreshes the list silently
            await type_line(pilot, "/who")  # one the user asks for is printed
            await until(pilot, "the roster line", shown(app, r"-!- online \(2\): alice, carol$"), procs)
            carol.close_stdin()
            await until(pilot, "carol gone", lambda: app.users.sorted() == ["alice"], procs)

    run(scenario)


@pytest.mark.timeout(30)
def test_history_recall_and_tab_completion(procs: Processes, broker: Broker, apps: list[ChatApp]) -> None:
    procs.join("bob", broker)
    procs.join("Bea", broker)
    app = chat_app(apps, broker, "alice")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            field = app.input_line
            await type_line(pilot, "first")
            await type_line(pilot, "second")
            await paste(pilot, "a dra")
            await pilot.press("up")
            assert field.value == "second"
            await pilot.press("up", "up")
            assert field.value == "first"
            await pilot.press("down", "down")
            assert field.value == "a dra"  # the draft is back
            await pilot.press("ctrl+u")
            await paste(pilot, "/wh")
            await pilot.press("tab")
            assert field.value == "/who "
            await pilot.press("tab")
            assert field.value == "/whosonline "
            await pilot.press("ctrl+u", "b", "tab")  # typed: a key press
            assert field.value == "Bea: "
            await pilot.press("tab")
            assert field.value == "bob: "
            await type_line(pilot, "hello")
            await until(pilot, "the line sent", shown(app, rf"^{TIME} <alice> bob: hello$"), procs)
            await paste(pilot, "/pm b")
            await pilot.press("tab")
            await type_line(pilot, "psst")
            await until(pilot, "a buffer for the private talk", lambda: "2:Bea" in status_text(app), procs)
            await type_line(pilot, "/switch bea")
            await until(pilot, "the private line sent", shown(app, rf"^{TIME} \[private → Bea\] <alice> psst$"), procs)
            assert app.focused is field

    run(scenario)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["/quit", "ctrl+c"])
def test_quit_and_ctrl_c_leave_cleanly(procs: Processes, broker: Broker, apps: list[ChatApp], how: str) -> None:
    bob = procs.join("bob", broker)
    app = chat_app(apps, broker, "alice")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            await type_line(pilot, "last words")  # delivered before leaving
            if how == "ctrl+c":
                await pilot.press("ctrl+c")
            else:
                await type_line(pilot, how)
            await until(pilot, "the app to exit", lambda: app.return_code is not None, procs)

    run(scenario)
    assert app.return_code == ev.EXIT_OK and app.exit_reason == ""
    bob.expect(said("alice", "last words"))
    bob.expect(left("alice"))  # a clean leave, not a time-out


@pytest.mark.timeout(30)
def test_private_messages_are_marked_and_foreign_text_is_neutralised(
    procs: Processes, broker: Broker, apps: list[ChatApp]
) -> None:
    bob = procs.join("bob", broker)
    app = chat_app(apps, broker, "alice")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            bob.send("/pm alice [bold]psst[/bold] \x1b[2J")
            await until(pilot, "a buffer for bob, with the line unread", lambda: "2:bob[1]" in status_text(app), procs)
            assert matching(app, r"psst") == []  # not in #general
            await pilot.press("ctrl+n")
            assert app.buffers.shown.peer == "bob" and app.users.sorted() == ["alice", "bob"]
            await until(pilot, "bob's private line", shown(app, r"\[private\] <bob> \[bold\]psst\[/bold\] \^\[\[2J$"), procs)
            await type_line(pilot, "back at you")  # in bob's buffer: to bob
            bob.expect(private("alice", "back at you"))
            await until(pilot, "the acknowledgement", lambda: not app._pending, procs)
            assert matching(app, rf"^{TIME} \[private → bob\] <alice> back at you$")
            await pilot.press("alt+1")
            assert app.buffers.shown.room == "#general"
            await type_line(pilot, "/pm nobody are you there")  # refused: marked, not left pending
            await until(pilot, "the refusal, where it was typed", shown(app, r"nobody called nobody is online"), procs)
            await type_line(pilot, "/switch 3")
            assert app.buffers.shown.peer == "nobody" and not app._pending
            assert matching(app, r"^!!:!! \[private → nobody\] <alice> are you there$")

    run(scenario)


@pytest.mark.timeout(30)
def test_scrolling_past_the_top_loads_older_lines(procs: Processes, broker: Broker, apps: list[ChatApp]) -> None:
    bob = procs.join("bob", broker)
    carol = procs.join("carol", broker)
    # Fifteen each: within the broker's burst allowance, so that nobody is slowed down.
    for n in range(1, 16):
        bob.send(f"old {n}")
    carol.expect(said("bob", "old 15"))
    for n in range(16, 31):
        carol.send(f"old {n}")
    bob.expect(said("carol", "old 30"))
    app = chat_app(apps, broker, "alice", history=5)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            await until(pilot, "the recent lines", shown(app, r"<carol> old 30$"), procs)
            assert matching(app, r"<carol> old 25$") == []
            texts = [re.sub(rf"^{TIME} ", "", line) for line in lines(app)]
            recent = [texts.index(f"<carol> old {n}") for n in range(26, 31)]
            notice = texts.index("-!- joined as alice; type /help for commands")
            assert texts[recent[0] - 1].startswith(HISTORY_RULE) and recent == sorted(recent) and recent[-1] < notice
            log = app.log_pane
            deadline = time.monotonic() + WAIT
            while not matching(app, r"<bob> old 1$"):  # each PgUp scrolls a page, or loads more at the top
                assert time.monotonic() < deadline, screen_text(app)
                await pilot.press("pageup")
                await pilot.pause(0.02)
            olds = [int(m.group(1)) for line in lines(app) if (m := re.search(r"<\w+> old (\d+)$", line))]
            assert olds == list(range(1, 31))  # everything once, in order
            await pilot.press("pageup", "pageup")
            await until(pilot, "the beginning", lambda: app.buffers.shown.at_beginning, procs)
            await pilot.press("pageup")
            assert len(matching(app, r"nothing older")) <= 1
            while not log.is_vertical_scroll_end:
                assert time.monotonic() < deadline, screen_text(app)
                await pilot.press("pagedown")
            bob.send("new line")
            await until(pilot, "the new line", shown(app, r"<bob> new line$"), procs)
            await pilot.pause()
            assert log.is_vertical_scroll_end  # at the bottom, new lines stay in view

    run(scenario)


@pytest.mark.timeout(30)
def test_asks_for_a_name_until_one_is_free(procs: Processes, broker: Broker, apps: list[ChatApp]) -> None:
    procs.join("bob", broker)
    app = chat_app(apps, broker, None)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, "the name prompt", lambda: app.naming, procs)
            assert "name" in str(app.input_line.placeholder)
            await type_line(pilot, "BOB")
            await until(pilot, "the refusal", lambda: app.naming and len(matching(app, r"-!- ")) >= 2, procs)
            assert matching(app, r"taken")
            await type_line(pilot, "alice")
            await joined(pilot, app, procs)
            assert app.nick == "alice" and app.users.sorted() == ["alice", "bob"]

    run(scenario)


@pytest.mark.timeout(30)
def test_resizing_rewraps_without_losing_lines(procs: Processes, broker: Broker, apps: list[ChatApp]) -> None:
    bob = procs.join("bob", broker)
    app = chat_app(apps, broker, "alice")
    long = "a long line " * 12

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            bob.send(long.strip())
            await until(pilot, "the long line", shown(app, r"<bob> a long line"), procs)
            wide = len(lines(app))
            await pilot.resize_terminal(50, 16)
            await until(pilot, "the re-wrap", lambda: len(lines(app)) > wide, procs)
            assert all(len(line) <= 50 for line in lines(app))
            await pilot.resize_terminal(*SIZE)
            await until(pilot, "the wide layout back", lambda: len(lines(app)) == wide, procs)
            assert app.focused is app.input_line and app.log_pane.is_vertical_scroll_end

    run(scenario)


@pytest.mark.timeout(30)
def test_rooms_the_list_shows_the_room_typed_into(procs: Processes, broker: Broker, apps: list[ChatApp]) -> None:
    bob = procs.join("bob", broker)
    app = chat_app(apps, broker, "alice")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            assert (app.room, app.users.sorted()) == ("#general", ["alice", "bob"])
            await type_line(pilot, "/join #dev")
            await until(pilot, "#dev and its roster", lambda: app.users.room == "#dev" and app.users.known, procs)
            assert app.users.sorted() == ["alice"] and app.rooms == ("#general", "#dev")
            bob.send("/join #dev")
            await until(pilot, "bob in #dev", lambda: app.users.sorted() == ["alice", "bob"], procs)
            assert matching(app, r"--> bob has joined #dev$")
            await type_line(pilot, "in dev")
            bob.expect(rf"^{TS} #dev alice: in dev$")  # bob is in two rooms too
            await until(pilot, "the line, in the buffer of #dev", shown(app, rf"^{TIME} <alice> in dev$"), procs)
            await paste(pilot, "/switch #g")
            await pilot.press("tab")
            assert app.input_line.value == "/switch #general "
            await pilot.press("enter")
            await until(pilot, "the #general list", lambda: app.users.room == "#general" and app.users.known, procs)
            assert app.users.sorted() == ["alice", "bob"]
            bob.send("/switch #dev")
            bob.send("two unread")
            bob.send("lines in dev")
            await until(pilot, "unread counts for #dev", lambda: "2:#dev[2]" in status_text(app), procs)
            assert app.unread == {"#dev": 2}
            await type_line(pilot, "/switch #dev")
            await until(pilot, "read once switched", lambda: app.room == "#dev" and "[2]" not in status_text(app), procs)
            await type_line(pilot, "/switch #general")
            bob.send("/leave #general")
            await until(pilot, "bob gone from #general", lambda: app.users.sorted() == ["alice"], procs)
            assert matching(app, r"online \(") == []  # the app's own /who never prints

    run(scenario)


# --------------------------------------------------------------------------- buffers, paste, Ctrl-D


def public(seq: int, name: str, text: str, room: str = "#general", history: bool = False) -> ev.Public:
    return ev.Public(p.Event(seq, 1_764_190_000_000 + seq * 1000, p.KIND_MSG, name, text, room), history=history)


def scripted_app() -> tuple[ChatApp, ScriptedConnection]:
    conn = ScriptedConnection()
    # The clock: just after the events of ``public`` 1-3, so that all is one day and in time order.
    return ChatApp(lambda show: conn, address="test:5555", clock=lambda: 1_764_190_003.5, tz=timezone.utc), conn


def connected(app: ChatApp, rooms: tuple[str, ...] = ("#general", "#dev")) -> None:
    app.show(ev.Status("connected", "alice"))
    app.show(ev.RoomsChanged(rooms, rooms[0]))


@pytest.mark.timeout(30)
def test_the_app_asks_the_core_for_rosters_and_older_lines_and_types_no_command() -> None:
    app, conn = scripted_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            connected(app)
            await pilot.pause()
            assert conn.requests == [ev.AskRoster("#general")]
            app.show(ev.RosterShown(p.Roster("#general", ["alice", "bob"], 1), asked=False))
            await pilot.press("pageup")  # at the top: older lines, asked for
            assert conn.requests[-1] == ev.AskOlder("#general", OLDER_LINES)
            app.show(ev.NothingOlder("#general", "there is nothing older in #general"))
            await pilot.press("pageup")  # the beginning: not asked again
            assert conn.requests[-1] == ev.AskOlder("#general", OLDER_LINES)
            await pilot.press("ctrl+n")  # #dev: the core types there now, and its roster is asked for
            assert conn.requests[-2:] == [ev.TypeInto("#dev"), ev.AskRoster("#dev")]
            app.show(ev.RoomsChanged(("#general", "#dev"), "#dev"))  # the core's answer
            await pilot.press("ctrl+p")  # back: the roster of #general is known, and kept
            assert conn.requests[-1] == ev.TypeInto("#general") and app.users.sorted() == ["alice", "bob"]
            assert conn.submitted == []  # nothing typed on the user's behalf
            assert [line[6:] for line in matching(app, r"online|nothing older")] == ["-!- there is nothing older in #general"]

    run(scenario)


@pytest.mark.timeout(30)
def test_buffers_switch_by_number_name_and_keys_with_a_rule_above_what_is_new() -> None:
    app, conn = scripted_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            connected(app)
            app.show(public(1, "bob", "seen before"))
            app.show(ev.PrivateIn(p.Private("carol", "alice", "psst", 1_764_190_000_000)))
            await pilot.pause()
            assert [b.title for b in app.buffers.ordered()] == ["#general", "#dev", "carol"]
            assert matching(app, "psst") == [] and "3:carol[1]" in status_text(app)
            await pilot.press("alt+3")
            assert app.buffers.shown.peer == "carol" and matching(app, r"\[private\] <carol> psst$")
            await type_line(pilot, "hi carol")  # in a private talk: a private message
            await type_line(pilot, "/me waves")  # a command stays a command
            assert conn.submitted == ["/msg carol hi carol", "/me waves"]
            app.show(public(2, "bob", "new one"))
            app.show(public(3, "bob", "new two"))
            app.show(public(1, "dave", "in dev", room="#dev"))
            await pilot.pause()
            assert "1:#general[2]" in status_text(app) and "2:#dev[1]" in status_text(app)
            await type_line(pilot, "/switch #general")
            assert app.buffers.shown.room == "#general" and "[2]" not in status_text(app)
            rule = next(i for i, line in enumerate(lines(app)) if line.startswith(NEW_RULE))
            assert [re.sub(TIME + " ", "", line) for line in lines(app)[rule + 1 :]] == ["<bob> new one", "<bob> new two"]
            await type_line(pilot, "/switch 2")
            assert app.buffers.shown.room == "#dev" and matching(app, r"<dave> in dev$")
            await pilot.press("ctrl+n", "ctrl+n")  # round the end
            assert app.buffers.shown.room == "#general"
            await type_line(pilot, "/switch zed")  # a private talk, begun
            assert app.buffers.shown.peer == "zed" and "4:zed" in status_text(app)
            await type_line(pilot, "/switch #nowhere")
            assert matching(app, r"no buffer #nowhere") and app.buffers.shown.peer == "zed"
            assert not any(line.startswith("/switch") for line in conn.submitted)
            await pilot.press("alt+2")
            app.show(ev.RoomsChanged(("#general",), "#general"))  # we left #dev: its buffer goes
            await pilot.pause()
            assert [b.title for b in app.buffers.ordered()] == ["#general", "carol", "zed"]
            assert app.buffers.shown.room == "#general" and len(app.query(ChatLog)) == 3

    run(scenario)


@pytest.mark.timeout(30)
def test_history_on_joining_is_marked_and_placed_before_the_join_notice_in_time_order() -> None:
    app, conn = scripted_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            app.show(ev.Status("connected", "alice"))  # "joined as alice" first, as the core says it
            app.show(ev.RoomsChanged(("#general",), "#general"))
            app.show(ev.Sent("a-1", "msg", "typed at once", room="#general"))
            for seq in (1, 2, 3):  # the FETCH for --history answers later
                app.show(public(seq, "bob", f"old {seq}", history=True))
            app.show(public(4, "bob", "live"))
            await pilot.pause()
            texts = [re.sub(rf"^({TIME}|--:--) ", "", line).rstrip("─ ") for line in lines(app)]
            start = texts.index(HISTORY_RULE.strip())
            assert texts[start:] == [
                HISTORY_RULE.strip(), "<bob> old 1", "<bob> old 2", "<bob> old 3",
                "-!- joined as alice; type /help for commands", "<alice> typed at once", "<bob> live",
            ]  # fmt: skip
            assert [e.history for e in app.log_pane.entries] == [True, True, True, False, False, False]

    run(scenario)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("typed", ["", "some text"])
def test_ctrl_d_on_an_empty_line_leaves_and_otherwise_deletes(typed: str) -> None:
    app, conn = scripted_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            connected(app)
            await paste(pilot, typed)
            app.input_line.cursor_position = 0
            await pilot.press("ctrl+d")
            await pilot.pause()
            assert conn.ended.is_set() == (typed == "")
            assert app.input_line.value == typed[1:]
            conn.ended.set()
            await until(pilot, "the app to exit", lambda: app.return_code is not None)

    run(scenario)
    assert app.return_code == ev.EXIT_OK


@pytest.mark.timeout(40)
def test_a_paste_of_many_lines_sends_every_line_in_order_at_the_brokers_pace(
    procs: Processes, broker: Broker, apps: list[ChatApp]
) -> None:
    bob = procs.join("bob", broker)
    app = chat_app(apps, broker, "alice")
    pasted = [f"pasted {n}" for n in range(30)]  # over the broker's burst of 20: some wait for "slow down"

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            await paste(pilot, "ah: " + "\n".join(pasted) + "\n")
            assert app.input_line.value == ""
            for line in ["ah: pasted 0", *pasted[1:]]:
                bob.expect(said("alice", line))
            await until(pilot, "every pasted line acknowledged", lambda: not app._pending, procs)
            assert len(matching(app, r"<alice> (ah: )?pasted \d+$")) == 30

    run(scenario)


# --------------------------------------------------------------------------- mentions and Alt+A


def mention(seq: int, name: str, text: str, room: str = "#general") -> ev.Public:
    return ev.Public(public(seq, name, text, room).event, mention=True)


class Bells:
    """Counts the app's terminal bells."""

    def __init__(self, app: ChatApp) -> None:
        self.rung = 0
        app.bell = self.ring  # type: ignore[method-assign]

    def ring(self) -> None:
        self.rung += 1


@pytest.mark.timeout(30)
def test_mentions_are_highlighted_ring_once_and_are_marked_in_the_status_line() -> None:
    app, conn = scripted_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            bells = Bells(app)
            connected(app)
            app.show(mention(1, "bob", "alice, look"))  # in the buffer shown: highlighted, rung, not unread
            app.show(ev.Public(public(2, "bob", "alice, from before", history=True).event, history=True, mention=True))
            app.show(public(1, "dave", "just a line", room="#dev"))
            app.show(mention(2, "dave", "@alice in dev", room="#dev"))
            await pilot.pause()
            assert bells.rung == 2  # once per live mention, none for history
            assert "2:#dev[2,1!]" in status_text(app)
            [entry] = [e for e in app.log_pane.entries if e.text == "alice, look"]
            assert entry.mention
            _, body = render_text(entry, timezone.utc, colour=False)
            assert any(span.style == MENTION_PLAIN for span in body.spans) or body.style == MENTION_PLAIN
            _, quiet = render_text(Entry.from_event(public(3, "bob", "hi").event), timezone.utc, colour=False)
            assert MENTION_PLAIN not in [span.style for span in quiet.spans]
            app.show(mention(3, "dave", "alice again", room="#dev"))
            await pilot.pause()
            assert "2:#dev[3,2!]" in status_text(app)
            await pilot.press("alt+2")
            assert "[" not in status_text(app).split("2:#dev")[1].split()[0]  # read: the mark goes

    run(scenario)


@pytest.mark.timeout(30)
def test_no_bell_keeps_the_highlight_and_the_marks() -> None:
    conn = ScriptedConnection()
    app = ChatApp(lambda show: conn, address="test:5555", clock=lambda: 1_764_190_003.5, tz=timezone.utc, bell=False)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            bells = Bells(app)
            connected(app)
            app.show(mention(1, "dave", "alice?", room="#dev"))
            await pilot.pause()
            assert bells.rung == 0 and "2:#dev[1!]" in status_text(app)

    run(scenario)


@pytest.mark.timeout(30)
def test_alt_a_goes_to_the_buffer_with_mentions_first_then_to_unread_ones() -> None:
    app, conn = scripted_app()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            connected(app, ("#general", "#dev", "#ops"))
            app.show(public(1, "dave", "busy", room="#dev"))
            app.show(mention(1, "erin", "alice: ops needs you", room="#ops"))
            app.show(ev.PrivateIn(p.Private("carol", "alice", "psst", 1_764_190_000_000)))
            await pilot.pause()
            assert "2:#dev[1]" in status_text(app) and "3:#ops[1!]" in status_text(app)
            await pilot.press("alt+a")
            assert app.buffers.shown.room == "#ops"  # a mention first
            await pilot.press("alt+a")
            assert app.buffers.shown.peer == "carol"  # a private talk counts as one
            await pilot.press("alt+a")
            assert app.buffers.shown.room == "#dev"  # then what is merely unread
            assert conn.requests.count(ev.TypeInto("#dev")) == 1
            await pilot.press("alt+a")
            assert app.buffers.shown.room == "#dev"  # nothing left unread: it stays
            rule = next(i for i, line in enumerate(lines(app)) if line.startswith(NEW_RULE))
            assert lines(app)[rule + 1].endswith("<dave> busy")

    run(scenario)


@pytest.mark.timeout(30)
def test_against_a_broker_mentions_ring_mentions_lists_them_and_ignore_hides(
    procs: Processes, broker: Broker, apps: list[ChatApp], tmp_path: Path
) -> None:
    bob = procs.join("bob", broker, "--no-log")
    core = ClientCore("alice", interactive=True, ignore=IgnoreList(tmp_path / "ignored"))
    app = ChatApp(lambda show: Connection(core, HOST, broker.port, show), address=f"{HOST}:{broker.port}")
    apps.append(app)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            bells = Bells(app)
            await joined(pilot, app, procs)
            bob.send("is Alice around? malice is not a mention")
            await until(pilot, "bob's line", shown(app, r"<bob> is Alice around\?"), procs)
            assert bells.rung == 1 and [e.mention for e in app.log_pane.entries if e.name == "bob"] == [True]
            await type_line(pilot, "/mentions")
            await until(pilot, "the list of mentions", shown(app, r"#general bob: is Alice"), procs)
            await type_line(pilot, "/ignore bob")
            await until(pilot, "the ignore confirmed", shown(app, r"ignoring bob"), procs)
            bob.send("alice, you cannot see this")
            bob.send("/pm alice nor this")
            bob.send("/me leaves")
            bob.close_stdin()
            await until(pilot, "bob leaving, which still shows", shown(app, r"bob has left the chat"), procs)
            assert matching(app, r"cannot see|nor this|leaves") == [] and bells.rung == 1
            assert [b.title for b in app.buffers.ordered()] == ["#general"]  # no private talk begun
            assert IgnoreList(tmp_path / "ignored").names() == ["bob"]

    run(scenario)


@pytest.mark.timeout(30)
def test_nick_and_search_in_the_full_screen_client(procs: Processes, broker: Broker, apps: list[ChatApp]) -> None:
    bob = procs.join("bob", broker)
    app = chat_app(apps, broker, "alice")

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await joined(pilot, app, procs)
            bob.send("deploy is green")
            await until(pilot, "bob's line", shown(app, r"<bob> deploy is green$"), procs)
            await type_line(pilot, "/nick alicia")
            bob.expect(rf"^{TS} alice is now known as alicia\.$")
            await until(pilot, "the nick line", shown(app, r"-!- alice is now known as alicia$"), procs)
            await until(pilot, "the new name", lambda: app.nick == "alicia", procs)
            await type_line(pilot, "/search DEPLOY")
            await until(pilot, "the search result", shown(app, r"#general <bob> deploy is green$"), procs)
            assert matching(app, r"search for DEPLOY: 1 lines$")

    run(scenario)


@pytest.mark.timeout(30)
def test_a_download_shows_a_progress_bar_in_the_status_line(
    procs: Processes, broker: Broker, apps: list[ChatApp], tmp_path: Any
) -> None:
    data = bytes(range(256)) * 8000  # 2 MB: two seconds at the 1 MB/s given below
    (tmp_path / "big.bin").write_bytes(data)
    bob = procs.join("bob", broker)
    core = ClientCore("alice", interactive=True, download_dir=tmp_path / "in", file_rate=1_000_000)
    app = ChatApp(lambda show: Connection(core, HOST, broker.port, show), address=f"{HOST}:{broker.port}")
    apps.append(app)

    async def scenario() -> None:
        async with app.run_test(size=(100, 24)) as pilot:
            await joined(pilot, app, procs)
            bob.send(f"/send alice {tmp_path / 'big.bin'}")
            await until(pilot, "bob's offer", lambda: "2:bob[1]" in status_text(app), procs)
            await pilot.press("ctrl+n")
            offer = r"\[private\] <bob> offers big\.bin \(2\.0 MB, sha256 [0-9a-f]{8}\.\.\.\) - /get (\d+)$"
            await until(pilot, "the offer line", shown(app, offer), procs)
            number = re.search(offer, matching(app, offer)[0])[1]  # type: ignore[index]
            await type_line(pilot, f"/get {number}")
            await until(pilot, "a progress bar", lambda: re.search(r"↓ big\.bin \[#*-+\] \d+%", status_text(app)) is not None, procs)
            await until(pilot, "the saved notice", shown(app, r"saved big\.bin as"), procs)
            assert "big.bin [" not in status_text(app), "the bar stays after the transfer"
            assert (tmp_path / "in" / "big.bin").read_bytes() == data

    run(scenario)
