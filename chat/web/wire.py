"""The WebSocket JSON between a browser tab and the gateway (docs/WEB.md). Pure: no sockets.

Browser -> gateway: one JSON object per WebSocket message, ``type`` first. Gateway -> browser: a JSON
array of objects per WebSocket message (what one turn of the loop had to show, sent together).
Everything the browser sends is checked here, before it reaches a session: ``WireError`` carries a
stable code for the error reply, and the session is untouched.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from chat import protocol as p
from chat.client import events as ev
from chat.client.host import Resume
from chat.errors import ChatError
from chat.ui.format import LineFormatter

MAX_MESSAGE_BYTES = 16 * 1024  # one message from a browser (a line of MAX_TEXT_CHARS, escaped, fits)
MAX_PENDING = 500  # lines a resuming page may hand back (the core's window, MAX_IN_FLIGHT)

BAD_JSON = "bad_json"
BAD_FIELD = "bad_field"
BAD_TYPE = "bad_type"
RATE_LIMITED = "rate_limited"
NOT_YET = "not_yet"  # a request before hello
FULL = "full"  # the gateway's session limits
NOTHING_OLDER = ("there is nothing older in ", "nothing older is kept in ")  # chat.client.core's notices


class WireError(ChatError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


# --------------------------------------------------------------------------- browser -> gateway


class PendingLine(msgspec.Struct, frozen=True):
    """A line the page showed as sent and never saw acknowledged."""

    id: str
    kind: str  # msg, action or pm
    text: str
    room: str = ""
    to: str = ""


class ResumeState(msgspec.Struct, frozen=True):
    token: str
    history_id: str
    rooms: dict[str, int]
    current: str = ""
    pending: list[PendingLine] = []
    private_seq: int = -1  # the seq of the last private message the page showed; -1: not known


class Hello(msgspec.Struct, frozen=True, tag="hello", tag_field="type"):
    """Start this tab's session: a name (or "" to be asked), or a session to go on with."""

    name: str = ""
    room: str = p.DEFAULT_ROOM
    resume: Union[ResumeState, None] = None


class Line(msgspec.Struct, frozen=True, tag="line", tag_field="type"):
    """What the user typed: a line or a slash command, in the conversation ``room`` or with ``to``."""

    text: str
    room: str = ""
    to: str = ""


class Older(msgspec.Struct, frozen=True, tag="older", tag_field="type"):
    room: str
    count: int = 50


class Who(msgspec.Struct, frozen=True, tag="who", tag_field="type"):
    room: str = ""


class Quit(msgspec.Struct, frozen=True, tag="quit", tag_field="type"):
    pass


Request = Union[Hello, Line, Older, Who, Quit]
_DECODER = msgspec.json.Decoder(Request)
_ENCODER = msgspec.json.Encoder()


def parse(data: str | bytes) -> Request:
    """One message from a browser, checked. Raises ``WireError``."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(BAD_FIELD, f"a message can be at most {MAX_MESSAGE_BYTES} bytes")
    try:
        request = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        code = BAD_TYPE if "`$.type`" in str(exc) or "field `type`" in str(exc) else BAD_FIELD
        raise WireError(code, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise WireError(BAD_JSON, f"not JSON: {exc}") from None
    _check(request)
    return request


def _check(request: Request) -> None:
    problem: str | None = None
    if isinstance(request, Hello):
        problem = (request.name and p.name_problem(request.name)) or p.room_problem(request.room)
        if request.resume is not None and not problem:
            problem = _resume_problem(request.resume)
    elif isinstance(request, Line):
        if len(request.text) > p.MAX_TEXT_CHARS + 64:  # room for a command word before the text
            problem = f"a line can be at most {p.MAX_TEXT_CHARS} characters long"
        elif request.room:
            problem = p.room_problem(request.room)
        elif request.to:
            problem = p.name_problem(request.to)
    elif isinstance(request, Older):
        problem = p.room_problem(request.room) or (None if 1 <= request.count <= p.MAX_FETCH else "count: 1 to 1000")
    elif isinstance(request, Who) and request.room:
        problem = p.room_problem(request.room)
    if problem:
        raise WireError(BAD_FIELD, problem)


def _resume_problem(state: ResumeState) -> str | None:
    if len(state.token) > p.MAX_ID_CHARS or len(state.history_id) > p.MAX_ID_CHARS:
        return f"token and history_id: at most {p.MAX_ID_CHARS} characters"
    if not 1 <= len(state.rooms) <= p.MAX_ROOMS_PER_SESSION:
        return f"resume: 1 to {p.MAX_ROOMS_PER_SESSION} rooms"
    for room, last in state.rooms.items():
        if problem := p.room_problem(room):
            return problem
        if last < 0:
            return "resume: a sequence number is 0 or more"
    if len(state.pending) > MAX_PENDING:
        return f"resume: at most {MAX_PENDING} pending lines"
    for line in state.pending:
        if not line.id or len(line.id) > p.MAX_ID_CHARS or line.kind not in (*p.SAY_KINDS, "pm"):
            return "resume: a pending line has a bad id or kind"
        if problem := p.text_problem(line.text):
            return problem
        if line.kind == "pm" and (problem := p.name_problem(line.to)):
            return problem
        if line.kind != "pm" and (problem := p.room_problem(line.room)):
            return problem
    return None


def resume_of(state: ResumeState) -> Resume:
    """The session host's ``Resume`` for what the page kept; room names in their lowercase form."""
    pending: list[p.Say | p.Pm] = [
        p.Pm(line.id, line.to, line.text) if line.kind == "pm"
        else p.Say(line.id, line.text, p.room_key(line.room), line.kind)
        for line in state.pending
    ]
    rooms = {p.room_key(room): last for room, last in state.rooms.items()}
    return Resume(state.token, state.history_id, rooms, p.room_key(state.current), pending, state.private_seq)


# --------------------------------------------------------------------------- gateway -> browser


def public(event: p.Event, mention: bool = False) -> dict[str, Any]:
    shown = {"type": "event", "room": event.room, "seq": event.seq, "ts": event.ts, "kind": event.kind,
             "name": event.name, "text": event.text}
    if mention:  # the core's mention rule (chat.client.personal): the page has no rule of its own
        shown["mention"] = True
    return shown


ENCODED_KEPT = 4096  # events whose JSON is kept for the other tabs that show them


class PublicJSON:
    """The JSON of a public event, encoded once for every tab that shows it: the sessions of one
    gateway share their decoded events (``chat.client.aio.SharedDecoder``), so the same event object
    comes to each of them. Known by identity; the event is kept with it, so that its id is not reused."""

    def __init__(self, kept: int = ENCODED_KEPT) -> None:
        self.kept = kept
        self._encoded: dict[int, tuple[p.Event, bytes]] = {}

    def __call__(self, event: p.Event) -> bytes:
        known = self._encoded.get(id(event))
        if known is not None and known[0] is event:
            return known[1]
        encoded = _ENCODER.encode(public(event))
        self._encoded[id(event)] = (event, encoded)
        if len(self._encoded) > self.kept:
            del self._encoded[next(iter(self._encoded))]
        return encoded


def shown(item: ev.Show, current: str) -> dict[str, Any] | None:
    """What the page gets for one thing the core shows; ``current`` is the room a line went to."""
    if isinstance(item, ev.Public):
        return public(item.event, item.mention)
    if isinstance(item, ev.Older):
        room = item.events[0].room if item.events else current
        return {"type": "older", "room": room, "events": [public(e, e.seq in item.mentions) for e in item.events]}
    if isinstance(item, ev.PrivateIn):
        pm = item.private
        return {"type": "private", "name": pm.name, "to": pm.to, "text": pm.text, "ts": pm.ts, "seq": pm.seq}
    if isinstance(item, ev.Sent):
        room = "" if item.kind == "pm" else current
        return {"type": "sent", "id": item.id, "kind": item.kind, "text": item.text, "to": item.to, "room": room}
    if isinstance(item, ev.Acked):
        return {"type": "acked", "id": item.id, "seq": item.seq, "ts": item.ts}
    if isinstance(item, ev.Failed):
        return {"type": "failed", "id": item.id, "reason": item.reason}
    if isinstance(item, ev.RoomsChanged):
        return {"type": "rooms", "rooms": list(item.rooms), "current": item.current}
    if isinstance(item, ev.RoomsListed):
        return {"type": "room_list", "rooms": item.listing.rooms, "ts": item.listing.ts}
    if isinstance(item, ev.RosterShown):
        return {"type": "roster", "room": item.roster.room, "names": item.roster.names, "ts": item.roster.ts}
    if isinstance(item, ev.Found):  # search results: lines of the log, as notices (the page has no view of them)
        lines = [LineFormatter().event(event, show_room=True) for event in item.events]
        summary = LineFormatter.found_summary(item.text, len(item.events), item.more)
        return {"type": "notice", "text": "\n".join([*lines, summary]), "level": "info"}
    if isinstance(item, ev.Renamed):
        return {"type": "notice", "text": f"you are now {item.name}", "level": "info"}
    if isinstance(item, ev.Notice):
        for prefix in NOTHING_OLDER:  # the core's words for it (no action of its own yet)
            if item.text.startswith(prefix):
                return {"type": "older", "room": item.text[len(prefix):], "events": []}
        return {"type": "notice", "text": item.text, "level": item.level}
    if isinstance(item, ev.AskName):
        return {"type": "ask_name", "reason": item.reason}
    if isinstance(item, ev.Status):
        return {"type": "status", "state": item.state, "name": item.name}
    return None  # pragma: no cover - every Show is above


def session(token: str, history_id: str) -> dict[str, Any]:
    """What the page keeps to resume this session (``Hello.resume``)."""
    return {"type": "session", "token": token, "history_id": history_id}


def exited(exit: ev.Exit) -> dict[str, Any]:
    return {"type": "exit", "code": exit.code, "reason": exit.reason}


def error(code: str, reason: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "reason": reason}


def encode(messages: list[dict[str, Any]]) -> str:
    return _ENCODER.encode(messages).decode()


def encode_one(message: dict[str, Any]) -> bytes:
    """One message, to be sent in a batch (``joined``)."""
    return _ENCODER.encode(message)


def joined(encoded: list[bytes]) -> bytes:
    """A batch of encoded messages as the one JSON array of a WebSocket message."""
    return b"[" + b",".join(encoded) + b"]"
