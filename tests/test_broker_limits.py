"""The broker core's limits, without sockets: clocks, keys, source addresses, rooms, history budgets."""

from __future__ import annotations

import pytest

from chat import protocol as p
from chat.broker import limits
from chat.broker.core import Broker
from chat.broker.history import MemoryHistory
from test_broker_core import A, B, C, T0, TIMEOUT, Clock, clock, events, join, only_error, replies, send

__all__ = ["clock"]  # the fixture, shared with test_broker_core

HOUR = 3600.0
HOST_1, HOST_2 = "192.0.2.1", "192.0.2.2"  # only strings here: nothing is sent anywhere


def joined(broker: Broker, identity: bytes, name: str, address: str) -> list[p.Message]:
    return replies(broker.handle(identity, p.encode(p.Join(name, "t")), "", address), identity)


# --------------------------------------------------------------------------- clocks


@pytest.mark.parametrize("jump", [HOUR, -HOUR], ids=["wall clock +1 h", "wall clock -1 h"])
def test_a_wall_clock_jump_neither_expires_live_sessions_nor_keeps_silent_ones(jump: float) -> None:
    monotonic, wall = Clock(), Clock()
    broker = Broker(pub_port=5556, clock=monotonic, wall_clock=wall, session_timeout=TIMEOUT)
    join(broker, A, "alice")
    join(broker, B, "bob")
    wall.advance(jump)
    monotonic.advance(TIMEOUT / 2)
    send(broker, A, p.Ping())
    assert events(broker.expire_idle()) == []  # +1 h: nobody is silent for an hour
    monotonic.advance(TIMEOUT * 0.75)  # bob has been silent for longer than the timeout; alice has not
    gone = events(broker.expire_idle())
    assert [(e.name, e.text) for e in gone] == [("bob", p.LEFT_TIMEOUT)]
    assert gone[0].ts == int((T0 + jump) * 1000)  # time stamps follow the wall clock, jump and all


def test_a_wall_clock_jump_does_not_refill_the_flood_control() -> None:
    monotonic, wall = Clock(), Clock()
    broker = Broker(pub_port=5556, clock=monotonic, wall_clock=wall, rate=1, burst=2)
    join(broker, A, "alice")
    for n in range(2):
        send(broker, A, p.Say(f"a{n}", "hi"))
    wall.advance(HOUR)
    assert only_error(send(broker, A, p.Say("a2", "hi")), A).code == p.RATE_LIMITED


# --------------------------------------------------------------------------- keys (--secure)


def test_a_request_with_another_key_never_reaches_the_session_of_its_routing_id(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, session_timeout=TIMEOUT)
    welcome = broker.handle(A, p.encode(p.Join("alice", "t")), "alice-key")
    assert isinstance(replies(welcome, A)[0], p.Welcome)
    clock.advance(TIMEOUT - 1)
    # Another key on alice's routing id (set with ZMQ_ROUTING_ID): refused, and it keeps nothing alive.
    out = broker.handle(A, p.encode(p.Say("x", "I am alice")), "mallory-key")
    assert only_error(out, A).code == p.KEY_MISMATCH
    assert only_error(broker.handle(A, p.encode(p.Ping()), "mallory-key"), A).code == p.KEY_MISMATCH
    clock.advance(2)
    assert [e.name for e in events(broker.expire_idle())] == ["alice"]
    # Alice's own key, on the same routing id, is alice.
    again = broker.handle(A, p.encode(p.Join("alice", "t")), "alice-key")
    assert isinstance(replies(again, A)[0], p.Welcome)


# --------------------------------------------------------------------------- source addresses


def test_sessions_per_source_address_are_capped(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, max_per_address=2)
    assert all(isinstance(joined(broker, bytes([i]), f"u{i}", HOST_1)[0], p.Welcome) for i in range(2))
    (refused,) = joined(broker, b"\x09", "u9", HOST_1)
    assert isinstance(refused, p.Error) and refused.code == p.ADDRESS_FULL
    assert isinstance(joined(broker, b"\x0a", "other", HOST_2)[0], p.Welcome)  # another host is not held up
    broker.handle(b"\x00", p.encode(p.Leave()), "", HOST_1)
    assert isinstance(joined(broker, b"\x09", "u9", HOST_1)[0], p.Welcome)  # a seat was freed


def test_a_join_leave_loop_from_one_address_is_slowed_down(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, join_rate=1, join_burst=5)
    published = 0
    answers = []
    for n in range(50):
        out = broker.handle(A, p.encode(p.Join(f"loop{n}", "t")), "", HOST_1)
        answers.append(type(replies(out, A)[0]).__name__)
        out += broker.handle(A, p.encode(p.Leave()), "", HOST_1)
        published += len(events(out))
    assert answers.count("Welcome") == 5 and published == 10  # the burst, then nothing until it refills
    assert isinstance(joined(broker, B, "elsewhere", HOST_2)[0], p.Welcome)
    clock.advance(1)
    assert isinstance(joined(broker, C, "later", HOST_1)[0], p.Welcome)


def test_enter_and_part_are_throttled_per_session_and_per_address(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, rate=1, burst=4, join_rate=1, join_burst=8)

    def move(identity: bytes, n: int) -> str:
        request = p.Enter("#dev") if n % 2 == 0 else p.Part("#dev")
        answer = replies(broker.handle(identity, p.encode(request), "", HOST_1), identity)[0]
        return answer.code if isinstance(answer, p.Error) else "ok"

    joined(broker, A, "alice", HOST_1)
    joined(broker, B, "bob", HOST_1)  # the address has 6 of its 8 left
    assert [move(A, n) for n in range(5)] == ["ok"] * 4 + [p.RATE_LIMITED]  # alice's own burst of 4
    assert [move(B, n) for n in range(3)] == ["ok", "ok", p.RATE_LIMITED]  # bob has 4, the address 2
    assert isinstance(joined(broker, C, "carol", HOST_2)[0], p.Welcome)
    out = broker.handle(C, p.encode(p.Enter("#dev")), "", HOST_2)
    assert isinstance(replies(out, C)[0], p.Entered)


# --------------------------------------------------------------------------- rooms


def test_rooms_created_per_session_are_limited_per_minute(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, rate=1000, burst=1000)
    join(broker, A, "alice")
    made = 0
    for n in range(3 * limits.ROOMS_PER_MINUTE):
        out = send(broker, A, p.Enter(f"#fresh{n}"))
        if isinstance(replies(out, A)[0], p.Entered):
            made += 1
            send(broker, A, p.Part(f"#fresh{n}"))
        else:
            assert only_error(out, A).code == p.RATE_LIMITED
    assert made == limits.ROOMS_PER_MINUTE
    assert f"#fresh{3 * limits.ROOMS_PER_MINUTE - 1}" not in broker._seq  # a refused room leaves no trace
    clock.advance(60)
    assert isinstance(replies(send(broker, A, p.Enter("#fresh-later")), A)[0], p.Entered)


def test_empty_rooms_are_forgotten_after_a_while(clock: Clock) -> None:
    history = MemoryHistory()
    broker = Broker(
        pub_port=5556, clock=clock, wall_clock=clock, history=history, rate=0, room_idle=60, session_timeout=HOUR
    )
    join(broker, A, "alice")
    for n in range(200):
        send(broker, A, p.Enter(f"#r{n}"))
        send(broker, A, p.Part(f"#r{n}"))
    refused = send(broker, A, p.Enter("#" + "x" * 40))  # an invalid room leaves nothing behind
    assert only_error(refused, A).code == p.ROOM_INVALID
    assert len(broker._seq) == 201 and len(history._rooms) == 201
    clock.advance(59)
    broker.expire_idle()
    assert len(broker._seq) == 201  # not yet
    clock.advance(2)
    broker.expire_idle()
    assert set(broker._seq) == {p.DEFAULT_ROOM} and set(history._rooms) == {p.DEFAULT_ROOM}
    # A forgotten room is a new one: it works as before.
    out = send(broker, A, p.Enter("#r7"))
    assert isinstance(replies(out, A)[0], p.Entered) and events(out)[0].seq == 1


def test_the_busiest_room_is_never_forgotten(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, room_idle=1)
    join(broker, A, "alice")
    clock.advance(10)
    broker.expire_idle()
    send(broker, A, p.Ping())
    assert p.DEFAULT_ROOM in broker._seq  # it has a member


# --------------------------------------------------------------------------- history


def test_fetch_has_a_byte_budget_per_session(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, rate=1000, burst=100_000)
    join(broker, A, "alice")
    join(broker, B, "bob")
    for n in range(600):
        send(broker, A, p.Say(f"a{n}", f"{n} " + "x" * 1900))
    last = 602
    sent = 0
    for _ in range(200):
        out = send(broker, B, p.Fetch(p.DEFAULT_ROOM, 1, last))
        (answer,) = replies(out, B)
        if isinstance(answer, p.Error):
            assert answer.code == p.RATE_LIMITED and answer.ref == "FETCH"
            break
        sent += len(p.encode(answer)[2])
    else:
        pytest.fail("200 FETCHes of 64 KiB each, and no limit")
    assert limits.FETCH_BYTES_BURST - 2 * p.MAX_FRAME_BYTES <= sent <= limits.FETCH_BYTES_BURST + p.MAX_FRAME_BYTES
    clock.advance(1)  # the budget refills
    assert isinstance(replies(send(broker, B, p.Fetch(p.DEFAULT_ROOM, 1, last)), B)[0], p.History)
    # Alice's budget is her own.
    assert isinstance(replies(send(broker, A, p.Fetch(p.DEFAULT_ROOM, 1, 10)), A)[0], p.History)
