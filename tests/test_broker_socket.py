"""A live ``broker.py`` process, spoken to with raw pyzmq sockets: the wire contract of docs/PROTOCOL.md.

The frames here are written by hand (not with ``chat.protocol``), so that these tests check the wire
format itself and not only that the reference code agrees with itself.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable, Iterator

import pytest
import zmq

from conftest import Broker, Processes, joined, left, private, said

TAG = b"chat/2"
TOPIC = b"#general\x00"
REPLY_TIMEOUT = 5.0  # seconds: an answer from a broker on this machine takes milliseconds

Frames = list[bytes]


def frames(kind: str, body: dict[str, Any] | None = None) -> Frames:
    return [TAG, kind.encode(), json.dumps(body or {}).encode()]


def wait_readable(sock: zmq.Socket, timeout: float, broker: Broker) -> bool:
    """Poll ``sock`` until it has a message (True) or ``timeout`` passes (False).

    Fails at once, with the broker's last words, if the broker process dies meanwhile: a crash should
    read as a crash, not as a slow answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        exited = broker.proc.poll() is not None  # before the poll: what it sent before dying still counts
        left = deadline - time.monotonic()
        if sock.poll(int(max(0.0, min(left, 0.05)) * 1000) + 1):
            return True
        if exited:
            pytest.fail(f"the broker exited (code {broker.proc.returncode})\n{broker.context()}")
        if left <= 0:
            return False


class Peer:
    """A raw DEALER talking to the broker's ROUTER."""

    def __init__(self, sock: zmq.Socket, broker: Broker) -> None:
        self.sock = sock
        self.broker = broker
        self.token = secrets.token_hex(16)
        self._ids = 0

    def send(self, kind: str, body: dict[str, Any] | None = None) -> None:
        self.sock.send_multipart(frames(kind, body))

    def recv(self, timeout: float = REPLY_TIMEOUT, tag: bytes = TAG) -> tuple[str, dict[str, Any]]:
        """The next direct message, checked for shape: three frames, ``tag`` (our version), a JSON object."""
        if not wait_readable(self.sock, timeout, self.broker):
            pytest.fail(f"no answer from the broker within {timeout:g} s\n{self.broker.context()}")
        reply = self.sock.recv_multipart()
        assert len(reply) == 3 and reply[0] == tag, reply
        body = json.loads(reply[2].decode("utf-8"))
        assert isinstance(body, dict), reply
        return reply[1].decode("ascii"), body

    def request(self, kind: str, body: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        self.send(kind, body)
        return self.recv()

    def expect(self, kind: str, body: dict[str, Any] | None = None, answer: str = "") -> dict[str, Any]:
        """Send a request and return the body of its answer, which must be of type ``answer``."""
        got, reply = self.request(kind, body)
        assert got == answer, (got, reply)
        return reply

    def error(self, raw: Frames, tag: bytes = TAG) -> dict[str, Any]:
        """Send raw frames; the answer must be an ERROR (in version ``tag``) with a code, a reason and a ref."""
        self.sock.send_multipart(raw)
        kind, body = self.recv(tag=tag)
        assert kind == "ERROR", (raw, kind, body)
        assert isinstance(body["code"], str) and isinstance(body["ref"], str), body
        assert isinstance(body["reason"], str) and body["reason"], body
        return body

    def join(self, name: str) -> dict[str, Any]:
        return self.expect("JOIN", {"name": name, "token": self.token}, answer="WELCOME")

    def next_id(self) -> str:
        self._ids += 1
        return f"{self.token[:8]}-{self._ids}"  # unique per user: the broker drops a repeated id as a resend

    def say(self, text: str, **extra: Any) -> dict[str, Any]:
        return self.expect("SAY", {"id": self.next_id(), "text": text, **extra}, answer="ACK")


class Subscriber:
    """A raw SUB on the broker's PUB, which must be synchronised before it can be trusted to see all."""

    def __init__(self, sock: zmq.Socket, broker: Broker) -> None:
        self.sock = sock
        self.broker = broker
        self.raw: list[Frames] = []  # every message received, as it came

    def recv(self, timeout: float = REPLY_TIMEOUT) -> Frames | None:
        if not wait_readable(self.sock, timeout, self.broker):
            return None
        message = self.sock.recv_multipart()
        self.raw.append(message)
        return message

    def sync(self, probe: Peer) -> list[dict[str, Any]]:
        """Publish lines through ``probe`` (joined) until one arrives: past that, nothing is missed.

        A SUB receives only what is published after its subscription reached the PUB, and nothing says
        when that is: the slow-joiner problem. Waiting for a sample, with a deadline, is the cure.
        """
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            probe.say("sync")
            message = self.recv(timeout=0.1)
            if message is not None:
                return events(message) + self.drain()
        pytest.fail(f"the SUB got nothing within {REPLY_TIMEOUT:g} s")

    def drain(self, quiet: float = 0.05) -> list[dict[str, Any]]:
        """What has arrived already (until the SUB is quiet for ``quiet`` seconds)."""
        got = []
        while (message := self.recv(timeout=quiet)) is not None:
            got += events(message)
        return got

    def until(self, kind: str, text: str) -> list[dict[str, Any]]:
        """Events up to and including the first one of ``kind`` with ``text``."""
        got = []
        while True:
            message = self.recv()
            if message is None:
                pytest.fail(f"no {kind} event {text!r} within {REPLY_TIMEOUT:g} s; got {got}")
            for one in events(message):
                got.append(one)
                if one["kind"] == kind and one["text"] == text:
                    return got  # (what came with it in the same message is dropped)


def events(message: Frames) -> list[dict[str, Any]]:
    """The events of a published message, after checking its four frames: at least one, in seq order."""
    assert len(message) == 4, message
    topic, tag, kind, body = message
    assert (topic, tag, kind) == (TOPIC, TAG, b"EVENTS"), message
    decoded = json.loads(body.decode("utf-8"))
    assert isinstance(decoded, dict) and decoded["events"], decoded
    for one in decoded["events"]:
        assert isinstance(one, dict) and {"seq", "ts", "kind", "name", "text"} <= one.keys(), one
    seqs = [one["seq"] for one in decoded["events"]]
    assert seqs == sorted(seqs), seqs
    return decoded["events"]


# --------------------------------------------------------------------------- fixtures

MakePeer = Callable[..., Peer]
MakeSubscriber = Callable[..., Subscriber]


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)  # closes, with linger 0, every socket a test left open


@pytest.fixture
def sockets(zctx: zmq.Context) -> Iterator[list[zmq.Socket]]:
    """Every socket made by ``dealer`` and ``subscriber``, closed with linger 0 when the test ends."""
    made: list[zmq.Socket] = []
    try:
        yield made
    finally:
        for sock in made:
            sock.close(linger=0)


def _socket(zctx: zmq.Context, sockets: list[zmq.Socket], kind: int) -> zmq.Socket:
    sock = zctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sockets.append(sock)
    return sock


@pytest.fixture
def dealer(zctx: zmq.Context, sockets: list[zmq.Socket], request: pytest.FixtureRequest) -> MakePeer:
    """Make a ``Peer`` connected to ``target``, by default the test's ``broker``."""

    def make(target: Broker | None = None) -> Peer:
        target = target or request.getfixturevalue("broker")
        sock = _socket(zctx, sockets, zmq.DEALER)
        sock.connect(target.endpoint)
        return Peer(sock, target)

    return make


@pytest.fixture
def subscriber(
    zctx: zmq.Context, sockets: list[zmq.Socket], request: pytest.FixtureRequest
) -> MakeSubscriber:
    """Make a ``Subscriber`` to ``prefix`` on the PUB of ``target``, by default the test's ``broker``."""

    def make(prefix: bytes = b"", target: Broker | None = None) -> Subscriber:
        target = target or request.getfixturevalue("broker")
        sock = _socket(zctx, sockets, zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
        sock.connect(target.pub_endpoint)
        return Subscriber(sock, target)

    return make


# --------------------------------------------------------------------------- malformed input

MALFORMED = [
    # (what, frames, error code)
    ("one garbage frame", [b"garbage"], "bad_frames"),
    ("an empty frame", [b""], "bad_frames"),
    ("two frames", [TAG, b"PING"], "bad_frames"),
    ("four frames", [TAG, b"PING", b"{}", b"{}"], "bad_frames"),
    ("a tag that is not a protocol", [b"\x00\xffjunk", b"PING", b"{}"], "bad_frames"),
    ("protocol version 1", [b"chat/1", b"PING", b"{}"], "bad_version"),
    ("protocol version 3", [b"chat/3", b"JOIN", b'{"name": "alice"}'], "bad_version"),
    ("an unknown type", [TAG, b"SHOUT", b"{}"], "bad_type"),
    ("a binary type", [TAG, b"\xff\x00", b"{}"], "bad_type"),
    ("a body that is not UTF-8", [TAG, b"JOIN", b'{"name": "\xff\xfe"}'], "bad_json"),
    ("a body that is not JSON", [TAG, b"JOIN", b'{"name": '], "bad_json"),
    ("a body that is not an object", [TAG, b"JOIN", b'["alice"]'], "bad_json"),
    ("a field of the wrong type", [TAG, b"JOIN", b'{"name": 5}'], "bad_field"),
    ("a missing field", [TAG, b"JOIN", b"{}"], "bad_field"),
    ("a name with a space", [TAG, b"JOIN", b'{"name": "two words"}'], "name_invalid"),
    # 60 kB, under the frame limit, and deeper than Python's recursion limit.
    ("deeply nested JSON", [TAG, b"JOIN", b"[" * 30_000 + b"]" * 30_000], "bad_json"),
]

# Well framed, valid JSON, but with a lone surrogate (legal as a JSON escape, impossible in UTF-8):
# requests of a joined peer that a broker must answer without dying or publishing invalid UTF-8.
SURROGATE = "\\ud800"
HOSTILE = [
    ("say text", "SAY", f'{{"id": "h-1", "text": "a{SURROGATE}b"}}'),
    ("say id", "SAY", f'{{"id": "{SURROGATE}", "text": "hi"}}'),
    ("say room", "SAY", f'{{"id": "h-2", "text": "hi", "room": "#{SURROGATE}"}}'),
    ("pm to", "PM", f'{{"id": "h-3", "to": "{SURROGATE}", "text": "hi"}}'),
    ("pm text", "PM", f'{{"id": "h-4", "to": "alice", "text": "{SURROGATE}"}}'),
    ("who room", "WHO", f'{{"room": "#{SURROGATE}"}}'),
    ("fetch room", "FETCH", f'{{"room": "#{SURROGATE}", "first": 1, "last": 1}}'),
    ("join token of a taken name", "JOIN", f'{{"name": "alice", "token": "{SURROGATE}"}}'),
]


@pytest.mark.timeout(15)
@pytest.mark.parametrize("what, raw, code", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_a_malformed_request_gets_an_error_with_a_stable_code(
    dealer: MakePeer, what: str, raw: Frames, code: str
) -> None:
    peer = dealer()
    # A refusal of another version is tagged with that version, so that its client can read it.
    reply = peer.error(raw, tag=raw[0] if code == "bad_version" else TAG)
    assert reply["code"] == code, (what, reply)
    if code == "bad_version":
        assert "this side speaks version 2" in reply["reason"], reply  # it names the version it speaks
        assert reply["ref"] == raw[1].decode(), reply  # and which request it refused
    # The peer can still join on the same connection: nothing was held against it.
    peer.join("alice")


@pytest.mark.timeout(15)
@pytest.mark.parametrize("what, kind, body", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_lone_surrogate_from_a_joined_peer_never_stops_the_broker(
    dealer: MakePeer, subscriber: MakeSubscriber, what: str, kind: str, body: str
) -> None:
    alice, mallory = dealer(), dealer()
    alice.join("alice")
    spy = subscriber()
    spy.sync(alice)
    if kind != "JOIN":
        mallory.join("mallory")

    mallory.sock.send_multipart([TAG, kind.encode(), body.encode()])
    answer, reply = mallory.recv()  # strict UTF-8 and JSON, or it fails here
    assert answer in ("ERROR", "ACK", "ROSTER", "HISTORY"), (what, answer, reply)

    alice.say("still alive")  # the broker answers, and what it publishes is valid UTF-8 (event() decodes it)
    spy.until("msg", "still alive")


@pytest.mark.timeout(15)
def test_requests_before_joining_are_refused_with_their_type_as_ref(dealer: MakePeer) -> None:
    peer = dealer()
    for kind, body in [("PING", {}), ("WHO", {}), ("SAY", {"id": "x-1", "text": "hi"}), ("LEAVE", {})]:
        reply = peer.error(frames(kind, body))
        assert reply["code"] == "not_joined", (kind, reply)
        assert reply["ref"] == body.get("id", kind), (kind, reply)


@pytest.mark.timeout(30)
def test_the_broker_keeps_serving_a_chatting_client_through_garbage(
    procs: Processes, broker: Broker, dealer: MakePeer
) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))
    garbage = dealer()
    sent: list[str] = []

    for number, (what, raw, code) in enumerate(MALFORMED):
        assert garbage.error(raw, tag=raw[0] if code == "bad_version" else TAG)["code"] == code, what
        sent.append(f"line {number} after {what}")
        alice.send(sent[-1])

    # A frame over the size limit: libzmq drops that connection, and only that one.
    huge = dealer()
    huge.sock.send_multipart([TAG, b"SAY", b"x" * (70 * 1024)])
    sent.append("line after a huge frame")
    alice.send(sent[-1])
    assert dealer().error(frames("PING"))["code"] == "not_joined"  # a newcomer is still answered

    for line in sent:
        bob.expect(said("alice", line))
    assert bob.matching(r"alice: ") == [bob.matching(said("alice", line))[0] for line in sent]  # once, in order
    alice.send("/who")
    alice.expect(r"online \(2\): alice, bob$")
    assert broker.proc.poll() is None


# --------------------------------------------------------------------------- sessions and requests


@pytest.mark.timeout(15)
def test_join_is_welcomed_and_names_are_unique_case_insensitively(dealer: MakePeer, broker: Broker) -> None:
    alice = dealer()
    welcome = alice.join("Alice")
    assert welcome["name"] == "Alice"
    assert welcome["pub_port"] == broker.pub_port
    assert welcome["rooms"] == {"#general": 0}
    assert welcome["timeout_ms"] == 5000 and 0 < welcome["heartbeat_ms"] < welcome["timeout_ms"]
    assert isinstance(welcome["history_id"], str) and welcome["history_id"]

    impostor = dealer()
    for name in ("alice", "ALICE", "Alice"):
        reply = impostor.error(frames("JOIN", {"name": name, "token": impostor.token}))
        assert (reply["code"], reply["ref"]) == ("name_taken", "JOIN"), reply
    reply = alice.error(frames("JOIN", {"name": "bob", "token": alice.token}))
    assert (reply["code"], reply["ref"]) == ("already_joined", "JOIN"), reply
    assert alice.join("Alice")["rooms"] == {"#general": 1}  # a retried JOIN is answered again


@pytest.mark.timeout(15)
def test_a_join_with_the_same_token_takes_the_session_over(dealer: MakePeer, subscriber: MakeSubscriber) -> None:
    alice = dealer()
    alice.join("alice")
    sub = subscriber()
    sub.sync(alice)

    alice.sock = dealer().sock  # the same client (token, ids) on a new connection
    alice.join("alice")
    alice.say("from the new connection")
    events = sub.until("msg", "from the new connection")
    assert [e["kind"] for e in events] == ["msg"], events  # no leave, no join: the session moved
    assert events[0]["name"] == "alice"
    assert alice.expect("WHO", answer="ROSTER")["names"] == ["alice"]


@pytest.mark.timeout(15)
def test_requests_of_a_joined_session(dealer: MakePeer) -> None:
    alice, bob = dealer(), dealer()
    alice.join("alice")
    bob.join("bob")

    assert alice.expect("PING", answer="PONG") == {"rooms": {"#general": 2}, "private_seq": 0}
    roster = alice.expect("WHO", answer="ROSTER")
    assert roster["names"] == ["alice", "bob"] and roster["room"] == "" and isinstance(roster["ts"], int)

    ack = alice.say("first")
    assert ack["seq"] == 3 and ack["id"] == f"{alice.token[:8]}-1"
    # A resent id is acknowledged again, the same, and not published again.
    assert alice.expect("SAY", {"id": ack["id"], "text": "first"}, answer="ACK") == ack
    action = alice.say("waves", kind="action")
    assert action["seq"] == 4

    history = alice.expect("FETCH", {"room": "#general", "first": 1, "last": 4}, answer="HISTORY")
    assert history["room"] == "#general"
    assert [(e["seq"], e["kind"], e["name"], e["text"]) for e in history["events"]] == [
        (1, "join", "alice", ""),
        (2, "join", "bob", ""),
        (3, "msg", "alice", "first"),
        (4, "action", "alice", "waves"),
    ]
    for first, last in [(1, 5), (0, 2), (3, 2)]:
        reply = alice.error(frames("FETCH", {"room": "#general", "first": first, "last": last}))
        assert (reply["code"], reply["ref"]) == ("history_range", "FETCH"), (first, last, reply)

    for body, code in [
        ({"id": "e-1", "text": "   "}, "bad_field"),
        ({"id": "e-2", "text": "x" * 2001}, "bad_field"),
        ({"id": "e-3", "text": "hi", "kind": "shout"}, "bad_field"),
        ({"id": "e-4", "text": "hi", "room": "#elsewhere"}, "no_such_room"),
    ]:
        assert alice.error(frames("SAY", body))["code"] == code, body
    reply = alice.error(frames("PM", {"id": "e-5", "to": "nobody", "text": "hi"}))
    assert (reply["code"], reply["ref"]) == ("no_such_user", "e-5"), reply

    assert alice.expect("LEAVE", answer="BYE")["reason"]
    assert alice.error(frames("PING"))["code"] == "not_joined"
    assert [n for n in bob.expect("WHO", answer="ROSTER")["names"]] == ["bob"]


@pytest.mark.timeout(15)
def test_a_silent_session_expires_with_a_timeout_leave(
    procs: Processes, dealer: MakePeer, subscriber: MakeSubscriber
) -> None:
    broker = procs.broker(1.0)
    watcher, quiet = dealer(broker), dealer(broker)
    watcher.join("watcher")
    sub = subscriber(target=broker)
    sub.sync(watcher)
    quiet.join("quiet")

    deadline = time.monotonic() + REPLY_TIMEOUT
    while time.monotonic() < deadline:  # the watcher keeps itself alive; the quiet one says nothing
        watcher.expect("PING", answer="PONG")
        message = sub.recv(timeout=0.1)
        leaves = [one for one in events(message) if one["kind"] == "leave"] if message is not None else []
        if leaves:
            assert [(one["name"], one["text"]) for one in leaves] == [("quiet", "timeout")]
            break
    else:
        pytest.fail("the silent session was never expired")
    assert quiet.error(frames("PING"))["code"] == "not_joined"


@pytest.mark.timeout(15)
def test_a_stopping_broker_says_bye_to_every_session(procs: Processes, dealer: MakePeer) -> None:
    # Hundreds, so that the goodbyes are still queued when the broker's main thread is done: it must not
    # exit before libzmq has written them (500 caught it about one run in five). All from 127.0.0.1: no
    # per-address limits.
    broker = procs.broker(5.0, "--max-per-address", "0", "--join-rate", "0")
    peers = [dealer(broker) for _ in range(500)]
    for number, peer in enumerate(peers):
        peer.send("JOIN", {"name": f"user{number}"})
    for peer in peers:
        assert peer.recv()[0] == "WELCOME"
    assert broker.stop() == 0, broker.context()
    for peer in peers:
        kind, body = peer.recv()
        assert kind == "BYE" and "broker" in body["reason"], (kind, body)
    broker.expect(r"^broker: stopped$")


# --------------------------------------------------------------------------- the fan-out


@pytest.mark.timeout(15)
def test_published_events_carry_the_topic_frame_and_consecutive_seq(
    dealer: MakePeer, subscriber: MakeSubscriber
) -> None:
    alice = dealer()
    alice.join("alice")
    everything = subscriber(b"")
    general = subscriber(TOPIC)
    synced = {everything: everything.sync(alice), general: general.sync(alice)}

    bob = dealer()
    bob_welcome = bob.join("bob")
    acks = [alice.say(f"line {n}") for n in range(5)]
    bob.say("waves", kind="action")
    assert bob.expect("LEAVE", answer="BYE")

    for sub in (everything, general):
        events = synced[sub] + sub.until("leave", "quit")
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs  # consecutive, no gaps
        assert [(e["kind"], e["name"]) for e in events[-8:]] == [
            ("join", "bob"), *[("msg", "alice")] * 5, ("action", "bob"), ("leave", "bob"),
        ]
        assert events[-8]["seq"] == bob_welcome["rooms"]["#general"] + 1  # the join follows the WELCOME
        assert [(e["seq"], e["ts"]) for e in events[-7:-2]] == [(ack["seq"], ack["ts"]) for ack in acks]


@pytest.mark.timeout(20)
def test_private_messages_never_reach_the_fan_out(
    procs: Processes, broker: Broker, dealer: MakePeer, subscriber: MakeSubscriber
) -> None:
    probe = dealer()
    probe.join("probe")
    spy = subscriber(b"")  # subscribed to everything: anyone on the network can do this
    spy.sync(probe)
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)

    alice.send("/pm bob the password is swordfish")
    bob.expect(private("alice", "the password is swordfish"))
    carol = dealer()
    carol.join("carol")
    reply = probe.expect("PM", {"id": "p-1", "to": "carol", "text": "raw swordfish too"}, answer="ACK")
    assert reply["seq"] == 0  # a private message has no place in the room's sequence
    kind, body = carol.recv()
    assert kind == "PRIVATE" and body["name"] == "probe" and body["to"] == "carol", body
    alice.send("now in public")
    spy.until("msg", "now in public")  # barrier: both private messages were handled before this

    assert spy.raw and not [message for message in spy.raw if any(b"swordfish" in frame for frame in message)]
    bob.close_stdin()
    bob.assert_exit(0)
    alice.expect(left("bob"))


@pytest.mark.timeout(20)
# The limit counts characters, not bytes: one of 1, 2 and 4 bytes in UTF-8.
@pytest.mark.parametrize("limit, char", [(None, "x"), (None, "é"), (None, "\U0001f600"), (5, "\U0001f600")])
def test_the_text_limit_is_exact_for_lines_and_pms(
    procs: Processes, dealer: MakePeer, subscriber: MakeSubscriber, limit: int | None, char: str
) -> None:
    """PROTOCOL.md: text is 1 to 2000 characters (--max-text lowers it): the limit passes, one more is refused."""
    broker = procs.broker(5.0, *(("--max-text", str(limit)) if limit else ()))
    most = limit or 2000
    alice, bob = dealer(broker), dealer(broker)
    alice.join("alice")
    bob.join("bob")
    sub = subscriber(TOPIC, broker)
    sub.sync(alice)
    longest = char * most
    assert alice.say(longest)["seq"] > 0
    assert sub.until("msg", longest)[-1]["text"] == longest
    alice.expect("PM", {"id": "pm-longest", "to": "bob", "text": longest}, answer="ACK")
    kind, body = bob.recv()
    assert (kind, body["text"]) == ("PRIVATE", longest)
    for request, extra in (("SAY", {}), ("PM", {"to": "bob"})):
        reply = alice.error(frames(request, {"id": f"{request}-over", "text": longest + char, **extra}))
        assert (reply["code"], reply["ref"]) == ("bad_field", f"{request}-over"), reply
        assert str(most) in reply["reason"], reply
    assert alice.expect("PING", answer="PONG")  # nothing else came back, and the broker goes on
    assert not bob.sock.poll(100), "a refused PM reached its target"


@pytest.mark.timeout(20)
def test_a_frame_a_little_over_the_limit_gets_too_large_and_keeps_the_session(dealer: MakePeer) -> None:
    """PROTOCOL.md, Limits: 65537 bytes get ERROR too_large (the broker's ZMQ_MAXMSGSIZE keeps a margin
    above the limit), and the connection, with its session, goes on."""
    peer = dealer()
    peer.join("alice")
    body = json.dumps({"id": "big-1", "text": "x" * (65536 - 20)}).encode()
    assert len(body) > 65536
    reply = peer.error([TAG, b"SAY", body])
    assert (reply["code"], reply["ref"]) == ("too_large", "big-1"), reply
    assert peer.say("still joined")["seq"] > 0  # no not_joined: the same connection, the same session
