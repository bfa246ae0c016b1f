"""The broker's decisions, with no sockets: frames in, replies and events out.

Session states, all of them, in one place::

    (no session) --JOIN ok--> joined --LEAVE--> (gone; leave event "quit")
                                     --silent for session_timeout--> (gone; leave event "timeout")
                                     --broker stops--> (gone; BYE to the client)

An identity without a session costs no memory: the broker answers it and forgets it. A session is bound
to one ROUTER identity; the name shown on everything it sends comes from the session, never from the
message. A client that reconnects (new identity) can take its session back with the token it joined with.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Union

import msgspec

from chat import protocol as p
from chat.broker.history import History, MemoryHistory
from chat.errors import RemoteProtocolError, StoreError

SESSION_TIMEOUT = 5.0  # seconds of silence after which a session is expired
RATE = 5.0  # lines a session may send per second, on average (SAY, PM and WHO count)
BURST = 20  # lines a session may send at once before RATE applies
HEARTBEATS_PER_TIMEOUT = 3  # clients are told to ping this many times per timeout
MAX_SESSIONS = 10_000
DEDUP_IDS_PER_NAME = 1000  # acknowledged ids remembered per user, to drop resent duplicates
DEDUP_NAMES = 2 * MAX_SESSIONS
MAX_ROOMS = 10_000  # rooms that can exist at once (with members or with a topic)


@dataclass(frozen=True)
class Reply:
    """Send ``message`` to one ROUTER peer."""

    identity: bytes
    message: p.Message
    tag: bytes = p.PROTOCOL_TAG  # another version's tag only to refuse a request of that version


Outgoing = Union[Reply, p.Event]  # an Event is published on PUB


@dataclass
class Session:
    identity: bytes
    name: str
    token: str
    last_seen: float
    name_key: str = ""  # the name as compared: set once, used on every line
    look: str = ""  # what the name looks like (p.name_look): no two sessions look alike
    key: str = ""  # the client's CURVE public key (Z85) when the broker runs --secure
    allowance: float = BURST  # the flood-control token bucket
    allowance_at: float = 0.0
    rooms: set[str] = field(default_factory=lambda: {p.DEFAULT_ROOM})


class Broker:
    """Sessions, names, sequence numbers and time stamps: everything the broker decides."""

    def __init__(
        self,
        *,
        pub_port: int,
        history: History | None = None,
        clock: Callable[[], float] = time.time,
        session_timeout: float = SESSION_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        max_text: int = p.MAX_TEXT_CHARS,
        rate: float = RATE,
        burst: int = BURST,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.pub_port = pub_port
        self.warn = warn  # tells the operator (stderr) when storing fails, and when it works again
        self.max_text = max_text
        self.rate = rate
        self.burst = burst
        self.history = history if history is not None else MemoryHistory()
        self.clock = clock
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        self.sessions: dict[bytes, Session] = {}  # by ROUTER identity
        self.names: dict[str, Session] = {}  # by name_key
        self.looks: dict[str, Session] = {}  # by look
        self._seq: dict[str, int] = {}
        self.topics: dict[str, str] = {}  # room -> topic (kept in memory only)
        self.members: dict[str, int] = {}  # room -> sessions in it; a room with none is not listed
        self._acks: OrderedDict[str, OrderedDict[str, p.Ack]] = OrderedDict()
        # What this batch changed that a failed write must undo: (identity, name key, line id), (room, old topic).
        self._batch_acks: list[tuple[bytes, str, str]] = []
        self._batch_topics: list[tuple[str, str | None]] = []
        self.store_failing = False
        for key, ack in self.history.recent_acks():
            self._remember(key, ack)

    # ------------------------------------------------------------------ entry points

    def handle(self, identity: bytes, frames: list[bytes], peer_key: str = "") -> list[Outgoing]:
        """Everything that follows from one message received on the ROUTER.

        ``peer_key`` is the sender's CURVE public key as authenticated by ZAP, or "" without encryption.
        """
        try:
            message = p.decode_client(frames)
        except RemoteProtocolError as exc:
            tag = p.answer_tag(frames) if exc.code == p.BAD_VERSION else p.PROTOCOL_TAG
            return [Reply(identity, p.Error(exc.code, exc.reason, exc.ref), tag)]
        now = self.clock()
        session = self.sessions.get(identity)
        try:
            if isinstance(message, p.Join):
                return self._join(identity, session, message, now, peer_key)
            if session is None:
                raise RemoteProtocolError(p.NOT_JOINED, "join first (send JOIN with a name)")
            session.last_seen = now
            return self._dispatch(session, message, now)
        except RemoteProtocolError as exc:
            return [Reply(identity, p.Error(exc.code, exc.reason, p.reference(message)))]
        except StoreError as exc:  # a failed read (a damaged page): this request fails, the broker goes on
            return [Reply(identity, p.Error(p.STORE_FAILED, str(exc), p.reference(message)))]

    def commit(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """Store the batch's events in one write; what to send once that is done (or has failed).

        When the write fails, no event of the batch is published (each would need its number and its
        place in the history): lines are refused to their senders with ``store_failed``, and sessions that
        came and went meanwhile are not announced. Everything else the batch answered still goes out.
        """
        batch_acks, self._batch_acks = self._batch_acks, []
        batch_topics, self._batch_topics = self._batch_topics, []
        try:
            self.history.flush()
        except StoreError as exc:
            if not self.store_failing:
                self.store_failing = True
                self.warn(f"{exc}: lines are refused until it can be written again; the rest goes on")
            return self._unstored(outgoing, batch_acks, batch_topics)
        if self.store_failing and any(isinstance(item, p.Event) for item in outgoing):
            self.store_failing = False
            self.warn("the history can be written again: lines are accepted again")
        return outgoing

    def expire_idle(self) -> list[Outgoing]:
        """End the sessions that have been silent for longer than the session timeout."""
        deadline = self.clock() - self.session_timeout
        out: list[Outgoing] = []
        for session in [s for s in self.sessions.values() if s.last_seen < deadline]:
            out += self._end(session, p.LEFT_TIMEOUT)
        return out

    def shutdown(self, reason: str = "the broker is shutting down") -> list[Outgoing]:
        """Tell every client that the broker is going away."""
        out: list[Outgoing] = [Reply(s.identity, p.Bye(reason)) for s in self.sessions.values()]
        self.sessions.clear()
        self.names.clear()
        self.looks.clear()
        self.members.clear()
        return out

    def _unstored(
        self, outgoing: list[Outgoing], acks: list[tuple[bytes, str, str]], topics: list[tuple[str, str | None]]
    ) -> list[Outgoing]:
        """Undo a batch whose events could not be stored: numbers, acknowledgements, topics."""
        kept: dict[str, int] = {}  # room -> its last stored number
        for item in outgoing:
            if isinstance(item, p.Event):
                kept[item.room] = min(kept.get(item.room, item.seq), item.seq - 1)
        self._seq.update(kept)
        for _, name_key, msg_id in acks:  # not stored, so not done: a resend must be handled afresh
            ids = self._acks.get(name_key)
            if ids is not None:
                ids.pop(msg_id, None)
        refused = {(identity, msg_id) for identity, _, msg_id in acks}
        for room, topic in reversed(topics):
            if topic is None:
                self.topics.pop(room, None)
            else:
                self.topics[room] = topic
        reason = "the broker cannot store messages at the moment (its disk is full or read-only); not sent"
        out: list[Outgoing] = []
        for item in outgoing:
            if isinstance(item, Reply):
                message = _stored_only(item.message, kept)
                if isinstance(message, p.Ack) and (item.identity, message.id) in refused:  # a line of this batch
                    message = p.Error(p.STORE_FAILED, reason, message.id)
                out.append(Reply(item.identity, message, item.tag))
        return out

    # ------------------------------------------------------------------ messages

    def _dispatch(self, session: Session, message: p.Message, now: float) -> list[Outgoing]:
        if isinstance(message, p.Ping):
            return [Reply(session.identity, p.Pong(self._room_seqs(session)))]
        if isinstance(message, p.Say):
            return self._say(session, message, now)
        if isinstance(message, p.Pm):
            return self._pm(session, message, now)
        if isinstance(message, p.Who):
            return self._who(session, message, now)
        if isinstance(message, p.Fetch):
            return self._fetch(session, message)
        if isinstance(message, p.Enter):
            return self._enter(session, message, now)
        if isinstance(message, p.Part):
            return self._part(session, message, now)
        if isinstance(message, p.Rooms):
            return self._rooms(session, now)
        if isinstance(message, p.Topic):
            return self._topic(session, message, now)
        if isinstance(message, p.Leave):
            return self._end(session, p.LEFT_QUIT) + [Reply(session.identity, p.Bye("goodbye"))]
        raise RemoteProtocolError(p.BAD_TYPE, f"{message.TYPE.decode()} is not a request")

    def _join(
        self, identity: bytes, session: Session | None, join: p.Join, now: float, peer_key: str
    ) -> list[Outgoing]:
        key = p.name_key(join.name)
        owner = self.history.name_owner(key) if peer_key else ""
        if owner and owner != peer_key:
            raise RemoteProtocolError(p.NAME_OWNED, f"the name {join.name} belongs to another key; choose another")
        if session is not None:
            if session.name_key != key:
                raise RemoteProtocolError(p.ALREADY_JOINED, f"this connection is already joined as {session.name}")
            session.last_seen = now  # a retried JOIN: answer it again
            return [Reply(identity, self._welcome(session))]
        holder = self.names.get(key)
        if holder is not None:
            same_token = join.token and holder.token and secrets.compare_digest(join.token.encode(), holder.token.encode())
            if same_token and holder.key == peer_key:
                # The same client on a new connection: move the session, no leave/join noise.
                del self.sessions[holder.identity]
                holder.identity, holder.last_seen = identity, now
                self.sessions[identity] = holder
                return [Reply(identity, self._welcome(holder))]
            raise RemoteProtocolError(p.NAME_TAKEN, f"the name {holder.name} is taken; choose another")
        look = p.name_look(join.name)
        twin = self.looks.get(look)
        if twin is not None:
            raise RemoteProtocolError(p.NAME_TAKEN, f"the name {join.name} looks like {twin.name}, who is online; choose another")
        if len(self.sessions) >= self.max_sessions:
            raise RemoteProtocolError(p.SERVER_FULL, "the broker has no room for more users")
        rooms = {p.room_key(room) for room in join.rooms} or {p.DEFAULT_ROOM}
        if len(self.members) + len(rooms - self.members.keys()) > MAX_ROOMS:
            raise RemoteProtocolError(p.SERVER_FULL, "the broker has no room for more rooms")
        for room in rooms:
            self._last_seq(room)  # reads the store (which may fail) before anything changes
        session = Session(
            identity, join.name, join.token, now, name_key=key, look=look, key=peer_key, allowance_at=now, rooms=set()
        )
        for room in rooms:
            self._add_member(session, room)
        if peer_key and not owner:
            self.history.set_name_owner(key, peer_key)  # first use: the name is this key's from now on
        self.sessions[identity] = session
        self.names[key] = session
        self.looks[look] = session
        # WELCOME before the join event: its sequence numbers are the ones the client must follow on from.
        out: list[Outgoing] = [Reply(identity, self._welcome(session))]
        for room in sorted(session.rooms):
            out.append(self._publish(room, p.KIND_JOIN, session.name, "", now))
        return out

    def _say(self, session: Session, say: p.Say, now: float) -> list[Outgoing]:
        room = p.room_key(say.room)
        if room not in session.rooms:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}")
        return self._publish_line(session, room, say.kind, say.text, say.id, now)

    def _publish_line(
        self, session: Session, room: str, kind: str, text: str, msg_id: str, now: float
    ) -> list[Outgoing]:
        """Publish what a user sent (a line, an action, a topic) and acknowledge it, exactly once."""
        done = self._acked(session, msg_id)
        if done is not None:  # a resend of a line already published: acknowledge, do not repeat
            return [Reply(session.identity, done)]
        if kind != p.KIND_TOPIC:  # a topic has its own, protocol-wide limit
            self._check_text(text)
        self._spend(session, now)
        event = self._publish(room, kind, session.name, p.neutralise(text), now, msg_id)
        ack = p.Ack(msg_id, event.seq, event.ts)
        self._remember(session.name_key, ack)
        self._batch_acks.append((session.identity, session.name_key, msg_id))
        return [event, Reply(session.identity, ack)]

    def _pm(self, session: Session, pm: p.Pm, now: float) -> list[Outgoing]:
        done = self._acked(session, pm.id)
        if done is not None:  # delivered before, even if the target has left since
            return [Reply(session.identity, done)]
        target = self.names.get(p.name_key(pm.to))
        if target is None:
            raise RemoteProtocolError(p.NO_SUCH_USER, f"nobody called {p.neutralise(pm.to)} is online")
        self._check_text(pm.text)
        self._spend(session, now)
        ts = int(now * 1000)
        ack = p.Ack(pm.id, 0, ts)
        self._remember(session.name_key, ack)
        private = p.Private(session.name, target.name, p.neutralise(pm.text), ts)
        return [Reply(target.identity, private), Reply(session.identity, ack)]

    def _who(self, session: Session, who: p.Who, now: float) -> list[Outgoing]:
        self._spend(session, now)
        room = p.room_key(who.room)
        if room and room not in self.members:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"there is no room {room}")
        members = [s.name for s in self.sessions.values() if not room or room in s.rooms]
        roster = p.Roster(room, sorted(members, key=p.name_key), int(now * 1000))
        return [Reply(session.identity, roster)]

    def _fetch(self, session: Session, fetch: p.Fetch) -> list[Outgoing]:
        room = p.room_key(fetch.room)
        if room not in session.rooms and room not in self._seq:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"there is no room {room}")
        last_seq = self._last_seq(room)
        if not 1 <= fetch.first <= fetch.last:
            raise RemoteProtocolError(p.HISTORY_RANGE, "a range needs 1 <= first <= last")
        if fetch.last > last_seq:
            raise RemoteProtocolError(
                p.HISTORY_RANGE, f"{room} has events 1 to {last_seq}; asked for up to {fetch.last}"
            )
        last = min(fetch.last, fetch.first + p.MAX_FETCH - 1)
        # Cut the answer short where it would not fit in one frame; the client asks for the rest.
        bodies: list[dict[str, object]] = []
        space_left = p.MAX_FRAME_BYTES - p.FRAME_OVERHEAD
        for event in self.history.fetch(room, fetch.first, last):
            body = p.event_body(event)
            space_left -= p.encoded_size(body) + 1
            if space_left < 0 and bodies:
                break
            bodies.append(body)
        return [Reply(session.identity, p.History(room, bodies, fetch.first, fetch.last))]

    def _enter(self, session: Session, enter: p.Enter, now: float) -> list[Outgoing]:
        room = p.room_key(enter.room)
        entered = p.Entered(room, self._last_seq(room), self.topics.get(room, ""))
        if room in session.rooms:  # already there: the client switches to it
            return [Reply(session.identity, entered)]
        if len(session.rooms) >= p.MAX_ROOMS_PER_SESSION:
            raise RemoteProtocolError(p.BAD_FIELD, f"one can be in at most {p.MAX_ROOMS_PER_SESSION} rooms")
        if room not in self.members and len(self.members) >= MAX_ROOMS:
            raise RemoteProtocolError(p.SERVER_FULL, "the broker has no room for more rooms")
        self._add_member(session, room)
        return [Reply(session.identity, entered), self._publish(room, p.KIND_ENTER, session.name, "", now)]

    def _part(self, session: Session, part: p.Part, now: float) -> list[Outgoing]:
        room = p.room_key(part.room)
        if room not in session.rooms:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}")
        self._remove_member(session, room)
        event = self._publish(room, p.KIND_PART, session.name, "", now)
        return [event, Reply(session.identity, p.Parted(room))]

    def _rooms(self, session: Session, now: float) -> list[Outgoing]:
        rooms = [{"room": r, "members": n, "topic": self.topics.get(r, "")} for r, n in sorted(self.members.items())]
        return [Reply(session.identity, p.RoomList(rooms, int(now * 1000)))]

    def _topic(self, session: Session, topic: p.Topic, now: float) -> list[Outgoing]:
        room = p.room_key(topic.room)
        if room not in session.rooms:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}")
        out = self._publish_line(session, room, p.KIND_TOPIC, topic.text, topic.id, now)
        if isinstance(out[0], p.Event):  # published now, not a resend
            self._batch_topics.append((room, self.topics.get(room)))
            self.topics[room] = out[0].text
        return out

    def _add_member(self, session: Session, room: str) -> None:
        session.rooms.add(room)
        self.members[room] = self.members.get(room, 0) + 1

    def _remove_member(self, session: Session, room: str) -> None:
        session.rooms.discard(room)
        self.members[room] -= 1
        if not self.members[room]:  # an empty room is forgotten; its history is not
            del self.members[room]
            self.topics.pop(room, None)

    # ------------------------------------------------------------------ helpers

    def _check_text(self, text: str) -> None:
        if len(text) > self.max_text:
            raise RemoteProtocolError(p.BAD_FIELD, f"a message can be at most {self.max_text} characters long")

    def _spend(self, session: Session, now: float) -> None:
        """Flood control: a token bucket of ``burst`` lines, refilled at ``rate`` lines a second (0: off)."""
        if self.rate <= 0:
            return
        elapsed = max(0.0, now - session.allowance_at)
        session.allowance = min(float(self.burst), session.allowance + elapsed * self.rate)
        session.allowance_at = now
        if session.allowance < 1.0:
            raise RemoteProtocolError(
                p.RATE_LIMITED, f"slow down: at most {self.rate:g} lines a second (bursts of {self.burst})"
            )
        session.allowance -= 1.0

    def _welcome(self, session: Session) -> p.Welcome:
        timeout_ms = int(self.session_timeout * 1000)
        return p.Welcome(
            name=session.name,
            pub_port=self.pub_port,
            rooms=self._room_seqs(session),
            heartbeat_ms=max(timeout_ms // HEARTBEATS_PER_TIMEOUT, 1),
            timeout_ms=timeout_ms,
            history_id=self.history.history_id,
        )

    def _room_seqs(self, session: Session) -> dict[str, int]:
        return {room: self._last_seq(room) for room in sorted(session.rooms)}

    def _last_seq(self, room: str) -> int:
        seq = self._seq.get(room)
        if seq is None:
            seq = self._seq[room] = self.history.last_seq(room)
        return seq

    def _publish(self, room: str, kind: str, name: str, text: str, now: float, msg_id: str = "") -> p.Event:
        seq = self._last_seq(room) + 1
        self._seq[room] = seq
        event = p.Event(seq=seq, ts=int(now * 1000), kind=kind, name=name, text=text, room=room)
        self.history.append(event, msg_id)
        return event

    def _end(self, session: Session, why: str) -> list[Outgoing]:
        del self.sessions[session.identity]
        del self.names[session.name_key]
        del self.looks[session.look]
        now = self.clock()
        rooms = sorted(session.rooms)
        for room in rooms:
            self._remove_member(session, room)
        return [self._publish(room, p.KIND_LEAVE, session.name, why, now) for room in rooms]

    def _acked(self, session: Session, msg_id: str) -> p.Ack | None:
        if not msg_id:
            return None
        ids = self._acks.get(session.name_key)
        return ids.get(msg_id) if ids else None

    def _remember(self, key: str, ack: p.Ack) -> None:
        if not ack.id:
            return
        ids = self._acks.get(key)
        if ids is None:
            ids = self._acks[key] = OrderedDict()
            if len(self._acks) > DEDUP_NAMES:
                self._acks.popitem(last=False)
        else:
            self._acks.move_to_end(key)
        ids[ack.id] = ack
        if len(ids) > DEDUP_IDS_PER_NAME:
            ids.popitem(last=False)


def _stored_only(message: p.Message, kept: dict[str, int]) -> p.Message:
    """``message`` as if the batch's events (numbered after ``kept[room]``) had never been."""
    if not kept:
        return message
    if isinstance(message, (p.Welcome, p.Pong)):
        rooms = {room: min(seq, kept.get(room, seq)) for room, seq in message.rooms.items()}
        return msgspec.structs.replace(message, rooms=rooms)
    if isinstance(message, p.Entered) and message.room in kept:
        return msgspec.structs.replace(message, last_seq=min(message.last_seq, kept[message.room]))
    if isinstance(message, p.History) and message.room in kept:
        events = [e for e in message.events if e["seq"] <= kept[message.room]]
        return msgspec.structs.replace(message, events=events)
    return message
