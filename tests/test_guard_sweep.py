"""The guard's periodic sweep: a few connections at a time, in turn, so that a crowd costs no more per tick."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import zmq

from chat.bench.floods import endless_part, zmtp_null_dealer
from chat.broker import guard
from conftest import HOST

pytestmark = pytest.mark.skipif(not guard.SUPPORTED, reason="per-connection byte counts (TCP_INFO) are Linux's")
BUDGET = 256 * 1024
PEERS = 6


@pytest.fixture
def router() -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    try:
        yield sock
    finally:
        ctx.destroy(linger=0)


@pytest.mark.timeout(30)
def test_a_sweep_of_one_connection_at_a_time_reaches_the_endless_one(router: zmq.Socket) -> None:
    cuts: list[str] = []
    watch = guard.PendingGuard([router], secure=False, budget=BUDGET, notice=cuts.append)
    peers: list[socket.socket] = []
    try:
        router.bind(f"tcp://{HOST}:0")
        port = int(router.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        peers = [zmtp_null_dealer(HOST, port) for _ in range(PEERS)]
        deadline = time.monotonic() + 10
        while len(watch.accounted) < PEERS and time.monotonic() < deadline:
            watch.follow_connections()  # polling the monitor with a deadline: libzmq accepts in its own thread
        assert len(watch.accounted) == PEERS
        attacker, part, sent = peers[-1], endless_part(), 0
        while sent < 4 * BUDGET:
            attacker.sendall(part)
            sent += len(part)
        checked: list[int] = []
        real_check = watch._check
        watch._check = lambda fds: (checked.extend(fds), real_check(fds))  # type: ignore[method-assign]
        deadline = time.monotonic() + 10
        while not cuts and time.monotonic() < deadline:
            watch.sweep(count=1)
        assert cuts and cuts[0].startswith("cut a connection from 127.0.0.1"), cuts
        assert len(checked) <= 2 * PEERS  # one connection per sweep, in turn, until the endless one
        assert len(set(checked[:PEERS])) == min(len(checked), PEERS)  # in turn: none twice in a round
    finally:
        for peer in peers:
            peer.close()
        watch.close()
