"""The wire protocol: ZeroMQ multipart frames <-> typed messages.

Pure: no sockets, no clocks. Every rule of ``docs/PROTOCOL.md`` that can be checked on one message is
checked here, so that the broker, the client and the fuzz tests share one definition.

Direct messages (DEALER <-> ROUTER) are three frames::

    [b"chat/2", TYPE, JSON-BODY]

Published events (PUB -> SUB) carry the room as a topic frame first, so that SUB prefix filtering works,
and one or more events of that room in one body (``{"events": [...]}``), so that libzmq's work per
subscriber is spent once per batch rather than once per line::

    [b"#general\\x00", b"chat/2", b"EVENTS", JSON-BODY]

Receivers ignore JSON fields they do not know; that is how the protocol grows without breaking old peers.
"""

import functools
import re
import unicodedata
from typing import Annotated, Any, ClassVar

import msgspec

from chat import lookalikes
from chat.errors import RemoteProtocolError

VERSION = 2  # 2: events are published in batches (EVENTS); 1 published one EVENT per message
PROTOCOL_PREFIX = b"chat/"
PROTOCOL_TAG = PROTOCOL_PREFIX + str(VERSION).encode()

# Limits. A frame over MAX_FRAME_BYTES is refused with too_large. The broker sets ZMQ_MAXMSGSIZE to
# MAX_RECEIVED_FRAME_BYTES, a margin above it, so that libzmq drops only absurd frames (and the connection
# with them) before Python sees them, and a frame a little too large gets a too_large answer instead.
MAX_FRAME_BYTES = 64 * 1024
MAX_RECEIVED_FRAME_BYTES = 2 * MAX_FRAME_BYTES
MAX_TEXT_CHARS = 2000
MAX_NAME_CHARS = 32
MAX_ID_CHARS = 64
MAX_FETCH = 1000  # events in one HISTORY reply (fewer when they would not fit in one frame)
FRAME_OVERHEAD = 1024  # bytes kept free in a frame for what wraps a list of events
# A published body is filled with events up to a frame (one event always fits: text is at most
# MAX_TEXT_CHARS). libzmq copies each published message to every subscriber's queue and writes it to
# every subscriber's connection: the fuller the message, the less of that cost each line carries.
PUB_BATCH_BYTES = MAX_FRAME_BYTES - FRAME_OVERHEAD

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
NO_SUCH_FILE = "no_such_file"  # GET or PUT of a file number the broker does not have (or no longer)
FILE_REFUSED = "file_refused"  # the file is not for this session (another user's, a room one is not in)
FILE_TOO_LARGE = "file_too_large"  # OFFER over --max-file-size or what --file-quota can hold
BAD_CHUNK = "bad_chunk"  # a PUT or GET with a wrong offset, size or checksum
FILE_NOT_STORED = "file_not_stored"  # the broker could not write the file (disk full): nothing of it kept
ADDRESS_FULL = "address_full"  # too many sessions from one source address
KEY_MISMATCH = "key_mismatch"  # (--secure) a request from another key than the session's
STORE_FAILED = "store_failed"  # the broker could not store (disk full, read-only) or read its history
QUEUE_FULL = "queue_full"  # too many private messages wait for someone offline (or from one sender)
ERROR_CODES = (
    BAD_FRAMES, BAD_VERSION, BAD_TYPE, BAD_JSON, BAD_FIELD, TOO_LARGE, NAME_INVALID, NAME_TAKEN, NOT_JOINED,
    ALREADY_JOINED, NO_SUCH_USER, NO_SUCH_ROOM, ROOM_INVALID, HISTORY_RANGE, SERVER_FULL, NAME_OWNED, RATE_LIMITED,
    ADDRESS_FULL, KEY_MISMATCH, STORE_FAILED, NO_SUCH_FILE, FILE_REFUSED, FILE_TOO_LARGE, BAD_CHUNK, FILE_NOT_STORED, QUEUE_FULL,
)  # every code an ERROR can carry; docs/PROTOCOL.md lists the same (tests/test_error_table.py checks it)

# Event kinds on the PUB socket.
KIND_MSG = "msg"
KIND_ACTION = "action"
KIND_JOIN = "join"
KIND_LEAVE = "leave"
KIND_ENTER = "enter"  # joined one room with /join (text: empty)
KIND_PART = "part"  # left one room with /leave (text: empty)
KIND_TOPIC = "topic"  # set the room's topic (text: the new topic)
KIND_JOINS = "joins"  # a join storm, summed up: name is the first who joined, text how many did (decimal)
KIND_NICK = "nick"  # changed name (name: the old one, text: the new one)
KIND_FILE = "file"  # offered a file to the room (text: offer_text(), ending in "/get N")
SAY_KINDS = (KIND_MSG, KIND_ACTION)

# Files. Data rides in a fourth frame of PUT and CHUNK, never in JSON and never on the PUB.
MAX_PUT_BYTES = MAX_FRAME_BYTES  # data in one PUT (the broker's ZMQ_MAXMSGSIZE is a margin above)
MAX_GET_BYTES = 1024 * 1024  # data one GET may ask for (one CHUNK)
MAX_FILE_NAME_BYTES = 255  # an offered name, UTF-8, after sanitising (most file systems' limit)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
DATA_TYPES = frozenset((b"PUT", b"CHUNK"))  # the types that may carry a data frame

MAX_ROOM_CHARS = 32  # after the '#'
MAX_ROOMS_PER_SESSION = 32
MAX_TOPIC_CHARS = 300
MAX_AWAY_CHARS = 300
MAX_FOUND = 50  # events in one FOUND reply
_ROOM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")

# Why a session ended, carried in a leave event's text.
LEFT_QUIT = "quit"
LEFT_TIMEOUT = "timeout"
LEFT_RESTARTED = "restarted"  # online when the broker stopped, and not back within the grace period after
LEAVE_REASONS = {LEFT_TIMEOUT: "timed out", LEFT_RESTARTED: "broker restarted"}  # how a client shows them

# Bidirectional-text controls that can make a line read differently from what it is (Trojan Source).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Everything neutralise() changes: C0 and C1 controls, DEL, lone surrogates, bidi controls.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


# --------------------------------------------------------------------------- messages


class Message(msgspec.Struct, frozen=True):
    """Base of every message; ``TYPE`` is the type frame. msgspec decodes and type-checks the body in C."""

    TYPE: ClassVar[bytes] = b""


# Client -> broker


class Join(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"JOIN"
    name: str
    token: str = ""  # the client's secret: a later JOIN with the same name and token takes the session back
    rooms: list[str] = msgspec.field(default_factory=list)  # rooms to be in; none: the default room
    # The seq of the last PRIVATE this client has shown: the broker sends again the ones after it that
    # went to this client (same token). -1 (absent): send none again, as a client that does not count.
    private_seq: int = -1
    # True: this client reads ACKS, so the broker may answer several of its lines at once (one reply per
    # batch instead of one ACK per line). Absent (an older client): every line gets its own ACK.
    batch_acks: bool = False


class Say(Message, frozen=True):
    """A public line (``kind`` "msg") or action (``/me``, kind "action") for a room."""

    TYPE: ClassVar[bytes] = b"SAY"
    id: str
    text: str
    room: str = DEFAULT_ROOM
    kind: str = KIND_MSG


class Pm(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"PM"
    id: str
    to: str
    text: str


class Who(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"WHO"
    room: str = ""
    id: str = ""  # optional: echoed in the ROSTER


class Enter(Message, frozen=True):
    """Join one more room (``/join``), creating it when new."""

    TYPE: ClassVar[bytes] = b"ENTER"
    room: str


class Part(Message, frozen=True):
    """Leave one room (``/leave``)."""

    TYPE: ClassVar[bytes] = b"PART"
    room: str


class Rooms(Message, frozen=True):
    """Ask for every room with its member count and topic."""

    TYPE: ClassVar[bytes] = b"ROOMS"
    id: str = ""  # optional: echoed in the ROOM_LIST


class Topic(Message, frozen=True):
    """Set a room's topic."""

    TYPE: ClassVar[bytes] = b"TOPIC"
    id: str
    room: str
    text: str


class Nick(Message, frozen=True):
    """Change one's name (``/nick``): the same rules as JOIN's name; answered with RENAMED."""

    TYPE: ClassVar[bytes] = b"NICK"
    id: str
    name: str


class Away(Message, frozen=True):
    """Say one is away (``/away``, ``text`` the message), or back (``/back``: ``text`` empty); ACKed."""

    TYPE: ClassVar[bytes] = b"AWAY"
    id: str
    text: str = ""


class Search(Message, frozen=True):
    """Find the newest lines with every word of ``text`` in one room of ours, or in all of them."""

    TYPE: ClassVar[bytes] = b"SEARCH"
    id: str
    text: str
    room: str = ""  # "": every room the session is in
    before: int = 0  # FOUND's cursor, for the next (older) page; 0: from the newest


class Ping(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"PING"


class Leave(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"LEAVE"


class Fetch(Message, frozen=True):
    """Ask for the events ``first``..``last`` (inclusive) of a room, for gap recovery."""

    TYPE: ClassVar[bytes] = b"FETCH"
    room: str
    first: int
    last: int
    id: str = ""  # optional: echoed in the HISTORY and in an ERROR's ref, to tell several fetches apart


class Offer(Message, frozen=True):
    """Offer a file to a user (``to`` a name) or a room (``to`` a #room): answered by UPLOADING (send
    from ``offset``) or, when the broker holds those bytes already, by PUT_ACK with ``have == size``."""

    TYPE: ClassVar[bytes] = b"OFFER"
    id: str  # the client's; every PUT of this upload repeats it, and an ERROR about it names it in ref
    to: str
    name: str  # as the sender calls it; the broker shows and serves safe_file_name(name), never a path
    size: int
    sha256: str  # of the whole file, 64 lower-case hex digits


class Put(Message, frozen=True):
    """``len(data)`` bytes of an upload at ``offset`` (the data is the fourth frame); acknowledged by PUT_ACK."""

    TYPE: ClassVar[bytes] = b"PUT"
    id: str
    file: int
    offset: int
    crc32: int  # zlib.crc32 of the data: a chunk damaged on the way is refused (bad_chunk)


class Get(Message, frozen=True):
    """Ask for ``size`` bytes of file ``file`` from ``offset`` (size 0: only what the file is)."""

    TYPE: ClassVar[bytes] = b"GET"
    id: str
    file: int
    offset: int = 0
    size: int = 0


# Broker -> client


class Uploading(Message, frozen=True):
    """Answer to OFFER: the file's number, and the bytes the broker holds already (send from there)."""

    TYPE: ClassVar[bytes] = b"UPLOADING"
    id: str
    file: int
    offset: int


class PutAck(Message, frozen=True):
    """The broker stored the upload's bytes up to ``have``; ``have == size``: the file is stored and offered."""

    TYPE: ClassVar[bytes] = b"PUT_ACK"
    id: str
    file: int
    have: int


class Chunk(Message, frozen=True):
    """Answer to GET: the bytes at ``offset`` (fourth frame; none for a GET of size 0) and what the file is."""

    TYPE: ClassVar[bytes] = b"CHUNK"
    id: str
    file: int
    offset: int
    size: int  # of the whole file
    sha256: str
    name: str  # safe_file_name of the offered name
    sender: str = ""


class Welcome(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"WELCOME"
    name: str
    pub_port: int
    rooms: dict[str, int]  # room -> sequence number of the last event published there
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=1)]  # 0 or less would have a client ping without pause
    timeout_ms: Annotated[int, msgspec.Meta(ge=1)]
    history_id: str
    max_text: int = MAX_TEXT_CHARS  # the broker's --max-text: a client breaks longer lines to fit


class Entered(Message, frozen=True):
    """Answer to ENTER: ``last_seq`` is the room's last event before our own enter event."""

    TYPE: ClassVar[bytes] = b"ENTERED"
    room: str
    last_seq: int
    topic: str = ""


class Parted(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"PARTED"
    room: str


class RoomList(Message, frozen=True):
    """Answer to ROOMS: ``rooms`` holds {"room": str, "members": int, "topic": str} objects."""

    TYPE: ClassVar[bytes] = b"ROOM_LIST"
    rooms: list[dict[str, Any]]
    ts: int
    id: str = ""  # the ROOMS's id, when it had one


class Ack(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"ACK"
    id: str
    seq: int
    ts: int
    away: str = ""  # a PM's recipient is away with this message (told once per sender while away)
    queued: bool = False  # a PM's recipient is offline: it is kept, and delivered when they next join


class Acks(Message, frozen=True):
    """Several ACKs to one client, of the lines the broker handled in one batch, in the order handled:
    each ``[id, seq, ts]`` means exactly what ``ACK`` with those fields means. Sent only to a client
    whose JOIN said ``batch_acks``."""

    TYPE: ClassVar[bytes] = b"ACKS"
    acks: list[tuple[str, int, int]]

    def each(self) -> list[Ack]:
        return [Ack(msg_id, seq, ts) for msg_id, seq, ts in self.acks]


class Error(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"ERROR"
    code: str
    reason: str
    ref: str = ""  # the id of the request it answers, when it had one


class Roster(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"ROSTER"
    room: str
    names: list[str]
    ts: int
    id: str = ""  # the WHO's id, when it had one
    away: dict[str, str] = msgspec.field(default_factory=dict)  # name -> away message, of those away


class Private(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"PRIVATE"
    name: str
    to: str
    text: str
    ts: int
    seq: int = 0  # numbers the recipient's private messages 1, 2, 3...: a resent one is recognised by it
    file: int = 0  # not 0: a file offer (text: offer_text()), fetched with GET of this number
    queued: bool = False  # sent while the recipient was offline (``ts``: when it was sent)


class Pong(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"PONG"
    rooms: dict[str, int]
    private_seq: int = 0  # the seq of the last PRIVATE sent to this client: one it lacks went astray


class Event(Message, frozen=True):
    """Something public that happened in a room: published on PUB (in EVENTS) and replayed in HISTORY."""

    seq: int
    ts: int
    kind: str
    name: str
    text: str = ""
    room: str = DEFAULT_ROOM  # not in the body: the topic frame (or the HISTORY) carries it


class _EventBody(msgspec.Struct, frozen=True):
    """An event as the JSON of a published body or a HISTORY reply carries it: the Event without its room."""

    seq: int
    ts: int
    kind: str
    name: str
    text: str = ""


class _EventsBody(msgspec.Struct, frozen=True):
    """The body of a published message: events of the topic's room, in ascending seq."""

    TYPE: ClassVar[bytes] = b"EVENTS"
    events: list[_EventBody]


EVENTS = _EventsBody.TYPE  # the type frame of every published message


class History(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"HISTORY"
    room: str
    events: list[dict[str, Any]]
    first: int = 0  # the range of the FETCH this answers
    last: int = 0
    id: str = ""  # the FETCH's id, when it had one


class Renamed(Message, frozen=True):
    """Answer to NICK: the session's name is now ``name``; ``private_seq`` is the last private message
    kept for that name (private messages are numbered per name: the client follows on from it)."""

    TYPE: ClassVar[bytes] = b"RENAMED"
    id: str
    name: str
    private_seq: int = 0


class Found(Message, frozen=True):
    """Answer to SEARCH: events with their room ({"room", "seq", "ts", "kind", "name", "text"}), newest
    first; ``before`` is the cursor of the next page (0: no more)."""

    TYPE: ClassVar[bytes] = b"FOUND"
    id: str
    events: list[dict[str, Any]]
    before: int = 0


class Bye(Message, frozen=True):
    TYPE: ClassVar[bytes] = b"BYE"
    reason: str


CLIENT_MESSAGES: dict[bytes, type[Message]] = {
    m.TYPE: m for m in (Join, Say, Pm, Who, Ping, Leave, Fetch, Enter, Part, Rooms, Topic, Offer, Put, Get, Nick, Away, Search)
}
BROKER_MESSAGES: dict[bytes, type[Message]] = {
    m.TYPE: m
    for m in (
        Welcome, Ack, Acks, Error, Roster, Private, Pong, History, Bye, Entered, Parted, RoomList, Uploading, PutAck,
        Chunk, Renamed, Found,
    )
}
FILE_REQUESTS = (Offer, Put, Get)


# --------------------------------------------------------------------------- encoding

_ENCODER = msgspec.json.Encoder()
_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`")
_DECODERS: dict[type[Message], msgspec.json.Decoder[Any]] = {}


def encode(message: Message, tag: bytes = PROTOCOL_TAG) -> list[bytes]:
    """Frames of a direct message (without the ROUTER's identity frame).

    ``tag`` is this side's version, except where ``answer_tag`` says to answer in the peer's.
    """
    return [tag, message.TYPE, _ENCODER.encode(message)]


def answer_tag(frames: list[bytes]) -> bytes:
    """The version tag to refuse a request in: the request's own when it names another version (so that
    an older or newer client can read why it is refused; ERROR has the same shape in every version),
    else ours."""
    tag = bytes(frames[0]) if frames else b""
    number = tag[len(PROTOCOL_PREFIX) :]
    if tag.startswith(PROTOCOL_PREFIX) and number.isdigit() and len(number) <= 4:
        return tag
    return PROTOCOL_TAG


def topic_frame(room: str) -> bytes:
    """The PUB topic frame of a room; also what a SUB subscribes to."""
    return room.encode() + TOPIC_END


def endpoint(host: str, port: int | str) -> str:
    """The ZeroMQ address of a broker socket; a client reaches the PUB at its broker's host and pub_port."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def encode_events(events: list[Event]) -> list[list[bytes]]:
    """The published messages that carry ``events``: one per room and batch, in order within each room.

    A message is filled up to PUB_BATCH_BYTES; a busy room's batch is split over several messages.
    """
    by_room: dict[str, list[bytes]] = {}
    encode = _ENCODER.encode
    for event in events:
        body = encode(_EventBody(event.seq, event.ts, event.kind, event.name, event.text))
        by_room.setdefault(event.room, []).append(body)
    messages: list[list[bytes]] = []
    for room, bodies in by_room.items():
        topic = topic_frame(room)
        start, size = 0, 0
        for i, body in enumerate(bodies):
            if size + len(body) > PUB_BATCH_BYTES and i > start:
                messages.append(_events_message(topic, bodies[start:i]))
                start, size = i, 0
            size += len(body) + 1
        messages.append(_events_message(topic, bodies[start:]))
    return messages


def _events_message(topic: bytes, bodies: list[bytes]) -> list[bytes]:
    return [topic, PROTOCOL_TAG, EVENTS, b'{"events":[' + b",".join(bodies) + b"]}"]


def encoded_size(body: Any) -> int:
    """Bytes that ``body`` takes in a frame."""
    return len(_ENCODER.encode(body))


def event_body(event: Event) -> dict[str, Any]:
    """An event as it appears inside a HISTORY reply (the HISTORY names the room)."""
    return {"seq": event.seq, "ts": event.ts, "kind": event.kind, "name": event.name, "text": event.text}


# --------------------------------------------------------------------------- decoding


def _from_body(cls: type[Any], raw: bytes) -> Any:
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.json.Decoder(cls)
    try:
        return decoder.decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        problem = str(exc)
        if problem.startswith("Expected `object`") and " - at `$" not in problem:  # the body itself
            raise RemoteProtocolError(BAD_JSON, "body must be a JSON object") from None
        kind = cls.TYPE.decode()
        missing = _MISSING_FIELD.search(problem)
        if missing:
            raise RemoteProtocolError(BAD_FIELD, f"{kind} needs field {missing[1]!r}") from None
        raise RemoteProtocolError(BAD_FIELD, f"{kind}: {problem}") from None
    except msgspec.DecodeError as exc:  # not JSON, or a lone surrogate escape
        raise RemoteProtocolError(BAD_JSON, f"body is not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(BAD_JSON, f"body is not valid UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise RemoteProtocolError(BAD_JSON, "body is nested too deeply") from None


def _check_version(tag: bytes) -> None:
    if tag == PROTOCOL_TAG:
        return
    if tag.startswith(PROTOCOL_PREFIX):
        raise RemoteProtocolError(
            BAD_VERSION,
            f"chat protocol version {tag[len(PROTOCOL_PREFIX):][:16].decode('ascii', 'replace')!r} is not"
            f" supported: this side speaks version {VERSION}; use a client and a broker of the same version",
        )
    raise RemoteProtocolError(BAD_FRAMES, f"first frame must be {PROTOCOL_TAG.decode()!r}")


def _check_frames(frames: list[bytes], count: int) -> None:
    if count == 3 and len(frames) == 4 and bytes(frames[1]) in DATA_TYPES:
        frames = frames[:3]  # the data frame: its size is checked by its message's own rule
    if len(frames) != count:
        raise RemoteProtocolError(BAD_FRAMES, f"expected {count} frames, got {len(frames)}")
    for frame in frames:
        if len(frame) > MAX_FRAME_BYTES:
            raise RemoteProtocolError(TOO_LARGE, f"a frame is larger than {MAX_FRAME_BYTES} bytes")


def decode(frames: list[bytes], table: dict[bytes, type[Message]]) -> Message:
    """Decode a direct message using ``table`` (``CLIENT_MESSAGES`` or ``BROKER_MESSAGES``).

    Raises ``RemoteProtocolError`` and nothing else, whatever the frames; its ``ref`` names the request
    as well as the frames allow (``refer_to``).
    """
    try:
        return _decode(frames, table)
    except RemoteProtocolError as exc:
        if not exc.ref:
            exc.ref = refer_to(frames)
        raise


def _decode(frames: list[bytes], table: dict[bytes, type[Message]]) -> Message:
    _check_frames(frames, 3)
    tag, kind, raw = frames[:3]
    cls = table.get(bytes(kind))
    _check_version(tag)
    if cls is None:
        raise RemoteProtocolError(BAD_TYPE, f"unknown message type {bytes(kind)[:32]!r}")
    message = _from_body(cls, raw)
    if len(frames) == 4 and cls is Put and len(frames[3]) > MAX_PUT_BYTES:
        raise RemoteProtocolError(BAD_CHUNK, f"a PUT carries at most {MAX_PUT_BYTES} bytes", reference(message))
    try:
        validate(message)
    except RemoteProtocolError as exc:
        exc.ref = reference(message)
        raise
    return message


_READABLE_TYPE = re.compile(rb"[!-~]{1,32}")  # a type frame worth echoing: short printable ASCII
_ANY_ID = msgspec.json.Decoder(dict[str, Any])


def refer_to(frames: list[bytes]) -> str:
    """``ref`` for a request that could not be decoded: its ``id`` when its body is an object with a
    string id, else its type frame when that is readable (even a type we do not know), else ""."""
    if len(frames) != 3 or not _READABLE_TYPE.fullmatch(bytes(frames[1])):
        return ""
    try:
        msg_id = _ANY_ID.decode(frames[2]).get("id")
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        msg_id = None
    if isinstance(msg_id, str) and 0 < len(msg_id) <= MAX_ID_CHARS:
        return msg_id
    return bytes(frames[1]).decode("ascii")


def reference(message: Message) -> str:
    """How an ERROR names the request it answers: the request's id, or else its type."""
    return getattr(message, "id", "") or message.TYPE.decode()


def decode_client(frames: list[bytes]) -> Message:
    return decode(frames, CLIENT_MESSAGES)


def data_of(frames: list[bytes]) -> bytes:
    """The data frame of a PUT or CHUNK (empty when it has none)."""
    return bytes(frames[3]) if len(frames) == 4 else b""


def decode_broker(frames: list[bytes]) -> Message:
    return decode(frames, BROKER_MESSAGES)


def decode_events(frames: list[bytes]) -> list[Event]:
    """Decode a published message (topic frame first) into its events, at least one."""
    _check_frames(frames, 4)
    topic, tag, kind, raw = frames
    _check_version(tag)
    if kind != EVENTS:
        raise RemoteProtocolError(BAD_TYPE, f"unknown published type {bytes(kind)[:32]!r}")
    if not topic.endswith(TOPIC_END):
        raise RemoteProtocolError(BAD_FRAMES, "topic frame must end with a zero byte")
    try:
        room = topic[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(BAD_FRAMES, "topic frame is not valid UTF-8") from None
    body = _from_body(_EventsBody, raw)
    if not body.events:
        raise RemoteProtocolError(BAD_FIELD, "EVENTS holds no event")
    return [Event(e.seq, e.ts, e.kind, e.name, e.text, room) for e in body.events]


def history_events(history: History) -> list[Event]:
    """The events of a HISTORY reply, checked like published ones."""
    events = []
    for raw in history.events:
        try:
            body = msgspec.convert(raw, _EventBody)
        except msgspec.ValidationError as exc:
            raise RemoteProtocolError(BAD_FIELD, f"HISTORY: an event: {exc}") from None
        events.append(Event(body.seq, body.ts, body.kind, body.name, body.text, history.room))
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
        if lookalikes.invisible(ch):
            return f"a name cannot contain invisible characters (U+{ord(ch):04X})"
    if name[0] in "#/*":
        return "a name cannot start with '#', '/' or '*'"
    if lookalikes.stacked_marks(name):
        return f"a name can have at most {lookalikes.MAX_MARKS} accents on a letter"
    scripts = lookalikes.mixed_scripts(name)
    if scripts:
        return f"a name cannot mix scripts ({', '.join(sorted(s.lower() for s in scripts))}): it would look like another"
    return None


@functools.lru_cache(maxsize=4096)  # every event's sender is compared with the own name: few names, many events
def name_key(name: str) -> str:
    """The form under which names are compared: unique case-insensitively."""
    return unicodedata.normalize("NFKC", name).casefold()


def name_look(name: str) -> str:
    """What a name looks like: two names online may not look alike (``alice``, ``aIice``, ``a1ice``)."""
    return lookalikes.skeleton(name)


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


_VALID_ROOMS: set[str] = set()  # names already checked (bounded: it is cleared when it grows large)


def _check_room(room: str) -> None:
    if room in _VALID_ROOMS:
        return
    problem = room_problem(room)
    if problem:
        raise RemoteProtocolError(ROOM_INVALID, problem)
    if len(_VALID_ROOMS) > 10_000:
        _VALID_ROOMS.clear()
    _VALID_ROOMS.add(room)


def text_problem(text: str) -> str | None:
    if not text.strip():
        return "a message cannot be empty"
    if len(text) > MAX_TEXT_CHARS:
        return f"a message can be at most {MAX_TEXT_CHARS} characters long"
    return None


def _validate_join(message: Join) -> None:
    problem = name_problem(message.name)
    if problem:
        raise RemoteProtocolError(NAME_INVALID, problem)
    if len(message.token) > MAX_ID_CHARS:
        raise RemoteProtocolError(BAD_FIELD, f"a token can be at most {MAX_ID_CHARS} characters long")
    if len(message.rooms) > MAX_ROOMS_PER_SESSION:
        raise RemoteProtocolError(BAD_FIELD, f"one can be in at most {MAX_ROOMS_PER_SESSION} rooms")
    for room in message.rooms:
        _check_room(room)


def _validate_line(message: Say | Pm) -> None:
    if len(message.id) > MAX_ID_CHARS:
        raise RemoteProtocolError(BAD_FIELD, f"an id can be at most {MAX_ID_CHARS} characters long")
    problem = text_problem(message.text)
    if problem:
        raise RemoteProtocolError(BAD_FIELD, problem)
    if isinstance(message, Say):
        _check_room(message.room)
        if message.kind not in SAY_KINDS:
            raise RemoteProtocolError(BAD_FIELD, f"kind must be one of {', '.join(SAY_KINDS)}")


def _validate_room(message: Enter | Part | Fetch | Who) -> None:
    if message.room or not isinstance(message, Who):  # WHO without a room: everyone online
        _check_room(message.room)
    if isinstance(message, (Fetch, Who)):
        _check_id(message.id)


def _check_id(msg_id: str) -> None:
    if len(msg_id) > MAX_ID_CHARS:
        raise RemoteProtocolError(BAD_FIELD, f"an id can be at most {MAX_ID_CHARS} characters long")


def _validate_nick(message: Nick) -> None:
    _check_id(message.id)
    problem = name_problem(message.name)
    if problem:
        raise RemoteProtocolError(NAME_INVALID, problem)


def _validate_away(message: Away) -> None:
    _check_id(message.id)
    if len(message.text) > MAX_AWAY_CHARS:
        raise RemoteProtocolError(BAD_FIELD, f"an away message can be at most {MAX_AWAY_CHARS} characters long")


def _validate_search(message: Search) -> None:
    _check_id(message.id)
    if message.room:
        _check_room(message.room)
    if not message.text.strip() or len(message.text) > MAX_TEXT_CHARS:
        raise RemoteProtocolError(BAD_FIELD, f"search for 1 to {MAX_TEXT_CHARS} characters")
    if message.before < 0:
        raise RemoteProtocolError(BAD_FIELD, "before is a cursor from FOUND, or 0")


def _validate_rooms(message: Rooms) -> None:
    _check_id(message.id)


def _validate_topic(message: Topic) -> None:
    _check_room(message.room)
    if len(message.text) > MAX_TOPIC_CHARS:
        raise RemoteProtocolError(BAD_FIELD, f"a topic can be at most {MAX_TOPIC_CHARS} characters long")


def _check_id(msg_id: str) -> None:
    if len(msg_id) > MAX_ID_CHARS:
        raise RemoteProtocolError(BAD_FIELD, f"an id can be at most {MAX_ID_CHARS} characters long")


def _validate_offer(message: Offer) -> None:
    _check_id(message.id)
    if message.to.startswith("#"):
        _check_room(message.to)
    elif name_problem(message.to):
        raise RemoteProtocolError(BAD_FIELD, "OFFER: 'to' must be a user's name or a #room")
    if message.size < 0:
        raise RemoteProtocolError(BAD_FIELD, "OFFER: size cannot be negative")
    if not SHA256_HEX.fullmatch(message.sha256):
        raise RemoteProtocolError(BAD_FIELD, "OFFER: sha256 must be 64 lower-case hex digits")
    if len(message.name.encode("utf-8", "surrogatepass")) > 4 * MAX_FILE_NAME_BYTES:
        raise RemoteProtocolError(BAD_FIELD, f"OFFER: a file name can be at most {MAX_FILE_NAME_BYTES} bytes")


def _validate_transfer(message: Put | Get) -> None:
    _check_id(message.id)
    if message.file < 1 or message.offset < 0:
        raise RemoteProtocolError(BAD_CHUNK, f"{message.TYPE.decode()}: file must be >= 1 and offset >= 0")
    if isinstance(message, Get) and not 0 <= message.size <= MAX_GET_BYTES:
        raise RemoteProtocolError(BAD_CHUNK, f"GET: size must be 0 to {MAX_GET_BYTES} bytes")


_VALIDATORS: dict[type[Message], Any] = {
    Offer: _validate_offer,
    Put: _validate_transfer,
    Get: _validate_transfer,
    Join: _validate_join,
    Say: _validate_line,
    Pm: _validate_line,
    Enter: _validate_room,
    Part: _validate_room,
    Fetch: _validate_room,
    Who: _validate_room,
    Topic: _validate_topic,
    Nick: _validate_nick,
    Away: _validate_away,
    Search: _validate_search,
    Rooms: _validate_rooms,
}


def validate(message: Message) -> None:
    """Field rules beyond types, for the messages a broker receives."""
    check = _VALIDATORS.get(type(message))
    if check is not None:
        check(message)


def neutralised(value: Any) -> Any:
    """``value`` (a decoded message, an event, or a part of one) with every string in it neutralised.

    A client applies it to everything a broker sends, before deciding or showing anything: a fake broker
    (the beacons are not authenticated) must not reach the terminal through an error or goodbye reason.
    """
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, list):
        return [neutralised(item) for item in value]
    if isinstance(value, dict):
        return {neutralised(key): neutralised(item) for key, item in value.items()}
    if isinstance(value, msgspec.Struct):
        changes = {}
        for name in value.__struct_fields__:
            old = getattr(value, name)
            new = neutralised(old)
            if new is not old and new != old:
                changes[name] = new
        return msgspec.structs.replace(value, **changes) if changes else value
    return value


def neutralise(text: str) -> str:
    """Make ``text`` safe to write to a terminal.

    Control characters (which start ANSI/OSC escape sequences) become visible caret notation, C1
    controls, lone surrogates and bidirectional overrides become U+FFFD, newlines and tabs become spaces.
    """
    if text.isascii() and text.isprintable():  # the common case, in C: no control character, nothing else to do
        return text
    if not _UNSAFE.search(text):
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



# --------------------------------------------------------------------------- file names and offers

# Names Windows keeps for devices, with or without an extension ("CON", "nul.txt", "COM1.log").
_RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"] + [f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10)]
)
_UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"/\\|?*\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]')


def safe_file_name(name: str) -> str:
    """A name that is safe to show and to save a file under, on every system, for an offered ``name``.

    Only the last part of a path is kept (``../../etc/passwd`` is ``passwd``), control characters and
    what Windows forbids become ``_``, leading dots and trailing dots and spaces go (no hidden files, no
    ``..``), a device name of Windows (``CON``, ``NUL``, ``COM1``..., also with an extension) gets a
    ``_`` in front, and the name is cut to MAX_FILE_NAME_BYTES of UTF-8, keeping its extension.
    """
    name = unicodedata.normalize("NFC", name.replace("\\", "/")).rsplit("/", 1)[-1]
    name = _UNSAFE_IN_NAMES.sub("_", name).lstrip(". ").rstrip(". ")
    if not name:
        return "file"
    if name.split(".", 1)[0].upper().rstrip(" ") in _RESERVED_NAMES:
        name = "_" + name
    if len(name.encode()) > MAX_FILE_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = dot + ext if dot and stem and len(ext.encode()) <= 16 else ""
        stem = name[: len(name) - len(ext)]
        while len((stem + ext).encode()) > MAX_FILE_NAME_BYTES:
            stem = stem[:-1]
        name = stem.rstrip(". ") + ext
    return name


def file_size_text(size: int) -> str:
    """A size as people read it: 512 bytes, 2.4 KB, 2.4 MB, 1.2 GB (powers of 1000, as file managers show)."""
    if size < 1000:
        return f"{size} byte" + ("" if size == 1 else "s")
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1000  # type: ignore[assignment]
        if size < 999.95 or unit == "TB":
            return f"{size:.1f} {unit}"
    return ""  # pragma: no cover


def offer_text(number: int, name: str, size: int, sha256: str) -> str:
    """The text of a file offer, in a room's ``file`` event and in a PRIVATE: readable as it is by a client
    that does not know files, and ending in the command that fetches it."""
    return f"offers {safe_file_name(name)} ({file_size_text(size)}, sha256 {sha256[:8]}...) - /get {number}"


_OFFER_NUMBER = re.compile(r" - /get (\d+)$")


def offer_number(text: str) -> int:
    """The file number at the end of an ``offer_text`` (0 when it is not one)."""
    match = _OFFER_NUMBER.search(text)
    return int(match[1]) if match else 0
