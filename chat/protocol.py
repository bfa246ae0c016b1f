"""The wire protocol: ZeroMQ multipart frames <-> typed messages.

Pure: no sockets, no clocks. Every rule of ``docs/PROTOCOL.md`` that can be checked on one message is
checked here, so that the broker, the client and the fuzz tests share one definition.

Direct messages (DEALER <-> ROUTER) are three frames::

    [b"chat/1", TYPE, JSON-BODY]

Published events (PUB -> SUB) carry the room as a topic frame first, so that SUB prefix filtering works::

    [b"#general\\x00", b"chat/1", b"EVENT", JSON-BODY]

Receivers ignore JSON fields they do not know; that is how the protocol grows without breaking old peers.
"""

import json
import re
import typing
import unicodedata
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, get_args, get_origin

from chat.errors import LocalProtocolError, RemoteProtocolError

VERSION = 1
PROTOCOL_PREFIX = b"chat/"
PROTOCOL_TAG = PROTOCOL_PREFIX + str(VERSION).encode()

# Limits. The broker sets MAX_FRAME_BYTES as ZMQ_MAXMSGSIZE too, so that libzmq drops absurd frames
# before Python sees them.
MAX_FRAME_BYTES = 64 * 1024
MAX_TEXT_CHARS = 2000
MAX_NAME_CHARS = 32
MAX_ID_CHARS = 64
MAX_FETCH = 1000  # events in one HISTORY reply (fewer when they would not fit in one frame)
FRAME_OVERHEAD = 1024  # bytes kept free in a frame for what wraps a list of events

DEFAULT_ROOM = "#general"
TOPIC_END = b"\x00"  # ends every topic frame, so that "#dev\0" never prefix-matches "#devops\0"

# Stable error codes (docs/PROTOCOL.md, "Errors").
BAD_FRAMES = "bad_frames"
BAD_VERSION = "bad_version"
BAD_TYPE = "bad_type"
BAD_JSON = "bad_json"
BAD_FIELD = "bad_field"
TOO_LARGE = "too_large"
NAME_INVALID = "name_invalid"
NAME_TAKEN = "name_taken"
NOT_JOINED = "not_joined"
ALREADY_JOINED = "already_joined"
NO_SUCH_USER = "no_such_user"
NO_SUCH_ROOM = "no_such_room"
HISTORY_RANGE = "history_range"
SERVER_FULL = "server_full"
ROOM_INVALID = "room_invalid"
NAME_OWNED = "name_owned"
RATE_LIMITED = "rate_limited"

# Event kinds on the PUB socket.
KIND_MSG = "msg"
KIND_ACTION = "action"
KIND_JOIN = "join"
KIND_LEAVE = "leave"
KIND_ENTER = "enter"  # joined one room with /join (text: empty)
KIND_PART = "part"  # left one room with /leave (text: empty)
KIND_TOPIC = "topic"  # set the room's topic (text: the new topic)
SAY_KINDS = (KIND_MSG, KIND_ACTION)

MAX_ROOM_CHARS = 32  # after the '#'
MAX_ROOMS_PER_SESSION = 32
MAX_TOPIC_CHARS = 300
_ROOM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")

# Why a session ended, carried in a leave event's text.
LEFT_QUIT = "quit"
LEFT_TIMEOUT = "timeout"

# Bidirectional-text controls that can make a line read differently from what it is (Trojan Source).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base of every message; ``TYPE`` is the type frame."""

    TYPE: ClassVar[bytes] = b""


# Client -> broker


@dataclass(frozen=True)
class Join(Message):
    TYPE: ClassVar[bytes] = b"JOIN"
    name: str
    token: str = ""  # the client's secret: a later JOIN with the same name and token takes the session back
    rooms: list[str] = field(default_factory=list)  # rooms to be in; none: the default room


@dataclass(frozen=True)
class Say(Message):
    """A public line (``kind`` "msg") or action (``/me``, kind "action") for a room."""

    TYPE: ClassVar[bytes] = b"SAY"
    id: str
    text: str
    room: str = DEFAULT_ROOM
    kind: str = KIND_MSG


@dataclass(frozen=True)
class Pm(Message):
    TYPE: ClassVar[bytes] = b"PM"
    id: str
    to: str
    text: str


@dataclass(frozen=True)
class Who(Message):
    TYPE: ClassVar[bytes] = b"WHO"
    room: str = ""


@dataclass(frozen=True)
class Enter(Message):
    """Join one more room (``/join``), creating it when new."""

    TYPE: ClassVar[bytes] = b"ENTER"
    room: str


@dataclass(frozen=True)
class Part(Message):
    """Leave one room (``/leave``)."""

    TYPE: ClassVar[bytes] = b"PART"
    room: str


@dataclass(frozen=True)
class Rooms(Message):
    """Ask for every room with its member count and topic."""

    TYPE: ClassVar[bytes] = b"ROOMS"


@dataclass(frozen=True)
class Topic(Message):
    """Set a room's topic."""

    TYPE: ClassVar[bytes] = b"TOPIC"
    id: str
    room: str
    text: str


@dataclass(frozen=True)
class Ping(Message):
    TYPE: ClassVar[bytes] = b"PING"


@dataclass(frozen=True)
class Leave(Message):
    TYPE: ClassVar[bytes] = b"LEAVE"


@dataclass(frozen=True)
class Fetch(Message):
    """Ask for the events ``first``..``last`` (inclusive) of a room, for gap recovery."""

    TYPE: ClassVar[bytes] = b"FETCH"
    room: str
    first: int
    last: int


# Broker -> client


@dataclass(frozen=True)
class Welcome(Message):
    TYPE: ClassVar[bytes] = b"WELCOME"
    name: str
    pub_port: int
    rooms: dict[str, int]  # room -> sequence number of the last event published there
    heartbeat_ms: int
    timeout_ms: int
    history_id: str


@dataclass(frozen=True)
class Entered(Message):
    """Answer to ENTER: ``last_seq`` is the room's last event before our own enter event."""

    TYPE: ClassVar[bytes] = b"ENTERED"
    room: str
    last_seq: int
    topic: str = ""


@dataclass(frozen=True)
class Parted(Message):
    TYPE: ClassVar[bytes] = b"PARTED"
    room: str


@dataclass(frozen=True)
class RoomList(Message):
    """Answer to ROOMS: ``rooms`` holds {"room": str, "members": int, "topic": str} objects."""

    TYPE: ClassVar[bytes] = b"ROOM_LIST"
    rooms: list[dict[str, Any]]
    ts: int


@dataclass(frozen=True)
class Ack(Message):
    TYPE: ClassVar[bytes] = b"ACK"
    id: str
    seq: int
    ts: int


@dataclass(frozen=True)
class Error(Message):
    TYPE: ClassVar[bytes] = b"ERROR"
    code: str
    reason: str
    ref: str = ""  # the id of the request it answers, when it had one


@dataclass(frozen=True)
class Roster(Message):
    TYPE: ClassVar[bytes] = b"ROSTER"
    room: str
    names: list[str]
    ts: int


@dataclass(frozen=True)
class Private(Message):
    TYPE: ClassVar[bytes] = b"PRIVATE"
    name: str
    to: str
    text: str
    ts: int


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[bytes] = b"PONG"
    rooms: dict[str, int]


@dataclass(frozen=True)
class Event(Message):
    """Something public that happened in a room: published on PUB and replayed in HISTORY."""

    TYPE: ClassVar[bytes] = b"EVENT"
    seq: int
    ts: int
    kind: str
    name: str
    text: str = ""
    room: str = field(default=DEFAULT_ROOM, metadata={"wire": False})  # the topic frame carries it


@dataclass(frozen=True)
class History(Message):
    TYPE: ClassVar[bytes] = b"HISTORY"
    room: str
    events: list[dict[str, Any]]
    first: int = 0  # the range of the FETCH this answers
    last: int = 0


@dataclass(frozen=True)
class Bye(Message):
    TYPE: ClassVar[bytes] = b"BYE"
    reason: str


CLIENT_MESSAGES: dict[bytes, type[Message]] = {
    m.TYPE: m for m in (Join, Say, Pm, Who, Ping, Leave, Fetch, Enter, Part, Rooms, Topic)
}
BROKER_MESSAGES: dict[bytes, type[Message]] = {
    m.TYPE: m for m in (Welcome, Ack, Error, Roster, Private, Pong, History, Bye, Entered, Parted, RoomList)
}


# --------------------------------------------------------------------------- encoding


def _body(message: Message) -> dict[str, Any]:
    return {f.name: getattr(message, f.name) for f in fields(message) if f.metadata.get("wire", True)}


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def encode(message: Message) -> list[bytes]:
    """Frames of a direct message (without the ROUTER's identity frame)."""
    return [PROTOCOL_TAG, message.TYPE, _dump(_body(message))]


def topic_frame(room: str) -> bytes:
    """The PUB topic frame of a room; also what a SUB subscribes to."""
    return room.encode() + TOPIC_END


def endpoint(host: str, port: int | str) -> str:
    """The ZeroMQ address of a broker socket; a client reaches the PUB at its broker's host and pub_port."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def encode_event(event: Event) -> list[bytes]:
    """Frames of a published event."""
    return [topic_frame(event.room), PROTOCOL_TAG, Event.TYPE, _dump(_body(event))]


def encoded_size(body: dict[str, Any]) -> int:
    """Bytes that ``body`` takes in a frame."""
    return len(_dump(body))


def event_body(event: Event) -> dict[str, Any]:
    """An event as it appears inside a HISTORY reply."""
    return _body(event)


# --------------------------------------------------------------------------- decoding


def _check_type(name: str, value: Any, hint: Any) -> None:
    origin = get_origin(hint)
    if origin is None:
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    elif origin is list:
        (item,) = get_args(hint)
        ok = isinstance(value, list)
        if ok and item is str:
            ok = all(isinstance(v, str) for v in value)
        elif ok:
            ok = all(isinstance(v, dict) for v in value)
    elif origin is dict:
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items()
        )
    else:  # pragma: no cover - a hint this decoder does not know is our bug
        raise LocalProtocolError(BAD_FIELD, f"unsupported field type {hint!r}")
    if not ok:
        raise RemoteProtocolError(BAD_FIELD, f"field {name!r} has the wrong type")


def _hints(cls: type[Message]) -> dict[str, Any]:
    return {k: v for k, v in typing.get_type_hints(cls).items() if k != "TYPE"}


_HINTS: dict[type[Message], dict[str, Any]] = {}


def _from_body(cls: type[Message], raw: bytes, **extra: Any) -> Message:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(BAD_JSON, f"body is not valid UTF-8 ({exc.reason})") from None
    except ValueError as exc:
        raise RemoteProtocolError(BAD_JSON, f"body is not valid JSON ({exc})") from None
    except RecursionError:
        raise RemoteProtocolError(BAD_JSON, "body is nested too deeply") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError(BAD_JSON, "body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):
        _check_encodable(body)
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if not f.metadata.get("wire", True):
            continue
        if f.name in body:
            _check_type(f.name, body[f.name], hints[f.name])
            kwargs[f.name] = body[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            raise RemoteProtocolError(BAD_FIELD, f"{cls.TYPE.decode()} needs field {f.name!r}")
    kwargs.update(extra)
    return cls(**kwargs)


# JSON can smuggle lone UTF-16 surrogates in as \uD800-\uDFFF escapes; raw UTF-8 cannot. A string
# holding one cannot be encoded again, so such bodies are refused (rare: checked only on this match).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_encodable(body: dict[str, Any]) -> None:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RemoteProtocolError(BAD_JSON, "body holds a lone UTF-16 surrogate escape") from None


def _check_version(tag: bytes) -> None:
    if tag == PROTOCOL_TAG:
        return
    if tag.startswith(PROTOCOL_PREFIX):
        raise RemoteProtocolError(
            BAD_VERSION,
            f"protocol version {tag[len(PROTOCOL_PREFIX):][:16].decode('ascii', 'replace')!r} is not supported;"
            f" this peer speaks {VERSION}",
        )
    raise RemoteProtocolError(BAD_FRAMES, f"first frame must be {PROTOCOL_TAG.decode()!r}")


def _check_frames(frames: list[bytes], count: int) -> None:
    if len(frames) != count:
        raise RemoteProtocolError(BAD_FRAMES, f"expected {count} frames, got {len(frames)}")
    for frame in frames:
        if len(frame) > MAX_FRAME_BYTES:
            raise RemoteProtocolError(TOO_LARGE, f"a frame is larger than {MAX_FRAME_BYTES} bytes")


def decode(frames: list[bytes], table: dict[bytes, type[Message]]) -> Message:
    """Decode a direct message using ``table`` (``CLIENT_MESSAGES`` or ``BROKER_MESSAGES``).

    Raises ``RemoteProtocolError`` and nothing else, whatever the frames.
    """
    _check_frames(frames, 3)
    tag, kind, raw = frames
    _check_version(tag)
    cls = table.get(bytes(kind))
    if cls is None:
        raise RemoteProtocolError(BAD_TYPE, f"unknown message type {bytes(kind)[:32]!r}")
    message = _from_body(cls, raw)
    try:
        validate(message)
    except RemoteProtocolError as exc:
        exc.ref = reference(message)
        raise
    return message


def reference(message: Message) -> str:
    """How an ERROR names the request it answers: the request's id, or else its type."""
    return getattr(message, "id", "") or message.TYPE.decode()


def decode_client(frames: list[bytes]) -> Message:
    return decode(frames, CLIENT_MESSAGES)


def decode_broker(frames: list[bytes]) -> Message:
    return decode(frames, BROKER_MESSAGES)


def decode_event(frames: list[bytes]) -> Event:
    """Decode a published event (topic frame first)."""
    _check_frames(frames, 4)
    topic, tag, kind, raw = frames
    _check_version(tag)
    if kind != Event.TYPE:
        raise RemoteProtocolError(BAD_TYPE, f"unknown published type {bytes(kind)[:32]!r}")
    if not topic.endswith(TOPIC_END):
        raise RemoteProtocolError(BAD_FRAMES, "topic frame must end with a zero byte")
    try:
        room = topic[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(BAD_FRAMES, "topic frame is not valid UTF-8") from None
    event = _from_body(Event, raw, room=room)
    assert isinstance(event, Event)
    return event


def history_events(history: History) -> list[Event]:
    """The events of a HISTORY reply, checked like published ones."""
    events = []
    for body in history.events:
        event = _from_body(Event, _dump(body), room=history.room)
        assert isinstance(event, Event)
        events.append(event)
    return events


# --------------------------------------------------------------------------- field rules


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name, or None when it can."""
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        return f"a name must be 1 to {MAX_NAME_CHARS} characters long"
    for ch in name:
        if ch.isspace():
            return "a name cannot contain spaces"
        if not ch.isprintable() or ch in _BIDI_CONTROLS:
            return "a name can contain only printable characters"
    if name[0] in "#/*":
        return "a name cannot start with '#', '/' or '*'"
    return None


def name_key(name: str) -> str:
    """The form under which names are compared: unique case-insensitively."""
    return unicodedata.normalize("NFKC", name).casefold()


def room_problem(room: str) -> str | None:
    """Why ``room`` cannot be a room name, or None when it can."""
    if not room.startswith("#") or not 1 <= len(room) - 1 <= MAX_ROOM_CHARS:
        return f"a room name is '#' and 1 to {MAX_ROOM_CHARS} letters, digits, '-' or '_', like #general"
    if not _ROOM_CHARS.issuperset(room[1:]):
        return "a room name can hold only letters, digits, '-' and '_' after the '#'"
    return None


def room_key(room: str) -> str:
    """Rooms are case-insensitive: #Dev and #dev are one room, known by this form."""
    return room.lower()


def _check_room(room: str) -> None:
    problem = room_problem(room)
    if problem:
        raise RemoteProtocolError(ROOM_INVALID, problem)


def text_problem(text: str) -> str | None:
    if not text.strip():
        return "a message cannot be empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"a message can be at most {MAX_TEXT_CHARS} characters long"
    return None


def validate(message: Message) -> None:
    """Field rules beyond types, for the messages a broker receives."""
    if isinstance(message, Join):
        problem = name_problem(message.name)
        if problem:
            raise RemoteProtocolError(NAME_INVALID, problem)
        if len(message.token) > MAX_ID_CHARS:
            raise RemoteProtocolError(BAD_FIELD, f"a token can be at most {MAX_ID_CHARS} characters long")
        if len(message.rooms) > MAX_ROOMS_PER_SESSION:
            raise RemoteProtocolError(BAD_FIELD, f"one can be in at most {MAX_ROOMS_PER_SESSION} rooms")
        for room in message.rooms:
            _check_room(room)
    if isinstance(message, (Enter, Part, Topic)) or isinstance(message, (Say, Fetch)) and message.room:
        _check_room(message.room)  # type: ignore[union-attr]
    if isinstance(message, Who) and message.room:
        _check_room(message.room)
    if isinstance(message, Topic):
        if len(message.text) > MAX_TOPIC_CHARS:
            raise RemoteProtocolError(BAD_FIELD, f"a topic can be at most {MAX_TOPIC_CHARS} characters long")
    if isinstance(message, (Say, Pm)):
        if len(message.id) > MAX_ID_CHARS:
            raise RemoteProtocolError(BAD_FIELD, f"an id can be at most {MAX_ID_CHARS} characters long")
        problem = text_problem(message.text)
        if problem:
            raise RemoteProtocolError(BAD_FIELD, problem)
    if isinstance(message, Say) and message.kind not in SAY_KINDS:
        raise RemoteProtocolError(BAD_FIELD, f"kind must be one of {', '.join(SAY_KINDS)}")


def neutralise(text: str) -> str:
    """Make ``text`` safe to write to a terminal.

    Control characters (which start ANSI/OSC escape sequences) become visible caret notation, C1
    controls, lone surrogates and bidirectional overrides become U+FFFD, newlines and tabs become spaces.
    """
    if text.isprintable() and not _BIDI_CONTROLS.intersection(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\t\n\r":
            out.append(" ")
        elif code < 0x20:
            out.append("^" + chr(code + 0x40))
        elif code == 0x7F:
            out.append("^?")
        elif 0x80 <= code < 0xA0 or 0xD800 <= code <= 0xDFFF or ch in _BIDI_CONTROLS:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)

