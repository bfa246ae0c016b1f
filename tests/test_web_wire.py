"""The web gateway without a browser or a broker: the JSON it accepts, what it sends, and how a tab's
requests map onto its client-core session (chat.web.wire, chat.web.server.Tab)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from chat import protocol as p
from chat.client import events as ev
from chat.client.host import SessionLimit
from chat.web import wire
from chat.web.server import BURST, Tab


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("not json", wire.BAD_JSON),
        ("[1, 2]", wire.BAD_FIELD),
        ('{"type": "shout", "text": "x"}', wire.BAD_TYPE),
        ('{"text": "no type"}', wire.BAD_TYPE),
        ('{"type": "line"}', wire.BAD_FIELD),
        ('{"type": "line", "text": 5}', wire.BAD_FIELD),
        ('{"type": "line", "text": "hi", "room": "general"}', wire.BAD_FIELD),
        ('{"type": "hello", "name": "two words"}', wire.BAD_FIELD),
        ('{"type": "older", "room": "#general", "count": 0}', wire.BAD_FIELD),
        ('{"type": "hello", "name": "al", "resume": {"token": "t", "history_id": "h", "rooms": {}}}', wire.BAD_FIELD),
        ('{"type": "hello", "resume": {"token": "t", "history_id": "h", "rooms": {"#a": -1}}}', wire.BAD_FIELD),
        ('{"type": "hello", "resume": {"token": "t", "history_id": "h", "rooms": {"#a": 1},'
         ' "pending": [{"id": "1", "kind": "shout", "text": "x", "room": "#a"}]}}', wire.BAD_FIELD),
        ("x" * (wire.MAX_MESSAGE_BYTES + 1), wire.BAD_FIELD),
    ],
)
def test_bad_messages_from_a_browser_get_a_stable_code(data: str, code: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.parse(data)
    assert caught.value.code == code and caught.value.reason


def test_a_resume_becomes_the_session_hosts_resume_with_lowercase_rooms() -> None:
    hello = wire.parse(json.dumps({
        "type": "hello", "name": "alice",
        "resume": {"token": "t" * 32, "history_id": "h1", "rooms": {"#Dev": 7, "#general": 3}, "current": "#DEV",
                   "pending": [{"id": "x-1", "kind": "action", "text": "waves", "room": "#Dev"},
                               {"id": "x-2", "kind": "pm", "text": "psst", "to": "bob"}],
                   "private_seq": 4},
    }))
    assert isinstance(hello, wire.Hello) and hello.resume is not None
    resume = wire.resume_of(hello.resume)
    assert resume.rooms == {"#dev": 7, "#general": 3} and resume.current == "#dev"
    assert resume.pending == [p.Say("x-1", "waves", "#dev", p.KIND_ACTION), p.Pm("x-2", "bob", "psst")]
    assert resume.private_seq == 4  # the private messages after the 4th come again
    older_page = wire.parse('{"type": "hello", "resume": {"token": "t", "history_id": "h", "rooms": {"#a": 1}}}')
    assert isinstance(older_page, wire.Hello) and older_page.resume is not None
    assert wire.resume_of(older_page.resume).private_seq == -1  # not known: none comes again


def test_a_private_message_tells_the_page_its_number_to_resume_from() -> None:
    private = p.Private("bob", "alice", "psst", 1000, seq=3)
    assert wire.shown(ev.PrivateIn(private), "#general") == {
        "type": "private", "name": "bob", "to": "alice", "text": "psst", "ts": 1000, "seq": 3}


def test_an_events_json_is_encoded_once_for_every_tab_and_a_batch_is_one_array() -> None:
    encoded = wire.PublicJSON(kept=2)
    event = p.Event(4, 1000, p.KIND_MSG, "bob", "<b>hi</b>", "#dev")
    first = encoded(event)
    assert encoded(event) is first  # the same event object: the same bytes, not encoded again
    assert json.loads(first) == wire.public(event)
    twin = p.Event(4, 1000, p.KIND_MSG, "bob", "<b>hi</b>", "#dev")
    assert encoded(twin) == first and encoded(twin) is not first  # known by identity, not by value
    for n in range(5):
        encoded(p.Event(n, 1000, p.KIND_MSG, "bob", str(n), "#dev"))
    assert len(encoded._encoded) == 2  # bounded
    batch = wire.joined([first, wire.encode_one(wire.error("bad_json", "x"))])
    assert json.loads(batch) == [wire.public(event), wire.error("bad_json", "x")]


def test_what_the_core_shows_becomes_json_the_page_reads() -> None:
    event = p.Event(4, 1000, p.KIND_MSG, "bob", "<b>hi</b>", "#dev")
    assert wire.shown(ev.Public(event), "#general") == {
        "type": "event", "room": "#dev", "seq": 4, "ts": 1000, "kind": "msg", "name": "bob", "text": "<b>hi</b>"}
    assert wire.shown(ev.Sent("i-1", "msg", "yo"), "#dev")["room"] == "#dev"
    assert wire.shown(ev.Sent("i-2", "pm", "yo", "bob"), "#dev")["room"] == ""
    assert wire.shown(ev.Notice("there is nothing older in #dev"), "#dev") == {"type": "older", "room": "#dev", "events": []}
    assert json.loads(wire.encode([wire.error("bad_json", "x")])) == [{"type": "error", "code": "bad_json", "reason": "x"}]


# --------------------------------------------------------------------------- Tab, with a fake host


@dataclass
class FakeCore:
    rooms: list[str] = field(default_factory=lambda: ["#general", "#dev"])
    current: str = "#general"
    token: str = "tok"
    history_id: str = "hist"


@dataclass
class FakeSession:
    core: FakeCore = field(default_factory=FakeCore)
    typed: list[str] = field(default_factory=list)
    focused: list[str] = field(default_factory=list)
    left: bool = False

    def submit(self, line: str) -> None:
        self.typed.append(line)

    def leave(self) -> None:
        self.left = True

    def focus(self, room: str) -> None:
        self.focused.append(room)


class FakeHost:
    def __init__(self, full: bool = False) -> None:
        self.full = full
        self.opened: list[dict[str, Any]] = []
        self.session = FakeSession()

    def open(self, address: str, show: Callable[[ev.Show], None], **options: Any) -> FakeSession:
        if self.full:
            raise SessionLimit("full up")
        self.opened.append({"address": address, **options})
        return self.session


async def _nothing(_: bytes) -> None:
    pass


def tab_with(host: FakeHost) -> Tab:
    return Tab(host, "192.0.2.9", _nothing)  # type: ignore[arg-type]


def sent(tab: Tab) -> list[dict[str, Any]]:
    """What waits to go to the browser, as the page will read it."""
    return [json.loads(m) for m in tab.outbox]


def sent_types(tab: Tab) -> list[str]:
    return [m["type"] for m in sent(tab)]


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Tab's asyncio.Event wants one
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def test_a_tab_maps_its_requests_onto_its_session(loop: Any) -> None:
    host = FakeHost()
    tab = tab_with(host)
    tab.receive('{"type": "line", "text": "too early"}')
    assert sent_types(tab) == ["error"] and sent(tab)[0]["code"] == wire.NOT_YET
    tab.receive('{"type": "hello", "name": "alice", "room": "#dev"}')
    assert host.opened == [{"address": "192.0.2.9", "name": "alice", "room": "#dev", "resume": None, "on_exit": tab.ended}]
    session = host.session
    tab.receive('{"type": "line", "text": "in dev", "room": "#DEV"}')  # the page's conversation
    tab.receive('{"type": "line", "text": "psst", "to": "bob"}')
    tab.receive('{"type": "line", "text": "/who", "to": "bob"}')  # a command stays a command
    tab.receive('{"type": "line", "text": "elsewhere", "room": "#notmine"}')
    tab.receive('{"type": "older", "room": "#general", "count": 30}')
    tab.receive('{"type": "who", "room": "#dev"}')
    tab.receive('{"type": "quit"}')
    assert session.typed == ["in dev", "/pm bob psst", "/who", "elsewhere", "/history 30", "/who #dev"]
    assert session.focused == ["#DEV", "", "", "#notmine", "#general"] and session.left
    tab.receive('{"type": "hello", "name": "again"}')
    assert sent(tab)[-1]["code"] == wire.BAD_TYPE and len(host.opened) == 1


def test_a_tab_answers_bad_input_and_floods_with_errors_and_its_session_goes_on(loop: Any) -> None:
    host = FakeHost()
    tab = tab_with(host)
    tab.receive('{"type": "hello", "name": "alice"}')
    for bad in ("{", '{"type": 1}', "\u0000", '{"type": "line", "text": "' + "x" * 3000 + '"}'):
        tab.receive(bad)
    assert sent_types(tab) == ["error"] * 4
    tab.outbox.clear()
    for n in range(BURST + 5):
        tab.receive(json.dumps({"type": "line", "text": f"line {n}"}))
    assert len(host.session.typed) < BURST + 5
    assert sent(tab) and all(m["code"] == wire.RATE_LIMITED for m in sent(tab))


def test_a_full_gateway_says_so(loop: Any) -> None:
    tab = tab_with(FakeHost(full=True))
    tab.receive('{"type": "hello", "name": "alice"}')
    assert sent(tab) == [wire.error(wire.FULL, "full up")] and tab.session is None


def test_the_page_is_told_the_session_to_keep_once_connected(loop: Any) -> None:
    host = FakeHost()
    tab = tab_with(host)
    tab.receive('{"type": "hello", "name": "alice"}')
    tab.show(ev.Status("connected", "alice"))
    assert sent(tab)[-2:] == [{"type": "status", "state": "connected", "name": "alice"},
                               {"type": "session", "token": "tok", "history_id": "hist"}]
