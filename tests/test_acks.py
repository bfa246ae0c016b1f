"""ACKS: a client that JOINs with batch_acks gets one reply for the lines the broker handled together."""

from __future__ import annotations

import pytest
import zmq

from chat import protocol as p
from chat.broker.core import Broker, Reply
from chat.client import events as ev
from tests.conftest import Processes
from tests.test_broker_core import TIMEOUT, Clock, replies, send
from tests.test_client_core import direct, joined, sent

A, B = b"\x00A", b"\x00B"


@pytest.fixture
def core() -> Broker:
    return Broker(pub_port=5556, clock=Clock(), session_timeout=TIMEOUT)


def batch(core: Broker, identity: bytes, lines: int, prefix: str) -> list:
    out = []
    for n in range(lines):
        out += send(core, identity, p.Say(f"{prefix}{n}", f"line {n}"))
    return core.pack_acks(out)


def test_the_acks_of_a_batch_are_one_reply_to_a_client_that_reads_acks(core: Broker) -> None:
    send(core, A, p.Join("alice", batch_acks=True))
    send(core, B, p.Join("bob"))
    out = batch(core, A, 3, "a") + batch(core, B, 2, "b")
    (packed,) = replies(out, A)
    assert isinstance(packed, p.Acks)
    assert [(a.id, a.seq) for a in packed.each()] == [("a0", 3), ("a1", 4), ("a2", 5)]
    assert p.decode_broker(p.encode(packed)) == packed  # it crosses the wire
    assert [type(m) for m in replies(out, B)] == [p.Ack, p.Ack]  # an older client: one ACK a line


def test_a_single_ack_stays_an_ack_and_the_rest_keeps_its_order(core: Broker) -> None:
    send(core, A, p.Join("alice", batch_acks=True))
    out = core.pack_acks(send(core, A, p.Say("x", "hello")) + send(core, A, p.Ping()))
    assert [type(r.message) for r in out if isinstance(r, Reply)] == [p.Ack, p.Pong]


def test_a_resent_line_in_acks_is_acknowledged_as_the_first_time(core: Broker) -> None:
    send(core, A, p.Join("alice", batch_acks=True))
    first = replies(batch(core, A, 2, "a"), A)[0]
    again = replies(batch(core, A, 2, "a"), A)[0]  # the same ids: resends, not published again
    assert isinstance(first, p.Acks) and again == first


def test_the_client_takes_each_entry_of_acks_as_an_ack() -> None:
    client = joined()
    ids = []
    for n in range(3):
        actions = client.on_input(f"line {n}", 1.0 + n / 100)
        (say,) = [m for m in sent(actions) if isinstance(m, p.Say)]
        ids.append(say.id)
    actions = direct(client, p.Acks([(i, 5 + n, 9) for n, i in enumerate(ids)]), 1.1)
    assert [(a.id, a.seq) for a in actions if isinstance(a, ev.Acked)] == [(i, 5 + n) for n, i in enumerate(ids)]
    assert not client.unacked


def test_a_broker_answers_a_burst_of_lines_in_fewer_replies(procs: Processes, zctx: zmq.Context) -> None:
    broker = procs.broker(5.0, "--rate", "0")  # no flood control: the burst is the point
    sock = zctx.socket(zmq.DEALER)
    sock.connect(broker.endpoint)
    sock.send_multipart(p.encode(p.Join("alice", batch_acks=True)))
    assert sock.poll(10_000) and isinstance(p.decode_broker(sock.recv_multipart()), p.Welcome)
    lines = 200
    for n in range(lines):
        sock.send_multipart(p.encode(p.Say(f"id{n}", f"line {n}")))
    acked, messages = [], 0
    while len(acked) < lines:
        assert sock.poll(10_000), f"only {len(acked)} of {lines} lines acknowledged"
        reply = p.decode_broker(sock.recv_multipart())
        messages += 1
        acked += reply.each() if isinstance(reply, p.Acks) else [reply]
    assert [a.id for a in acked] == [f"id{n}" for n in range(lines)]
    assert [a.seq for a in acked] == list(range(acked[0].seq, acked[0].seq + lines))
    assert messages < lines  # some arrived together
