"""The broker's decisions, with no sockets: frames in, replies and events out.

Session states, all of them, in one place::

    (no session) --JOIN ok--> joined --LEAVE--> (gone; leave event "quit")
                                     --silent for session_timeout--> (gone; leave event "timeout")
                                     --broker stops--> (gone; BYE to the client; kept in the history)
    (broker starts) --kept in the history--> restored --JOIN with its token--> joined (no join event)
                                                      --not back within restart_grace--> (gone; "restarted")

An identity without a session costs no memory: the broker answers it and forgets it. A session is bound
to one ROUTER identity and, with --secure, to one client key: a request from that identity with another
key is refused and never touches the session. The name shown on everything it sends comes from the
session, never from the message. A client that reconnects (new identity) can take its session back with
the token it joined with.

A private message is stored before it is acknowledged, numbered in its recipient's own sequence, and sent
to the recipient's connection of the moment. That connection may be stale (the recipient is
reconnecting), and the ROUTER then drops it silently: so every JOIN that names the last private seq its
client has shown (``private_seq``) gets the later ones that went to that client again, after its WELCOME.

Two clocks: ``clock`` (monotonic) for every time-out and limit, ``wall_clock`` for time stamps only, so
that a wall clock that jumps neither expires live sessions nor keeps silent ones.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Union

import msgspec

from chat import protocol as p
from chat.broker import commands, limits
from chat.broker.files import FileService
from chat.broker.history import RECENT_ACKS, History, MemoryHistory, PrivateRecord, SessionRecord, token_hash
from chat.broker.limits import BURST, RATE, Address, Bucket
from chat.errors import RemoteProtocolError, StoreError

# Seconds of silence after which a session is expired. Long enough for a laptop on Wi-Fi: roaming
# between access points, a busy channel or a power-saving radio can hold packets back for 10 s and more.
SESSION_TIMEOUT = 20.0
HEARTBEATS_PER_TIMEOUT = 3  # clients are told to ping this many times per timeout
MAX_SESSIONS = 10_000
DEDUP_IDS_PER_NAME = RECENT_ACKS  # acknowledged ids remembered per user, to drop resent duplicates
DEDUP_NAMES = 2 * MAX_SESSIONS
MAX_ROOMS = 10_000  # rooms that can exist at once (with members or with a topic)
RESTART_GRACE_TIMEOUTS = 2  # session timeouts a client has, after a broker restart, to resume its session
# A join storm: past SHOWN_JOINS joins in a room within JOIN_WINDOW seconds, the broker holds the next ones
# and publishes them as one "joins" event when the window ends (or before any other event in that room),
# so that each member decodes a bounded number of presence events per second however many join.
SHOWN_JOINS = 5
JOIN_WINDOW = 1.0
RESTORED = b"\x00restored\x00"  # identity prefix of a restored session until its client is back: never
# a ROUTER's (5 bytes), and never looked up for a request even if a peer chose it as its routing id
FETCH_CHUNK = 100  # events read from the history at a time while filling a HISTORY page


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
    last_seen: float  # on the monotonic clock
    lines: Bucket  # flood control: SAY, PM, WHO, ENTER, PART
    fetches: Bucket  # bytes of HISTORY
    rooms_made: Bucket  # rooms created
    name_key: str = ""  # the name as compared: set once, used on every line
    look: str = ""  # what the name looks like (p.name_look): no two sessions look alike
    key: str = ""  # the client's CURVE public key (Z85) when the broker runs --secure
    address: str = ""  # the source address of its connection ("": unknown, no per-address limits)
    rooms: set[str] = field(default_factory=lambda: {p.DEFAULT_ROOM})
    private_seq: int = 0  # the seq of the last private message sent to this session's client
    restored: bool = False  # online when the broker last stopped; its client has not come back yet
    last_room: str = ""  # the room it parted last: its leave goes there when it is in no room
    batch_acks: bool = False  # its client reads ACKS (said so in its JOIN)
    away: str = ""  # its away message ("": here)
    away_told: set[str] = field(default_factory=set)  # name keys of PM senders told it is away


class Broker:
    """Sessions, names, sequence numbers and time stamps: everything the broker decides."""

    def __init__(
        self,
        *,
        pub_port: int,
        history: History | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        session_timeout: float = SESSION_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        max_text: int = p.MAX_TEXT_CHARS,
        rate: float = RATE,
        burst: int = BURST,
        restart_grace: float | None = None,
        max_per_address: int = limits.MAX_PER_ADDRESS,
        join_rate: float = limits.JOIN_RATE,
        join_burst: int = limits.JOIN_BURST,
        room_idle: float = limits.ROOM_IDLE,
        notice: Callable[[str], None] = lambda text: None,
        warn: Callable[[str], None] = lambda message: None,
        files: FileService | None = None,
    ) -> None:
        self.pub_port = pub_port
        self.warn = warn  # tells the operator (stderr) when storing fails, and when it works again
        self.max_text = max_text
        self.rate = rate
        self.burst = burst
        self.max_per_address = max_per_address
        self.join_rate = join_rate
        self.join_burst = join_burst
        self.room_idle = room_idle
        self.notice = notice  # tells the operator (stderr) about a limit being hit, now and then
        self._noticed: dict[str, float] = {}
        self._unread = 0  # of the connection whose message is being handled
        self.history = history if history is not None else MemoryHistory()
        self.clock = clock
        self.wall_clock = wall_clock
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        self.sessions: dict[bytes, Session] = {}  # by ROUTER identity
        self.names: dict[str, Session] = {}  # by name_key
        self.looks: dict[str, Session] = {}  # by look
        self._seq: dict[str, int] = {}
        self.topics: dict[str, str] = {}  # room -> topic, of rooms in use (the store keeps every room's)
        self.members: dict[str, int] = {}  # room -> sessions in it; a room with none is not listed
        self._empty_since: OrderedDict[str, float] = OrderedDict()  # rooms without members, oldest first
        self.addresses: dict[str, Address] = {}  # source addresses with sessions, or with a spent bucket
        self._acks: OrderedDict[str, OrderedDict[str, p.Ack]] = OrderedDict()  # per user, loaded on joining
        self._join_windows: dict[str, tuple[float, int]] = {}  # room -> (its window's start, joins shown in it)
        self._held_joins: dict[str, list[str]] = {}  # room -> names whose joins wait for the window's end
        self.joins_due = float("inf")  # when the first held joins are to be published (release_joins)
        # What this batch changed that a failed write must undo: (identity, name key, line id), (room, old
        # topic), (recipient session, its private seq before) of each private message.
        self._batch_acks: list[tuple[bytes, str, str]] = []
        self._batch_topics: list[tuple[str, str | None]] = []
        self._batch_privates: list[tuple[Session, int, p.Private]] = []
        self.store_failing = False
        self.files = files  # file sharing (chat.broker.files); None: OFFER and GET are refused
        self.restart_grace = RESTART_GRACE_TIMEOUTS * session_timeout if restart_grace is None else restart_grace
        self._restore(self.history.open_sessions())

    # ------------------------------------------------------------------ entry points

    def handle(
        self, identity: bytes, frames: list[bytes], peer_key: str = "", address: str = "", unread: int = 0
    ) -> list[Outgoing]:
        """Everything that follows from one message received on the ROUTER.

        ``peer_key`` is the sender's CURVE public key as authenticated by ZAP, or "" without encryption;
        ``address`` the source address of its connection (ZeroMQ's ``Peer-Address``), or "" if unknown;
        ``unread`` how many bytes written to that connection its peer has not taken yet (0 if unknown).
        """
        self._unread = unread
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
            if session is not None and session.key != peer_key:
                # Another key on a routing id it chose to be a session's (ZMQ_ROUTING_ID): not that session.
                raise RemoteProtocolError(p.KEY_MISMATCH, "this connection's key is not the one of its session")
            if isinstance(message, p.Join):
                return self._join(identity, session, message, now, peer_key, address)
            if session is None:
                raise RemoteProtocolError(p.NOT_JOINED, "join first (send JOIN with a name)")
            session.last_seen = now
            if isinstance(message, p.FILE_REQUESTS):
                if self.files is None:
                    raise RemoteProtocolError(p.BAD_TYPE, "this broker does not keep files")
                # The file store's times (age, silent uploads, partial files' mtimes) outlive the process.
                return self.files.handle(self, session, message, p.data_of(frames), self.wall_clock())
            return self._dispatch(session, message, now)
        except RemoteProtocolError as exc:
            return [Reply(identity, p.Error(exc.code, exc.reason, p.reference(message)))]
        except StoreError as exc:  # a failed read (a damaged page): this request fails, the broker goes on
            return [Reply(identity, p.Error(p.STORE_FAILED, str(exc), p.reference(message)))]

    def commit(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """Store the batch's events in one write; what to send once that is done (or has failed).

        When the write fails, no event of the batch is published (each would need its number and its
        place in the history) and none of its private messages is delivered: lines and private messages
        are refused to their senders with ``store_failed``, and sessions that came and went meanwhile are
        not announced. Everything else the batch answered still goes out.
        """
        batch_acks, self._batch_acks = self._batch_acks, []
        batch_topics, self._batch_topics = self._batch_topics, []
        batch_privates, self._batch_privates = self._batch_privates, []
        try:
            self.history.flush()
        except StoreError as exc:
            if not self.store_failing:
                self.store_failing = True
                self.warn(f"{exc}: lines are refused until it can be written again; the rest goes on")
            for target, before, _ in reversed(batch_privates):  # not stored: their numbers are given again
                target.private_seq = before
            unstored = {id(private) for _, _, private in batch_privates}
            return self._unstored([o for o in outgoing if id(getattr(o, "message", None)) not in unstored], batch_acks, batch_topics)
        if self.store_failing and (batch_privates or any(isinstance(item, p.Event) for item in outgoing)):
            self.store_failing = False
            self.warn("the history can be written again: lines are accepted again")
        return outgoing

    def expire_idle(self) -> list[Outgoing]:
        """End the sessions that have been silent for longer than the session timeout, and the restored
        ones whose clients have not come back within the grace period."""
        now = self.clock()
        deadline, restored_deadline = now - self.session_timeout, now - self.restart_grace
        out: list[Outgoing] = []
        if self.files is not None:
            self.files.sweep(self.wall_clock())
        for session in [s for s in self.sessions.values() if s.last_seen < deadline or s.restored]:
            if not session.restored:
                out += self._end(session, p.LEFT_TIMEOUT)
            elif session.last_seen < restored_deadline:
                out += self._end(session, p.LEFT_RESTARTED)
        self._forget_rooms(now)
        for address in [a for a, state in self.addresses.items() if not state.sessions and state.moves.is_full(now)]:
            del self.addresses[address]
        return out

    def idle(self) -> None:
        """Nothing came in for a while: let the history do its deferred work (indexing for search)."""
        try:
            self.history.idle()
        except StoreError as exc:  # a failing disk: the lines are safe, their indexing waits
            self._tell(f"{exc}; searching finds the lines stored before")

    def shutdown(self, reason: str = "the broker is shutting down") -> list[Outgoing]:
        """Tell every client that the broker is going away. Its history keeps who was online, so that
        they can resume after a restart."""
        now = self.clock()
        out: list[Outgoing] = [event for room in list(self._held_joins) for event in self._release_room(room, now)]
        out += [Reply(s.identity, p.Bye(reason)) for s in self.sessions.values() if not s.restored]
        self.sessions.clear()
        self.names.clear()
        self.looks.clear()
        self.members.clear()
        self.addresses.clear()
        return out

    def _unstored(
        self, outgoing: list[Outgoing], acks: list[tuple[bytes, str, str]], topics: list[tuple[str, str | None]]
    ) -> list[Outgoing]:
        """Undo a batch whose events and private messages could not be stored: numbers, acknowledgements,
        topics; its private messages are not delivered (their senders are told, and may send them again)."""
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

    def pack_acks(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """A batch's outgoing items with the ACKs to each client that reads ACKS packed into one such
        reply, where the first of them was (a single ACK stays an ACK). What the ACKs say is unchanged:
        the batch is stored before anything of it is sent."""
        packed: dict[bytes, list[p.Ack]] = {}
        out: list[Outgoing] = []
        sessions = self.sessions
        for item in outgoing:
            if _packable(item):
                acks = packed.get(item.identity)
                if acks is not None:
                    acks.append(item.message)
                    continue
                session = sessions.get(item.identity)
                if session is not None and session.batch_acks:
                    packed[item.identity] = [item.message]
            out.append(item)
        if not any(len(acks) > 1 for acks in packed.values()):
            return out
        for index, item in enumerate(out):
            if _packable(item):
                acks = packed.get(item.identity)
                if acks is not None and len(acks) > 1:
                    out[index] = Reply(item.identity, p.Acks([(a.id, a.seq, a.ts) for a in acks]))
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
            return self._fetch(session, message, now)
        if isinstance(message, p.Enter):
            return self._enter(session, message, now)
        if isinstance(message, p.Part):
            return self._part(session, message, now)
        if isinstance(message, p.Rooms):
            return self._rooms(session, message, now)
        if isinstance(message, p.Topic):
            return self._topic(session, message, now)
        if isinstance(message, p.Leave):
            return self._end(session, p.LEFT_QUIT) + [Reply(session.identity, p.Bye("goodbye"))]
        if isinstance(message, p.Nick):
            return commands.nick(self, session, message, now)
        if isinstance(message, p.Away):
            return commands.away(self, session, message, now)
        if isinstance(message, p.Search):
            return commands.search(self, session, message, now)
        raise RemoteProtocolError(p.BAD_TYPE, f"{message.TYPE.decode()} is not a request")

    def _join(
        self, identity: bytes, session: Session | None, join: p.Join, now: float, peer_key: str, address: str
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
                holder.batch_acks = join.batch_acks  # the client may have been upgraded meanwhile
                self.sessions[identity] = holder
                self._move_address(holder, address, now)
                self._load_acks(key)  # a session restored after a restart has none in memory yet
                return [Reply(identity, self._welcome(holder)), *self._privates_again(holder, join)]
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
        self._admit(address, now)
        for room in rooms:
            self._last_seq(room)  # reads the store (which may fail) before anything changes
        session = Session(
            identity, join.name, token_hash(join.token), now, **self._buckets(now),
            name_key=key, look=look, key=peer_key, address=address, rooms=set(), batch_acks=join.batch_acks,
        )
        self._count_address(address, 1, now)
        for room in rooms:
            self._add_member(session, room)
        self._keep(session)
        if peer_key and not owner:
            self.history.set_name_owner(key, peer_key)  # first use: the name is this key's from now on
        self.sessions[identity] = session
        self.names[key] = session
        self.looks[look] = session
        self._load_acks(key)
        # WELCOME before the join event: its sequence numbers are the ones the client must follow on from.
        out: list[Outgoing] = [Reply(identity, self._welcome(session))]
        for room in sorted(session.rooms):
            if self._join_shown(room, now):
                out.append(self._publish(room, p.KIND_JOIN, session.name, "", now))
            else:
                self._held_joins.setdefault(room, []).append(session.name)
                self.joins_due = min(self.joins_due, self._join_windows[room][0] + JOIN_WINDOW)
        self.history.mark_known(key, join.name)  # a PM to this name can wait for it from now on
        return out + self._privates_again(session, join) + commands.deliver_queued(self, session)

    def _join_shown(self, room: str, now: float) -> bool:
        """Whether a join in ``room`` is published now (True) or held for the window's summary."""
        start, shown = self._join_windows.get(room, (now, 0))
        if now - start >= JOIN_WINDOW:
            start, shown = now, 0
        if shown < SHOWN_JOINS and room not in self._held_joins:
            self._join_windows[room] = (start, shown + 1)
            return True
        self._join_windows[room] = (start, shown)
        return False

    def release_joins(self) -> list[Outgoing]:
        """The held joins of every room whose window has ended, one ``joins`` event per room."""
        now = self.clock()
        if now < self.joins_due:
            return []
        out: list[Outgoing] = []
        self.joins_due = float("inf")
        for room in list(self._held_joins):
            end = self._join_windows[room][0] + JOIN_WINDOW
            if now >= end:
                out += self._release_room(room, now)
            else:
                self.joins_due = min(self.joins_due, end)
        return out

    def _release_room(self, room: str, now: float) -> list[Outgoing]:
        names = self._held_joins.pop(room, None)
        if not names:
            return []
        self._join_windows[room] = (now, 0)  # a new window: the next joins are shown one by one again
        if len(names) == 1:
            return [self._publish(room, p.KIND_JOIN, names[0], "", now)]
        return [self._publish(room, p.KIND_JOINS, names[0], str(len(names)), now)]

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
        out = self._publish_after_joins(room, kind, session.name, p.neutralise(text), now, msg_id)
        event = out[-1]
        assert isinstance(event, p.Event)
        ack = p.Ack(msg_id, event.seq, event.ts)
        self._remember(session.name_key, ack)
        self._batch_acks.append((session.identity, session.name_key, msg_id))
        return [*out, Reply(session.identity, ack)]

    def _pm(self, session: Session, pm: p.Pm, now: float) -> list[Outgoing]:
        done = self._acked(session, pm.id)
        if done is not None:  # delivered before, even if the target has left since
            return [Reply(session.identity, done)]
        target = self.names.get(p.name_key(pm.to))
        if target is None:  # kept for them if they have been here before
            return commands.queue_private(self, session, pm, now)
        self._check_text(pm.text)
        self._spend(session, now)
        ts = self._ts()
        ack = p.Ack(pm.id, 0, ts)
        self._remember(session.name_key, ack)
        if target.away and session.name_key not in target.away_told:  # told once (not on a resend)
            target.away_told.add(session.name_key)
            ack = msgspec.structs.replace(ack, away=target.away)
        self._batch_acks.append((session.identity, session.name_key, pm.id))
        return self.private_to(session, target, pm.text, ts, msg_id=pm.id) + [Reply(session.identity, ack)]

    def private_to(
        self, session: Session, target: Session, text: str, ts: int | None = None, file: int = 0, msg_id: str = ""
    ) -> list[Outgoing]:
        """A PRIVATE from ``session`` to ``target`` (a line, or the offer of ``file``), numbered and stored
        (with the sender's id) before anything is sent: the batch's flush comes first."""
        seq = self.history.last_private_seq(target.name_key) + 1
        private = p.Private(session.name, target.name, p.neutralise(text), self._ts() if ts is None else ts, seq, file)
        self.history.append_private(PrivateRecord(private, target.name_key, session.name_key, msg_id, target.token))
        self._batch_privates.append((target, target.private_seq, private))
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
        members = [s for s in self.sessions.values() if not room or room in s.rooms]
        names = sorted((s.name for s in members), key=p.name_key)
        roster = p.Roster(room, names, self._ts(), who.id, {s.name: s.away for s in members if s.away})
        return [Reply(session.identity, roster)]

    def _fetch(self, session: Session, fetch: p.Fetch, now: float) -> list[Outgoing]:
        if self._unread > limits.FETCH_UNREAD:  # a reader that does not read is sent no more
            self._tell(f"{session.name} ({session.address or '?'}) asks for history and does not read it")
            raise RemoteProtocolError(p.RATE_LIMITED, "slow down: read the history sent before; ask again later")
        if not session.fetches.ready(now, limits.FETCH_MIN_COST):
            self._tell(f"{session.name} ({session.address or '?'}) asks for history faster than allowed")
            raise RemoteProtocolError(
                p.RATE_LIMITED, f"slow down: history at most {limits.FETCH_BYTES_RATE // 1024} KiB a second"
            )
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
        # Read in chunks: a page of long lines holds a few dozen, and reading a thousand would be waste.
        bodies: list[dict[str, object]] = []
        space_left = p.MAX_FRAME_BYTES - p.FRAME_OVERHEAD
        first, full = fetch.first, False
        while first <= last and not full:
            chunk_last = min(last, first + FETCH_CHUNK - 1)
            for event in self.history.fetch(room, first, chunk_last):
                body = p.event_body(event)
                size = p.encoded_size(body) + 1
                if size > space_left and bodies:
                    full = True
                    break
                space_left -= size
                bodies.append(body)
            first = chunk_last + 1
        # The budget is in bytes sent: a reader that does not read is not sent more than it allows.
        session.fetches.spend(max(limits.FETCH_MIN_COST, p.MAX_FRAME_BYTES - space_left))
        return [Reply(session.identity, p.History(room, bodies, fetch.first, fetch.last, fetch.id))]

    def _enter(self, session: Session, enter: p.Enter, now: float) -> list[Outgoing]:
        room = p.room_key(enter.room)
        if room in session.rooms:  # already there: the client switches to it
            return [Reply(session.identity, p.Entered(room, self._last_seq(room), self.topics.get(room, "")))]
        if len(session.rooms) >= p.MAX_ROOMS_PER_SESSION:
            raise RemoteProtocolError(p.BAD_FIELD, f"one can be in at most {p.MAX_ROOMS_PER_SESSION} rooms")
        new_room = room not in self.members
        if new_room and len(self.members) >= MAX_ROOMS:
            raise RemoteProtocolError(p.SERVER_FULL, "the broker has no room for more rooms")
        if new_room and not session.rooms_made.ready(now):
            self._tell(f"{session.name} ({session.address or '?'}) makes rooms too fast")
            raise RemoteProtocolError(
                p.RATE_LIMITED, f"slow down: at most {limits.ROOMS_PER_MINUTE} new rooms a minute"
            )
        self._spend_move(session, now)
        if new_room:
            session.rooms_made.spend()
        entered = p.Entered(room, self._last_seq(room), self.topics.get(room, ""))  # checked first: no cache
        self._add_member(session, room)
        self._keep(session)
        return [Reply(session.identity, entered), *self._publish_after_joins(room, p.KIND_ENTER, session.name, "", now)]

    def _part(self, session: Session, part: p.Part, now: float) -> list[Outgoing]:
        room = p.room_key(part.room)
        if room not in session.rooms:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}")
        self._spend_move(session, now)
        self._remove_member(session, room)
        session.last_room = room
        self._keep(session)
        return [*self._publish_after_joins(room, p.KIND_PART, session.name, "", now), Reply(session.identity, p.Parted(room))]

    def _rooms(self, session: Session, request: p.Rooms, now: float) -> list[Outgoing]:
        rooms = [{"room": r, "members": n, "topic": self.topics.get(r, "")} for r, n in sorted(self.members.items())]
        return [Reply(session.identity, p.RoomList(rooms, self._ts(), request.id))]

    def _topic(self, session: Session, topic: p.Topic, now: float) -> list[Outgoing]:
        room = p.room_key(topic.room)
        if room not in session.rooms:
            raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}")
        out = self._publish_line(session, room, p.KIND_TOPIC, topic.text, topic.id, now)
        published = out[-2] if len(out) > 1 else None  # held joins may come first, the ACK last
        if isinstance(published, p.Event):  # published now, not a resend
            self._batch_topics.append((room, self.topics.get(room)))
            self.topics[room] = published.text
            self.history.set_topic(room, published.text)  # kept across restarts, and while the room is empty
        return out

    def _add_member(self, session: Session, room: str) -> None:
        if room not in self.members and room not in self.topics:  # back in use: its topic from the store
            topic = self.history.topic(room)
            if topic:
                self.topics[room] = topic
        session.rooms.add(room)
        self.members[room] = self.members.get(room, 0) + 1
        self._empty_since.pop(room, None)

    def _remove_member(self, session: Session, room: str) -> None:
        session.rooms.discard(room)
        self.members[room] -= 1
        if not self.members[room]:  # an empty room is not listed; its topic and history stay in the store
            del self.members[room]
            self.topics.pop(room, None)
            self._empty_since[room] = self.clock()

    def _forget_rooms(self, now: float) -> None:
        """Drop what is kept of rooms empty for ``room_idle`` (and of the oldest beyond MAX_ROOMS of them):
        without it, ENTER and PART of ever new rooms would hold memory for each one forever."""
        while self._empty_since:
            room, since = next(iter(self._empty_since.items()))
            if since > now - self.room_idle and len(self._empty_since) <= MAX_ROOMS:
                break
            del self._empty_since[room]
            self._seq.pop(room, None)
            self.history.forget(room)

    # ------------------------------------------------------------------ per source address

    def _admit(self, address: str, now: float) -> None:
        """A new session from ``address``: within its share of the seats, and of the JOIN rate."""
        if not address:
            return
        state = self.addresses.get(address)
        if state is None:
            state = self.addresses[address] = Address(0, Bucket.full(self.join_rate, self.join_burst, now))
        if self.max_per_address and state.sessions >= self.max_per_address:
            self._tell(f"{address} has {state.sessions} sessions, the most one address may have (--max-per-address)")
            raise RemoteProtocolError(
                p.ADDRESS_FULL, f"too many users from {address} at once (at most {self.max_per_address})"
            )
        if not state.moves.take(now):
            self._tell(f"{address} joins too fast; slowed down to {self.join_rate:g} a second (--join-rate)")
            raise RemoteProtocolError(p.RATE_LIMITED, f"slow down: too many joins from {address}; try again")

    def _spend_move(self, session: Session, now: float) -> None:
        """ENTER and PART: they count as lines for the session, and as joins for its address."""
        state = self.addresses.get(session.address)
        if state is not None and not state.moves.ready(now):
            self._tell(f"{session.address} enters and leaves rooms too fast (--join-rate)")
            raise RemoteProtocolError(p.RATE_LIMITED, "slow down: too many room changes from your address")
        self._spend(session, now)
        if state is not None:
            state.moves.spend()

    def _count_address(self, address: str, change: int, now: float) -> None:
        if not address:
            return
        state = self.addresses.get(address)
        if state is None:
            state = self.addresses[address] = Address(0, Bucket.full(self.join_rate, self.join_burst, now))
        state.sessions += change

    def _move_address(self, session: Session, address: str, now: float) -> None:
        if address != session.address:
            self._count_address(session.address, -1, now)
            self._count_address(address, 1, now)
            session.address = address

    def _tell(self, text: str) -> None:
        """Tell the operator, at most once a minute for the same text."""
        now = self.clock()
        if now - self._noticed.get(text, float("-inf")) < 60:
            return
        if len(self._noticed) > 1000:
            self._noticed.clear()
        self._noticed[text] = now
        self.notice(text)

    # ------------------------------------------------------------------ helpers

    def _check_text(self, text: str) -> None:
        if len(text) > self.max_text:
            raise RemoteProtocolError(p.BAD_FIELD, f"a message can be at most {self.max_text} characters long")

    def _spend(self, session: Session, now: float) -> None:
        """Flood control: a token bucket of ``burst`` lines, refilled at ``rate`` lines a second (0: off)."""
        if not session.lines.take(now):
            raise RemoteProtocolError(
                p.RATE_LIMITED, f"slow down: at most {self.rate:g} lines a second (bursts of {self.burst})"
            )

    def _ts(self) -> int:
        """A time stamp: the wall clock, in ms since the epoch (the only use of the wall clock)."""
        return int(self.wall_clock() * 1000)

    def _buckets(self, now: float) -> dict[str, Bucket]:
        """A new session's limits, full."""
        on = self.rate > 0  # --rate 0 switches every per-session limit off
        return {
            "lines": Bucket.full(self.rate, self.burst, now),
            "fetches": Bucket.full(limits.FETCH_BYTES_RATE if on else 0, limits.FETCH_BYTES_BURST, now),
            "rooms_made": Bucket.full(limits.ROOMS_PER_MINUTE / 60 if on else 0, limits.ROOMS_PER_MINUTE, now),
        }

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
        event = p.Event(seq=seq, ts=self._ts(), kind=kind, name=name, text=text, room=room)
        self.history.append(event, msg_id)
        return event

    def _publish_after_joins(self, room: str, kind: str, name: str, text: str, now: float, msg_id: str = "") -> list[Outgoing]:
        """Publish an event in ``room``, after the joins held there: who joined comes before what they say."""
        held = self._release_room(room, now) if room in self._held_joins else []
        return [*held, self._publish(room, kind, name, text, now, msg_id)]

    def _end(self, session: Session, why: str) -> list[Outgoing]:
        """End a session: its leave goes to each of its rooms, or, in none, to the room it parted last
        (whoever saw it there sees it go, as the roster of everyone online no longer lists it)."""
        del self.sessions[session.identity]
        del self.names[session.name_key]
        self.history.drop_session(session.name_key)
        if self.looks.get(session.look) is session:
            del self.looks[session.look]
        now = self.clock()
        self._count_address(session.address, -1, now)
        rooms = sorted(session.rooms)
        for room in rooms:
            self._remove_member(session, room)
        announce = rooms or ([session.last_room] if session.last_room else [])
        out: list[Outgoing] = []
        for room in announce:
            out += self._publish_after_joins(room, p.KIND_LEAVE, session.name, why, now)
        return out

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
                look=p.name_look(record.name), key=record.key, rooms=set(), restored=True,
                last_room=record.last_room, **self._buckets(now),
            )
            self.looks.setdefault(session.look, session)  # (a file from before look-alikes were refused)
            for room in record.rooms:
                self._add_member(session, room)
            self.sessions[session.identity] = session
            self.names[session.name_key] = session

    def _acked(self, session: Session, msg_id: str) -> p.Ack | None:
        if not msg_id:
            return None
        ids = self._acks.get(session.name_key)
        return ids.get(msg_id) if ids else None

    def _rename_acks(self, old_key: str, new_key: str) -> None:
        """A renamed user's acknowledged ids go with it: a line resent after /nick is still recognised."""
        ids = self._acks.pop(old_key, None)
        if ids is not None:
            self._acks[new_key] = ids

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


def _packable(item: Outgoing) -> bool:
    """A plain ACK, which ACKS can carry (one that says the recipient is away, or the PM queued, is sent alone)."""
    if type(item) is not Reply or type(item.message) is not p.Ack:
        return False
    return not item.message.away and not item.message.queued


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
