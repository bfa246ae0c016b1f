"""Mentions, /ignore and the client's logs (chat.client.personal, chat.ui.logs): pure rules and the core
first, then ``client.py`` end to end against a real broker (the bell on a terminal, the ignore list
across a restart, the log files)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest

import conftest
from chat import protocol as p
from chat.client import events as ev
from chat.client.personal import IgnoreList, mentions
from chat.ui.format import stamp
from chat.ui.logs import ChatLogs, file_part
from chat.ui.plain import LineFrontEnd
from conftest import HOST, REPO, Broker, Processes, joined, private, said
from chat.client.core import ClientCore
from test_client_core import GENERAL, WELCOME, direct, event, history, notices, publish, sent, typed
from test_client_core import joined as joined_core

# --------------------------------------------------------------------------- the mention rule


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("alice", "hi alice", True),
        ("alice", "ALICE: look", True),  # case-insensitive
        ("alice", "ping @Alice!", True),
        ("alice", "alice's turn", True),
        ("alice", "malice aforethought", False),  # inside another word
        ("alice", "alice_bob and alice2", False),  # "_" and digits are part of a word
        ("Ölaf", "ölaf, hallo", True),  # Unicode case
        ("Ölaf", "Ölafsson", False),
        ("a.b", "ask a.b now", True),  # regex characters are taken literally
        ("a.b", "ask axb now", False),
        ("c++", "who knows c++?", True),
        ("c++", "cc", False),
        ("x(y", "x(y) said", True),
        ("[bot]", "the [bot] is down", True),
        ("[bot]", "b", False),
        ("^$", "a ^$ b", True),
        ("^$", "", False),
        ("bob", "", False),
    ],
)
def test_a_mention_is_the_name_as_a_word_taken_literally(name: str, text: str, expected: bool) -> None:
    assert mentions(name, text) is expected


# --------------------------------------------------------------------------- the core


def test_the_core_marks_mentions_and_lists_the_live_ones_with_mentions() -> None:
    core = joined_core("alice")
    plain, = [a for a in publish(core, event(5, "bob", "hello all")) if isinstance(a, ev.Public)]
    hit, = [a for a in publish(core, event(6, "bob", "hey Alice, look")) if isinstance(a, ev.Public)]
    act, = [a for a in publish(core, event(7, "carol", "pokes @alice", kind=p.KIND_ACTION)) if isinstance(a, ev.Public)]
    join, = [a for a in publish(core, event(8, "alice2", "", kind=p.KIND_JOIN)) if isinstance(a, ev.Public)]
    assert (plain.mention, hit.mention, act.mention, join.mention) == (False, True, True, False)
    actions, message = typed(core, "/mentions")
    assert message is None  # the client's own: nothing goes to the broker
    [listing] = [a.text for a in actions if isinstance(a, ev.Notice)]
    assert listing.splitlines()[0] == "mentions (2), oldest first:"
    assert re.fullmatch(r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d #general bob: hey Alice, look", listing.splitlines()[1])
    assert listing.splitlines()[2].endswith("#general * carol pokes @alice")


def test_history_lines_are_marked_but_not_listed_as_new_mentions() -> None:
    core = ClientCore("alice", interactive=False, history_lines=2)
    core.start(0.0)
    [fetch] = [m for m in sent(direct(core, WELCOME, 0.1)) if isinstance(m, p.Fetch)]
    assert (fetch.first, fetch.last) == (2, 4)  # two lines of history, then our own join
    own = event(4, "alice", "", kind=p.KIND_JOIN)
    actions = direct(core, history(event(2, "bob", "alice, old news"), event(3), own), 0.2)
    assert [(a.event.seq, a.history, a.mention) for a in actions if isinstance(a, ev.Public)] == [
        (2, True, True), (3, True, False), (4, False, False),
    ]
    assert [a.text for a in typed(core, "/mentions")[0] if isinstance(a, ev.Notice)] == ["no line has mentioned you yet"]


def test_ignored_users_lines_actions_and_private_messages_are_hidden_but_not_their_joins(tmp_path: Path) -> None:
    core = joined_core("alice")
    core.ignore = IgnoreList(tmp_path / "ignored")
    actions, message = typed(core, "/ignore Bob")
    assert message is None and any("ignoring Bob" in a.text for a in actions if isinstance(a, ev.Notice))
    assert [a for a in publish(core, event(5, "bob", "alice: you there?")) if isinstance(a, ev.Public)] == []
    assert [a for a in publish(core, event(6, "BOB", "waves", kind=p.KIND_ACTION)) if isinstance(a, ev.Public)] == []
    shown = [a.event.kind for a in publish(core, event(7, "bob", "", kind=p.KIND_LEAVE)) if isinstance(a, ev.Public)]
    assert shown == [p.KIND_LEAVE]  # a user list still follows them
    assert [a for a in direct(core, p.Private("bob", "alice", "psst", 1, seq=1), 1.0) if isinstance(a, ev.PrivateIn)] == []
    assert core.private_seq == 1  # taken as shown: not asked for again
    assert [type(a) for a in direct(core, p.Private("carol", "alice", "hi", 2, seq=2), 1.0)] == [ev.PrivateIn]
    assert typed(core, "/mentions")[0][0].text == "no line has mentioned you yet"  # an ignored mention is none
    assert typed(core, "/ignore")[0][0].text == "ignored (1): Bob"
    assert typed(core, "/unignore bob")[0][0].text == "no longer ignoring bob"
    assert [a.event.seq for a in publish(core, event(8, "bob", "back")) if isinstance(a, ev.Public)] == [8]


def test_ignore_rejects_bad_names_and_yourself_and_says_so(tmp_path: Path) -> None:
    core = joined_core("alice")
    core.ignore = IgnoreList(tmp_path / "ignored")
    assert notices(typed(core, "/ignore #room")[0]) == ["usage: /ignore NAME (a name cannot start with '#', '/' or '*')"]
    assert notices(typed(core, "/ignore ALICE")[0]) == ["you cannot ignore yourself"]
    assert notices(typed(core, "/unignore")[0]) == ["usage: /unignore NAME"]
    assert typed(core, "/unignore bob")[0][0].text == "bob was not ignored"
    assert typed(core, "/ignore")[0][0].text.startswith("you ignore nobody")
    assert not (tmp_path / "ignored").exists()  # nothing changed: nothing written


def test_the_ignore_list_is_kept_in_its_file_and_read_again(tmp_path: Path) -> None:
    path = tmp_path / "config" / "ignored"
    first = IgnoreList(path)
    assert first.add("Zoë") and first.add("b[o]b") and not first.add("zoë")
    again = IgnoreList(path)  # the next start of the client
    assert again.names() == ["b[o]b", "Zoë"] and "ZOË" in again and "bob" not in again
    other = IgnoreList(path)
    assert other.remove("b[o]b")
    assert again.add("carol")  # reads the file first: the other client's removal is kept
    assert IgnoreList(path).names() == ["carol", "Zoë"]


def test_an_unwritable_ignore_list_is_an_error_and_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    core = joined_core("alice")
    core.ignore = IgnoreList(blocker / "ignored")  # its folder is a file: cannot be made
    [problem] = notices(typed(core, "/ignore bob")[0])
    assert problem.startswith("could not save the ignore list") and "not done" in problem


# --------------------------------------------------------------------------- logs

UTC2 = timezone(timedelta(hours=2))


def at(day: int, hour: int, minute: int, second: int = 0) -> int:
    return int(datetime(2026, 12, day, hour, minute, second, tzinfo=UTC2).timestamp() * 1000)


def public(seq: int, ts: int, name: str, text: str, kind: str = p.KIND_MSG, room: str = GENERAL) -> ev.Public:
    return ev.Public(p.Event(seq, ts, kind, name, text, room))


def test_logs_rotate_by_the_day_of_each_line_and_log_what_was_shown_live(tmp_path: Path) -> None:
    logs = ChatLogs(tmp_path, tz=UTC2)
    items: list[ev.Show] = [
        ev.Status("connected", "alice"),
        ev.Public(p.Event(1, at(3, 9, 0), p.KIND_MSG, "bob", "history line", GENERAL), history=True),
        public(2, at(3, 23, 59, 59), "bob", "late"),
        ev.Sent("a-1", "msg", "mine", room=GENERAL),
        public(3, at(4, 0, 0, 1), "carol", "waves", p.KIND_ACTION),
        ev.Acked("a-1", 4, at(4, 0, 0, 2)),
        ev.Sent("a-2", "msg", "refused", room=GENERAL),
        ev.Failed("a-2", "too fast"),
        ev.PrivateIn(p.Private("Bob", "alice", "psst", at(4, 8, 30))),
        ev.Sent("a-3", "pm", "ok", to="BOB"),
        ev.Acked("a-3", 0, at(4, 8, 31)),
        public(1, at(4, 9, 0), "dave", "", p.KIND_JOIN, room="#dev"),
    ]
    for item in items:
        assert logs.record(item) is None
    logs.close()
    files = {f.name: f.read_text(encoding="utf-8").splitlines() for f in tmp_path.iterdir()}
    assert files == {
        "#general.2026-12-03.log": ["[2026-12-03 23:59:59] bob: late"],
        "#general.2026-12-04.log": ["[2026-12-04 00:00:01] * carol waves", "[2026-12-04 00:00:02] alice: mine"],
        "@bob.2026-12-04.log": ["[2026-12-04 08:30:00] Bob: psst", "[2026-12-04 08:31:00] alice: ok"],
        "#dev.2026-12-04.log": ["[2026-12-04 09:00:00] dave has joined the chat."],
    }


def test_log_file_names_are_safe_on_every_system() -> None:
    assert file_part("#general") == "#general"
    assert file_part("@a/b") == "@a%2Fb"
    assert file_part("@..") == "@.."  # after the "@": never the folder above
    assert file_part("@con") == "@con"
    assert file_part("@zoë") == "@zo%C3%AB"


def test_a_log_that_cannot_be_written_says_so_once_and_stops(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    logs = ChatLogs(blocker / "logs")
    notice = logs.record(public(1, at(3, 9, 0), "bob", "hi"))
    assert isinstance(notice, ev.Notice) and notice.level == "error" and "logging stopped" in notice.text
    assert logs.record(public(2, at(3, 9, 1), "bob", "again")) is None


# --------------------------------------------------------------------------- plain mode's bell


def test_plain_mode_rings_once_on_stderr_for_a_live_mention_only_when_asked() -> None:
    out, err = io.StringIO(), io.StringIO()
    front = LineFrontEnd(out, err, colour=False, interactive=False, bell=True)
    mention = p.Event(1, at(3, 9, 0), p.KIND_MSG, "bob", "alice!", GENERAL)
    front.show(ev.Public(mention, mention=True))
    front.show(ev.Public(mention, history=True, mention=True))
    front.show(ev.Public(mention))
    assert err.getvalue() == "\a" and out.getvalue().splitlines() == [f"[{stamp(mention.ts)}] bob: alice!"] * 3
    quiet_err = io.StringIO()
    LineFrontEnd(io.StringIO(), quiet_err, colour=False, interactive=False).show(ev.Public(mention, mention=True))
    assert quiet_err.getvalue() == ""


def test_the_interactive_prompt_is_drawn_only_once_known_so_a_given_name_never_shows_the_name_prompt() -> None:
    """A line that comes in before the join (the reader thread has not drawn a prompt yet) is printed
    alone; the prompt is known, and drawn again under later lines, once the session is joined."""
    out = io.StringIO()
    front = LineFrontEnd(out, io.StringIO(), colour=False, interactive=True)
    joining = p.Event(1, at(3, 9, 0), p.KIND_JOIN, "bob", "", GENERAL)
    front.show(ev.Public(joining))
    assert not front.prompt_known.is_set() and "Your name" not in out.getvalue()
    front.show(ev.Status("connected", "alice"))
    assert front.prompt_known.is_set() and front.prompt == "> "
    front.prompt_open = True  # what the reader does as input() draws the prompt
    front.show(ev.Public(p.Event(2, at(3, 9, 1), p.KIND_MSG, "bob", "hi", GENERAL)))
    assert out.getvalue().endswith("bob: hi\n> ") and "Your name" not in out.getvalue()


# --------------------------------------------------------------------------- client.py end to end


Home = Callable[[str], Path]


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """``home(user)``: the clients started from now on have that user's own config and data folders
    (an ignore list is personal: it must hide nobody from other users, or in other tests)."""

    def home(user: str) -> Path:
        monkeypatch.setitem(conftest._HOME_OVERRIDES, "XDG_CONFIG_HOME", str(tmp_path / user / "config"))
        monkeypatch.setitem(conftest._HOME_OVERRIDES, "XDG_DATA_HOME", str(tmp_path / user / "data"))
        return tmp_path / user

    home("nobody")
    return home


@pytest.mark.timeout(40)
def test_ignore_hides_a_user_and_survives_a_restart_and_logs_are_written(
    procs: Processes, broker: Broker, own_home: Home
) -> None:
    alice_home = own_home("alice")
    logs = alice_home / "logs"
    alice = procs.join("alice", broker, "--log-dir", str(logs))
    bob_home = own_home("bob")
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))
    bob.send("hey alice, here is (a.b)")
    alice.expect(said("bob", "hey alice, here is (a.b)"))  # a mention keeps the line format
    alice.send("/ignore bob")
    alice.expect_err(r"^\*\*\* ignoring bob: their lines and private messages are hidden$")
    bob.send("/pm alice hidden pm")
    bob.send("hidden line")
    own_home("carol")
    carol = procs.join("carol", broker, "--no-log")
    after_the_pm(bob, carol, alice)
    carol.send("carol sees it")
    alice.expect(said("carol", "carol sees it"))
    alice.close_stdin()
    alice.assert_exit(0)
    assert alice.matching("hidden") == []

    own_home("alice")
    again = procs.join("alice", broker, "--no-log")  # a new process: the list is read from the config folder
    again.send("/ignore")
    again.expect_err(r"^\*\*\* ignored \(1\): bob$")
    bob.send("still hidden")
    bob.send("/pm alice still hidden too")
    after_the_pm(bob, carol, again)
    carol.send("after the restart")
    again.expect(said("carol", "after the restart"))
    again.send("/unignore bob")
    again.expect_err(r"^\*\*\* no longer ignoring bob$")
    bob.send("visible again")
    again.expect(said("bob", "visible again"))
    assert again.matching("still hidden") == []
    assert (alice_home / "config" / "lanchat" / "ignored").read_text(encoding="utf-8").splitlines()[1:] == []

    [log] = list(logs.glob("#general.*.log"))  # one day, unless this ran across midnight
    lines = log.read_text(encoding="utf-8").splitlines()
    assert re.fullmatch(rf"\[{p_date(log)} \d\d:\d\d:\d\d\] bob: hey alice, here is \(a\.b\)", lines[2]), lines
    assert [line.split("] ", 1)[1] for line in lines] == [
        "alice has joined the chat.", "bob has joined the chat.", "bob: hey alice, here is (a.b)",
        "carol has joined the chat.", "carol: carol sees it",
    ]
    assert [f.name.split(".")[0] for f in logs.glob("@*")] == ["@carol"]  # bob's ignored one: not logged
    # bob logs where a client does by default, the platform's data folder: his private talk is there
    [talk] = list((bob_home / "data").glob("lanchat/logs/@alice.*.log"))
    said_there = [line.split("] ", 1)[1] for line in talk.read_text(encoding="utf-8").splitlines()]
    assert said_there == ["bob: hidden pm", "bob: still hidden too"]
    assert not (alice_home / "data").exists()  # alice: --log-dir, then --no-log


def after_the_pm(sender: conftest.Client, relay: conftest.Client, to: conftest.Client) -> None:
    """Wait until ``to`` has had the private message ``sender`` sent last: the broker handles a client's
    messages in order, so ``relay`` has its next one only after that, and ``relay``'s own private
    message to ``to`` follows it on the same connection."""
    sender.send(f"/pm {relay.name} relay")
    relay.expect(private(str(sender.name), "relay"))
    relay.send(f"/pm {to.name} synced")
    to.expect(private(str(relay.name), "synced"))


def p_date(log: Path) -> str:
    return log.name.split(".")[1]


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal for stdout (POSIX)")
def test_plain_mode_rings_the_bell_on_stderr_only_when_stdout_is_a_terminal(
    procs: Processes, broker: Broker, own_home: Home
) -> None:
    """The line on stdout is unchanged; the BEL goes to stderr, and only when a person reads stdout."""
    piped = procs.join("pipes", broker, "--no-log")
    leader, follower = os.openpty()
    tty = subprocess.Popen(
        [sys.executable, "client.py", "--host", HOST, "--port", str(broker.port), "--name", "alice", "--plain",
         "--history", "0", "--no-log"],
        cwd=REPO, env={**conftest.python_env(), "NO_COLOR": "1"}, stdin=subprocess.PIPE, stdout=follower, stderr=subprocess.PIPE,
    )
    os.close(follower)
    screen = bytearray()
    reader = threading.Thread(target=_drain, args=(leader, screen), daemon=True)
    reader.start()
    try:
        _until(lambda: b"alice has joined" in screen, "alice joined", screen)
        bob = procs.join("bob", broker, "--no-log")
        bob.send("ALICE and PIPES, a word")
        _until(lambda: b"bob: ALICE and PIPES, a word" in screen, "the line on alice's terminal", screen)
        piped.expect(said("bob", "ALICE and PIPES, a word"))
        assert tty.stdin is not None
        tty.stdin.close()
        assert tty.wait(15) == 0
        assert tty.stderr is not None
        err = tty.stderr.read()
        assert err.count(b"\a") == 1, err
        assert b"\a" not in bytes(screen)  # stdout keeps its lines
        piped.close_stdin()
        piped.assert_exit(0)
        assert not any("\a" in line for line in piped.stderr() + piped.stdout())  # a pipe: no bell at all
    finally:
        if tty.poll() is None:
            tty.kill()
        tty.wait(5)
        reader.join(5)
        os.close(leader)


def _drain(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other end closed (EIO on Linux)
            return
        if not chunk:
            return
        into.extend(chunk)


def _until(condition, what: str, screen: bytearray, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited for {what}; the terminal showed {bytes(screen)!r}")
        time.sleep(0.02)  # polling the pty reader's buffer, with a deadline


@pytest.mark.timeout(20)
def test_log_dir_and_no_log_together_are_a_bad_command_line(procs: Processes) -> None:
    client = procs.process("client.py", "--name", "alice", "--log-dir", "logs", "--no-log")
    client.assert_exit(2)
    assert client.matching(r"--no-log: not allowed with argument --log-dir", err=True)
