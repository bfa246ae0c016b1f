"""Nothing is lost: a paused subscriber and a killed broker, with real processes."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import zmq

from conftest import Processes, said

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
