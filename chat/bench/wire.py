"""The frames the load generator sends and checks, written straight from docs/PROTOCOL.md.

The load generator is a client of the wire contract, not of the reference client: it builds its frames
with byte formatting (cheap, so that the generator is not what limits a run) and checks every event it
receives. Towards the baselines, which do not parse anything, it sends frames shaped like the broker's
events and numbers them itself.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import msgspec
import zmq

from chat.protocol import DEFAULT_ROOM, PROTOCOL_TAG, topic_frame

TOPIC = topic_frame(DEFAULT_ROOM)
PUBLISHED = b"EVENTS"  # the type frame of every published message
# Plain ints: pyzmq's constants are enum flags, and ``int & flag`` costs microseconds in a hot loop.
EVENTS, POLLIN, RCVMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE)


class WireEvent(msgspec.Struct):
    """What the receivers read of an event (other fields are skipped by the decoder, in C)."""

    seq: int
    text: str = ""
    src: int | None = None  # a baseline's events only: which sender, and its line number
    n: int = 0


class _Published(msgspec.Struct):
    events: list[WireEvent]


class _Seq(msgspec.Struct):
    seq: int


class _Seqs(msgspec.Struct):
    events: list[_Seq]


_decode_published = msgspec.json.Decoder(_Published).decode
_decode_seqs = msgspec.json.Decoder(_Seqs).decode  # the fan-out needs no more: skipping the text is cheaper


class WireError(Exception):
    """A frame that breaks the contract: the run reports it instead of counting the message."""


def request(kind: bytes, body: dict[str, Any]) -> list[bytes]:
    """A direct message (DEALER -> ROUTER)."""
    return [PROTOCOL_TAG, kind, json.dumps(body, separators=(",", ":")).encode()]


def join(name: str, token: str, batch_acks: bool = False) -> list[bytes]:
    body: dict[str, Any] = {"name": name, "token": token}
    if batch_acks:
        body["batch_acks"] = True
    return request(b"JOIN", body)


def acks(kind: bytes, body: dict[str, Any]) -> list[tuple[str, int]]:
    """(id, seq) of each line an ACK or ACKS reply acknowledges (none for another reply)."""
    if kind == b"ACK":
        return [(body["id"], body["seq"])]
    if kind == b"ACKS":
        return [(msg_id, seq) for msg_id, seq, _ in body["acks"]]
    return []


PING = request(b"PING", {})


def say(msg_id: str, text: str) -> list[bytes]:
    """A SAY; ``text`` is plain ASCII chosen by the bench, so no JSON escaping is needed."""
    return [PROTOCOL_TAG, b"SAY", b'{"id":"%s","text":"%s"}' % (msg_id.encode(), text.encode())]


def raw_event(seq: int, text: str, src: int = 0, n: int = 0) -> list[bytes]:
    """What a baseline relays: a published message of one event like the broker's, numbered by the sender
    (``src``, ``n``: per sender)."""
    body = b'{"events":[{"seq":%d,"src":%d,"n":%d,"ts":0,"kind":"msg","name":"bench","text":"%s"}]}' % (
        seq, src, n, text.encode()
    )
    return [TOPIC, PROTOCOL_TAG, PUBLISHED, body]


def reply(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """(type, body) of a direct message from the broker."""
    if len(frames) != 3 or frames[0] != PROTOCOL_TAG:
        raise WireError(f"a reply of {len(frames)} frames starting {frames[0][:16]!r}")
    body = json.loads(frames[2])
    if not isinstance(body, dict):
        raise WireError("a reply body that is not an object")
    return frames[1], body


def recv_events(sock: zmq.Socket) -> list[WireEvent]:
    """The events of the next published message on ``sock``, its frames checked (``zmq.Again``: none queued)."""
    return _events(recv_published(sock), _decode_published)


def recv_seqs(sock: zmq.Socket) -> list[int]:
    """Only the seqs of the next published message on ``sock`` (each event is checked for one)."""
    return [event.seq for event in _events(recv_published(sock), _decode_seqs)]


def _events(body: bytes, decode: Callable[[bytes], Any]) -> list[Any]:
    try:
        events = decode(body).events
    except msgspec.DecodeError as exc:  # ValidationError is one too
        raise WireError(f"a published body that breaks the contract ({exc}): {body[:60]!r}") from None
    if not events:
        raise WireError("a published message without events")
    return events  # type: ignore[no-any-return]


def recv_published(sock: zmq.Socket) -> bytes:
    """The body of the next published message on ``sock``, its frames checked (``zmq.Again``: none queued).

    Four plain ``recv`` calls and one RCVMORE check: half the cost of ``recv_multipart`` (which asks
    RCVMORE after every frame), so that the receivers keep up. A message of another shape raises
    ``WireError`` (its remaining frames are read and dropped), so it is counted, never silently skipped.
    """
    recv = sock.recv
    topic = recv(zmq.NOBLOCK)  # zmq.Again: nothing queued
    try:
        tag, kind, body = recv(zmq.NOBLOCK), recv(zmq.NOBLOCK), recv(zmq.NOBLOCK)
    except zmq.Again:
        raise WireError("a published message of fewer than 4 frames") from None
    if sock.get(RCVMORE):
        while sock.get(RCVMORE):
            sock.recv(zmq.NOBLOCK)
        raise WireError("a published message of more than 4 frames")
    if topic != TOPIC or tag != PROTOCOL_TAG or kind != PUBLISHED:
        raise WireError(f"a published message framed {topic[:16]!r} {tag[:16]!r} {kind[:16]!r}")
    return body


def send(sock: zmq.Socket, frames: list[bytes]) -> None:
    """``send_multipart`` without its per-frame type checks (the bench's frames are bytes)."""
    for frame in frames[:-1]:
        sock.send(frame, zmq.SNDMORE)
    sock.send(frames[-1])


def padded(prefix: str, size: int) -> str:
    """``prefix`` padded with dots to ``size`` characters (a line of a fixed size that says where it is from)."""
    return (prefix + " ").ljust(size, ".")[: max(size, len(prefix))]
