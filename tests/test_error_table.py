"""docs/PROTOCOL.md's error tables against the broker core, so that the two cannot drift apart.

Both ways: every code the document lists for a request is produced by a scenario here (so none is listed
that cannot happen), and requests of every type with fuzzed fields, joined or not, produce no code the
document does not list for that type (so none happens that is not listed).
"""

from __future__ import annotations

import json
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import protocol as p
from chat.broker import commands, core, limits
from chat.broker.core import Broker, Reply
from chat.broker.files import FileService

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
ANY = "any message"
A, B = b"\x00A", b"\x00B"  # ROUTER identities: A sends the request under test, B sets the scene


def section(title: str) -> str:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n")
    end = text.find("\n#", start + len(title) + 2)
    return text[start : end if end >= 0 else None]


def per_request() -> dict[str, set[str]]:
    """The table "Errors per request": request type (or "any message") -> its codes."""
    table: dict[str, set[str]] = {}
    for line in section("### Errors per request").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].startswith("`"):
            table[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[1]))
    return table


DOCUMENTED = per_request()


class Scene:
    """A broker core, and what the request under test is sent with."""

    def __init__(self, **options: Any) -> None:
        self._folder = tempfile.TemporaryDirectory()  # the file store: removed with the scene
        files = FileService(Path(self._folder.name), max_file_size=1000)
        self.broker = Broker(pub_port=5556, clock=lambda: 1_764_190_000.0, files=files, **options)
        self.peer_key = ""
        self.address = ""  # the source address the request under test comes from

    def send(self, identity: bytes, message: p.Message, peer_key: str = "") -> list[Any]:
        return self.broker.handle(identity, p.encode(message), peer_key)

    def join(self, identity: bytes = A, name: str = "alice", peer_key: str = "") -> None:
        [welcome] = [r.message for r in self.send(identity, p.Join(name), peer_key) if isinstance(r, Reply)]
        assert isinstance(welcome, p.Welcome)


def raw(kind: bytes, body: object) -> list[bytes]:
    return [p.PROTOCOL_TAG, kind, json.dumps(body).encode()]


def joined(message: p.Message | list[bytes]) -> Callable[[Scene], list[bytes]]:
    """A scenario: ``message`` sent by alice, joined (in #general)."""

    def scenario(scene: Scene) -> list[bytes]:
        scene.join()
        return message if isinstance(message, list) else p.encode(message)

    return scenario


def alone(message: p.Message | list[bytes]) -> Callable[[Scene], list[bytes]]:
    """A scenario: ``message`` sent by a connection with no session."""
    return lambda scene: message if isinstance(message, list) else p.encode(message)


def name_owned(scene: Scene) -> list[bytes]:
    scene.join(B, "olga", peer_key="K" * 40)
    scene.send(B, p.Leave())
    scene.peer_key = "L" * 40
    return p.encode(p.Join("olga"))


def name_taken(scene: Scene) -> list[bytes]:
    scene.join(B, "bob")
    return p.encode(p.Join("Bob"))


def rate_limited(message: p.Message) -> Callable[[Scene], list[bytes]]:
    def scenario(scene: Scene) -> list[bytes]:
        scene.join()
        scene.join(B, "bob")
        scene.send(A, msgspec.structs.replace(message, id="first") if hasattr(message, "id") else message)
        return p.encode(message)

    scenario.options = {"rate": 0.001, "burst": 1}  # type: ignore[attr-defined]
    return scenario


def key_mismatch(scene: Scene) -> list[bytes]:
    scene.join(A, "alice", peer_key="K" * 40)
    scene.peer_key = "L" * 40  # another key on alice's routing id
    return p.encode(p.Ping())


def from_a_busy_address(**options: float) -> Callable[[Scene], list[bytes]]:
    """A JOIN from the address bob joined from, past one of the per-address limits in ``options``."""

    def scenario(scene: Scene) -> list[bytes]:
        scene.address = "192.0.2.7"
        scene.broker.handle(B, p.encode(p.Join("bob")), "", scene.address)
        return p.encode(p.Join("alice"))

    scenario.options = options  # type: ignore[attr-defined]
    return scenario


def fetch_past_its_budget(scene: Scene) -> list[bytes]:
    scene.join()
    for _ in range(limits.FETCH_BYTES_BURST // limits.FETCH_MIN_COST):
        scene.send(A, p.Fetch("#general", 1, 1))
    return p.encode(p.Fetch("#general", 1, 1))


def room_change_past_the_rate(last: p.Message) -> Callable[[Scene], list[bytes]]:
    def scenario(scene: Scene) -> list[bytes]:
        scene.join()
        scene.send(A, p.Enter("#dev"))  # the one room change of the burst
        return p.encode(last)

    scenario.options = {"rate": 0.001, "burst": 1}  # type: ignore[attr-defined]
    return scenario


def server_full_join(scene: Scene) -> list[bytes]:
    scene.join(B, "bob")
    return p.encode(p.Join("alice"))


server_full_join.options = {"max_sessions": 1}  # type: ignore[attr-defined]


def enter_33rd_room(scene: Scene) -> list[bytes]:
    scene.join()
    for n in range(p.MAX_ROOMS_PER_SESSION - 1):
        scene.send(A, p.Enter(f"#r{n}"))
    return p.encode(p.Enter("#one-too-many"))


enter_33rd_room.options = {"rate": 0}  # type: ignore[attr-defined]  # (32 rooms at once: past the room limits)


def enter_past_max_rooms(scene: Scene) -> list[bytes]:
    scene.join()
    scene.broker.members.update({f"#filler{n}": 1 for n in range(core.MAX_ROOMS)})  # as if every room existed
    return p.encode(p.Enter("#new"))


def nick_to_an_owned_name(scene: Scene) -> list[bytes]:
    scene.join(B, "olga", peer_key="K" * 40)
    scene.send(B, p.Leave(), peer_key="K" * 40)
    scene.peer_key = "L" * 40
    scene.join(A, "alice", peer_key=scene.peer_key)
    return p.encode(p.Nick("n1", "olga"))


def nick_to_a_look_alike(scene: Scene) -> list[bytes]:
    scene.join(B, "bob")
    scene.join()
    return p.encode(p.Nick("n1", "b0b"))


def pm_past_the_queue(scene: Scene) -> list[bytes]:
    """Bob has been here and left; alice has queued as many PMs for him as one sender may."""
    scene.join(B, "bob")
    scene.send(B, p.Leave())
    scene.join()
    for n in range(commands.MAX_QUEUED_PER_SENDER):
        scene.send(A, p.Pm(f"q{n}", "bob", "hi"))
    return p.encode(p.Pm("one-more", "bob", "hi"))


pm_past_the_queue.options = {"rate": 0}  # type: ignore[attr-defined]


def say_in(room: str) -> Callable[[Scene], list[bytes]]:
    return joined(p.Say("s1", "hi", room))


SHA = "a" * 64


def offer(to: str = "bob", size: int = 10, sha256: str = SHA) -> p.Offer:
    return p.Offer("file-up-1", to, "notes.txt", size, sha256)


def with_bob(message: p.Message) -> Callable[[Scene], list[bytes]]:
    def scenario(scene: Scene) -> list[bytes]:
        scene.join()
        scene.join(B, "bob")
        return p.encode(message)

    return scenario


def offer_being_uploaded(scene: Scene) -> list[bytes]:
    scene.join()
    scene.join(B, "bob")
    scene.send(B, offer(to="alice"))
    return p.encode(offer())


def offer_unwritable(scene: Scene) -> list[bytes]:
    scene.join()
    scene.join(B, "bob")
    store = scene.broker.files.store  # type: ignore[union-attr]
    store.partial.rmdir()
    store.partial.write_text("a file where the folder of partial uploads should be")
    return p.encode(offer())


def uploading(scene: Scene) -> int:
    scene.join()
    scene.join(B, "bob")
    [answer] = [r.message for r in scene.send(A, offer()) if isinstance(r, Reply)]
    assert isinstance(answer, p.Uploading)
    return answer.file


def put_bad_crc(scene: Scene) -> list[bytes]:
    number = uploading(scene)
    return p.encode(p.Put("file-up-1", number, 0, 12345)) + [b"0123456789"]


def put_unwritable(scene: Scene) -> list[bytes]:
    number = uploading(scene)
    upload = scene.broker.files.uploads[number]  # type: ignore[union-attr]
    upload.handle.close()
    upload.handle = open(scene.broker.files.store.partial_path(SHA), "rb")  # type: ignore[union-attr]  # noqa: SIM115
    return p.encode(p.Put("file-up-1", number, 0, zlib.crc32(b"0123456789"))) + [b"0123456789"]


def get_others_file(scene: Scene) -> list[bytes]:
    scene.join()
    scene.join(B, "bob")
    scene.broker.handle(b"\x00C", p.encode(p.Join("carol")))
    out = scene.send(B, offer(to="carol", size=0, sha256=EMPTY_SHA))
    [answer] = [r.message for r in out if isinstance(r, Reply) and isinstance(r.message, p.PutAck)]
    return p.encode(p.Get("file-get-1", answer.file))


EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# (request, code) -> how to produce it. The request "any message" stands for every type.
SCENARIOS: dict[tuple[str, str], Callable[[Scene], list[bytes]]] = {
    (ANY, p.BAD_FRAMES): alone([b"garbage"]),
    (ANY, p.BAD_VERSION): alone([b"chat/1", b"PING", b"{}"]),
    (ANY, p.BAD_TYPE): alone([p.PROTOCOL_TAG, b"FOO", b"{}"]),
    (ANY, p.BAD_JSON): alone([p.PROTOCOL_TAG, b"PING", b"[]"]),
    (ANY, p.TOO_LARGE): alone([p.PROTOCOL_TAG, b"PING", b" " * (p.MAX_FRAME_BYTES + 1)]),
    (ANY, p.KEY_MISMATCH): key_mismatch,
    ("JOIN", p.ADDRESS_FULL): from_a_busy_address(max_per_address=1),
    ("JOIN", p.RATE_LIMITED): from_a_busy_address(join_rate=0.001, join_burst=1),
    ("FETCH", p.RATE_LIMITED): fetch_past_its_budget,
    ("ENTER", p.RATE_LIMITED): room_change_past_the_rate(p.Enter("#more")),
    ("PART", p.RATE_LIMITED): room_change_past_the_rate(p.Part("#dev")),
    ("JOIN", p.BAD_FIELD): alone(raw(b"JOIN", {})),
    ("JOIN", p.NAME_INVALID): alone(p.Join("has space")),
    ("JOIN", p.ROOM_INVALID): alone(p.Join("alice", rooms=["dev"])),
    ("JOIN", p.NAME_TAKEN): name_taken,
    ("JOIN", p.NAME_OWNED): name_owned,
    ("JOIN", p.ALREADY_JOINED): joined(p.Join("another")),
    ("JOIN", p.SERVER_FULL): server_full_join,
    ("SAY", p.NOT_JOINED): alone(p.Say("s1", "hi")),
    ("SAY", p.BAD_FIELD): joined(p.Say("s1", "   ")),
    ("SAY", p.ROOM_INVALID): say_in("dev"),
    ("SAY", p.NO_SUCH_ROOM): say_in("#dev"),
    ("SAY", p.RATE_LIMITED): rate_limited(p.Say("s2", "hi")),
    ("PM", p.NOT_JOINED): alone(p.Pm("m1", "bob", "hi")),
    ("PM", p.BAD_FIELD): joined(p.Pm("m1", "bob", "")),
    ("PM", p.NO_SUCH_USER): joined(p.Pm("m1", "nobody", "hi")),
    ("PM", p.RATE_LIMITED): rate_limited(p.Pm("m2", "bob", "hi")),
    ("WHO", p.NOT_JOINED): alone(p.Who()),
    ("WHO", p.BAD_FIELD): joined(raw(b"WHO", {"room": 7})),
    ("WHO", p.ROOM_INVALID): joined(p.Who("dev")),
    ("WHO", p.NO_SUCH_ROOM): joined(p.Who("#nowhere")),
    ("WHO", p.RATE_LIMITED): rate_limited(p.Who()),
    ("PING", p.NOT_JOINED): alone(p.Ping()),
    ("FETCH", p.NOT_JOINED): alone(p.Fetch("#general", 1, 1)),
    ("FETCH", p.BAD_FIELD): joined(raw(b"FETCH", {"room": "#general", "first": 1})),
    ("FETCH", p.ROOM_INVALID): joined(p.Fetch("general", 1, 1)),
    ("FETCH", p.NO_SUCH_ROOM): joined(p.Fetch("#nowhere", 1, 1)),
    ("FETCH", p.HISTORY_RANGE): joined(p.Fetch("#general", 5, 9)),
    ("LEAVE", p.NOT_JOINED): alone(p.Leave()),
    ("ENTER", p.NOT_JOINED): alone(p.Enter("#dev")),
    ("ENTER", p.BAD_FIELD): enter_33rd_room,
    ("ENTER", p.ROOM_INVALID): joined(p.Enter("dev")),
    ("ENTER", p.SERVER_FULL): enter_past_max_rooms,
    ("PART", p.NOT_JOINED): alone(p.Part("#general")),
    ("PART", p.BAD_FIELD): joined(raw(b"PART", {})),
    ("PART", p.ROOM_INVALID): joined(p.Part("general")),
    ("PART", p.NO_SUCH_ROOM): joined(p.Part("#dev")),
    ("ROOMS", p.NOT_JOINED): alone(p.Rooms()),
    ("ROOMS", p.BAD_FIELD): joined(p.Rooms("x" * 70)),
    ("PM", p.QUEUE_FULL): pm_past_the_queue,
    ("NICK", p.NOT_JOINED): alone(p.Nick("n1", "alicia")),
    ("NICK", p.BAD_FIELD): joined(raw(b"NICK", {"id": "n1", "name": 7})),
    ("NICK", p.NAME_INVALID): joined(p.Nick("n1", "#alicia")),
    ("NICK", p.NAME_TAKEN): nick_to_a_look_alike,
    ("NICK", p.NAME_OWNED): nick_to_an_owned_name,
    ("NICK", p.RATE_LIMITED): rate_limited(p.Nick("n2", "alicia")),
    ("AWAY", p.NOT_JOINED): alone(p.Away("w1", "lunch")),
    ("AWAY", p.BAD_FIELD): joined(p.Away("w1", "x" * (p.MAX_AWAY_CHARS + 1))),
    ("AWAY", p.RATE_LIMITED): rate_limited(p.Away("w2", "lunch")),
    ("SEARCH", p.NOT_JOINED): alone(p.Search("q1", "deploy")),
    ("SEARCH", p.BAD_FIELD): joined(p.Search("q1", '"*"')),
    ("SEARCH", p.ROOM_INVALID): joined(p.Search("q1", "deploy", "dev")),
    ("SEARCH", p.NO_SUCH_ROOM): joined(p.Search("q1", "deploy", "#dev")),
    ("SEARCH", p.RATE_LIMITED): rate_limited(p.Search("q2", "deploy")),
    ("TOPIC", p.NOT_JOINED): alone(p.Topic("t1", "#general", "hi")),
    ("TOPIC", p.BAD_FIELD): joined(p.Topic("t1", "#general", "x" * (p.MAX_TOPIC_CHARS + 1))),
    ("TOPIC", p.ROOM_INVALID): joined(p.Topic("t1", "general", "hi")),
    ("TOPIC", p.NO_SUCH_ROOM): joined(p.Topic("t1", "#dev", "hi")),
    ("TOPIC", p.RATE_LIMITED): rate_limited(p.Topic("t2", "#general", "hi")),
    ("OFFER", p.NOT_JOINED): alone(offer()),
    ("OFFER", p.BAD_FIELD): with_bob(offer(sha256="not a hash")),
    ("OFFER", p.ROOM_INVALID): with_bob(offer(to="#no room")),
    ("OFFER", p.NO_SUCH_ROOM): with_bob(offer(to="#dev")),
    ("OFFER", p.NO_SUCH_USER): with_bob(offer(to="nobody")),
    ("OFFER", p.FILE_TOO_LARGE): with_bob(offer(size=1001)),
    ("OFFER", p.FILE_REFUSED): offer_being_uploaded,
    ("OFFER", p.FILE_NOT_STORED): offer_unwritable,
    ("PUT", p.NOT_JOINED): alone(p.Put("file-up-1", 1, 0, 0)),
    ("PUT", p.BAD_FIELD): joined(raw(b"PUT", {"id": "file-up-1", "file": 1, "offset": 0})),
    ("PUT", p.BAD_CHUNK): put_bad_crc,
    ("PUT", p.NO_SUCH_FILE): joined(p.Put("file-up-1", 1, 0, 0)),
    ("PUT", p.FILE_NOT_STORED): put_unwritable,
    ("GET", p.NOT_JOINED): alone(p.Get("file-get-1", 1)),
    ("GET", p.BAD_FIELD): joined(raw(b"GET", {"file": 1})),
    ("GET", p.BAD_CHUNK): joined(p.Get("file-get-1", 1, 0, p.MAX_GET_BYTES + 1)),
    ("GET", p.NO_SUCH_FILE): joined(p.Get("file-get-1", 1)),
    ("GET", p.FILE_REFUSED): get_others_file,
}


def test_the_error_codes_table_lists_every_code_and_no_other() -> None:
    codes = re.findall(r"^\| `([a-z_]+)` \|", section("## Errors"), re.MULTILINE)
    assert sorted(codes) == sorted(p.ERROR_CODES)


def test_every_request_type_has_its_row_and_every_code_is_real() -> None:
    assert set(DOCUMENTED) == {ANY} | {kind.decode() for kind in p.CLIENT_MESSAGES}
    assert set().union(*DOCUMENTED.values()) <= set(p.ERROR_CODES)
    documented = {(kind, code) for kind, codes in DOCUMENTED.items() for code in codes}
    assert documented == set(SCENARIOS), "a code in the table without a scenario, or the other way round"


@pytest.mark.parametrize("kind, code", sorted(SCENARIOS), ids=[f"{k}-{c}" for k, c in sorted(SCENARIOS)])
def test_each_documented_code_is_what_the_broker_answers(kind: str, code: str) -> None:
    scenario = SCENARIOS[(kind, code)]
    scene = Scene(**getattr(scenario, "options", {}))
    frames = scenario(scene)
    assert kind == ANY or frames[1] == kind.encode()
    out = scene.broker.handle(A, frames, scene.peer_key, scene.address)
    errors = [r.message for r in out if isinstance(r, Reply) and isinstance(r.message, p.Error)]
    assert [e.code for e in errors] == [code], out


# Field values a client could send, good and bad, for the fuzz below.
VALUES = st.one_of(
    st.sampled_from(["", " ", "#general", "#dev", "#General", "dev", "#", "#" + "x" * 40, "alice", "bob", "Bob",
                     "x" * 70, "has space", "*star", "\u202eflip", "msg", "action", "join"]),
    st.integers(min_value=-2, max_value=10),
    st.none(),
    st.booleans(),
    st.lists(st.sampled_from(["#general", "#dev", "dev", "#r1"]), max_size=3),
    st.just([f"#r{n}" for n in range(p.MAX_ROOMS_PER_SESSION + 1)]),
    st.text(max_size=8),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any], bool]:
    kind = draw(st.sampled_from(sorted(k.decode() for k in p.CLIENT_MESSAGES)))
    fields = p.CLIENT_MESSAGES[kind.encode()].__struct_fields__
    body = {name: draw(VALUES) for name in fields if draw(st.booleans())}
    return kind, body, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(requests())
def test_no_request_gets_a_code_its_row_does_not_list(request: tuple[str, dict[str, Any], bool]) -> None:
    kind, body, is_joined = request
    scene = Scene()
    scene.join(B, "bob")
    if is_joined:
        scene.join()
        scene.send(A, p.Enter("#dev"))
    out = scene.broker.handle(A, raw(kind.encode(), body))
    allowed = DOCUMENTED[ANY] | DOCUMENTED[kind]
    for reply in out:
        if isinstance(reply, Reply) and isinstance(reply.message, p.Error):
            assert reply.message.code in allowed, (kind, body, reply.message)
