"""Rooms, with real processes, and what a client's SUB socket receives (libzmq filters by topic)."""

from __future__ import annotations

import json
import threading
import time
from typing import Iterator

import pytest
import zmq

from chat.client import events as ev
from chat.client.core import ClientCore
from chat.client.net import Connection
from conftest import HOST, TS, Broker, Processes, said

pytestmark = pytest.mark.timeout(30)


def in_room(room: str, name: str, text: str) -> str:
    return rf"^{TS} {room} {name}: {text}$"


@pytest.fixture
def trio(procs: Processes, broker: Broker) -> Iterator[tuple]:
    """alice in #general and #dev, bob in #dev only, carol in #general only."""
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker, "--room", "#dev")
    carol = procs.join("carol", broker)
    alice.send("/join #Dev")  # names are case-insensitive
    alice.expect_err(r"^\*\*\* joined #dev; now talking there$")
    bob.expect(r"^.* alice has joined #dev\.$")
    yield alice, bob, carol


def test_each_client_sees_exactly_the_lines_of_its_rooms(trio: tuple) -> None:
    alice, bob, carol = trio
    alice.send("for dev only")
    bob.send("dev answer")
    alice.send("/switch #general")
    alice.expect_err(r"^\*\*\* now talking in #general$")
    alice.send("for general only")
    carol.send("general answer")

    bob.expect(said("alice", "for dev only"))
    carol.expect(said("alice", "for general only"))
    # alice is in two rooms: lines name theirs. Two rooms' lines come in no fixed order between them.
    alice.expect_all(in_room("#dev", "bob", "dev answer"), in_room("#general", "carol", "general answer"))
    bob.send("/quit")
    bob.assert_exit(0)
    carol.send("/quit")
    carol.assert_exit(0)
    assert bob.matching("general") == []
    assert carol.matching(r"dev|has joined #dev") == []


def test_quitting_leaves_every_room_with_one_notice_each(trio: tuple) -> None:
    alice, bob, carol = trio
    alice.send("/quit")
    alice.assert_exit(0)
    bob.expect(r"^.* alice has left the chat\.$")
    carol.expect(r"^.* alice has left the chat\.$")
    bob.send("/who")
    bob.expect(r"online \(2\): bob, carol$")
    assert len(bob.matching("alice has left")) == 1 and len(carol.matching("alice has left")) == 1


def test_rosters_topics_and_the_room_list(trio: tuple) -> None:
    alice, bob, carol = trio
    alice.send("/topic #dev release on friday")
    bob.expect(r"^.* alice set the topic of #dev: release on friday$")
    carol.send("/who #dev")
    carol.expect(r"online in #dev \(2\): alice, bob$")
    carol.send("/who")
    carol.expect(r"online \(3\): alice, bob, carol$")
    carol.send("/rooms")
    carol.expect(r"rooms \(2\): #dev \(2\) - release on friday, #general \(2\)$")
    bob.send("/topic")
    bob.expect_err(r"^\*\*\* topic of #dev: release on friday$")
    bob.send("/leave")
    bob.expect_err(r"^\*\*\* left #dev; you are in no room now$")
    alice.expect(r"^.* bob has left #dev\.$")
    bob.send("lost words")
    bob.expect_err(r"you are in no room: /join one first")


@pytest.mark.parametrize("bad", ["dev", "#", "#has space", "#" + "x" * 33, "#dots.not.allowed"])
def test_invalid_room_names_are_refused_with_a_reason(procs: Processes, broker: Broker, bad: str) -> None:
    alice = procs.join("alice", broker)
    alice.send(f"/join {bad}")
    alice.expect_err(r"usage: /join #room \(a room name ")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(broker.endpoint)
    try:
        sock.send_multipart([b"chat/2", b"JOIN", json.dumps({"name": "raw", "rooms": [bad]}).encode()])
        assert sock.poll(5000)
        _, kind, body = sock.recv_multipart()
        assert kind == b"ERROR" and json.loads(body)["code"] == "room_invalid"
    finally:
        sock.close()
        ctx.term()
    if bad.startswith("#"):  # but --room dev is #dev (tests/test_e2e.py)
        bad_start = procs.client("dora", broker.port, "--room", bad)
        bad_start.assert_exit(2)  # a usage error on the command line


def test_a_room_keeps_its_own_history(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker, "--room", "#dev")
    alice.send("dev one")
    alice.send("dev two")
    carol = procs.join("carol", broker)
    carol.send("general one")
    alice.send("/rooms")
    alice.expect(r"rooms \(2\)")
    late = procs.join("late", broker, "--room", "#dev", history=5)
    late.expect(said("alice", "dev two"))
    late.send("/quit")
    late.assert_exit(0)
    assert late.matching("general") == []
    assert len(late.matching("dev one")) == 1


def test_a_room_you_are_not_in_costs_no_traffic_at_your_socket(procs: Processes, broker: Broker) -> None:
    """The real client code (ClientCore + Connection) in this process: every frame its SUB receives
    is recorded, so the test sees what libzmq delivered, not only what was printed."""
    core = ClientCore("dave", interactive=False, history_lines=0)
    topics: list[bytes] = []
    shown: list[ev.Show] = []
    arrived = threading.Event()
    on_published = core.on_published

    def recording(frames: list[bytes], now: float) -> list[ev.Action]:
        topics.append(frames[0])
        return on_published(frames, now)

    core.on_published = recording  # type: ignore[method-assign]

    def show(item: ev.Show) -> None:
        shown.append(item)
        if isinstance(item, ev.Public) and item.event.text == "general after the flood":
            arrived.set()

    conn = Connection(core, HOST, broker.port, show, ctx=zmq.Context())
    runner = threading.Thread(target=conn.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not any(isinstance(s, ev.Status) and s.state == "connected" for s in list(shown)):
            assert time.monotonic() < deadline, "dave never joined"
            arrived.wait(0.05)
        alice = procs.join("alice", broker, "--room", "#dev")
        for n in range(15):
            alice.send(f"dev line {n}")
        alice.send("/join #general")
        alice.expect_err(r"joined #general")
        alice.send("general after the flood")
        assert arrived.wait(10), "dave never got the #general line"
    finally:
        conn.submit_eof()
        runner.join(10)
    assert topics, "dave's SUB received nothing at all"
    assert b"#dev\x00" not in topics
    assert set(topics) == {b"#general\x00"}


@pytest.mark.parametrize("already_in_dev", [True, False], ids=["in-dev", "not-in-dev"])
def test_join_leave_and_a_line_in_one_write_take_effect_in_the_order_typed(
    procs: Processes, broker: Broker, already_in_dev: bool
) -> None:
    """Issue 19: ``/join #dev``, ``/leave #dev``, a line, piped in one write. The line must not be sent to
    #dev before the PART is answered (it was refused, and lost); nor may ``/leave`` be refused locally
    before the ENTER is answered (the user stayed in #dev). Both ways it ends up in #general, once."""
    carol = procs.join("carol", broker)  # #general only
    bob = procs.join("bob", broker, "--room", "#dev")  # #dev only
    alice = procs.join("alice", broker)
    if already_in_dev:
        alice.send("/join #dev")
        alice.expect_err(r"^\*\*\* joined #dev; now talking there$")
        bob.expect(r"^.* alice has joined #dev\.$")
    alice.send("/join #dev\n/leave #dev\nright after leave")

    carol.expect(said("alice", "right after leave"))
    alice.expect_err(r"^\*\*\* left #dev; now talking in #general$")
    bob.expect(r"^.* alice has left #dev\.$")
    alice.send("/rooms")
    alice.expect(r"rooms \(2\): #dev \(1\), #general \(2\)$")  # alice is in #general only
    carol.send("/quit")
    carol.assert_exit(0)
    assert len(carol.matching("right after leave")) == 1
    assert alice.matching(r"you are not in", err=True) == [], procs.describe()
    assert bob.matching("right after leave") == []


def test_a_user_in_no_room_is_seen_leaving_where_they_left_last(procs: Processes, broker: Broker) -> None:
    """Issue 19: alice leaves every room, so no room has her, but /who still lists her; when she quits,
    carol (who saw her leave #general) sees her leave the chat, once."""
    carol = procs.join("carol", broker)
    alice = procs.join("alice", broker)
    carol.expect(r"^.* alice has joined the chat\.$")
    alice.send("/leave")
    alice.expect_err(r"^\*\*\* left #general; you are in no room now$")
    carol.expect(r"^.* alice has left #general\.$")
    carol.send("/who")
    carol.expect(r"online \(2\): alice, carol$")
    alice.send("/quit")
    alice.assert_exit(0)
    carol.expect(r"^.* alice has left the chat\.$")
    carol.send("/who")
    carol.expect(r"online \(1\): carol$")
    assert len(carol.matching("alice has left the chat")) == 1
