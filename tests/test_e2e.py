"""End to end: ``broker.py`` and ``client.py`` run as processes, as a user would run them.

Clients are in plain mode (their stdin is a pipe): chat on stdout, the client's own notices (``*** ...``)
and last words (``client: ...``) on stderr. Each test starts its own broker on OS-chosen ports.

"Never" assertions need a barrier: a later line that the same reader does receive, so that the line
that must not appear would have arrived by then if it were coming at all.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from conftest import (
    HOST,
    TS,
    Client,
    Processes,
    Broker,
    acted,
    joined,
    left,
    online,
    private,
    said,
    timed_out,
)

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
JOINED_NOTICE = r"^\*\*\* joined as {}; type /help for commands$"


def assert_recent(line: str) -> None:
    """The time stamp at the start of ``line`` is now, give or take (local time, to the second)."""
    match = re.match(rf"^{TS}", line)
    assert match, line
    shown = datetime.strptime(match.group(0), "[%Y-%m-%d %H:%M:%S]")
    assert abs((datetime.now() - shown).total_seconds()) < 60, line


def room_of_three(procs: Processes, broker: Broker) -> tuple[Client, Client, Client]:
    """alice, bob and carol, joined in that order; everyone has seen everyone join."""
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))
    carol = procs.join("carol", broker)
    alice.expect(joined("carol"))
    bob.expect(joined("carol"))
    return alice, bob, carol


# --------------------------------------------------------------------------- chatting


@pytest.mark.timeout(20)
def test_three_clients_chat_and_nobody_sees_their_own_lines(procs: Processes, broker: Broker) -> None:
    alice, bob, carol = room_of_three(procs, broker)

    alice.send("hello everyone")
    for reader in (bob, carol):
        line = reader.expect(said("alice", "hello everyone")).group(0)
        assert_recent(line)
    bob.send("hi alice")
    carol.send("//slashes are fine when doubled")  # "//" sends a line that starts with "/"
    # Two senders at once: each reader gets both lines, in the broker's order (not necessarily ours).
    alice.expect_all(said("bob", "hi alice"), said("carol", "/slashes are fine when doubled"))
    carol.expect(said("bob", "hi alice"))
    bob.expect(said("carol", "/slashes are fine when doubled"))

    # Each sender saw the later lines of the others, but never its own.
    assert alice.matching(r"alice: ") == []
    assert bob.matching(r"bob: ") == []
    assert carol.matching(r"carol: ") == []
    # Everyone saw its own join, once, as the others saw it (seed parity).
    for client in (alice, bob, carol):
        assert len(client.matching(joined(client.name))) == 1


@pytest.mark.timeout(20)
def test_everyone_sees_joins_and_leaves_in_the_exact_wording(procs: Processes, broker: Broker) -> None:
    alice, bob, carol = room_of_three(procs, broker)  # which waits for the exact join lines

    bob.close_stdin()
    bob.assert_exit(EXIT_OK)
    for reader in (alice, carol):
        assert_recent(reader.expect(left("bob")).group(0))
    carol.send("/quit")
    carol.assert_exit(EXIT_OK)
    alice.expect(left("carol"))
    assert alice.matching(r"timed out") == []
    alice.assert_stdout(joined("alice"), joined("bob"), joined("carol"), left("bob"), left("carol"))
    bob.assert_stdout(joined("bob"), joined("carol"))  # and not its own leave: it was leaving


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["end of input", "/quit", "SIGTERM"])
def test_leaving_is_clean_with_exit_code_0(procs: Processes, broker: Broker, how: str) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))

    if how == "end of input":
        bob.close_stdin()
    elif how == "/quit":
        bob.send("/quit")
    else:
        bob.signal(signal.SIGTERM)
    bob.assert_exit(EXIT_OK)
    alice.expect(left("bob"))  # anchored at "chat.": no "(timed out)"
    assert bob.matching(r"^client: ", err=True) == []  # nothing went wrong, so no last words

    alice.send("/who")
    alice.expect(online("alice"))


@pytest.mark.timeout(20)
def test_a_script_that_says_one_line_and_ends_is_heard(procs: Processes, broker: Broker) -> None:
    # printf 'bot\nparting words\n' | python client.py: end of input comes before the WELCOME does.
    alice = procs.join("alice", broker)
    bot = procs.client(None, broker.port)
    bot.send("bot")
    bot.send("parting words")
    bot.close_stdin()
    bot.assert_exit(EXIT_OK)
    alice.expect(joined("bot"))
    alice.expect(said("bot", "parting words"))
    alice.expect(left("bot"))


@pytest.mark.timeout(20)
def test_a_killed_client_is_announced_as_timed_out(procs: Processes) -> None:
    broker = procs.broker(1.5)
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))

    bob.kill()
    killed = time.monotonic()
    alice.expect(timed_out("bob"), timeout=8)
    # The session timeout, plus the broker's expiry check, plus slack for a loaded machine.
    assert time.monotonic() - killed < 5.0

    alice.send("/who")
    alice.expect(online("alice"))


# --------------------------------------------------------------------------- commands


@pytest.mark.timeout(20)
def test_who_and_whosonline_list_everyone_online(procs: Processes, broker: Broker) -> None:
    alice, bob, carol = room_of_three(procs, broker)
    dave = procs.join("Dave", broker)
    carol.expect(joined("Dave"))

    carol.send("/who")
    assert_recent(carol.expect(online("alice", "bob", "carol", "Dave")).group(0))  # sorted case-insensitively
    bob.send("/whosonline")
    bob.expect(online("alice", "bob", "carol", "Dave"))
    bob.close_stdin()
    bob.assert_exit(EXIT_OK)
    carol.expect(left("bob"))
    carol.send("/whosonline")
    carol.expect(online("alice", "carol", "Dave"))
    # The answer goes to the one who asked.
    for client in (alice, dave):
        assert client.matching(r"online \(") == []


@pytest.mark.timeout(20)
def test_private_message_reaches_only_its_target(procs: Processes, broker: Broker) -> None:
    alice, bob, carol = room_of_three(procs, broker)

    alice.send("/pm bob meet me at the usual place")
    assert_recent(bob.expect(private("alice", "meet me at the usual place")).group(0))
    bob.send("/msg ALICE on my way")  # the alias, and names are case-insensitive
    alice.expect(private("bob", "on my way"))
    alice.send("/pm nobody hello?")
    alice.expect_err(r"^\*\*\* nobody called nobody is online or has been here$")

    # Barrier: a public line after the private ones; carol gets it, so she would have the others by now.
    alice.send("public again")
    carol.expect(said("alice", "public again"))
    bob.expect(said("alice", "public again"))
    assert len(bob.matching(r"usual place")) == 1
    for client in (alice, carol):
        assert client.matching(r"usual place") == [] and client.matching(r"usual place", err=True) == []
    assert carol.matching(r"on my way|hello\?") == []
    assert bob.matching(r"on my way") == []  # not echoed to its sender either


@pytest.mark.timeout(20)
def test_me_is_shown_as_an_action(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))

    alice.send("/me waves at everyone")
    assert_recent(bob.expect(acted("alice", "waves at everyone")).group(0))
    alice.send("/me")
    alice.expect_err(r"^\*\*\* usage: /me ACTION$")
    bob.send("barrier")
    alice.expect(said("bob", "barrier"))
    assert alice.matching(r"waves") == []


@pytest.mark.timeout(20)
def test_help_lists_the_commands(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    alice.send("/help")
    alice.expect_err(r"^\*\*\* commands:$")
    for command in ("/who, /whosonline", "/pm NAME TEXT", "/me ACTION", "/help", "/quit"):
        alice.expect_err(re.escape(command))
    alice.send("/who")
    alice.expect(online("alice"))  # barrier: help was done by then
    alice.assert_stdout(joined("alice"), online("alice"))  # help is the client's own text: not on stdout


@pytest.mark.timeout(20)
def test_mistakes_are_reported_to_the_sender_only(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))

    alice.send("/dance wildly")
    alice.expect_err(r"^\*\*\* unknown command /dance; type /help for the list$")
    alice.send("/pm bob")
    alice.expect_err(r"^\*\*\* usage: /pm NAME TEXT$")

    alice.send("still here")
    bob.expect(said("alice", "still here"))  # barrier, and alice is still in the chat
    assert bob.matching(r"dance") == []
    assert bob.matching(r"dance|unknown|usage", err=True) == []
    alice.assert_stdout(joined("alice"), joined("bob"))


@pytest.mark.timeout(20)
def test_a_line_over_the_brokers_text_limit_arrives_as_several_broken_between_words(procs: Processes) -> None:
    broker = procs.broker(5.0, "--max-text", "20")
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))
    alice.send("twenty characters is not a lot of room")  # broken between words (2000 is done alike)
    alice.send("y" * 45)  # one word over the limit: cut, nothing lost
    for piece in ("twenty characters is", "not a lot of room", "y" * 20, "y" * 20, "y" * 5):
        bob.expect(said("alice", piece))
    alice.send("still here")
    bob.expect(said("alice", "still here"))
    assert alice.matching(r"at most", err=True) == []


# --------------------------------------------------------------------------- names


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", ["alice", "ALICE"])
def test_a_taken_name_is_refused_with_exit_code_3(procs: Processes, broker: Broker, name: str) -> None:
    alice = procs.join("alice", broker)

    impostor = procs.client(name, broker.port)
    impostor.assert_exit(EXIT_REFUSED)
    assert impostor.matching(r"^client: the name alice is taken", err=True)
    impostor.assert_stdout()

    procs.join("bob", broker)
    alice.expect(joined("bob"))  # barrier: the refused client was never announced
    alice.assert_stdout(joined("alice"), joined("bob"))


@pytest.mark.timeout(20)
def test_a_name_with_a_space_on_the_first_input_line_is_refused_with_exit_code_3(
    procs: Processes, broker: Broker
) -> None:
    client = procs.client(None, broker.port)
    client.send("two words")
    started = time.monotonic()
    client.assert_exit(EXIT_REFUSED, timeout=8)
    assert time.monotonic() - started < 3.0  # refused at once, not after the connect timeout
    assert client.matching(r"^client: .*space", err=True), client.context()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", [("--host", HOST, "--port", "1"), ("--listen", "5")])
def test_a_bad_name_flag_is_a_usage_error_before_any_connecting_or_listening(
    procs: Processes, where: tuple[str, ...]
) -> None:
    """Exit 2 at once, naming the flag: not 3 after the LAN has been listened to (5 s here)."""
    started = time.monotonic()
    process = procs.process("client.py", *where, "--name", "two words")
    process.assert_exit(EXIT_USAGE)
    assert time.monotonic() - started < 4.0
    assert process.matching(r"^client.py: error: argument --name: a name cannot contain spaces$", err=True)


@pytest.mark.timeout(20)
def test_the_name_can_come_from_the_first_input_line(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)

    dora = procs.client(None, broker.port, "--history", "0")
    dora.expect_err(r"^\*\*\* reading the name from the first input line$")
    dora.send("dora")
    dora.expect_err(JOINED_NOTICE.format("dora"))
    alice.expect(joined("dora"))
    dora.send("dora here")
    alice.expect(said("dora", "dora here"))


@pytest.mark.timeout(20)
def test_no_name_and_no_input_exits_with_code_3(procs: Processes, broker: Broker) -> None:
    client = procs.client(None, broker.port)
    client.close_stdin()
    client.assert_exit(EXIT_REFUSED)
    assert client.matching(r"^client: no name given$", err=True)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "script, args",
    [
        ("client.py", ("--port", "not-a-port")),
        ("client.py", ("--port", "70000")),
        ("client.py", ("--history", "-1")),
        ("client.py", ("--no-such-flag",)),
        ("client.py", ("--port", "0")),
        ("client.py", ("--room", "#no.dots")),
        ("broker.py", ("--timeout", "0")),
        ("broker.py", ("--pub-port", "-1")),
        ("broker.py", ("--rate", "-1")),
        ("broker.py", ("--rate", "nan")),
        ("broker.py", ("--rate", "inf")),
        ("broker.py", ("--burst", "0")),
        ("broker.py", ("--max-sessions", "0")),
    ],
)
def test_a_bad_command_line_exits_with_code_2(procs: Processes, script: str, args: tuple[str, ...]) -> None:
    process = procs.process(script, *args)
    process.assert_exit(EXIT_USAGE)
    assert process.matching(r"^usage: ", err=True), process.context()
    if args[0] != "--no-such-flag":
        flag = re.escape(args[0])
        assert process.matching(rf"^{script}: error: argument {flag}: ", err=True), process.context()
    assert process.stdout() == []


def test_the_default_session_timeout_survives_a_wifi_lan() -> None:
    """A laptop on Wi-Fi goes quiet for seconds (roaming, power saving): 5 s dropped it; 15-30 s does not."""
    from chat.cli import broker_parser

    assert 15 <= broker_parser().parse_args([]).timeout <= 30


@pytest.mark.timeout(20)
def test_a_room_given_without_its_hash_is_that_room(procs: Processes, broker: Broker) -> None:
    dev = procs.join("dora", broker, "--room", "dev")
    other = procs.join("erin", broker, "--room", "#dev")
    dev.expect(joined("erin"))
    other.send("in dev")
    dev.expect(said("erin", "in dev"))


# --------------------------------------------------------------------------- the broker comes and goes


@pytest.mark.timeout(20)
def test_nothing_listening_exits_with_code_1(procs: Processes) -> None:
    # A bound TCP socket that does not listen: connections to it are refused, and no other test or
    # process can take the port while we hold it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        port = holder.getsockname()[1]
        client = procs.client("alice", port)
        started = time.monotonic()
        client.assert_exit(EXIT_UNREACHABLE, timeout=10)
        assert time.monotonic() - started < 8.0
    assert client.matching(r"^client: could not reach the broker", err=True), client.context()
    client.assert_stdout()


@pytest.mark.timeout(20)
def test_broker_sigterm_tells_the_clients_and_exits_0(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))

    assert broker.stop() == 0, broker.context()
    broker.expect(r"^broker: stopped$")
    assert broker.stderr() == []
    for client in (alice, bob):
        client.expect_err(r"^\*\*\* lost the broker: the broker is shutting down")

    # The clients wait for a broker to come back, and then carry on.
    procs.restart(broker)
    for client in (alice, bob):
        client.expect_err(r"^\*\*\* back in: reconnected to the broker$")
    alice.send("hello again")
    bob.expect(said("alice", "hello again"))


@pytest.mark.timeout(20)
def test_leaving_while_the_broker_is_away_with_nothing_to_send_is_immediate(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    assert broker.stop() == 0, broker.context()
    alice.expect_err(r"^\*\*\* lost the broker")

    alice.close_stdin()
    started = time.monotonic()
    alice.assert_exit(EXIT_OK)
    assert time.monotonic() - started < 3.0
    assert alice.matching(r"^client: ", err=True) == []  # nothing was lost, so nothing to report


@pytest.mark.timeout(30)
def test_clients_get_back_in_after_the_broker_is_killed_and_restarted(procs: Processes) -> None:
    broker = procs.broker(1.5)
    alice = procs.join("alice", broker, history=None)
    bob = procs.join("bob", broker, history=None)
    alice.expect(joined("bob"))

    broker.kill()
    for client in (alice, bob):
        client.expect_err(r"^\*\*\* lost the broker: the broker stopped answering")
    alice.send("typed while the broker was away")

    procs.restart(broker)
    for client in (alice, bob):
        client.expect_err(r"^\*\*\* back in: reconnected to the broker$")
    bob.expect(said("alice", "typed while the broker was away"))
    alice.send("after the restart")
    bob.expect(said("alice", "after the restart"))
    bob.send("welcome back")
    alice.expect(said("bob", "welcome back"))
    assert len(bob.matching(said("alice", "typed while the broker was away"))) == 1, procs.describe()


@pytest.mark.timeout(30)
def test_a_quick_broker_restart_is_noticed_and_survived(procs: Processes, broker: Broker) -> None:
    # Restarted before the clients miss it: their next request meets a broker that does not know them.
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))

    broker.kill()
    procs.restart(broker)
    for client in (alice, bob):
        client.expect_err(r"^\*\*\* lost the broker")
        client.expect_err(r"^\*\*\* back in: reconnected to the broker$")
    alice.send("still talking")
    bob.expect(said("alice", "still talking"))


@pytest.mark.timeout(30)
def test_history_is_kept_in_the_db_across_a_restart(procs: Processes, tmp_path: Path) -> None:
    broker = procs.broker(5.0, "--db", str(tmp_path / "chat.db"))
    alice = procs.join("alice", broker)
    olga = procs.join("olga", broker)
    alice.send("remember this")
    olga.expect(said("alice", "remember this"))
    for client in (alice, olga):
        client.close_stdin()
        client.assert_exit(EXIT_OK)
    assert broker.stop() == 0, broker.context()

    restarted = procs.restart(broker)
    bob = procs.join("bob", restarted, history=5)
    bob.expect(said("alice", "remember this"), timeout=5)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_after_a_broker_restart_clients_resume_quietly_and_the_missing_leave_once(
    procs: Processes, tmp_path: Path, how: str
) -> None:
    """Issue 19: with its history file, a restarted broker lets the clients that come back with their
    token resume (nobody sees them join again), and announces once those who do not come back."""
    broker = procs.broker(2.0, "--db", str(tmp_path / "chat.db"))
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    carol = procs.join("carol", broker)
    alice.expect_all(joined("bob"), joined("carol"))
    bob.expect(joined("carol"))

    if how == "sigterm":
        assert broker.stop() == 0, broker.context()
    else:
        broker.kill()
    carol.kill()  # she will not come back
    restarted = procs.restart(broker)
    for client in (alice, bob):
        client.expect_err(r"^\*\*\* back in: reconnected to the broker$")
    for client in (alice, bob):  # within two session timeouts of the restart
        client.expect(rf"^{TS} carol has left the chat\. \(broker restarted\)$", timeout=10)
    bob.send("still here")
    alice.expect(said("bob", "still here"))
    alice.send("/who")
    alice.expect(online("alice", "bob"))
    restarted.stop()
    assert len(alice.matching(joined("bob"))) == 1, procs.describe()  # only the first time
    assert bob.matching(joined("alice")) == [], procs.describe()  # she joined before him, and only then
    assert len(alice.matching("carol has left")) == 1 and len(bob.matching("carol has left")) == 1


# --------------------------------------------------------------------------- ordering and history


@pytest.mark.timeout(20)
def test_a_line_sent_on_joining_reaches_the_client_that_joined_just_before(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    bob = procs.client("bob", broker.port, "--history", "0")
    bob.send("first words")  # written before bob has joined: sent the moment his WELCOME arrives
    alice.expect(joined("bob"))
    alice.expect(said("bob", "first words"))


@pytest.mark.timeout(20)
def test_a_new_subscriber_gets_a_line_sent_the_moment_it_joined(procs: Processes) -> None:
    # The slow joiner: bob speaks as soon as alice has her WELCOME, perhaps before her SUB is connected.
    # If it missed the line, her PONGs tell her (a short timeout makes them frequent).
    broker = procs.broker(1.5)
    bob = procs.join("bob", broker)
    alice = procs.client("alice", broker.port, "--history", "0")
    alice.expect_err(JOINED_NOTICE.format("alice"))
    bob.send("quick hello")
    alice.expect(said("bob", "quick hello"))
    bob.send("and another")
    alice.expect(said("bob", "and another"))
    assert len(alice.matching(said("bob", "quick hello"))) == 1


@pytest.mark.timeout(20)
def test_a_late_joiner_sees_recent_history_exactly_once(procs: Processes) -> None:
    # "live" may be published before a newcomer's SUB is connected: a short timeout makes the PONGs that
    # reveal such a gap frequent, so the test does not wait long for the recovery.
    broker = procs.broker(2.0)
    olga = procs.join("olga", broker)
    alice = procs.join("alice", broker)
    olga.expect(joined("alice"))
    for text in ("one", "two", "three"):
        alice.send(text)
    olga.expect(said("alice", "three"))  # everything is published

    bob = procs.join("bob", broker, history=2)
    bob.expect(said("alice", "two"))
    bob.expect(said("alice", "three"))
    carol = procs.join("carol", broker, history=0)
    dave = procs.join("dave", broker, history=None)  # the default, 20: everything so far
    alice.send("live")
    for client in (bob, carol, dave):
        client.expect(said("alice", "live"))

    # The history first, then one's own join, as the others saw it, then what follows.
    bob.assert_stdout(
        said("alice", "two"), said("alice", "three"), joined("bob"), joined("carol"), joined("dave"),
        said("alice", "live"),
    )
    carol.assert_stdout(joined("carol"), joined("dave"), said("alice", "live"))
    dave.assert_stdout(
        joined("olga"), joined("alice"), said("alice", "one"), said("alice", "two"), said("alice", "three"),
        joined("bob"), joined("carol"), joined("dave"), said("alice", "live"),
    )


@pytest.mark.timeout(20)
def test_history_command_shows_older_lines(procs: Processes, broker: Broker) -> None:
    olga = procs.join("olga", broker)
    alice = procs.join("alice", broker)
    for text in ("one", "two", "three"):
        alice.send(text)
    olga.expect(said("alice", "three"))

    bob = procs.join("bob", broker, history=1)
    bob.expect(said("alice", "three"))
    bob.send("/history 2")
    bob.expect(said("alice", "one"))
    bob.expect(said("alice", "two"))
    bob.send("/history")
    bob.expect(joined("olga"))
    bob.expect(joined("alice"))
    bob.send("/history")
    bob.expect_err(r"^\*\*\* there is nothing older in #general$")
    bob.assert_stdout(
        said("alice", "three"), joined("bob"), said("alice", "one"), said("alice", "two"), joined("olga"),
        joined("alice"),
    )


@pytest.mark.timeout(20)
def test_escape_sequences_arrive_neutralised(procs: Processes, broker: Broker) -> None:
    alice, bob, carol = room_of_three(procs, broker)
    nasty = "\x1b[2J\x1b[31mred\x1b[0m \x1b]0;owned\x07 \x9b1m"

    alice.send(f"look {nasty}")
    alice.send(f"/me {nasty}")
    alice.send(f"/pm carol {nasty}")
    alice.send(f"/{nasty}")  # an unknown command, echoed back in the error
    alice.send("done")
    shown = "^[[2J^[[31mred^[[0m ^[]0;owned^G \ufffd1m"
    bob.expect(said("alice", f"look {shown}"))
    bob.expect(acted("alice", shown))
    bob.expect(said("alice", "done"))
    carol.expect_all(
        said("alice", f"look {shown}"), acted("alice", shown), private("alice", shown), said("alice", "done")
    )
    alice.expect_err(r"^\*\*\* unknown command /\^\[\[2j")  # (commands are not case-sensitive)

    for client in (alice, bob, carol):
        for stream in (client.out, client.err):
            assert b"\x1b" not in stream.raw and b"\x07" not in stream.raw, (client.label, bytes(stream.raw))
            assert "\x9b" not in stream.raw.decode(), (client.label, bytes(stream.raw))


# --------------------------------------------------------------------------- a real client, a scripted broker


class ScriptedBroker:
    """The broker's part played by the test, frame by frame, to set up what a real broker seldom does.

    An XPUB stands in for the PUB so that the test knows when the client's subscription has arrived.
    """

    def __init__(self, ctx: zmq.Context) -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.xpub = ctx.socket(zmq.XPUB)
        for sock in (self.router, self.xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(f"tcp://{HOST}:*")
        self.port = int(self.router.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        self.pub_port = int(self.xpub.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.tag = b"chat/2"  # the version it speaks

    def close(self) -> None:
        self.router.close(linger=0)
        self.xpub.close(linger=0)

    def next(self, kind: str, timeout: float = 10.0) -> tuple[bytes, dict[str, Any]]:
        """The next request of type ``kind`` (others, such as PINGs, are noted and passed over)."""
        deadline = time.monotonic() + timeout
        while self.router.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            identity, tag, got, body = self.router.recv_multipart()
            assert tag == b"chat/2"
            self.seen.append((got.decode(), json.loads(body)))
            if got.decode() == kind:
                return identity, self.seen[-1][1]
            if time.monotonic() >= deadline:
                break
        pytest.fail(f"no {kind} from the client within {timeout:g} s; got {self.seen}")

    def reply(self, identity: bytes, kind: str, body: dict[str, Any]) -> None:
        self.router.send_multipart([identity, self.tag, kind.encode(), json.dumps(body).encode()])

    def welcome(self, identity: bytes, name: str, last: int, history_id: str) -> None:
        self.reply(identity, "WELCOME", {
            "name": name, "pub_port": self.pub_port, "rooms": {"#general": last},
            "heartbeat_ms": 200, "timeout_ms": 60_000,  # the client never gives up on us by itself
            "history_id": history_id,
        })

    def subscribed(self, timeout: float = 10.0) -> None:
        if not self.xpub.poll(int(timeout * 1000)):
            pytest.fail("the client never subscribed")
        assert self.xpub.recv() == b"\x01#general\x00"

    @staticmethod
    def event(seq: int, kind: str, name: str, text: str = "") -> dict[str, Any]:
        return {"seq": seq, "ts": int(time.time() * 1000), "kind": kind, "name": name, "text": text}

    def publish(self, *events: dict[str, Any]) -> None:
        self.xpub.send_multipart([b"#general\x00", self.tag, b"EVENTS", json.dumps({"events": events}).encode()])


@pytest.fixture
def scripted() -> Iterator[ScriptedBroker]:
    ctx = zmq.Context()
    broker = ScriptedBroker(ctx)
    try:
        yield broker
    finally:
        broker.close()
        ctx.destroy(linger=0)


@pytest.mark.timeout(20)
def test_events_of_a_restarted_broker_are_shown_once(procs: Processes, scripted: ScriptedBroker) -> None:
    """A broker that comes back with a new history numbers its events from 1 again.

    While the client is still trying to get back in, its SUB already receives the new broker's events;
    their numbers mean nothing until the WELCOME names the new history. Shown then and again after the
    WELCOME, they would appear twice.
    """
    bob = procs.client("bob", scripted.port)  # --history 20, the default
    identity, join = scripted.next("JOIN")
    scripted.welcome(identity, "bob", last=0, history_id="first")
    scripted.subscribed()
    scripted.publish(scripted.event(1, "join", "bob"))
    scripted.publish(scripted.event(2, "msg", "alice", "before the restart"))
    bob.expect(said("alice", "before the restart"))

    # The broker restarts: it says goodbye, and the next broker does not answer at once.
    scripted.reply(identity, "BYE", {"reason": "the broker is shutting down"})
    bob.expect_err(r"^\*\*\* lost the broker")
    scripted.next("JOIN")
    new_history = [
        scripted.event(1, "join", "alice"),
        *[scripted.event(seq, "msg", "alice", f"new line {seq}") for seq in range(2, 6)],
    ]
    for event in new_history:
        scripted.publish(event)
    identity, again = scripted.next("JOIN")  # the client's next attempt, a second later: it has seen them
    assert again["token"] == join["token"]
    scripted.welcome(identity, "bob", last=5, history_id="second")
    _, fetch = scripted.next("FETCH")
    assert (fetch["first"], fetch["last"]) == (1, 5), fetch
    scripted.reply(identity, "HISTORY", {"room": "#general", "events": new_history})
    scripted.publish(scripted.event(6, "join", "bob"))
    scripted.publish(scripted.event(7, "msg", "alice", "after"))
    bob.expect(said("alice", "after"))

    bob.assert_stdout(
        joined("bob"),
        said("alice", "before the restart"),
        joined("alice"),
        *[said("alice", f"new line {seq}") for seq in range(2, 6)],
        joined("bob"),  # a new session in the new broker: bob sees his join as alice does
        said("alice", "after"),
    )


@pytest.mark.timeout(20)
def test_a_batch_of_events_is_shown_line_by_line_in_order(procs: Processes, scripted: ScriptedBroker) -> None:
    """Under load the broker packs several events in one published message (PROTOCOL.md, version 2)."""
    bob = procs.client("bob", scripted.port, "--history", "0")
    identity, _ = scripted.next("JOIN")
    scripted.welcome(identity, "bob", last=0, history_id="h")
    scripted.subscribed()
    scripted.publish(scripted.event(1, "join", "bob"))
    scripted.publish(*[scripted.event(seq, "msg", "alice", f"line {seq}") for seq in range(2, 7)])
    scripted.publish(scripted.event(7, "msg", "alice", "alone"))
    bob.expect(said("alice", "alone"))
    bob.assert_stdout(joined("bob"), *[said("alice", f"line {seq}") for seq in range(2, 7)], said("alice", "alone"))


@pytest.mark.timeout(20)
def test_a_broker_of_another_protocol_version_is_refused_with_exit_code_3(
    procs: Processes, scripted: ScriptedBroker
) -> None:
    """A version 1 broker answers our JOIN with bad_version in its own version: say so, do not hang."""
    scripted.tag = b"chat/1"
    bob = procs.client("bob", scripted.port)
    identity, _ = scripted.next("JOIN")
    started = time.monotonic()
    scripted.reply(identity, "ERROR", {"code": "bad_version", "ref": "",
                                       "reason": "protocol version '2' is not supported; this peer speaks 1"})
    bob.assert_exit(EXIT_REFUSED, timeout=8)
    assert time.monotonic() - started < 3.0  # at once, not after the connect timeout
    assert bob.matching(r"^client: the broker speaks another protocol version", err=True), bob.context()
    bob.assert_stdout()


@pytest.mark.timeout(20)
def test_an_old_client_is_told_in_its_own_version_why_it_is_refused(broker: Broker) -> None:
    """What a version 1 client receives from this broker: an ERROR it can decode, naming both versions."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{HOST}:{broker.port}")
        sock.send_multipart([b"chat/1", b"JOIN", json.dumps({"name": "old"}).encode()])
        assert sock.poll(5000), "no answer within 5 s"
        tag, kind, body = sock.recv_multipart()
        assert (tag, kind) == (b"chat/1", b"ERROR")
        error = json.loads(body)
        assert (error["code"], error["ref"]) == ("bad_version", "JOIN"), error
        assert "'1' is not supported: this side speaks version 2" in error["reason"], error
    finally:
        sock.close()
        ctx.term()
