"""The broker's everyday commands beyond lines and rooms: NICK, AWAY and SEARCH.

Kept apart from ``chat.broker.core`` (the hot path of lines and private messages): each is a function
of the broker and the session that asked, with the same rules as the core's requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat import protocol as p
from chat.broker import core
from chat.broker.history import search_words
from chat.errors import RemoteProtocolError

if TYPE_CHECKING:
    from chat.broker.core import Broker, Outgoing, Session  # (core imports this module: no cycle at run time)

# The core's helpers used here (flood control, publishing, keeping the session) are its own: these
# commands follow its rules, not a copy of them.


def nick(broker: Broker, session: Session, request: p.Nick, now: float) -> list[Outgoing]:
    """Rename a session: the name is checked as a JOIN's is (taken, owned by another key, looking like
    someone's online), then a ``nick`` event goes to each of its rooms. Lines already in the history
    keep the old name; private messages are numbered per name, so the reply says where the new name's are."""
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
    broker._spend(session, now)
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
    if session.key and not owner:
        broker.history.set_name_owner(new_key, session.key)
    broker._rename_acks(old_key, new_key)
    events: list[Outgoing] = [
        broker._publish(room, p.KIND_NICK, old_name, request.name, now) for room in sorted(session.rooms)
    ]
    return [*events, core.Reply(session.identity, p.Renamed(request.id, request.name, private_seq))]


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
