"""Property tests of the wire protocol: whatever arrives, the decoders answer with a message or a
RemoteProtocolError; valid messages survive a round trip; neutralise() always yields safe text."""

from __future__ import annotations

import json
import typing

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chat import protocol as p
from chat.errors import RemoteProtocolError

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # keep the work tree clean
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
QUICK = settings(FUZZ, max_examples=150)  # properties of simple generated values need fewer examples

ALL_TYPES = [*p.CLIENT_MESSAGES, *p.BROKER_MESSAGES, p.Event.TYPE]
C1 = [chr(c) for c in range(0x80, 0xA0)]
BIDI = sorted(p._BIDI_CONTROLS)
HOSTILE_CHARS = ["\x1b", "\x07", "\x00", "\n", "\r", "\t", "\x7f", *C1, *BIDI]

# Text that may hold anything a JSON string escape can produce, lone surrogates included.
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def loosely_typed(hint: typing.Any) -> st.SearchStrategy[typing.Any]:
    """Values of the right JSON type for a field (often), or of any type (sometimes)."""
    origin = typing.get_origin(hint)
    if hint is str:
        right = any_text
    elif hint is int:
        right = st.integers()
    elif origin is list and typing.get_args(hint)[0] is str:
        right = st.lists(any_text, max_size=4)
    elif origin is list:
        right = st.lists(st.dictionaries(st.sampled_from(["seq", "ts", "kind", "name", "text"]), json_values))
    else:
        right = st.dictionaries(any_text, st.integers(), max_size=4)
    return st.one_of(right, right, right, json_values)


@st.composite
def shaped_body(draw: st.DrawFn, kind: bytes) -> bytes:
    """A JSON body with (mostly) the fields that ``kind`` has, so that decoding gets past the type checks."""
    cls = {**p.CLIENT_MESSAGES, **p.BROKER_MESSAGES, b"EVENT": p.Event}.get(kind)
    body: dict[str, typing.Any] = {}
    if cls is not None:
        hints = typing.get_type_hints(cls)
        for f in msgspec.structs.fields(cls):
            if draw(st.integers(0, 9)) > 0:
                body[f.name] = draw(loosely_typed(hints[f.name]))
    body.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))  # unknown fields
    return json.dumps(body).encode()  # ensure_ascii: lone surrogates become \\udXXX escapes


tags = st.sampled_from([p.PROTOCOL_TAG, b"chat/1", b"chat/3", b"chat/", b"chat/2 ", b""]) | st.binary(max_size=8)
kinds = st.sampled_from(ALL_TYPES) | st.binary(max_size=8)


@st.composite
def direct_frames(draw: st.DrawFn) -> list[bytes]:
    kind = draw(kinds)
    body = draw(shaped_body(kind) | st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
    frames = [draw(tags), kind, body]
    if draw(st.integers(0, 9)) == 0:  # now and then, a wrong number of frames
        frames = draw(st.lists(st.sampled_from(frames) | st.binary(max_size=16), max_size=6))
    return frames


@st.composite
def published_frames(draw: st.DrawFn) -> list[bytes]:
    topic = draw(st.sampled_from([b"#general\x00", b"#general", b"\xff\x00", b""]) | st.binary(max_size=12))
    kind = draw(st.sampled_from([p.EVENTS, b"EVENT", b"SAY"]) | st.binary(max_size=6))
    events = draw(st.lists(shaped_body(b"EVENT"), max_size=3))
    body = draw(st.just(b'{"events":[' + b",".join(events) + b"]}") | st.binary(max_size=64))
    frames = [topic, draw(tags), kind, body]
    if draw(st.integers(0, 9)) == 0:
        frames = draw(st.lists(st.sampled_from(frames) | st.binary(max_size=16), max_size=6))
    return frames


any_frames = st.lists(st.binary(max_size=40), max_size=6)
NESTED = [p.PROTOCOL_TAG, b"SAY", b"[" * 3000]


def decode_fully(decoder: typing.Callable[[list[bytes]], p.Message], frames: list[bytes]) -> p.Message | None:
    """Decode as a receiver does (a HISTORY's events too); None when the frames are refused."""
    try:
        message = decoder(frames)
        if isinstance(message, p.History):
            p.history_events(message)
    except RemoteProtocolError as exc:
        assert exc.code in CODES
        return None
    assert isinstance(message, p.Message)
    return message


CODES = {
    p.BAD_FRAMES, p.BAD_VERSION, p.BAD_TYPE, p.BAD_JSON, p.BAD_FIELD, p.TOO_LARGE, p.NAME_INVALID, p.HISTORY_RANGE,
    p.ROOM_INVALID,
}


# --------------------------------------------------------------------------- anything in


@FUZZ
@given(any_frames | direct_frames())
@example(NESTED)
def test_decode_client_returns_a_message_or_raises_remote_protocol_error(frames: list[bytes]) -> None:
    decode_fully(p.decode_client, frames)


@FUZZ
@given(any_frames | direct_frames())
@example([p.PROTOCOL_TAG, b"HISTORY", b'{"room":"#general","events":' + b"[" * 3000])
def test_decode_broker_returns_a_message_or_raises_remote_protocol_error(frames: list[bytes]) -> None:
    decode_fully(p.decode_broker, frames)


@FUZZ
@given(any_frames | published_frames())
@example([b"#general\x00", p.PROTOCOL_TAG, b"EVENTS", b'{"events":' + b"[" * 3000])
def test_decode_events_returns_events_or_raises_remote_protocol_error(frames: list[bytes]) -> None:
    try:
        events = p.decode_events(frames)
    except RemoteProtocolError as exc:
        assert exc.code in CODES
        return
    assert events and all(isinstance(e, p.Event) for e in events)
    p.encode_events(events)  # a client may print what it accepted: it must be valid UTF-8 again


@FUZZ
@given(st.sampled_from([p.decode_client, p.decode_broker]), direct_frames())
@example(p.decode_client, [p.PROTOCOL_TAG, b"SAY", b'{"id":"1","text":"\\ud800"}'])
def test_whatever_a_decoder_accepts_can_be_encoded_again(decoder, frames: list[bytes]) -> None:
    """The broker re-publishes what it accepts and the client prints it: both need valid UTF-8."""
    message = decode_fully(decoder, frames)
    if message is not None:
        p.encode(message)
        if isinstance(message, p.History):
            p.encode_events(p.history_events(message))


# --------------------------------------------------------------------------- round trips

names = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=p.MAX_NAME_CHARS).filter(
    lambda n: p.name_problem(n) is None
)
texts = st.text(min_size=1, max_size=300).filter(lambda t: p.text_problem(t) is None)
ids = st.text(max_size=p.MAX_ID_CHARS)
strs = st.text(max_size=40)
room_seqs = st.dictionaries(strs, st.integers(min_value=0), max_size=4)
events = st.builds(p.Event, seq=st.integers(1), ts=st.integers(0), kind=strs, name=strs, text=strs, room=strs)


rooms = st.from_regex(r"#[A-Za-z0-9_-]{1,32}", fullmatch=True)


@st.composite
def fetches(draw: st.DrawFn) -> p.Fetch:
    first = draw(st.integers(1, 10**9))
    return p.Fetch(draw(rooms), first, draw(st.integers(first, 10**9 + 1)))


client_messages = st.one_of(
    st.builds(p.Join, name=names, token=st.text(max_size=p.MAX_ID_CHARS), rooms=st.lists(rooms, max_size=4)),
    st.builds(p.Say, id=ids, text=texts, room=rooms, kind=st.sampled_from(p.SAY_KINDS)),
    st.builds(p.Pm, id=ids, to=strs, text=texts),
    st.builds(p.Who, room=st.one_of(st.just(""), rooms)),
    st.builds(p.Enter, room=rooms),
    st.builds(p.Part, room=rooms),
    st.just(p.Rooms()),
    st.builds(p.Topic, id=ids, room=rooms, text=st.text(max_size=p.MAX_TOPIC_CHARS)),
    st.just(p.Ping()),
    st.just(p.Leave()),
    fetches(),
)
broker_messages = st.one_of(
    st.builds(p.Welcome, name=names, pub_port=st.integers(0, 65535), rooms=room_seqs, heartbeat_ms=st.integers(1),
              timeout_ms=st.integers(1), history_id=strs),
    st.builds(p.Ack, id=ids, seq=st.integers(0), ts=st.integers(0)),
    st.builds(p.Error, code=strs, reason=strs, ref=strs),
    st.builds(p.Roster, room=strs, names=st.lists(names, max_size=5), ts=st.integers(0)),
    st.builds(p.Private, name=names, to=names, text=texts, ts=st.integers(0)),
    st.builds(p.Pong, rooms=room_seqs),
    st.builds(p.History, room=strs, events=st.lists(events.map(p.event_body), max_size=5)),
    st.builds(p.Bye, reason=strs),
    st.builds(p.Entered, room=strs, last_seq=st.integers(0), topic=strs),
    st.builds(p.Parted, room=strs),
    st.builds(
        p.RoomList,
        rooms=st.lists(st.fixed_dictionaries({"room": strs, "members": st.integers(0), "topic": strs}), max_size=4),
        ts=st.integers(0),
    ),
)


@QUICK
@given(client_messages)
def test_client_messages_round_trip(message: p.Message) -> None:
    assert p.decode_client(p.encode(message)) == message


@QUICK
@given(broker_messages)
def test_broker_messages_round_trip(message: p.Message) -> None:
    decoded = p.decode_broker(p.encode(message))
    assert decoded == message
    if isinstance(decoded, p.History):
        assert [p.event_body(e) for e in p.history_events(decoded)] == decoded.events


@QUICK
@given(events)
def test_events_round_trip(event: p.Event) -> None:
    [message] = p.encode_events([event])
    assert p.decode_events(message) == [event]


@QUICK
@given(st.lists(events, max_size=40))
def test_batches_round_trip_per_room_in_order(batch: list[p.Event]) -> None:
    decoded = [e for message in p.encode_events(batch) for e in p.decode_events(message)]
    for room in {e.room for e in batch}:
        assert [e for e in decoded if e.room == room] == [e for e in batch if e.room == room]
    assert len(decoded) == len(batch)


# --------------------------------------------------------------------------- neutralise

# Without lone surrogates: they are not text a terminal can show (see the UTF-8 property below).
hostile_text = st.text(st.sampled_from(HOSTILE_CHARS) | st.characters(exclude_categories=("Cs",)), max_size=60)


def is_unsafe(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or ch in p._BIDI_CONTROLS


@QUICK
@given(hostile_text)
def test_neutralise_output_has_no_controls_and_no_bidi(text: str) -> None:
    out = p.neutralise(text)
    assert not [ch for ch in out if is_unsafe(ch)]
    assert p.neutralise(out) == out  # safe text stays as it is


@QUICK
@given(hostile_text)
def test_neutralise_changes_only_unsafe_characters(text: str) -> None:
    """Character by character: safe ones stay, each unsafe one becomes a short visible stand-in."""
    assert p.neutralise(text) == "".join(p.neutralise(ch) for ch in text)
    for ch in text:
        if is_unsafe(ch):
            assert p.neutralise(ch) in ("^" + chr(ord(ch) + 0x40), "^?", "\ufffd", " ")
        else:
            assert p.neutralise(ch) == ch


@QUICK
@given(st.text(st.characters(exclude_categories=()), max_size=40))
@example("lone \ud800 surrogate")
def test_neutralise_output_can_be_written_as_utf8(text: str) -> None:
    p.neutralise(text).encode("utf-8")
