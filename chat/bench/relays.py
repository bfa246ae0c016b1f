"""The two baselines the broker is measured against, each run as its own process.

- limit: libzmq's own forwarding device, ``zmq.proxy`` from a PULL to a PUB, entirely in C. What
  ZeroMQ itself costs on this machine; no Python program can forward faster.
- floor: a bare Python relay, ``recv_multipart`` on a ROUTER and ``send_multipart`` on a PUB of every
  frame but the identity. No parsing, no state: what the broker would cost if its decisions were free.

Both bind on 127.0.0.1 with OS-chosen ports, queue without limit (high-water marks 0, so nothing is
dropped by design) and print where they listen in the broker's format. They run until killed.
"""

from __future__ import annotations

import sys

import zmq

from chat.protocol import endpoint

HOST = "127.0.0.1"


def _bind(ctx: zmq.Context, kind: int) -> tuple[zmq.Socket, int]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint(HOST, 0))
    return sock, int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])


def _announce(label: str, inlet: str, port: int, pub_port: int) -> None:
    print(
        f"{label}: listening on {endpoint(HOST, port)} ({inlet}) and {endpoint(HOST, pub_port)} (PUB: fan-out)",
        flush=True,
    )


def serve_limit() -> int:
    ctx = zmq.Context()
    pull, port = _bind(ctx, zmq.PULL)
    pub, pub_port = _bind(ctx, zmq.PUB)
    _announce("limit", "PULL: zmq.proxy", port, pub_port)
    try:
        zmq.proxy(pull, pub)
    except (KeyboardInterrupt, zmq.ContextTerminated):
        pass
    return 0


def serve_floor() -> int:
    ctx = zmq.Context()
    router, port = _bind(ctx, zmq.ROUTER)
    pub, pub_port = _bind(ctx, zmq.PUB)
    _announce("floor", "ROUTER: bare relay", port, pub_port)
    recv, send = router.recv_multipart, pub.send_multipart
    try:
        while True:
            send(recv()[1:])  # drop the identity frame: the rest is the event as the sender made it
    except KeyboardInterrupt:
        pass
    return 0


SERVERS = {"limit": serve_limit, "floor": serve_floor}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SERVERS:
        sys.exit(f"usage: python -m chat.bench.relays {{{'|'.join(SERVERS)}}}")
    sys.exit(SERVERS[sys.argv[1]]())
