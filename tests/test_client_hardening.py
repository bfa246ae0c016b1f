"""What a hostile or broken broker can do to a client, and flood control seen from the client.

A fake broker is a ROUTER (and a PUB) in the test on 127.0.0.1, with an OS-chosen port: anyone on the LAN
can be one, since the beacons that point clients at brokers are not authenticated.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Iterator

import msgspec
import pytest
import zmq

from chat import protocol as p
from chat.broker.core import Broker, Reply
from chat.client import events as ev
from chat.client.core import MIN_HEARTBEAT, ClientCore
from chat.errors import RemoteProtocolError
from conftest import Processes, said

EVIL = "\x1b]0;pwned\x07\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07\x1b[2J\x9b31m\u202e"
GENERAL = p.DEFAULT_ROOM
WELCOME = p.Welcome(name="alice", pub_port=5556, rooms={GENERAL: 0}, heartbeat_ms=1000, timeout_ms=5000, history_id="h")


def strings(value: object) -> Iterator[str]:
    """Every string inside an action (dataclasses, messages, lists, dicts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif dataclasses.is_dataclass(value):
        for field in dataclasses.fields(value):
            yield from strings(getattr(value, field.name))
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from strings(getattr(value, name))


def unsafe(actions: list[ev.Action]) -> list[str]:
    return [text for text in strings(actions) if p.neutralise(text) != text]


def direct(core: ClientCore, message: p.Message, now: float) -> list[ev.Action]:
    return core.on_direct(p.encode(message), now)


# --------------------------------------------------------------------------- the client core


def test_everything_a_broker_sends_is_neutralised_before_any_front_end_sees_it() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    seen = direct(core, msgspec.structs.replace(WELCOME, name="alice" + EVIL), 0.1)
    seen += core.on_input("hello", 0.2)
    line_id = [a.message.id for a in seen if isinstance(a, ev.Send) and isinstance(a.message, p.Say)][0]
    for message in (
        p.Error(p.BAD_FIELD, "refused: " + EVIL, line_id),
        p.Error(p.NO_SUCH_USER, EVIL, "other"),
        p.Private("bob" + EVIL, "alice", EVIL, 1),
        p.Roster(GENERAL, ["bob" + EVIL], 1),
        p.RoomList([{"room": GENERAL + EVIL, "members": 1, "topic": EVIL}], 1),
        p.Entered("#dev", 0, EVIL),
        p.History(GENERAL, [{"seq": 1, "ts": 1, "kind": "msg" + EVIL, "name": EVIL, "text": EVIL}], 1, 1),
        p.Bye("the broker is going away" + EVIL),
        p.Error(p.NAME_TAKEN, "taken " + EVIL, "JOIN"),
    ):
        seen += direct(core, message, 0.3)
    [published] = p.encode_events([p.Event(1, 1, p.KIND_MSG, "bob" + EVIL, EVIL, GENERAL)])
    seen += core.on_published(published, 0.4)
    kinds = {type(a) for a in seen}
    assert {ev.Failed, ev.Notice, ev.PrivateIn, ev.RosterShown, ev.RoomsListed, ev.Public, ev.Exit} <= kinds, kinds
    assert unsafe(seen) == []
    assert [a.reason for a in seen if isinstance(a, ev.Exit)] == ["taken ^[]0;pwned^G^[]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==^G^[[2J\ufffd31m\ufffd"]


def test_history_the_broker_cannot_read_is_reported_and_skipped() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    [own_join] = [a.message for a in direct(core, WELCOME, 0.0) if isinstance(a, ev.Send)]
    joined = {"seq": 1, "ts": 1, "kind": p.KIND_JOIN, "name": "alice", "text": ""}
    direct(core, p.History(GENERAL, [joined], 1, 1, own_join.id), 0.05)
    [published] = p.encode_events([p.Event(5, 1, p.KIND_MSG, "bob", "five", GENERAL)])
    actions = core.on_published(published, 0.1)
    [fetch] = [a.message for a in actions if isinstance(a, ev.Send)]
    assert (fetch.room, fetch.first, fetch.last) == (GENERAL, 2, 4)
    actions = direct(core, p.Error(p.STORE_FAILED, "cannot read the history (database disk image is malformed)", fetch.id), 0.2)
    texts = [a.text for a in actions if isinstance(a, ev.Notice)]
    assert texts == ["cannot read the history (database disk image is malformed)", "3 event(s) in #general could not be recovered"]
    assert [a.event.text for a in actions if isinstance(a, ev.Public)] == ["five"]


@pytest.mark.parametrize("heartbeat_ms", [0, -1000])
def test_a_welcome_without_a_heartbeat_is_malformed(heartbeat_ms: int) -> None:
    frames = p.encode(msgspec.structs.replace(WELCOME, heartbeat_ms=heartbeat_ms))
    with pytest.raises(RemoteProtocolError, match="heartbeat_ms"):
        p.decode_broker(frames)
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    actions = core.on_direct(frames, 0.1)
    assert core.state == "joining" and [a for a in actions if isinstance(a, ev.Send)] == []


def test_a_tiny_heartbeat_is_not_obeyed() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    direct(core, msgspec.structs.replace(WELCOME, heartbeat_ms=1, timeout_ms=60_000), 0.0)
    assert core.next_wakeup(0.0) >= MIN_HEARTBEAT - 1e-9
    pings, now = 0, 0.0
    while now < 1.0:
        now += 0.001
        pings += sum(isinstance(a, ev.Send) and isinstance(a.message, p.Ping) for a in core.tick(now))
    assert pings <= 1 / MIN_HEARTBEAT


class Wire:
    """A client core and a broker core on one clock, with everything carried at once."""

    def __init__(self, broker: Broker, core: ClientCore) -> None:
        self.broker, self.core = broker, core
        self.published: list[p.Event] = []

    def carry(self, actions: list[ev.Action], now: float) -> None:
        queue = [a.message for a in actions if isinstance(a, ev.Send)]
        while queue:
            out = self.broker.commit(self.broker.handle(b"alice", p.encode(queue.pop(0))))
            self.published += [item for item in out if isinstance(item, p.Event)]
            for item in out:
                if isinstance(item, Reply):
                    queue += [a.message for a in direct(self.core, item.message, now) if isinstance(a, ev.Send)]


def test_lines_refused_by_flood_control_are_delivered_in_the_order_typed() -> None:
    clock = [0.0]
    broker = Broker(pub_port=1, clock=lambda: clock[0], rate=5, burst=20, session_timeout=60)
    core = ClientCore("alice", interactive=False)
    wire = Wire(broker, core)
    wire.carry(core.start(0.0), 0.0)
    wire.carry([a for n in range(1, 41) for a in core.on_input(f"line {n}", 0.0)], 0.0)  # a paste of 40
    clock[0] = 0.5  # a token and more have come back
    wire.carry([a for n in range(41, 51) for a in core.on_input(f"line {n}", 0.5)], 0.5)  # typed after it
    while clock[0] < 30 and len([e for e in wire.published if e.kind == p.KIND_MSG]) < 50:
        clock[0] += 0.05
        wire.carry(core.tick(clock[0]), clock[0])
    lines = [e.text for e in wire.published if e.kind == p.KIND_MSG]
    assert lines == [f"line {n}" for n in range(1, 51)]
    assert clock[0] < 12, "at the broker's pace (5 a second), not one resend interval per line"


# --------------------------------------------------------------------------- a fake broker, a real client.py


class FakeBroker:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.linger = 0
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")

    def receive(self, wanted: bytes, timeout: float = 10.0) -> tuple[bytes, dict[str, object]]:
        """The next request of type ``wanted`` (others are dropped): (identity, body)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.router.poll(int(left * 1000)):
                identity, _, kind, body = self.router.recv_multipart()
                if kind == wanted:
                    return identity, json.loads(body)
        raise AssertionError(f"no {wanted!r} from the client within {timeout:g} s")

    def send(self, identity: bytes, message: p.Message) -> None:
        self.router.send_multipart([identity, *p.encode(message)])

    def welcome(self, identity: bytes, **fields: object) -> None:
        self.send(identity, msgspec.structs.replace(WELCOME, pub_port=self.pub_port, **fields))

    def close(self) -> None:
        self.router.close()
        self.pub.close()
        self.ctx.term()


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    broker = FakeBroker()
    try:
        yield broker
    finally:
        broker.close()


@pytest.mark.timeout(30)
def test_escape_sequences_from_a_fake_broker_never_reach_the_terminal(procs: Processes, fake: FakeBroker) -> None:
    alice = procs.client("alice", fake.port)
    identity, _ = fake.receive(b"JOIN")
    fake.welcome(identity)
    alice.expect_err(r"^\*\*\* joined as alice")
    alice.send("hello")
    _, say = fake.receive(b"SAY")
    fake.send(identity, p.Error(p.BAD_FIELD, "no " + EVIL, str(say["id"])))
    alice.expect_err(r"^\*\*\* no \^\[\]0;pwned\^G")
    fake.send(identity, p.Bye("bye " + EVIL))
    alice.expect_err(r"^\*\*\* lost the broker: bye \^\[\]0;pwned")
    identity, _ = fake.receive(b"JOIN")  # it tries to get back in
    fake.send(identity, p.Error(p.BAD_FIELD, "full " + EVIL, "JOIN"))  # (server_full would be retried)
    alice.assert_exit(3)
    everything = alice.stdout() + alice.stderr()
    assert alice.matching(r"^client: full \^\[\]0;pwned\^G\^\[\]52;c;", err=True), everything
    assert [line for line in everything if re.search("[\x00-\x1f\x7f-\x9f\u202e]", line)] == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("heartbeat_ms", [0, 1])
def test_a_fake_broker_cannot_make_the_client_spin(procs: Processes, fake: FakeBroker, heartbeat_ms: int) -> None:
    alice = procs.client("alice", fake.port)
    identity, _ = fake.receive(b"JOIN")
    fake.welcome(identity, heartbeat_ms=heartbeat_ms, timeout_ms=60_000)
    pings, deadline = 0, time.monotonic() + 1.0
    while (left := deadline - time.monotonic()) > 0:
        if fake.router.poll(int(left * 1000) + 1):
            pings += fake.router.recv_multipart()[2] == b"PING"
    assert pings <= 1 / MIN_HEARTBEAT + 1, f"{pings} pings in a second"
    assert alice.proc.poll() is None


# --------------------------------------------------------------------------- a real broker


@pytest.mark.timeout(60)
def test_a_paste_beyond_the_burst_then_typing_arrives_in_the_order_typed(procs: Processes) -> None:
    broker = procs.broker(5.0, "--rate", "20", "--burst", "20")
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    for n in range(1, 41):
        alice.send(f"line {n}")
    bob.expect(said("alice", "line 20"))
    alice.expect_err(r"slow down")
    # The person types on a moment later, while the paste is still going out: by then the broker's
    # bucket holds tokens again (a pause of the scenario, not a wait for something to happen).
    time.sleep(0.5)
    for n in range(41, 61):
        alice.send(f"line {n}")
    bob.expect(said("alice", "line 60"), timeout=20)
    got = [int(m[1]) for line in bob.stdout() if (m := re.search(r"alice: line (\d+)$", line))]
    assert got == list(range(1, 61))


@pytest.mark.timeout(30)
def test_the_full_screen_client_shows_a_fake_brokers_escapes_as_text(fake: FakeBroker) -> None:
    import asyncio

    from test_tui import SIZE, chat_app, lines, run, shown, until

    apps: list = []
    app = chat_app(apps, fake, "alice")  # type: ignore[arg-type]

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            identity, _ = await asyncio.to_thread(fake.receive, b"JOIN")
            fake.welcome(identity, timeout_ms=60_000)
            await until(pilot, "the WELCOME", lambda: app.state == "connected")
            fake.send(identity, p.Error(p.NO_SUCH_USER, "no " + EVIL, "WHO"))
            await until(pilot, "the error", shown(app, r"\^\[\]0;pwned\^G"))  # (wrapped under "no")
            fake.send(identity, p.Bye("bye " + EVIL))
            await until(pilot, "the goodbye", shown(app, r"lost the broker: bye"))
            assert [line for line in lines(app) if re.search("[\x00-\x1f\x7f-\x9f\u202e]", line)] == []
            identity, _ = await asyncio.to_thread(fake.receive, b"JOIN")
            fake.send(identity, p.Error(p.BAD_FIELD, "full " + EVIL, "JOIN"))  # (server_full would be retried)
            await until(pilot, "the end", lambda: bool(app.exit_reason))
        assert app.exit_reason.startswith("full ^[]0;pwned^G") and not unsafe([app.exit_reason]), app.exit_reason  # type: ignore[list-item]

    try:
        run(scenario)
    finally:
        for made in apps:
            if made.thread is not None:
                made.thread.join(5)
