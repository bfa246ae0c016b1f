"""Where the broker keeps published events, so that clients can fetch what they missed."""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from chat.protocol import Ack, Event

KEEP_EVENTS = 10_000  # per room, for the in-memory history


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

    def flush(self) -> None:
        """Make what was appended durable. The broker calls it before it sends anything of a batch."""

    def fetch(self, room: str, first: int, last: int) -> list[Event]: ...

    def recent_acks(self) -> list[tuple[str, Ack]]:
        """(sender name key, ACK) of recently acknowledged lines, oldest first, to seed duplicate detection."""

    def name_owner(self, name_key: str) -> str:
        """The public key that owns a name ("" when none does)."""

    def set_name_owner(self, name_key: str, public_key: str) -> None: ...

    def keep_session(self, record: SessionRecord) -> None:
        """Remember an online session (new, or its rooms changed), durably with the next ``flush``."""

    def drop_session(self, name_key: str) -> None:
        """Forget a session that ended."""

    def open_sessions(self) -> list[SessionRecord]:
        """The sessions online when the broker last stopped (or was killed)."""

    def forget(self, room: str) -> None:
        """Drop what is held in memory for a room nobody is in (the broker calls it after a while)."""


class MemoryHistory:
    """The last ``keep`` events of each room, in memory; gone when the broker stops."""

    def __init__(self, keep: int = KEEP_EVENTS) -> None:
        self.history_id = secrets.token_hex(8)
        self._keep = keep
        self._rooms: dict[str, deque[Event]] = {}
        self._owners: dict[str, str] = {}
        self._sessions: dict[str, SessionRecord] = {}  # only a Broker made on the same object sees them

    def last_seq(self, room: str) -> int:
        events = self._rooms.get(room)
        return events[-1].seq if events else 0

    def append(self, event: Event, msg_id: str = "") -> None:
        events = self._rooms.get(event.room)
        if events is None:
            events = self._rooms[event.room] = deque(maxlen=self._keep)
        events.append(event)

    def fetch(self, room: str, first: int, last: int) -> list[Event]:
        events = self._rooms.get(room)
        if not events:
            return []
        # Sequence numbers within a room are consecutive, so an index is a subtraction away.
        base = events[0].seq
        start = max(first - base, 0)
        stop = min(last - base + 1, len(events))
        return [events[i] for i in range(start, stop)]

    def flush(self) -> None:
        pass  # nothing to make durable

    def forget(self, room: str) -> None:
        self._rooms.pop(room, None)  # in memory, that is the room's history: its numbers start again

    def recent_acks(self) -> list[tuple[str, Ack]]:
        return []  # a new memory history has seen nothing

    def name_owner(self, name_key: str) -> str:
        return self._owners.get(name_key, "")

    def set_name_owner(self, name_key: str, public_key: str) -> None:
        self._owners[name_key] = public_key

    def keep_session(self, record: SessionRecord) -> None:
        self._sessions[record.name_key] = record

    def drop_session(self, name_key: str) -> None:
        self._sessions.pop(name_key, None)

    def open_sessions(self) -> list[SessionRecord]:
        return list(self._sessions.values())
