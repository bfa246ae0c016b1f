"""The wire protocol on its own: frames <-> messages, every validation rule, and neutralise()."""

from __future__ import annotations

import json

import pytest

from chat import protocol as p
from chat.errors import RemoteProtocolError

TAG = b"chat/2"


def published(event: p.Event) -> list[bytes]:
    """The one PUB message that carries ``event`` alone."""
    [message] = p.encode_events([event])
    return message


def events_frames(room: bytes, *events: dict) -> list[bytes]:
    return [room, TAG, b"EVENTS", json.dumps({"events": list(events)}).encode()]

CLIENT_SAMPLES = [
    p.Join("alice"),
    p.Join("alice", token="0f" * 16),
    p.Say("a1-1", "hello", "#general", p.KIND_MSG),
    p.Say("a1-2", "waves", "#general", p.KIND_ACTION),
    p.Pm("a1-3", "Bob", "psst"),
    p.Who(),
    p.Who("#general"),
    p.Ping(),
    p.Leave(),
    p.Fetch("#general", 3, 7),
]

BROKER_SAMPLES = [
    p.Welcome("alice", 5556, {"#general": 41}, 1666, 5000, "9f2c1a7e5b3d4c6a"),
    p.Ack("a1-1", 43, 1764190001456),
    p.Error(p.NO_SUCH_USER, "nobody called carol is online", "a1-3"),
    p.Roster("", ["alice", "Bob"], 1764190002000),
    p.Private("alice", "bob", "psst", 1764190002000),
    p.Pong({"#general": 43}),
    p.History("#general", [{"seq": 1, "ts": 5, "kind": "join", "name": "alice", "text": ""}]),
    p.Bye("goodbye"),
]


def frames(kind: bytes, body: object, tag: bytes = TAG) -> list[bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [tag, kind, raw]


def refused(frames_: list[bytes], decoder=p.decode_client) -> str:
    """The error code with which ``decoder`` refuses ``frames_``."""
    with pytest.raises(RemoteProtocolError) as info:
        decoder(frames_)
    return info.value.code


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("message", CLIENT_SAMPLES, ids=lambda m: type(m).__name__)
def test_client_message_round_trip(message: p.Message) -> None:
    encoded = p.encode(message)
    assert encoded[:2] == [TAG, message.TYPE]
    assert p.decode_client(encoded) == message


@pytest.mark.parametrize("message", BROKER_SAMPLES, ids=lambda m: type(m).__name__)
def test_broker_message_round_trip(message: p.Message) -> None:
    encoded = p.encode(message)
    assert encoded[:2] == [TAG, message.TYPE]
    assert p.decode_broker(encoded) == message


def test_event_round_trip_carries_the_room_in_the_topic_frame() -> None:
    event = p.Event(seq=42, ts=1764190000123, kind=p.KIND_MSG, name="alice", text="hi", room="#dev")
    encoded = published(event)
    assert encoded[0] == b"#dev\x00"
    assert encoded[1:3] == [TAG, b"EVENTS"]
    assert json.loads(encoded[3]) == {"events": [{"seq": 42, "ts": 1764190000123, "kind": "msg", "name": "alice", "text": "hi"}]}
    assert p.decode_events(encoded) == [event]


def test_a_batch_is_one_message_per_room_in_order_within_each_room() -> None:
    batch = [
        p.Event(1, 10, p.KIND_MSG, "alice", "one", "#general"),
        p.Event(7, 11, p.KIND_JOIN, "bob", "", "#dev"),
        p.Event(2, 12, p.KIND_MSG, "bob", "two", "#general"),
        p.Event(8, 13, p.KIND_MSG, "bob", "three", "#dev"),
    ]
    messages = p.encode_events(batch)
    assert [m[0] for m in messages] == [b"#general\x00", b"#dev\x00"]
    assert [p.decode_events(m) for m in messages] == [[batch[0], batch[2]], [batch[1], batch[3]]]
    assert p.encode_events([]) == []


def test_a_batch_is_split_so_that_each_message_fits_in_a_frame() -> None:
    text = "x" * p.MAX_TEXT_CHARS
    batch = [p.Event(seq, seq, p.KIND_MSG, "alice", text) for seq in range(1, 201)]  # about 400 KB
    messages = p.encode_events(batch)
    assert len(messages) > 1
    assert all(len(m[3]) <= p.PUB_BATCH_BYTES + 64 < p.MAX_FRAME_BYTES for m in messages)
    assert [e for m in messages for e in p.decode_events(m)] == batch  # nothing lost, nothing reordered
    widest = p.Event(1, 1, p.KIND_MSG, "a" * p.MAX_NAME_CHARS, "\U0001f600" * p.MAX_TEXT_CHARS)
    assert len(published(widest)[3]) < p.MAX_FRAME_BYTES  # the largest possible event travels alone


def test_published_message_without_events_is_bad_field() -> None:
    assert refused(events_frames(b"#general\x00"), p.decode_events) == p.BAD_FIELD
    assert refused([b"#general\x00", TAG, b"EVENTS", b'{"events":{}}'], p.decode_events) == p.BAD_FIELD


def test_topic_frame_ends_with_a_zero_byte_so_prefixes_do_not_match() -> None:
    assert p.topic_frame("#general") == b"#general\x00"
    assert not p.topic_frame("#devops").startswith(p.topic_frame("#dev"))


def test_history_events_are_decoded_with_the_history_room() -> None:
    event = p.Event(seq=7, ts=9, kind=p.KIND_ACTION, name="bob", text="waves", room="#dev")
    history = p.decode_broker(p.encode(p.History("#dev", [p.event_body(event)])))
    assert isinstance(history, p.History)
    assert p.history_events(history) == [event]


def test_bodies_are_compact_utf8_json() -> None:
    raw = p.encode(p.Say("1", "café ☕"))[2]
    assert "café ☕".encode() in raw  # not \\u escapes
    assert b" " not in raw.replace("café ☕".encode(), b"")


def test_defaults_may_be_omitted() -> None:
    assert p.decode_client(frames(b"SAY", {"id": "1", "text": "hi"})) == p.Say("1", "hi", "#general", "msg")
    assert p.decode_client(frames(b"JOIN", {"name": "alice"})) == p.Join("alice", "")
    assert p.decode_client(frames(b"PING", {})) == p.Ping()


def test_unknown_json_fields_are_ignored() -> None:
    body = {"id": "1", "text": "hi", "colour": "red", "future": {"nested": [1, 2]}}
    assert p.decode_client(frames(b"SAY", body)) == p.Say("1", "hi")
    ack = {"id": "1", "seq": 2, "ts": 3, "signature": "abc"}
    assert p.decode_broker(frames(b"ACK", ack)) == p.Ack("1", 2, 3)
    event = events_frames(b"#general\x00", {"seq": 1, "ts": 2, "kind": "msg", "name": "a", "x": 1})
    assert p.decode_events(event) == [p.Event(1, 2, "msg", "a", "", "#general")]


def test_unknown_event_kind_is_accepted_for_generic_display() -> None:
    event = p.Event(seq=1, ts=2, kind="topic", name="alice", text="new topic")
    assert p.decode_events(published(event))[0].kind == "topic"


def test_endpoint_brackets_ipv6_hosts() -> None:
    assert p.endpoint("127.0.0.1", 5555) == "tcp://127.0.0.1:5555"
    assert p.endpoint("::1", 5556) == "tcp://[::1]:5556"


# --------------------------------------------------------------------------- frames and version


@pytest.mark.parametrize("count", [0, 1, 2, 4, 5])
def test_direct_message_needs_exactly_three_frames(count: int) -> None:
    bad = (p.encode(p.Ping()) + [b"{}", b"{}"])[:count]
    assert refused(bad) == p.BAD_FRAMES
    assert refused(bad, p.decode_broker) == p.BAD_FRAMES


@pytest.mark.parametrize("count", [3, 5])
def test_published_event_needs_exactly_four_frames(count: int) -> None:
    good = published(p.Event(1, 2, "msg", "a", "b"))
    bad = good[:3] if count == 3 else good + [b""]
    assert refused(bad, p.decode_events) == p.BAD_FRAMES


def test_another_version_is_bad_version_and_names_ours() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        p.decode_client(frames(b"PING", {}, tag=b"chat/1"))
    assert info.value.code == p.BAD_VERSION
    assert "'1' is not supported: this side speaks version 2" in info.value.reason
    assert info.value.ref == "PING"  # a type of ours: an old client can tell which request failed
    assert refused(frames(b"ACK", {"id": "1", "seq": 1, "ts": 1}, tag=b"chat/3"), p.decode_broker) == p.BAD_VERSION
    event = published(p.Event(1, 2, "msg", "a"))
    assert refused([event[0], b"chat/1", *event[2:]], p.decode_events) == p.BAD_VERSION


@pytest.mark.parametrize(
    "tag, answer",
    [(b"chat/1", b"chat/1"), (b"chat/3", b"chat/3"), (b"chat/2", b"chat/2"), (b"chat/x", b"chat/2"),
     (b"chat/12345", b"chat/2"), (b"chat/", b"chat/2"), (b"http/1.1", b"chat/2")],
)
def test_a_refusal_is_tagged_with_the_version_its_request_named(tag: bytes, answer: bytes) -> None:
    assert p.answer_tag([tag, b"JOIN", b"{}"]) == answer
    assert p.encode(p.Error(p.BAD_VERSION, "r", "JOIN"), answer)[0] == answer


@pytest.mark.parametrize("tag", [b"", b"chat", b"CHAT/1", b"http/1.1", b"\xff\xfe"])
def test_a_first_frame_that_is_no_protocol_tag_is_bad_frames(tag: bytes) -> None:
    assert refused(frames(b"PING", {}, tag=tag)) == p.BAD_FRAMES


@pytest.mark.parametrize("kind", [b"", b"ping", b"SHOUT", b"WELCOME", b"\x00\xff"])
def test_unknown_client_type_is_bad_type(kind: bytes) -> None:
    assert refused(frames(kind, {})) == p.BAD_TYPE


def test_client_types_are_not_broker_types_and_back() -> None:
    assert refused(p.encode(p.Join("alice")), p.decode_broker) == p.BAD_TYPE
    assert refused(p.encode(p.Bye("x")), p.decode_client) == p.BAD_TYPE


def test_published_type_must_be_events() -> None:
    event = published(p.Event(1, 2, "msg", "a"))
    assert refused([event[0], TAG, b"SAY", event[3]], p.decode_events) == p.BAD_TYPE
    body = json.dumps({"seq": 1, "ts": 2, "kind": "msg", "name": "a"}).encode()
    assert refused([event[0], TAG, b"EVENT", body], p.decode_events) == p.BAD_TYPE  # version 1's type


def test_topic_frame_must_end_with_zero_byte() -> None:
    event = published(p.Event(1, 2, "msg", "a"))
    assert refused([b"#general", *event[1:]], p.decode_events) == p.BAD_FRAMES


def test_topic_frame_must_be_utf8() -> None:
    event = published(p.Event(1, 2, "msg", "a"))
    assert refused([b"#\xff\x00", *event[1:]], p.decode_events) == p.BAD_FRAMES


def test_oversized_frame_is_too_large() -> None:
    text = "x" * (p.MAX_FRAME_BYTES + 1)
    assert refused([TAG, b"SAY", json.dumps({"id": "1", "text": text}).encode()]) == p.TOO_LARGE
    assert p.decode_client([TAG, b"PING", b" " * (p.MAX_FRAME_BYTES - 2) + b"{}"]) == p.Ping()  # inclusive


# --------------------------------------------------------------------------- bodies


def test_bad_utf8_is_bad_json() -> None:
    assert refused(frames(b"SAY", b'{"id":"1","text":"\xff\xfe"}')) == p.BAD_JSON


@pytest.mark.parametrize("raw", [b"", b"{", b"{'id': 1}", b'{"id":"1",}', b"nul"])
def test_bad_json_is_bad_json(raw: bytes) -> None:
    assert refused(frames(b"SAY", raw)) == p.BAD_JSON


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_no_object_is_bad_json(raw: bytes) -> None:
    assert refused(frames(b"PING", raw)) == p.BAD_JSON
    assert refused(frames(b"BYE", raw), p.decode_broker) == p.BAD_JSON


@pytest.mark.parametrize(
    "kind, body",
    [
        (b"JOIN", {"name": 7}),
        (b"JOIN", {"name": "alice", "token": None}),
        (b"SAY", {"id": 1, "text": "hi"}),
        (b"SAY", {"id": "1", "text": ["hi"]}),
        (b"SAY", {"id": "1", "text": "hi", "room": None}),
        (b"PM", {"id": "1", "to": {"name": "bob"}, "text": "hi"}),
        (b"WHO", {"room": 0}),
        (b"FETCH", {"room": "#general", "first": "1", "last": 2}),
        (b"FETCH", {"room": "#general", "first": 1, "last": 2.0}),
        (b"FETCH", {"room": "#general", "first": True, "last": 2}),
    ],
)
def test_wrong_field_type_is_bad_field(kind: bytes, body: dict) -> None:
    assert refused(frames(kind, body)) == p.BAD_FIELD


@pytest.mark.parametrize(
    "kind, body",
    [
        (b"ACK", {"id": "1", "seq": True, "ts": 1}),
        (b"PONG", {"rooms": {"#general": True}}),
        (b"PONG", {"rooms": {"#general": "3"}}),
        (b"PONG", {"rooms": ["#general", 3]}),
        (b"ROSTER", {"room": "", "names": ["alice", 3], "ts": 1}),
        (b"HISTORY", {"room": "#general", "events": [1, 2]}),
        (b"WELCOME", {"name": "a", "pub_port": False, "rooms": {}, "heartbeat_ms": 1, "timeout_ms": 1,
                      "history_id": "h"}),
    ],
)
def test_wrong_field_type_from_broker_is_bad_field(kind: bytes, body: dict) -> None:
    assert refused(frames(kind, body), p.decode_broker) == p.BAD_FIELD


def test_bool_for_int_in_event_is_bad_field() -> None:
    raw = events_frames(b"#general\x00", {"seq": True, "ts": 1, "kind": "msg", "name": "a"})
    assert refused(raw, p.decode_events) == p.BAD_FIELD


@pytest.mark.parametrize(
    "kind, body",
    [
        (b"JOIN", {}),
        (b"SAY", {"text": "hi"}),
        (b"SAY", {"id": "1"}),
        (b"PM", {"id": "1", "text": "hi"}),
        (b"FETCH", {"room": "#general", "first": 1}),
    ],
)
def test_missing_required_field_is_bad_field(kind: bytes, body: dict) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        p.decode_client(frames(kind, body))
    assert info.value.code == p.BAD_FIELD
    assert "needs field" in info.value.reason


def test_history_event_with_a_missing_field_is_refused() -> None:
    history = p.decode_broker(frames(b"HISTORY", {"room": "#general", "events": [{"seq": 1, "ts": 1}]}))
    assert isinstance(history, p.History)
    with pytest.raises(RemoteProtocolError) as info:
        p.history_events(history)
    assert info.value.code == p.BAD_FIELD


def test_unknown_say_kind_is_bad_field() -> None:
    assert refused(frames(b"SAY", {"id": "1", "text": "hi", "kind": "join"})) == p.BAD_FIELD


def test_token_longer_than_the_limit_is_bad_field() -> None:
    assert p.decode_client(p.encode(p.Join("alice", "t" * p.MAX_ID_CHARS))).token == "t" * p.MAX_ID_CHARS
    assert refused(p.encode(p.Join("alice", "t" * (p.MAX_ID_CHARS + 1)))) == p.BAD_FIELD


def test_id_longer_than_the_limit_is_bad_field() -> None:
    assert p.decode_client(p.encode(p.Say("x" * p.MAX_ID_CHARS, "hi"))).id == "x" * p.MAX_ID_CHARS
    assert refused(p.encode(p.Say("x" * (p.MAX_ID_CHARS + 1), "hi"))) == p.BAD_FIELD
    assert refused(p.encode(p.Pm("x" * (p.MAX_ID_CHARS + 1), "bob", "hi"))) == p.BAD_FIELD


def test_fetch_of_one_event_decodes() -> None:
    assert p.decode_client(p.encode(p.Fetch("#general", 1, 1))) == p.Fetch("#general", 1, 1)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["a", "x" * p.MAX_NAME_CHARS, "Zoë", "李雷", "bob_2", "o'brien", "a#b", "a/b", "a*b", "🦊", "-dash",
     "Zoe\u0308", "Ελένη", "Дмитрий", "山田たろう", "김민준", "mika_山田", "1337"],
)
def test_valid_names_are_accepted(name: str) -> None:
    assert p.name_problem(name) is None
    assert p.decode_client(p.encode(p.Join(name))) == p.Join(name)


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "1 to 32"),
        ("x" * (p.MAX_NAME_CHARS + 1), "1 to 32"),
        ("al ice", "spaces"),
        ("alice\t", "spaces"),
        ("al\u00a0ice", "spaces"),  # no-break space
        ("al\u3000ice", "spaces"),  # ideographic space
        ("al\x1bice", "printable"),
        ("al\x00ice", "printable"),
        ("al\x7fice", "printable"),
        ("al\x9bice", "printable"),  # C1 CSI
        ("al\u200bice", "printable"),  # zero-width space
        ("al\u202eice", "printable"),  # right-to-left override
        ("al\u2066ice", "printable"),  # left-to-right isolate
        ("al\u061cice", "printable"),  # Arabic letter mark
        ("#general", "start"),
        ("/quit", "start"),
        ("*alice", "start"),
        # Names that look like nothing, or like another name padded with nothing.
        ("\u3164", "invisible"),  # Hangul filler
        ("\u3164\u3164\u3164", "invisible"),
        ("\u2800", "invisible"),  # blank Braille pattern
        ("alice\u3164", "invisible"),
        ("\u2800alice", "invisible"),
        ("ali\u034fce", "invisible"),  # combining grapheme joiner
        ("alice\ufe0f", "invisible"),  # variation selector
        ("\u115f\u1160", "invisible"),  # Hangul choseong and jungseong fillers
        ("alice\U000e0041", "printable"),  # tag character
        ("a" + "\u0301" * 3, "accents"),  # stacked combining marks
        ("\u0301\u0301", "accents"),  # marks on nothing
        ("\u0301alice", "accents"),
        ("z" + "\u0300\u0301\u0302\u0303" * 2, "accents"),
        # Names that mix scripts look like names of one.
        ("al\u0456ce", "mix scripts"),  # Ukrainian і in alice
        ("\u0430lice", "mix scripts"),  # Cyrillic а
        ("bo\u03bfb", "mix scripts"),  # Greek omicron
    ],
)
def test_invalid_names_are_refused_with_a_reason(name: str, why: str) -> None:
    problem = p.name_problem(name)
    assert problem is not None and why in problem
    with pytest.raises(RemoteProtocolError) as info:
        p.decode_client(p.encode(p.Join(name)))
    assert info.value.code == p.NAME_INVALID


@pytest.mark.parametrize(
    "name, twin",
    [
        ("alice", "aIice"),  # capital I for l
        ("alice", "a1ice"),
        ("alice", "ALICE"),
        ("alice", "al\u0456ce"),  # refused anyway (mixed scripts), but it looks the same
        ("bob", "b0b"),
        ("bob", "B0B"),
        ("paypal", "\u0440\u0430\u0443\u0440\u0430l"[:-1] + "\u04cf"),  # all Cyrillic: one script, same look
        ("ａｌｉｃｅ", "alice"),  # full width
    ],
)
def test_confusable_names_look_alike(name: str, twin: str) -> None:
    assert p.name_look(name) == p.name_look(twin)


@pytest.mark.parametrize("name, other", [("alice", "alicia"), ("dave", "dane"), ("bob", "rob"), ("eve", "evie"), ("carol", "karol")])
def test_different_names_do_not_look_alike(name: str, other: str) -> None:
    assert p.name_look(name) != p.name_look(other)


def test_name_key_is_case_and_width_insensitive() -> None:
    assert p.name_key("Alice") == p.name_key("ALICE") == p.name_key("alice")
    assert p.name_key("ａｌｉｃｅ") == p.name_key("alice")  # full-width letters (NFKC)
    assert p.name_key("Straße") == p.name_key("STRASSE")
    assert p.name_key("alice") != p.name_key("alicia")


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize("text", ["", " ", "\t\n ", "\u3000"], ids=["empty", "space", "whitespace", "ideographic"])
def test_empty_text_is_bad_field(text: str) -> None:
    assert p.text_problem(text) is not None
    assert refused(p.encode(p.Say("1", text))) == p.BAD_FIELD
    assert refused(p.encode(p.Pm("1", "bob", text))) == p.BAD_FIELD


def test_text_up_to_the_limit_is_fine_and_one_more_is_not() -> None:
    assert p.decode_client(p.encode(p.Say("1", "é" * p.MAX_TEXT_CHARS))).text == "é" * p.MAX_TEXT_CHARS
    with pytest.raises(RemoteProtocolError) as info:
        p.decode_client(p.encode(p.Say("1", "é" * (p.MAX_TEXT_CHARS + 1))))
    assert info.value.code == p.BAD_FIELD
    assert str(p.MAX_TEXT_CHARS) in info.value.reason
    assert refused(p.encode(p.Pm("1", "bob", "x" * (p.MAX_TEXT_CHARS + 1)))) == p.BAD_FIELD


# --------------------------------------------------------------------------- hostile bodies


def test_deeply_nested_json_is_bad_json() -> None:
    """A 4 KB body of brackets must be refused like any other bad body, not crash the decoder."""
    assert refused(frames(b"SAY", b"[" * 4000)) == p.BAD_JSON
    assert refused(frames(b"SAY", b'{"a":' * 4000)) == p.BAD_JSON
    raw = b'{"events":[{"seq":1,"ts":1,"kind":"msg","name":"a","x":' + b"[" * 4000
    assert refused([b"#general\x00", TAG, b"EVENTS", raw], p.decode_events) == p.BAD_JSON


@pytest.mark.parametrize(
    "decoder, kind, body",
    [
        (p.decode_client, b"SAY", b'{"id":"1","text":"hi \\ud800"}'),
        (p.decode_client, b"PM", b'{"id":"1","to":"\\udfff","text":"hi"}'),
        (p.decode_broker, b"PRIVATE", b'{"name":"a","to":"b","text":"\\udc00","ts":1}'),
        (p.decode_broker, b"HISTORY", b'{"room":"#general","events":[{"seq":1,"ts":1,"kind":"msg","name":"\\ud800"}]}'),
    ],
    ids=["say-text", "pm-to", "private-text", "history-name"],
)
def test_whatever_is_accepted_can_be_sent_on(decoder, kind: bytes, body: bytes) -> None:
    """JSON escapes of lone surrogates make strings that cannot be encoded as UTF-8 again.

    A broker that accepts them crashes when it publishes the text; a client crashes on printing it.
    Refusing them (bad_json / bad_field) is fine; accepting them into a message that cannot be encoded is not.
    """
    try:
        message = decoder([TAG, kind, body])
    except RemoteProtocolError:
        return
    p.encode(message)  # must not raise UnicodeEncodeError
    if isinstance(message, p.History):
        p.encode_events(p.history_events(message))


# --------------------------------------------------------------------------- neutralise


@pytest.mark.parametrize(
    "text",
    [
        "hello, world",
        "Zoë, François, Ærøskøbing, naïve café",
        "Привет, 你好, こんにちは, مرحبا, שלום",
        "👋🏽 🦊 👨‍👩‍👧 ❤️",  # skin tone, ZWJ sequence, variation selector
        "tabs? no; quotes \"'` and symbols <>&|$~^[]{}\\",
        "a\u00a0b",  # no-break space
    ],
)
def test_neutralise_leaves_normal_text_alone(text: str) -> None:
    assert p.neutralise(text) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\x1b[2J\x1b[Hgotcha", "^[[2J^[[Hgotcha"),  # clear screen, cursor home
        ("\x1b]0;pwned\x07", "^[]0;pwned^G"),  # OSC: set the window title
        ("\x1b]52;c;Y3VybA==\x07", "^[]52;c;Y3VybA==^G"),  # OSC 52: write the clipboard
        ("a\x00b\x08c", "a^@b^Hc"),
        ("del\x7f", "del^?"),
        ("\x9b31mred", "\ufffd31mred"),  # C1 CSI
        ("\x9d0;title\x9c", "\ufffd0;title\ufffd"),  # C1 OSC ... ST
        ("\x85next line", "\ufffdnext line"),  # C1 NEL
        ("abc\u202edcba", "abc\ufffddcba"),  # right-to-left override (Trojan Source)
        ("\u2067x\u2069", "\ufffdx\ufffd"),  # isolates
        ("\u200e\u200f\u061c", "\ufffd\ufffd\ufffd"),  # marks
        ("one\ntwo\r\nthree\tfour", "one two  three four"),
    ],
)
def test_neutralise_makes_controls_visible(text: str, expected: str) -> None:
    assert p.neutralise(text) == expected


def test_neutralise_output_is_printable_and_keeps_the_visible_text() -> None:
    text = "".join(chr(c) for c in range(0x00, 0xA0)) + "".join(sorted(p._BIDI_CONTROLS))
    out = p.neutralise(text)
    assert all(ch.isprintable() for ch in out)
    assert "\x1b" not in out and "\x9b" not in out
    assert "".join(chr(c) for c in range(0x20, 0x7F)) in out


def test_neutralise_output_can_be_written_as_utf8() -> None:
    """A lone surrogate cannot be written to a UTF-8 terminal: print() raises UnicodeEncodeError."""
    p.neutralise("a\ud800b").encode("utf-8")
