"""The broker's everyday commands beyond lines and rooms: NICK, AWAY and SEARCH.

Kept apart from ``chat.broker.core`` (the hot path of lines and private messages): each is a function
of the broker and the session that asked, with the same rules as the core's requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat import protocol as p
from chat.broker import core
from chat.broker.history import PrivateRecord, search_words
from chat.errors import RemoteProtocolError

if TYPE_CHECKING:
    from chat.broker.core import Broker, Outgoing, Session  # (core imports this module: no cycle at run time)

MAX_QUEUED = 1000  # private messages waiting for one recipient
MAX_QUEUED_PER_SENDER = 100  # private messages of one sender waiting (for anyone): a flood stops here

# The core's helpers used here (flood control, publishing, keeping the session) are its own: these
# commands follow its rules, not a copy of them.


def nick(broker: Broker, session: Session, request: p.Nick, now: float) -> list[Outgoing]:
    """Rename a session: the name is checked as a JOIN's is (taken, owned by another key, looking like
    someone's online), then a ``nick`` event goes to each of its rooms. Lines already in the history
    keep the old name; private messages are numbered per name, so the reply says where the new name's are."""
    broker._spend(session, now)  # every attempt counts: guessing names is flood-controlled too
    new_key = p.name_key(request.name)
    if request.name == session.name:
        raise RemoteProtocolError(p.BAD_FIELD, f"you are already called {session.name}")
    holder = broker.names.get(new_key)
    if holder is not None and holder is not session:
        raise RemoteProtocolError(p.NAME_TAKEN, f"the name {holder.name} is taken; choose another")
    owner = broker.history.name_owner(new_key) if session.key else ""
    if owner and owner != session.key:
        raise RemoteProtocolError(p.NAME_OWNED, f"the name {request.name} belongs to another key; choose another")
    look = p.name_look(request.name)
    twin = broker.looks.get(look)
    if twin is not None and twin is not session:
        raise RemoteProtocolError(p.NAME_TAKEN, f"the name {request.name} looks like {twin.name}, who is online; choose another")
    private_seq = broker.history.last_private_seq(new_key)  # read (it may fail) before anything changes
    old_name, old_key = session.name, session.name_key
    del broker.names[old_key]
    if broker.looks.get(session.look) is session:
        del broker.looks[session.look]
    broker.history.drop_session(old_key)
    session.name, session.name_key, session.look = request.name, new_key, look
    session.private_seq = private_seq
    broker.names[new_key] = session
    broker.looks[look] = session
    broker._keep(session)
    broker.history.mark_known(new_key, request.name)
    if session.key and not owner:
        broker.history.set_name_owner(new_key, session.key)
    broker._rename_acks(old_key, new_key)
    events: list[Outgoing] = [
        broker._publish(room, p.KIND_NICK, old_name, request.name, now) for room in sorted(session.rooms)
    ]
    return [*events, core.Reply(session.identity, p.Renamed(request.id, request.name, private_seq))]


def queue_private(broker: Broker, session: Session, pm: p.Pm, now: float) -> list[Outgoing]:
    """A PM to someone offline who has joined before: kept, numbered in their sequence, ACKed as queued
    and delivered when the name next joins (with --secure, only to the key that owned it now)."""
    key = p.name_key(pm.to)
    name = broker.history.known_name(key)
    if not name:
        raise RemoteProtocolError(p.NO_SUCH_USER, f"nobody called {p.neutralise(pm.to)} is online or has been here")
    broker._check_text(pm.text)
    to_them, from_you = broker.history.queued_counts(key, session.name_key)
    if to_them >= MAX_QUEUED:
        raise RemoteProtocolError(p.QUEUE_FULL, f"{name} has {to_them} private messages waiting; try again later")
    if from_you >= MAX_QUEUED_PER_SENDER:
        raise RemoteProtocolError(p.QUEUE_FULL, f"you have {from_you} private messages waiting for people offline")
    broker._spend(session, now)
    ts = broker._ts()
    private = p.Private(session.name, name, p.neutralise(pm.text), ts, broker.history.last_private_seq(key) + 1)
    owner = broker.history.name_owner(key)
    broker.history.append_private(
        PrivateRecord(private, key, session.name_key, pm.id, "", queued=True, for_key=owner)
    )
    ack = p.Ack(pm.id, 0, ts, queued=True)
    broker._remember(session.name_key, ack)
    broker._batch_acks.append((session.identity, session.name_key, pm.id))
    return [core.Reply(session.identity, ack)]


def deliver_queued(broker: Broker, session: Session) -> list[Outgoing]:
    """What was queued for a name that has just joined, with its time stamps and marked as such."""
    queued = broker.history.deliver_queued(session.name_key, session.key, session.token, MAX_QUEUED)
    if queued:
        session.private_seq = max(session.private_seq, queued[-1].seq)
    return [core.Reply(session.identity, private) for private in queued]


def away(broker: Broker, session: Session, request: p.Away, now: float) -> list[Outgoing]:
    """Set or clear (empty text) the away message; each sender of a PM is told it once per absence."""
    broker._spend(session, now)
    session.away = p.neutralise(request.text.strip())
    session.away_told.clear()
    return [core.Reply(session.identity, p.Ack(request.id, 0, broker._ts()))]


def search(broker: Broker, session: Session, request: p.Search, now: float) -> list[Outgoing]:
    """The newest lines with every word asked for, in one room of the session's or in all of them: the
    rooms it is in, never anyone's private messages. Paged with FOUND's cursor, like HISTORY."""
    broker._spend(session, now)
    if request.room:
        room = p.room_key(request.room)
        if room not in session.rooms:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}; join it to search it")
        rooms = [room]
    else:
        rooms = sorted(session.rooms)
    if not search_words(request.text):
        raise RemoteProtocolError(p.BAD_FIELD, "nothing to search for: give words of letters or digits")
    found = broker.history.search(request.text, rooms, request.before, p.MAX_FOUND)
    bodies = [{**p.event_body(event), "room": event.room} for event in found.events]
    return [core.Reply(session.identity, p.Found(request.id, bodies, found.before))]
