"""Where the broker keeps published events and private messages, so that clients get what they missed."""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

import msgspec

from chat.protocol import KIND_ACTION, KIND_MSG, KIND_TOPIC, Ack, Event, Private

KEEP_EVENTS = 10_000  # per room, for the in-memory history
KEEP_PRIVATE = 1000  # per recipient, for the in-memory history
RECENT_ACKS = 1000  # acknowledged ids of one user loaded when they join, to recognise resends
KEEP_SEARCHED = 100_000  # lines the in-memory history can search, newest
SEARCHED_KINDS = (KIND_MSG, KIND_ACTION, KIND_TOPIC)  # what /search finds: what people wrote
MAX_SEARCH_WORDS = 8
_WORD = re.compile(r"\w+")


def search_words(text: str) -> list[str]:
    """The words a search looks for: runs of letters and digits, lowercased. Everything else (FTS5's
    quotes, ``*``, ``-``, ``NEAR``'s parentheses) only separates words, so no input is a query of its own."""
    return [word.casefold() for word in _WORD.findall(text)][:MAX_SEARCH_WORDS]


@dataclass(frozen=True)
class Found:
    """A page of search results, newest first; ``before`` asks for the next page (0: there is none)."""

    events: list[Event]
    before: int


@dataclass(frozen=True)
class PrivateRecord:
    """A private message as the broker keeps it: what was delivered, to whom, and the sender's id.

    ``token_hash`` names the recipient's client it went to (``token_hash`` of its JOIN token): only
    that client may have it delivered again ("": a client without a token, which never has). Messages
    kept for someone offline are ``queued``: delivered to whoever next joins under that name (only to the
    key that owned it, when names are bound to keys).
    """

    message: Private  # message.seq numbers the recipient's private messages: 1, 2, 3...
    recipient_key: str  # name_key of message.to
    sender_key: str  # name_key of message.name
    msg_id: str  # the sender's id of the PM, to acknowledge a resend with the same ACK
    token_hash: str
    queued: bool = False  # for someone offline: delivered (and given their token) when the name next joins
    for_key: str = ""  # queued: only a session with this key may have it ("": the name is not bound to a key)


def token_hash(token: str) -> str:
    """What the broker keeps of a client's JOIN token: enough to check it, useless to present."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest() if token else ""


@dataclass(frozen=True)
class SessionRecord:
    """What a restarted broker needs to let a session resume: who, the token's hash, where, which key."""

    name_key: str
    name: str
    token_hash: str  # SHA-256 of the client's token, never the token itself ("" when it gave none)
    rooms: tuple[str, ...]
    key: str = ""  # the client's CURVE public key, with --secure
    last_room: str = ""  # the room it left last, where its leave goes when it is in none


class History(Protocol):
    """What the broker core needs of a history store."""

    history_id: str  # changes when the history is a different one (new store, wiped store)

    def last_seq(self, room: str) -> int: ...

    def append(self, event: Event, msg_id: str = "") -> None:
        """Keep ``event``; ``msg_id`` is the client's id of the line, to recognise resends later."""

    def close(self) -> None:
        """Release the store (the broker is stopping)."""

    def flush(self) -> None:
        """Make what was appended durable. The broker calls it before it sends anything of a batch."""

    def fetch(self, room: str, first: int, last: int) -> list[Event]: ...

    def recent_acks(self, sender_key: str, limit: int = RECENT_ACKS) -> list[Ack]:
        """The last ``limit`` ACKs of one user's lines and private messages, oldest first, to seed
        duplicate detection when they join (also after a restart)."""

    def last_private_seq(self, recipient_key: str) -> int:
        """The seq of the last private message kept for ``recipient_key`` (0: none yet)."""

    def append_private(self, record: PrivateRecord) -> None:
        """Keep a private message; like ``append``, durable at the next ``flush``."""

    def privates_after(self, recipient_key: str, after: int, hashed_token: str, limit: int) -> list[Private]:
        """The private messages to ``recipient_key`` with seq > ``after`` that went to the client of
        ``hashed_token``, in ascending seq, at most ``limit`` (the oldest ones)."""

    def name_owner(self, name_key: str) -> str:
        """The public key that owns a name ("" when none does)."""

    def known_name(self, name_key: str) -> str:
        """The name as last joined under this key ("": it never joined): a PM to it can be queued."""

    def mark_known(self, name_key: str, name: str) -> None: ...

    def queued_counts(self, recipient_key: str, sender_key: str) -> tuple[int, int]:
        """Private messages queued for ``recipient_key``, and queued from ``sender_key`` (to anyone)."""

    def deliver_queued(self, recipient_key: str, public_key: str, hashed_token: str, limit: int) -> list[Private]:
        """The oldest ``limit`` messages queued for ``recipient_key`` that ``public_key`` may have, marked
        delivered to the client of ``hashed_token`` with the next ``flush``."""

    def set_name_owner(self, name_key: str, public_key: str) -> None: ...

    def keep_session(self, record: SessionRecord) -> None:
        """Remember an online session (new, or its rooms changed), durably with the next ``flush``."""

    def drop_session(self, name_key: str) -> None:
        """Forget a session that ended."""

    def open_sessions(self) -> list[SessionRecord]:
        """The sessions online when the broker last stopped (or was killed)."""

    def forget(self, room: str) -> None:
        """Drop what is held in memory for a room nobody is in (the broker calls it after a while)."""

    def topic(self, room: str) -> str:
        """The room's last topic ("" when none), also after a restart."""

    def set_topic(self, room: str, text: str) -> None:
        """Keep a room's topic, durably with the next ``flush``."""

    def idle(self) -> None:
        """Do deferred work (the search index); the broker calls it when it has nothing else to do."""

    def search(self, text: str, rooms: list[str], before: int, limit: int) -> Found:
        """At most ``limit`` lines of ``rooms`` that have every word of ``text`` (``search_words``),
        newest first, older than the cursor ``before`` (0: from the newest)."""


class MemoryHistory:
    """The last ``keep`` events of each room, in memory; gone when the broker stops."""

    def __init__(self, keep: int = KEEP_EVENTS) -> None:
        self.history_id = secrets.token_hex(8)
        self._keep = keep
        self._rooms: dict[str, deque[Event]] = {}
        self._owners: dict[str, str] = {}
        self._privates: dict[str, deque[PrivateRecord]] = {}
        self._private_seqs: dict[str, int] = {}
        self._sessions: dict[str, SessionRecord] = {}  # only a Broker made on the same object sees them
        self._topics: dict[str, str] = {}
        self._known: dict[str, str] = {}
        self._queued: dict[str, list[PrivateRecord]] = {}  # recipient key -> queued, oldest first
        self._searched: deque[tuple[int, Event]] = deque(maxlen=KEEP_SEARCHED)
        self._numbers = itertools.count(1)

    def last_seq(self, room: str) -> int:
        events = self._rooms.get(room)
        return events[-1].seq if events else 0

    def append(self, event: Event, msg_id: str = "") -> None:
        events = self._rooms.get(event.room)
        if events is None:
            events = self._rooms[event.room] = deque(maxlen=self._keep)
        events.append(event)
        if event.kind in SEARCHED_KINDS:
            self._searched.append((next(self._numbers), event))

    def fetch(self, room: str, first: int, last: int) -> list[Event]:
        events = self._rooms.get(room)
        if not events:
            return []
        # Sequence numbers within a room are consecutive, so an index is a subtraction away.
        base = events[0].seq
        start = max(first - base, 0)
        stop = min(last - base + 1, len(events))
        return [events[i] for i in range(start, stop)]

    def close(self) -> None:
        """Nothing is kept open."""

    def flush(self) -> None:
        pass  # nothing to make durable

    def recent_acks(self, sender_key: str, limit: int = RECENT_ACKS) -> list[Ack]:
        return []  # the broker's own memory of ids covers everything this history has seen

    def last_private_seq(self, recipient_key: str) -> int:
        return self._private_seqs.get(recipient_key, 0)

    def append_private(self, record: PrivateRecord) -> None:
        if record.queued:
            self._queued.setdefault(record.recipient_key, []).append(record)
            self._private_seqs[record.recipient_key] = record.message.seq
            return
        kept = self._privates.get(record.recipient_key)
        if kept is None:
            kept = self._privates[record.recipient_key] = deque(maxlen=KEEP_PRIVATE)
        kept.append(record)
        self._private_seqs[record.recipient_key] = record.message.seq

    def privates_after(self, recipient_key: str, after: int, hashed_token: str, limit: int) -> list[Private]:
        kept = self._privates.get(recipient_key, ())
        found = [r.message for r in kept if r.message.seq > after and r.token_hash == hashed_token]
        return found[:limit]

    def forget(self, room: str) -> None:
        self._rooms.pop(room, None)  # in memory, that is the room's history: its numbers start again

    def name_owner(self, name_key: str) -> str:
        return self._owners.get(name_key, "")

    def set_name_owner(self, name_key: str, public_key: str) -> None:
        self._owners[name_key] = public_key

    def known_name(self, name_key: str) -> str:
        return self._known.get(name_key, "")

    def mark_known(self, name_key: str, name: str) -> None:
        self._known[name_key] = name

    def queued_counts(self, recipient_key: str, sender_key: str) -> tuple[int, int]:
        from_them = sum(r.sender_key == sender_key for queue in self._queued.values() for r in queue)
        return len(self._queued.get(recipient_key, ())), from_them

    def deliver_queued(self, recipient_key: str, public_key: str, hashed_token: str, limit: int) -> list[Private]:
        queue = self._queued.get(recipient_key, [])
        mine = [r for r in queue if r.for_key in ("", public_key)][:limit]
        for record in mine:
            queue.remove(record)
            self.append_private(replace(record, queued=False, token_hash=hashed_token))
        if not queue:
            self._queued.pop(recipient_key, None)
        return [msgspec.structs.replace(r.message, queued=True) for r in mine]

    def idle(self) -> None:
        pass  # nothing deferred: lines are searchable as they come

    def topic(self, room: str) -> str:
        return self._topics.get(room, "")

    def set_topic(self, room: str, text: str) -> None:
        self._topics[room] = text

    def search(self, text: str, rooms: list[str], before: int, limit: int) -> Found:
        words, wanted = search_words(text), set(rooms)
        found: list[tuple[int, Event]] = []
        for number, event in reversed(self._searched):
            if before and number >= before or event.room not in wanted:
                continue
            if words and set(words) <= {word.casefold() for word in _WORD.findall(event.text)}:
                found.append((number, event))
                if len(found) > limit:
                    break
        more = found[limit - 1][0] if len(found) > limit else 0
        return Found([event for _, event in found[:limit]], more)

    def keep_session(self, record: SessionRecord) -> None:
        self._sessions[record.name_key] = record

    def drop_session(self, name_key: str) -> None:
        self._sessions.pop(name_key, None)

    def open_sessions(self) -> list[SessionRecord]:
        return list(self._sessions.values())
