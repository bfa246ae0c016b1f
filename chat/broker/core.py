"""The broker's decisions, with no sockets: frames in, replies and events out.

Session states, all of them, in one place::

    (no session) --JOIN ok--> joined --LEAVE--> (gone; leave event "quit")
                                     --silent for session_timeout--> (gone; leave event "timeout")
                                     --broker stops--> (gone; BYE to the client; kept in the history)
    (broker starts) --kept in the history--> restored --JOIN with its token--> joined (no join event)
                                                      --not back within restart_grace--> (gone; "restarted")

An identity without a session costs no memory: the broker answers it and forgets it. A session is bound
to one ROUTER identity; the name shown on everything it sends comes from the session, never from the
message. A client that reconnects (new identity) can take its session back with the token it joined with.

A private message is stored before it is acknowledged, numbered in its recipient's own sequence, and sent
to the recipient's connection of the moment. That connection may be stale (the recipient is
reconnecting), and the ROUTER then drops it silently: so every JOIN that names the last private seq its
client has shown (``private_seq``) gets the later ones that went to that client again, after its WELCOME.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Union

from chat import protocol as p
from chat.broker.files import FileService
from chat.broker.history import RECENT_ACKS, History, MemoryHistory, PrivateRecord, SessionRecord, token_hash
from chat.errors import RemoteProtocolError

# Seconds of silence after which a session is expired. Long enough for a laptop on Wi-Fi: roaming
# between access points, a busy channel or a power-saving radio can hold packets back for 10 s and more.
SESSION_TIMEOUT = 20.0
RATE = 5.0  # lines a session may send per second, on average (SAY, PM and WHO count)
BURST = 20  # lines a session may send at once before RATE applies
HEARTBEATS_PER_TIMEOUT = 3  # clients are told to ping this many times per timeout
MAX_SESSIONS = 10_000
DEDUP_IDS_PER_NAME = RECENT_ACKS  # acknowledged ids remembered per user, to drop resent duplicates
DEDUP_NAMES = 2 * MAX_SESSIONS
MAX_ROOMS = 10_000  # rooms that can exist at once (with members or with a topic)
RESTART_GRACE_TIMEOUTS = 2  # session timeouts a client has, after a broker restart, to resume its session
RESTORED = b"\x00restored\x00"  # identity prefix of a restored session until its client is back: never
# a ROUTER's (5 bytes), and never looked up for a request even if a peer chose it as its routing id


@dataclass(frozen=True)
class Reply:
    """Send ``message`` to one ROUTER peer."""

    identity: bytes
    message: p.Message
    tag: bytes = p.PROTOCOL_TAG  # another version's tag only to refuse a request of that version
    data: bytes = b""  # a CHUNK's file data: sent as a fourth frame


Outgoing = Union[Reply, p.Event]  # an Event is published on PUB


@dataclass
class Session:
    identity: bytes
    name: str
    token: str
    last_seen: float
    name_key: str = ""  # the name as compared: set once, used on every line
    key: str = ""  # the client's CURVE public key (Z85) when the broker runs --secure
    allowance: float = BURST  # the flood-control token bucket
    allowance_at: float = 0.0
    rooms: set[str] = field(default_factory=lambda: {p.DEFAULT_ROOM})
    private_seq: int = 0  # the seq of the last private message sent to this session's client
    restored: bool = False  # online when the broker last stopped; its client has not come back yet
    last_room: str = ""  # the room it parted last: its leave goes there when it is in no room


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
        restart_grace: float | None = None,
        files: FileService | None = None,
    ) -> None:
        self.pub_port = pub_port
        self.max_text = max_text
        self.rate = rate
        self.burst = burst
        self.history = history if history is not None else MemoryHistory()
        self.clock = clock
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        self.sessions: dict[bytes, Session] = {}  # by ROUTER identity
        self.names: dict[str, Session] = {}  # by name_key
        self._seq: dict[str, int] = {}
        self.topics: dict[str, str] = {}  # room -> topic (kept in memory only)
        self.members: dict[str, int] = {}  # room -> sessions in it; a room with none is not listed
        self._acks: OrderedDict[str, OrderedDict[str, p.Ack]] = OrderedDict()  # per user, loaded on joining
        self.files = files  # file sharing (chat.broker.files); None: OFFER and GET are refused
        self.restart_grace = RESTART_GRACE_TIMEOUTS * session_timeout if restart_grace is None else restart_grace
        self._restore(self.history.open_sessions())

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
        if session is not None and session.restored:  # a peer that chose a restored session's identity
            session = None
        try:
            if isinstance(message, p.Join):
                return self._join(identity, session, message, now, peer_key)
            if session is None:
                raise RemoteProtocolError(p.NOT_JOINED, "join first (send JOIN with a name)")
            session.last_seen = now
            if isinstance(message, p.FILE_REQUESTS):
                if self.files is None:
                    raise RemoteProtocolError(p.BAD_TYPE, "this broker does not keep files")
                return self.files.handle(self, session, message, p.data_of(frames), now)
            return self._dispatch(session, message, now)
        except RemoteProtocolError as exc:
            return [Reply(identity, p.Error(exc.code, exc.reason, p.reference(message)))]

    def expire_idle(self) -> list[Outgoing]:
        """End the sessions that have been silent for longer than the session timeout, and the restored
        ones whose clients have not come back within the grace period."""
        now = self.clock()
        deadline, restored_deadline = now - self.session_timeout, now - self.restart_grace
        out: list[Outgoing] = []
        if self.files is not None:
            self.files.sweep(now)
        for session in [s for s in self.sessions.values() if s.last_seen < deadline or s.restored]:
            if not session.restored:
                out += self._end(session, p.LEFT_TIMEOUT)
            elif session.last_seen < restored_deadline:
                out += self._end(session, p.LEFT_RESTARTED)
        return out

    def shutdown(self, reason: str = "the broker is shutting down") -> list[Outgoing]:
        """Tell every client that the broker is going away. Its history keeps who was online, so that
        they can resume after a restart."""
        out: list[Outgoing] = [Reply(s.identity, p.Bye(reason)) for s in self.sessions.values() if not s.restored]
        self.sessions.clear()
        self.names.clear()
        self.members.clear()
        return out

    # ------------------------------------------------------------------ messages

    def _dispatch(self, session: Session, message: p.Message, now: float) -> list[Outgoing]:
        if isinstance(message, p.Ping):
            return [Reply(session.identity, p.Pong(self._room_seqs(session), session.private_seq))]
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
            return [Reply(identity, self._welcome(session)), *self._privates_again(session, join)]
        holder = self.names.get(key)
        if holder is not None:
            same_token = join.token and holder.token and secrets.compare_digest(token_hash(join.token), holder.token)
            if same_token and holder.key == peer_key:
                # The same client on a new connection (or back after a restart): move the session, no
                # leave/join noise.
                del self.sessions[holder.identity]
                holder.identity, holder.last_seen, holder.restored = identity, now, False
                self.sessions[identity] = holder
                self._load_acks(key)  # a session restored after a restart has none in memory yet
                return [Reply(identity, self._welcome(holder)), *self._privates_again(holder, join)]
            raise RemoteProtocolError(p.NAME_TAKEN, f"the name {holder.name} is taken; choose another")
        if len(self.sessions) >= self.max_sessions:
            raise RemoteProtocolError(p.SERVER_FULL, "the broker has no room for more users")
        rooms = {p.room_key(room) for room in join.rooms} or {p.DEFAULT_ROOM}
        if len(self.members) + len(rooms - self.members.keys()) > MAX_ROOMS:
            raise RemoteProtocolError(p.SERVER_FULL, "the broker has no room for more rooms")
        session = Session(
            identity, join.name, token_hash(join.token), now, name_key=key, key=peer_key, allowance_at=now, rooms=set()
        )
        for room in rooms:
            self._add_member(session, room)
        self._keep(session)
        if peer_key and not owner:
            self.history.set_name_owner(key, peer_key)  # first use: the name is this key's from now on
        self.sessions[identity] = session
        self.names[key] = session
        self._load_acks(key)
        # WELCOME before the join event: its sequence numbers are the ones the client must follow on from.
        out: list[Outgoing] = [Reply(identity, self._welcome(session))]
        for room in sorted(session.rooms):
            out.append(self._publish(room, p.KIND_JOIN, session.name, "", now))
        return out + self._privates_again(session, join)

    def _load_acks(self, key: str) -> None:
        """Load a user's last acknowledged ids, so that resends are recognised (also after a restart)."""
        if key not in self._acks:
            for ack in self.history.recent_acks(key, DEDUP_IDS_PER_NAME):
                self._remember(key, ack)

    def _privates_again(self, session: Session, join: p.Join) -> list[Outgoing]:
        """The private messages after ``join.private_seq`` that went to this client (its token), again:
        one sent while it was reconnecting went to a connection the ROUTER no longer had."""
        if join.private_seq < 0 or not session.token:
            return []
        again = self.history.privates_after(session.name_key, join.private_seq, session.token, p.MAX_FETCH)
        if again:
            session.private_seq = max(session.private_seq, again[-1].seq)
        return [Reply(session.identity, private) for private in again]

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
        ack = p.Ack(pm.id, 0, int(now * 1000))
        self._remember(session.name_key, ack)
        return self.private_to(session, target, pm.text, msg_id=pm.id) + [Reply(session.identity, ack)]

    def private_to(self, session: Session, target: Session, text: str, file: int = 0, msg_id: str = "") -> list[Outgoing]:
        """A PRIVATE from ``session`` to ``target`` (a line, or the offer of ``file``), numbered and stored
        (with the sender's id) before anything is sent: the batch's flush comes first."""
        seq = self.history.last_private_seq(target.name_key) + 1
        private = p.Private(session.name, target.name, p.neutralise(text), int(self.clock() * 1000), seq, file)
        self.history.append_private(PrivateRecord(private, target.name_key, session.name_key, msg_id, target.token))
        target.private_seq = seq
        return [Reply(target.identity, private)]

    def publish_file(self, room: str, session: Session, text: str) -> p.Event:
        """The ``file`` event that offers a stored file to a room."""
        return self._publish(room, p.KIND_FILE, session.name, text, self.clock())

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
        return [Reply(session.identity, p.History(room, bodies, fetch.first, fetch.last, fetch.id))]

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
        self._keep(session)
        return [Reply(session.identity, entered), self._publish(room, p.KIND_ENTER, session.name, "", now)]

    def _part(self, session: Session, part: p.Part, now: float) -> list[Outgoing]:
        room = p.room_key(part.room)
        if room not in session.rooms:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}")
        self._remove_member(session, room)
        session.last_room = room
        self._keep(session)
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
            max_text=self.max_text,
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
        """End a session: its leave goes to each of its rooms, or, in none, to the room it parted last
        (whoever saw it there sees it go, as the roster of everyone online no longer lists it)."""
        del self.sessions[session.identity]
        del self.names[session.name_key]
        self.history.drop_session(session.name_key)
        now = self.clock()
        rooms = sorted(session.rooms)
        for room in rooms:
            self._remove_member(session, room)
        announce = rooms or ([session.last_room] if session.last_room else [])
        return [self._publish(room, p.KIND_LEAVE, session.name, why, now) for room in announce]

    def _keep(self, session: Session) -> None:
        """Record an online session in the history, so that it can resume after a restart."""
        record = SessionRecord(
            session.name_key, session.name, session.token, tuple(sorted(session.rooms)), session.key, session.last_room
        )
        self.history.keep_session(record)

    def _restore(self, records: list[SessionRecord]) -> None:
        """The sessions online when the broker stopped: they hold their names and rooms for
        ``restart_grace``, so that their clients resume without join and leave events."""
        now = self.clock()
        for record in records:
            session = Session(
                RESTORED + record.name_key.encode(), record.name, record.token_hash, now, name_key=record.name_key,
                key=record.key, allowance_at=now, rooms=set(), restored=True, last_room=record.last_room,
            )
            for room in record.rooms:
                self._add_member(session, room)
            self.sessions[session.identity] = session
            self.names[session.name_key] = session

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
