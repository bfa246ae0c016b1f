"""A join storm: past a few joins a second in a room, the broker sums the rest up in one ``joins`` event."""

from __future__ import annotations

import re
import pytest
import zmq

from chat import protocol as p
from chat.broker.core import SHOWN_JOINS, JOIN_WINDOW, Broker
from chat.ui.format import LineFormatter
from tests.conftest import Processes
from tests.test_broker_core import TIMEOUT, Clock, events, join, replies, send

STORM = 40  # joins in one window, well past SHOWN_JOINS


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core(clock: Clock) -> Broker:
    return Broker(pub_port=5556, clock=clock, session_timeout=TIMEOUT)


def identity(n: int) -> bytes:
    return b"\x00id%05d" % n


def test_joins_at_a_normal_rate_are_each_published(core: Broker, clock: Clock) -> None:
    for n in range(3 * SHOWN_JOINS):
        out = send(core, identity(n), p.Join(f"user{n}"))
        assert [(e.kind, e.name) for e in events(out)] == [(p.KIND_JOIN, f"user{n}")]
        clock.advance(JOIN_WINDOW / SHOWN_JOINS)  # exactly as many joins as the burst per window
    clock.advance(JOIN_WINDOW)
    assert core.release_joins() == []


def test_a_storm_is_published_as_one_joins_event_when_its_window_ends(core: Broker, clock: Clock) -> None:
    shown = []
    for n in range(STORM):
        welcome = join(core, identity(n), f"user{n}")
        assert welcome.name == f"user{n}"  # every joiner is welcomed at once, held or not
        shown += events(core.handle(identity(n), p.encode(p.Ping())))  # nothing else comes out
    assert shown == []
    clock.advance(JOIN_WINDOW / 2)
    assert core.release_joins() == []  # the window has not ended
    clock.advance(JOIN_WINDOW / 2)
    (summary,) = events(core.release_joins())
    assert (summary.kind, summary.name, summary.text) == (p.KIND_JOINS, f"user{SHOWN_JOINS}", str(STORM - SHOWN_JOINS))
    assert summary.seq == SHOWN_JOINS + 1  # numbered like any event: the history and gap refill see it
    assert core.release_joins() == []
    # the next join, in a new window, is a join line again
    out = send(core, identity(STORM), p.Join("late"))
    assert [(e.kind, e.name) for e in events(out)] == [(p.KIND_JOIN, "late")]


def test_a_line_from_a_held_joiner_comes_after_the_summary(core: Broker, clock: Clock) -> None:
    for n in range(SHOWN_JOINS + 3):
        join(core, identity(n), f"user{n}")
    last = identity(SHOWN_JOINS + 2)
    out = send(core, last, p.Say("id-1", "hello"))
    summary, line = events(out)
    assert (summary.kind, summary.text) == (p.KIND_JOINS, "3")
    assert (line.kind, line.text, line.seq) == (p.KIND_MSG, "hello", summary.seq + 1)
    (ack,) = replies(out, last)
    assert isinstance(ack, p.Ack) and ack.seq == line.seq
    clock.advance(JOIN_WINDOW)
    assert core.release_joins() == []  # already out


def test_held_joins_are_published_before_the_broker_stops(core: Broker) -> None:
    for n in range(SHOWN_JOINS + 2):
        join(core, identity(n), f"user{n}")
    (summary,) = events(core.shutdown())
    assert (summary.kind, summary.text) == (p.KIND_JOINS, "2")


def test_a_topic_after_held_joins_is_the_rooms_topic(core: Broker) -> None:
    for n in range(SHOWN_JOINS + 2):
        join(core, identity(n), f"user{n}")
    send(core, identity(0), p.Topic("t-1", p.DEFAULT_ROOM, "storm season"))
    assert core.topics[p.DEFAULT_ROOM] == "storm season"


def test_the_plain_line_of_a_joins_event() -> None:
    fmt = LineFormatter()
    line = fmt.event(p.Event(seq=7, ts=1_764_190_000_000, kind=p.KIND_JOINS, name="alice", text="12"))
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] alice and 11 others have joined the chat\.", line)


def test_a_client_shows_a_storm_in_a_few_lines(procs: Processes, zctx: zmq.Context) -> None:
    broker = procs.broker(20.0, "--max-per-address", "0", "--join-rate", "0")  # one address, many users
    watcher = procs.join("watcher", broker)
    dealers = []
    for n in range(STORM):
        sock = zctx.socket(zmq.DEALER)
        sock.connect(broker.endpoint)
        sock.send_multipart(p.encode(p.Join(f"storm{n}")))
        dealers.append(sock)
    for sock in dealers:  # every joiner is welcomed at once
        assert sock.poll(10_000), "no WELCOME"
        assert isinstance(p.decode_broker(sock.recv_multipart()), p.Welcome)
    # Each join is shown once: on its own line (at most the burst of each window), or summed up.
    single, summed, summaries = 0, 0, 0
    line = re.compile(r"storm\d+ (?:has joined the chat\.|and (\d+) others have joined the chat\.)$")
    while single + summed < STORM:
        match = watcher.expect(line)
        if match[1] is None:
            single += 1
        else:
            summed, summaries = summed + int(match[1]) + 1, summaries + 1
    assert summaries >= 1 and single <= 2 * SHOWN_JOINS, (single, summaries)
    watcher.send("/quit")
    watcher.assert_exit(0)
