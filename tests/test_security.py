"""Encryption, client keys and hostile input, against real broker and client processes.

The wire test puts a recording TCP relay between the clients and the broker: the relay listens on
127.0.0.2 on the broker's own two port numbers (the client learns the PUB port from the broker, so the
relay must use the same numbers) and forwards to 127.0.0.1.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import zmq

from conftest import Broker, Processes, Relay, said

RELAY_HOST = "127.0.0.2"
REFUSAL_TIME = 8.0  # seconds within which a refused client must have said why and exited
EXIT_REFUSED = 3


# --------------------------------------------------------------------------- helpers


def make_keys(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def secure_broker(procs: Processes, tmp_path: Path, *extra: str) -> tuple[Broker, str]:
    """A --secure broker with its own key folder; returns it and its public key."""
    broker = procs.broker(5.0, "--secure", "--key-dir", str(tmp_path / "broker-keys"), *extra)
    line = broker.expect(r"^broker: clients join with: .* --server-key='?(?P<key>[^' ]{40})'?$")
    return broker, line["key"]


def client_keys(tmp_path: Path, who: str) -> tuple[str, ...]:
    return ("--key-dir", str(tmp_path / f"{who}-keys"))


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def dealer(ctx: zmq.Context, broker: Broker) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(broker.endpoint)
    return sock


def request(sock: zmq.Socket, kind: str, body: dict, timeout: float = 5.0) -> tuple[str, dict]:
    sock.send_multipart([b"chat/2", kind.encode(), json.dumps(body).encode()])
    return reply(sock, timeout)


def reply(sock: zmq.Socket, timeout: float = 5.0) -> tuple[str, dict]:
    assert sock.poll(int(timeout * 1000)), "no reply from the broker"
    tag, kind, body = sock.recv_multipart()
    assert tag == b"chat/2"
    return kind.decode(), json.loads(body)


# --------------------------------------------------------------------------- encryption


@pytest.mark.timeout(40)
@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plain"])
def test_secure_hides_text_and_names_on_the_wire(
    procs: Processes, relays: Callable[..., Relay], tmp_path: Path, secure: bool
) -> None:
    if secure:
        broker, key = secure_broker(procs, tmp_path)
    else:
        broker, key = procs.broker(5.0), ""
    try:
        relay = relays([broker.port, broker.pub_port], listen_host=RELAY_HOST, same_ports=True)
    except OSError as exc:  # pragma: no cover - 127.0.0.2 is loopback on Linux
        pytest.skip(f"cannot listen on {RELAY_HOST}: {exc}")
    try:
        extra = ("--host", RELAY_HOST)
        alice_args = (*extra, f"--server-key={key}", *client_keys(tmp_path, "alice")) if secure else extra
        bob_args = (*extra, f"--server-key={key}", *client_keys(tmp_path, "bob")) if secure else extra
        alice = procs.join("alicewonder", broker, *alice_args)
        bob = procs.join("bobbuilder", broker, *bob_args)
        alice.send("the eagle lands at midnight")
        bob.expect(said("alicewonder", "the eagle lands at midnight"))
        bob.send("/pm alicewonder psst private words")
        alice.expect(r"bobbuilder \(private\): psst private words$")
        wire = relay.seen()
    finally:
        relay.close()
    assert len(wire) > 200, "the relay saw (almost) nothing: the clients bypassed it"
    secrets_on_wire = [s for s in (b"the eagle lands", b"alicewonder", b"bobbuilder", b"private words") if s in wire]
    if secure:
        assert secrets_on_wire == []
    else:
        assert len(secrets_on_wire) == 4  # the same test sees them without --secure: it can fail


@pytest.mark.timeout(30)
def test_a_secure_broker_keeps_its_key_pair(procs: Processes, tmp_path: Path) -> None:
    first, key = secure_broker(procs, tmp_path)
    assert first.matching(r"^broker: key pair made in ")
    assert first.stop() == 0
    second, again = secure_broker(procs, tmp_path)
    assert second.matching(rf"^broker: key pair kept in .*; public key {re.escape(key)}$")
    assert again == key


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "case, reason",
    [
        ("wrong-key", r"--server-key is not this broker's public key"),
        ("no-key", r"requires encryption"),
    ],
)
def test_a_client_without_the_right_key_is_told_why(procs: Processes, tmp_path: Path, case: str, reason: str) -> None:
    broker, _ = secure_broker(procs, tmp_path)
    other_key = zmq.curve_keypair()[0].decode()
    args = (f"--server-key={other_key}", *client_keys(tmp_path, "eve")) if case == "wrong-key" else ()
    started = time.monotonic()
    eve = procs.client("eve", broker.port, *args)
    eve.assert_exit(EXIT_REFUSED, timeout=REFUSAL_TIME)
    assert time.monotonic() - started < REFUSAL_TIME
    assert eve.matching(rf"^client: .*{reason}", err=True), eve.describe()


@pytest.mark.timeout(30)
def test_a_secure_client_of_a_plain_broker_is_told_why(procs: Processes, tmp_path: Path) -> None:
    broker = procs.broker(5.0)
    eve = procs.client("eve", broker.port, "--server-key=" + zmq.curve_keypair()[0].decode(), *client_keys(tmp_path, "e"))
    eve.assert_exit(EXIT_REFUSED, timeout=REFUSAL_TIME)
    assert eve.matching(r"^client: .*(does not use encryption|not this broker's public key)", err=True)


@pytest.mark.timeout(40)
def test_allow_admits_listed_keys_only(procs: Processes, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    # alice's key pair is made by the key tool, and her public key file copied into the allow folder.
    from chat.keys import ensure_keypair

    ensure_keypair(tmp_path / "alice-keys", "client")
    (allowed / "alice.key").write_bytes((tmp_path / "alice-keys" / "client.key").read_bytes())
    broker, key = secure_broker(procs, tmp_path, "--allow", str(allowed))

    alice = procs.join("alice", broker, f"--server-key={key}", *client_keys(tmp_path, "alice"))
    mallory = procs.client("mallory", broker.port, f"--server-key={key}", *client_keys(tmp_path, "mallory"))
    mallory.assert_exit(EXIT_REFUSED, timeout=REFUSAL_TIME)
    assert mallory.matching(r"^client: the broker refused this client's key", err=True), mallory.describe()
    alice.send("still here")
    alice.close_stdin()
    alice.assert_exit(0)


@pytest.mark.timeout(40)
def test_a_name_belongs_to_the_key_that_first_used_it(procs: Processes, tmp_path: Path) -> None:
    broker, key = secure_broker(procs, tmp_path)
    alice = procs.join("alice", broker, f"--server-key={key}", *client_keys(tmp_path, "alice"))
    alice.close_stdin()
    alice.assert_exit(0)

    impostor = procs.client("ALICE", broker.port, f"--server-key={key}", *client_keys(tmp_path, "impostor"))
    impostor.assert_exit(EXIT_REFUSED, timeout=REFUSAL_TIME)
    assert impostor.matching(r"^client: the name ALICE belongs to another key", err=True), impostor.describe()

    again = procs.join("alice", broker, f"--server-key={key}", *client_keys(tmp_path, "alice"))
    again.close_stdin()
    again.assert_exit(0)


# --------------------------------------------------------------------------- hostile input


@pytest.mark.timeout(30)
def test_a_flood_is_slowed_down_and_others_do_not_notice(procs: Processes, ctx: zmq.Context) -> None:
    broker = procs.broker(5.0, "--rate", "2", "--burst", "5")
    bob = procs.join("bob", broker)
    carol = procs.join("carol", broker)
    flooder = dealer(ctx, broker)
    kind, _ = request(flooder, "JOIN", {"name": "flood", "token": "t"})
    assert kind == "WELCOME"
    for i in range(30):
        flooder.send_multipart([b"chat/2", b"SAY", json.dumps({"id": f"f{i}", "text": f"spam {i}"}).encode()])
    answers = [reply(flooder) for _ in range(30)]
    acked = [body["id"] for kind, body in answers if kind == "ACK"]
    limited = [body for kind, body in answers if kind == "ERROR"]
    assert acked == [f"f{i}" for i in range(5)]  # the burst, and not a line more
    assert len(limited) == 25 and all(e["code"] == "rate_limited" and "slow down" in e["reason"] for e in limited)

    carol.send("carol is not slowed down")
    bob.expect(said("carol", "carol is not slowed down"))
    spam = bob.matching(r"^\[.*\] flood: spam")
    assert spam == [f for f in spam if int(f.rsplit(" ", 1)[1]) < 5]


@pytest.mark.timeout(30)
def test_sessions_are_capped_and_unjoined_sockets_cost_nothing(procs: Processes, ctx: zmq.Context) -> None:
    broker = procs.broker(5.0, "--max-sessions", "3")
    # Hundreds of identities that never join: each gets an error, none is remembered.
    strangers = [dealer(ctx, broker) for _ in range(200)]
    for sock in strangers:
        sock.send_multipart([b"chat/2", b"PING", b"{}"])
    for sock in strangers:
        assert reply(sock)[1]["code"] == "not_joined"
    users = [dealer(ctx, broker) for _ in range(4)]
    answers = [request(sock, "JOIN", {"name": f"user{i}"}) for i, sock in enumerate(users)]
    assert [kind for kind, _ in answers[:3]] == ["WELCOME"] * 3
    assert answers[3][0] == "ERROR" and answers[3][1]["code"] == "server_full"


@pytest.mark.timeout(30)
def test_escape_sequences_in_names_are_refused(procs: Processes, ctx: zmq.Context) -> None:
    broker = procs.broker(5.0)
    sock = dealer(ctx, broker)
    for name in ("\x1b[31mred", "evil\x07", "\u202eflip", "osc\x1b]0;title\x07"):
        kind, body = request(sock, "JOIN", {"name": name})
        assert kind == "ERROR" and body["code"] == "name_invalid", (name, body)


@pytest.mark.timeout(30)
def test_oversized_frames_are_dropped_before_python_and_the_broker_goes_on(
    procs: Processes, ctx: zmq.Context
) -> None:
    broker = procs.broker(5.0, "--max-text", "100")
    bob = procs.join("bob", broker)
    alice = procs.join("alice", broker)
    huge = dealer(ctx, broker)
    huge.send_multipart([b"chat/2", b"SAY", b"x" * (200 * 1024)])  # beyond ZMQ_MAXMSGSIZE: disconnected
    long_text = dealer(ctx, broker)
    assert request(long_text, "JOIN", {"name": "wordy"})[0] == "WELCOME"
    kind, body = request(long_text, "SAY", {"id": "1", "text": "y" * 101})
    assert kind == "ERROR" and body["code"] == "bad_field" and "100" in body["reason"]
    alice.send("after the big frames")
    bob.expect(said("alice", "after the big frames"))


def random_frames(rng: random.Random) -> list[bytes]:
    """Garbage, truncations and near misses of valid requests."""
    valid = [
        [b"chat/2", b"SAY", json.dumps({"id": "z", "text": "hi"}).encode()],
        [b"chat/2", b"JOIN", json.dumps({"name": "fuzzer"}).encode()],
        [b"chat/2", b"FETCH", json.dumps({"room": "#general", "first": 1, "last": 3}).encode()],
        [b"chat/2", b"PM", json.dumps({"id": "q", "to": "bob", "text": "x"}).encode()],
    ]
    choice = rng.randrange(5)
    if choice == 0:
        return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 6))]
    frames = [bytearray(f) for f in rng.choice(valid)]
    if choice == 1:  # truncated body
        frames[-1] = frames[-1][: rng.randrange(len(frames[-1]))]
    elif choice == 2:  # a flipped byte somewhere
        part = rng.randrange(len(frames))
        if frames[part]:
            frames[part][rng.randrange(len(frames[part]))] ^= 1 << rng.randrange(8)
    elif choice == 3:  # frames dropped or added
        frames = frames[: rng.randrange(len(frames))] + [bytearray(rng.randbytes(8))] * rng.randrange(2)
    return [bytes(f) for f in frames] or [b""]


@pytest.mark.timeout(60)
def test_random_frames_at_a_live_broker_lose_nothing_for_real_clients(procs: Processes, ctx: zmq.Context) -> None:
    broker = procs.broker(5.0, "--rate", "0")
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    rng = random.Random(20261126)
    attackers = [dealer(ctx, broker) for _ in range(8)]
    lines = [f"line {i} of the real conversation" for i in range(60)]
    for i, line in enumerate(lines):
        alice.send(line)
        for _ in range(40):
            rng.choice(attackers).send_multipart(random_frames(rng))
    for line in lines:
        bob.expect(said("alice", line))  # every line, in order (expect moves forward only)
    assert len(bob.matching(r"alice: line \d+ of the real conversation$")) == len(lines)  # none twice
    probe = dealer(ctx, broker)
    assert request(probe, "JOIN", {"name": "probe"})[0] == "WELCOME"
    assert request(probe, "PING", {})[0] == "PONG"
    assert broker.proc.poll() is None


def free_udp_port() -> int:
    """A UDP port the OS had free a moment ago, for one test's beacons on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(60)
def test_a_beacon_key_is_trusted_on_first_use_and_a_changed_one_refused_without_root(
    procs: Processes, tmp_path: Path
) -> None:
    """The TOFU check on 127.0.0.1 (the LAN test needs root for its network namespaces): the same
    address and port, announcing another key, is refused with exit 3 and the reason."""
    beacons = ("--announce", "--announce-to", "127.0.0.1", "--beacon-port", str(free_udp_port()))
    first, key = secure_broker(procs, tmp_path, *beacons)
    # No --host: the client listens for the beacon, takes the key from it, and leaves at end of input.
    listen = ("--name", "alice", "--beacon-port", beacons[-1], "--listen", "1.5", *client_keys(tmp_path, "alice"))
    alice = procs.process("client.py", *listen)
    alice.assert_exit(0, timeout=REFUSAL_TIME)
    assert alice.matching(r"^client: first time with this broker: its key has fingerprint [0-9a-f:]{47}; trusting", err=True)
    assert alice.matching(r"^\*\*\* joined as alice", err=True), alice.describe()
    assert first.stop() == 0

    other = ("--secure", "--key-dir", str(tmp_path / "impostor-keys"), "--port", str(first.port))
    impostor = procs.broker(5.0, *other, "--pub-port", str(first.pub_port), *beacons)
    assert not impostor.matching(re.escape(key))
    again = procs.process("client.py", *listen)
    again.assert_exit(EXIT_REFUSED, timeout=REFUSAL_TIME)
    assert again.matching(
        rf"^client: REFUSING TO CONNECT: the broker at 127\.0\.0\.1:{first.port} now announces a DIFFERENT key", err=True
    ), again.describe()
    assert not again.matching(r"^\*\*\* joined", err=True)
