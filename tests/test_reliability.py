"""Nothing is lost: a paused subscriber, a killed broker, a cut link, with real processes."""

from __future__ import annotations

import json
import re
import secrets
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
import zmq

from conftest import Processes, Relay, private, said

LINE_RE = re.compile(r"^\[[^\]]+\] alice: (?P<n>\d+) ")


def numbers(lines: list[str]) -> list[int]:
    return [int(m["n"]) for m in map(LINE_RE.match, lines) if m]


@pytest.mark.timeout(60)
def test_a_paused_subscriber_overflows_its_high_water_mark_and_still_loses_nothing(procs: Processes) -> None:
    broker = procs.broker(5.0, "--pub-hwm", "10", "--rate", "0")
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    # The control: a bare SUB that does not read during the burst, like bob, but recovers nothing.
    ctx = zmq.Context()
    bare = ctx.socket(zmq.SUB)
    bare.linger = 0
    bare.rcvhwm = 10
    bare.setsockopt(zmq.RCVBUF, 4096)  # else loopback's autotuned buffers may hold the whole burst
    bare.subscribe(b"#general\x00")
    bare.connect(broker.pub_endpoint)
    try:
        # The bare SUB is a slow joiner too: send markers until one reaches it (bounded), then drain it.
        for attempt in range(50):
            alice.send(f"marker {attempt}")
            bob.expect(said("alice", f"marker {attempt}"))
            if bare.poll(200):
                break
        else:
            pytest.fail("the bare subscriber never got connected")
        while bare.poll(200):
            bare.recv_multipart()

        total = 1500
        padding = "x" * 1900  # with its number, just under the 2000-character limit
        bob.signal(signal.SIGSTOP)
        try:
            for n in range(total):
                alice.send(f"{n} {padding}")
            # Everything is published once alice has had it all acknowledged: end her input and wait.
            alice.close_stdin()
            alice.assert_exit(0, timeout=30)
        finally:
            bob.signal(signal.SIGCONT)
        bob.expect(said("alice", f"{total - 1} {padding}"), timeout=30)
        got = numbers(bob.stdout())
        assert got == list(range(total)), "every line exactly once, in order"

        received = 0
        while bare.poll(200):
            received += len(json.loads(bare.recv_multipart()[3])["events"])
        assert received < total, "the bare subscriber lost nothing: the high-water mark never overflowed"
    finally:
        bare.close()
        ctx.term()


@pytest.mark.timeout(90)
def test_a_broker_killed_mid_stream_and_restarted_loses_nothing_acknowledged(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    broker = procs.broker(2.0, "--db", str(db), "--rate", "0")
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    total = 400
    for n in range(total // 2):
        alice.send(f"{n} of the stream")
    bob.expect(said("alice", "50 of the stream"))
    broker.kill()  # SIGKILL in the middle of the stream: bob has not seen all of the first half yet
    for n in range(total // 2, total):  # typed before and after alice notices
        alice.send(f"{n} of the stream")
    alice.expect_err(r"^\*\*\* lost the broker")
    alice.send(f"{total} typed during the outage")

    restarted = procs.restart(broker)
    alice.expect_err(r"^\*\*\* back in: reconnected to the broker$", timeout=20)
    bob.expect(said("alice", f"{total} typed during the outage"), timeout=30)
    alice.close_stdin()
    alice.assert_exit(0, timeout=20)

    got = numbers(bob.stdout())
    assert got == list(range(total + 1)), "every line exactly once, in order, the outage's last"

    # What the broker acknowledged is what it stored: each line once, in sequence.
    assert restarted.stop() == 0  # it keeps its database locked while it runs
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, text FROM events WHERE kind = 'msg' ORDER BY seq").fetchall()
    stored = [int(text.split(" ", 1)[0]) for _, text in rows]
    assert stored == list(range(total + 1))


@pytest.mark.timeout(30)
def test_a_history_range_out_of_bounds_gets_a_clear_error(procs: Processes) -> None:
    broker = procs.broker(5.0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(broker.endpoint)
    try:
        sock.send_multipart([b"chat/2", b"JOIN", json.dumps({"name": "asker"}).encode()])
        assert sock.poll(5000) and sock.recv_multipart()[1] == b"WELCOME"
        for first, last in ((1, 999), (0, 1), (5, 2)):
            sock.send_multipart([b"chat/2", b"FETCH", json.dumps({"room": "#general", "first": first, "last": last}).encode()])
            assert sock.poll(5000)
            _, kind, body = sock.recv_multipart()
            error = json.loads(body)
            assert kind == b"ERROR" and error["code"] == "history_range" and error["ref"] == "FETCH", error
            assert error["reason"]
    finally:
        sock.close()
        ctx.term()


@pytest.mark.timeout(60)
def test_a_pm_sent_while_its_target_reconnects_is_delivered_once(
    procs: Processes, relays: Callable[..., Relay]
) -> None:
    """bob's link breaks; libzmq reconnects him under a new identity, which the broker does not know
    (``not_joined``) until bob's JOIN takes his session back. A PM sent meanwhile went to the stale
    identity, and the ROUTER dropped it, while alice got her ACK. And a line bob typed meanwhile is
    refused with ``not_joined``: bob rejoins and sends it again."""
    broker = procs.broker(20.0)  # the default: nobody times out during the cut, however loaded the machine
    link = relays([broker.port])
    bob = procs.join("bob", broker, "--port", str(link.port))  # the later --port wins: through the link
    alice = procs.join("alice", broker)
    alice.send("/pm bob before the cut")
    bob.expect(private("alice", "before the cut"))

    link.cut()
    alice.send("/pm bob during the cut")
    alice.send("after the pm")  # bob's SUB does not go through the link: this says the PM was handled
    bob.expect(said("alice", "after the pm"))
    bob.send("typed during the cut")
    link.restore()

    bob.expect_err(r"^\*\*\* back in: reconnected to the broker$", timeout=15)
    bob.expect(private("alice", "during the cut"))
    alice.expect(said("bob", "typed during the cut"))
    alice.send("/pm bob after the cut")
    bob.expect(private("alice", "after the cut"))
    alice.send("/who")
    alice.expect(r"online \(2\): alice, bob")  # bob was never dropped and announced
    bob.send("/quit")
    bob.assert_exit(0, timeout=15)
    assert len(bob.matching(r"\(private\): ")) == 3, bob.context()
    assert len(alice.matching(said("bob", "typed during the cut"))) == 1


class RawPeer:
    """A DEALER that speaks the protocol by hand, to resend exactly what a test wants resent."""

    def __init__(self, ctx: zmq.Context, port: int, name: str, token: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.name, self.token = name, token

    def request(self, kind: str, body: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        self.sock.send_multipart([b"chat/2", kind.encode(), json.dumps(body).encode()])
        assert self.sock.poll(10_000), f"no answer to {kind}"
        _, answer, raw = self.sock.recv_multipart()
        return answer, json.loads(raw)

    def join(self) -> None:
        answer, body = self.request("JOIN", {"name": self.name, "token": self.token})
        assert answer == b"WELCOME", body

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(60)
def test_lines_and_pms_resent_to_a_restarted_broker_are_acked_as_before_and_not_shown_again(
    procs: Processes, tmp_path: Path
) -> None:
    """The ids the broker remembers are reloaded from its store: a resend whose first ACK was lost in
    the crash gets that ACK again (the same seq and time stamp) and reaches nobody a second time."""
    broker = procs.broker(5.0, "--db", str(tmp_path / "history.db"))
    bob = procs.join("bob", broker)
    ctx = zmq.Context()
    alice = RawPeer(ctx, broker.port, "alice", secrets.token_hex(16))
    try:
        alice.join()
        said_ack = alice.request("SAY", {"id": "s1", "text": "said once"})
        pm_ack = alice.request("PM", {"id": "p1", "to": "bob", "text": "whispered once"})
        assert said_ack[0] == pm_ack[0] == b"ACK", (said_ack, pm_ack)
        bob.expect_all(said("alice", "said once"), private("alice", "whispered once"))
        broker.kill()
        procs.restart(broker)
        bob.expect_err(r"^\*\*\* back in: reconnected to the broker$", timeout=20)

        alice.close()
        alice = RawPeer(ctx, broker.port, "alice", alice.token)  # a new connection, as after a crash
        alice.join()
        assert alice.request("SAY", {"id": "s1", "text": "said once"}) == said_ack
        assert alice.request("PM", {"id": "p1", "to": "bob", "text": "whispered once"}) == pm_ack
        alice.request("PM", {"id": "p2", "to": "bob", "text": "the end"})
        bob.expect(private("alice", "the end"))
        assert len(bob.matching(said("alice", "said once"))) == 1, bob.context()
        assert len(bob.matching(private("alice", "whispered once"))) == 1, bob.context()
    finally:
        alice.close()
        ctx.destroy(linger=0)
