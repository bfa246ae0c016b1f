"""The broker's decisions without sockets: frames in, replies and events out, on a clock the test moves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chat import protocol as p
from chat.broker.core import DEDUP_IDS_PER_NAME, Broker, Outgoing, Reply
from chat.broker.store import SqliteHistory

A, B, C = b"\x00A", b"\x00B", b"\x00C"  # ROUTER identities
T0 = 1_764_190_000.0
TIMEOUT = 5.0


class Clock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(clock: Clock) -> Broker:
    return Broker(pub_port=5556, clock=clock, wall_clock=clock, session_timeout=TIMEOUT)


def sendable(out: list[Outgoing]) -> list[Outgoing]:
    """Put every outgoing item through the wire as the server loop would; a client must be able to read it."""
    for item in out:
        if isinstance(item, Reply):
            assert p.decode_broker(p.encode(item.message)) == item.message
        else:
            assert isinstance(item, p.Event)
    events = [item for item in out if isinstance(item, p.Event)]
    published = [e for message in p.encode_events(events) for e in p.decode_events(message)]
    assert sorted(published, key=lambda e: (e.room, e.seq)) == sorted(events, key=lambda e: (e.room, e.seq))
    return out


def send(broker: Broker, identity: bytes, message: p.Message | list[bytes]) -> list[Outgoing]:
    frames = p.encode(message) if isinstance(message, p.Message) else message
    return sendable(broker.handle(identity, frames))


def raw(kind: bytes, body: dict) -> list[bytes]:
    return [p.PROTOCOL_TAG, kind, json.dumps(body).encode()]


def replies(out: list[Outgoing], identity: bytes | None = None) -> list[p.Message]:
    return [r.message for r in out if isinstance(r, Reply) and identity in (None, r.identity)]


def events(out: list[Outgoing]) -> list[p.Event]:
    return [e for e in out if isinstance(e, p.Event)]


def only_error(out: list[Outgoing], identity: bytes) -> p.Error:
    """The single ERROR reply ``out`` holds, to ``identity``; nothing else happened."""
    assert len(out) == 1 and isinstance(out[0], Reply) and out[0].identity == identity, out
    assert isinstance(out[0].message, p.Error), out
    return out[0].message


def join(broker: Broker, identity: bytes, name: str, token: str = "") -> p.Welcome:
    out = send(broker, identity, p.Join(name, token))
    welcome = replies(out, identity)[0]
    assert isinstance(welcome, p.Welcome), out
    return welcome


def say_parts(out: list[Outgoing], identity: bytes) -> tuple[p.Event, p.Ack]:
    """The one event and the one ACK of a SAY's outcome."""
    (event,) = events(out)
    (ack,) = replies(out, identity)
    assert isinstance(ack, p.Ack)
    return event, ack


def say(broker: Broker, identity: bytes, text: str, msg_id: str) -> tuple[p.Event, p.Ack]:
    return say_parts(send(broker, identity, p.Say(msg_id, text)), identity)


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def on_disk(db: Path, clock: Clock, **options: Any) -> Broker:
    """A broker whose history is the SQLite file ``db`` (--db FILE)."""
    return Broker(
        pub_port=5556, clock=clock, wall_clock=clock, session_timeout=TIMEOUT, history=SqliteHistory(db), **options
    )


def crash_and_restart(broker: Broker, db: Path, clock: Clock, **options: Any) -> Broker:
    """The broker dies (no goodbyes) after its last flush, as SIGKILL would; a new one starts on ``db``."""
    assert isinstance(broker.history, SqliteHistory)
    broker.history.flush()  # the server loop flushes before it sends anything of a batch
    broker.history.db.close()
    return on_disk(db, clock, **options)


# --------------------------------------------------------------------------- joining


def test_join_gets_a_welcome_then_a_join_event(broker: Broker) -> None:
    out = send(broker, A, p.Join("alice"))
    assert out == [
        Reply(
            A,
            p.Welcome(
                name="alice",
                pub_port=5556,
                rooms={"#general": 0},
                heartbeat_ms=1666,
                timeout_ms=5000,
                history_id=broker.history.history_id,
            ),
        ),
        p.Event(seq=1, ts=ms(T0), kind="join", name="alice", text="", room="#general"),
    ]


def test_welcome_seqs_are_those_before_the_own_join_event(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")
    clock.advance(1.5)
    out = send(broker, B, p.Join("Bob"))
    welcome = replies(out, B)[0]
    assert isinstance(welcome, p.Welcome) and welcome.rooms == {"#general": 1} and welcome.name == "Bob"
    assert events(out) == [p.Event(2, ms(T0 + 1.5), "join", "Bob", "", "#general")]


@pytest.mark.parametrize("other", ["alice", "ALICE", "Alice", "ａｌｉｃｅ"])
def test_names_are_unique_case_insensitively(broker: Broker, other: str) -> None:
    join(broker, A, "alice")
    error = only_error(send(broker, B, p.Join(other)), B)
    assert (error.code, error.ref) == (p.NAME_TAKEN, "JOIN")
    assert only_error(send(broker, B, p.Ping()), B).code == p.NOT_JOINED  # B got no session


@pytest.mark.parametrize("twin", ["aIice", "a1ice", "AL1CE", "ａIice"])
def test_a_name_that_looks_like_one_online_is_taken(broker: Broker, clock: Clock, twin: str) -> None:
    join(broker, A, "alice")
    error = only_error(send(broker, B, p.Join(twin)), B)
    assert (error.code, error.ref) == (p.NAME_TAKEN, "JOIN") and "looks like alice" in error.reason
    assert only_error(send(broker, B, p.Join("al\u0456ce")), B).code == p.NAME_INVALID  # mixed scripts
    send(broker, A, p.Leave())
    assert join(broker, B, twin).name == twin  # nobody online looks like it now
    clock.advance(TIMEOUT + 1)
    broker.expire_idle()
    assert join(broker, C, "alice").name == "alice"  # the look is freed with the session


def test_a_name_is_free_again_after_its_owner_left(broker: Broker) -> None:
    join(broker, A, "alice")
    send(broker, A, p.Leave())
    assert join(broker, B, "Alice").name == "Alice"


@pytest.mark.parametrize("name", ["al ice", "#general", "*star", "/quit", "x" * 33, "", "a\x1bb", "a\u202eb"])
def test_invalid_name_is_refused_and_nothing_is_published(broker: Broker, name: str) -> None:
    error = only_error(send(broker, A, p.Join(name)), A)
    assert error.code == p.NAME_INVALID
    assert only_error(send(broker, A, p.Ping()), A).code == p.NOT_JOINED


def test_a_retried_join_is_welcomed_again_without_a_second_join_event(broker: Broker) -> None:
    join(broker, A, "alice")
    out = send(broker, A, p.Join("Alice"))
    assert len(out) == 1 and events(out) == []
    welcome = replies(out, A)[0]
    assert isinstance(welcome, p.Welcome) and welcome.name == "alice" and welcome.rooms == {"#general": 1}


def test_join_as_another_name_on_a_joined_connection_is_already_joined(broker: Broker) -> None:
    join(broker, A, "alice")
    error = only_error(send(broker, A, p.Join("bob")), A)
    assert (error.code, error.ref) == (p.ALREADY_JOINED, "JOIN")


def test_server_full_at_max_sessions(clock: Clock) -> None:
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, max_sessions=2)
    join(broker, A, "alice", token="t-alice")
    join(broker, B, "bob")
    error = only_error(send(broker, C, p.Join("carol")), C)
    assert (error.code, error.ref) == (p.SERVER_FULL, "JOIN")
    assert join(broker, C + b"2", "alice", token="t-alice").name == "alice"  # a takeover needs no new place
    send(broker, B, p.Leave())
    assert join(broker, C, "carol").name == "carol"


# --------------------------------------------------------------------------- requests need a session


@pytest.mark.parametrize(
    "message, ref",
    [(p.Say("s1", "hi"), "s1"), (p.Pm("p1", "bob", "hi"), "p1"), (p.Ping(), "PING"), (p.Who(), "WHO"),
     (p.Leave(), "LEAVE"), (p.Fetch("#general", 1, 1), "FETCH")],
)
def test_requests_before_join_are_not_joined(broker: Broker, message: p.Message, ref: str) -> None:
    join(broker, B, "bob")
    error = only_error(send(broker, A, message), A)
    assert (error.code, error.ref) == (p.NOT_JOINED, ref)


# --------------------------------------------------------------------------- saying


def test_say_publishes_consecutive_seqs_with_acks_of_the_same_seq(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")  # seq 1
    join(broker, B, "bob")  # seq 2
    seen = []
    for i, text in enumerate(["one", "two", "three"]):
        clock.advance(0.25)
        out = send(broker, A, p.Say(f"id-{i}", text))
        assert [type(x) for x in out] == [p.Event, Reply]  # published, then acknowledged
        event, ack = say_parts(out, A)
        assert event == p.Event(3 + i, ms(clock.now), p.KIND_MSG, "alice", text, "#general")
        assert ack == p.Ack(f"id-{i}", event.seq, event.ts)
        seen.append(event.seq)
    assert seen == [3, 4, 5]


def test_action_keeps_its_kind(broker: Broker) -> None:
    join(broker, A, "alice")
    out = send(broker, A, p.Say("1", "waves", kind=p.KIND_ACTION))
    assert events(out)[0].kind == p.KIND_ACTION


def test_sender_is_the_session_name_never_a_message_field(broker: Broker) -> None:
    join(broker, A, "Alice")
    join(broker, B, "bob")
    out = send(broker, A, raw(b"SAY", {"id": "1", "text": "hi", "name": "bob", "from": "bob", "sender": "bob"}))
    assert events(out)[0].name == "Alice"
    out = send(broker, A, raw(b"PM", {"id": "2", "to": "bob", "text": "hi", "name": "carol"}))
    private = replies(out, B)[0]
    assert isinstance(private, p.Private) and private.name == "Alice"


def test_duplicate_say_id_is_acknowledged_again_and_not_published(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")
    event, ack = say(broker, A, "hello", "dup")
    clock.advance(2)
    out = send(broker, A, p.Say("dup", "hello"))
    assert out == [Reply(A, ack)]
    later, _ = say(broker, A, "next", "other")
    assert later.seq == event.seq + 1  # nothing was published in between


def test_ids_are_per_user(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    say(broker, A, "from alice", "1")
    event, _ = say(broker, B, "from bob", "1")
    assert (event.name, event.text) == ("bob", "from bob")


def test_empty_id_is_never_taken_for_a_duplicate(broker: Broker) -> None:
    join(broker, A, "alice")
    first, _ = say(broker, A, "one", "")
    second, _ = say(broker, A, "two", "")
    assert second.seq == first.seq + 1


def test_say_to_a_room_one_is_not_in_is_no_such_room(broker: Broker) -> None:
    join(broker, A, "alice")
    error = only_error(send(broker, A, p.Say("r1", "hi", room="#elsewhere")), A)
    assert (error.code, error.ref) == (p.NO_SUCH_ROOM, "r1")


def test_published_text_is_neutralised(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    event, _ = say(broker, A, "\x1b[2J\x1b]0;owned\x07hi\u202eevil\x9b", "1")
    assert event.text == "^[[2J^[]0;owned^Ghi\ufffdevil\ufffd"
    out = send(broker, A, p.Pm("2", "bob", "psst\x1b[31m"))
    private = replies(out, B)[0]
    assert isinstance(private, p.Private) and private.text == "psst^[[31m"


# --------------------------------------------------------------------------- private messages


def test_pm_goes_to_the_target_only_and_is_acknowledged(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    join(broker, C, "carol")
    clock.advance(1)
    out = send(broker, A, p.Pm("p1", "BOB", "psst"))
    assert events(out) == []  # never on the PUB socket
    assert replies(out, B) == [p.Private("alice", "bob", "psst", ms(clock.now), seq=1)]
    assert replies(out, A) == [p.Ack("p1", 0, ms(clock.now))]
    assert replies(out, C) == []
    assert len(out) == 2


def test_pm_is_never_in_the_public_history(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    send(broker, A, p.Pm("p1", "bob", "secret"))
    out = send(broker, A, p.Fetch("#general", 1, 2))
    history = replies(out, A)[0]
    assert isinstance(history, p.History)
    assert [e["kind"] for e in history.events] == ["join", "join"]


def test_duplicate_pm_is_acknowledged_again_and_not_delivered_twice(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    out = send(broker, A, p.Pm("p1", "bob", "psst"))
    ack = replies(out, A)[0]
    assert send(broker, A, p.Pm("p1", "bob", "psst")) == [Reply(A, ack)]


def test_pm_to_unknown_is_no_such_user_with_its_id(broker: Broker) -> None:
    join(broker, A, "alice")
    error = only_error(send(broker, A, p.Pm("p7", "nobody", "hello?")), A)
    assert (error.code, error.ref) == (p.NO_SUCH_USER, "p7")


def test_resent_pm_is_acknowledged_again_even_after_the_target_left(broker: Broker) -> None:
    """PROTOCOL.md: an id already acknowledged is acknowledged again, so a client may resend safely.

    A resend after a lost ACK must not be reported as undeliverable just because the target has gone since.
    """
    join(broker, A, "alice")
    join(broker, B, "bob")
    ack = replies(send(broker, A, p.Pm("p1", "bob", "psst")), A)[0]
    send(broker, B, p.Leave())
    assert send(broker, A, p.Pm("p1", "bob", "psst")) == [Reply(A, ack)]


def test_pms_are_numbered_in_their_recipients_own_sequence(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    join(broker, C, "carol")
    seqs = []
    for n, (sender, to) in enumerate([(A, "bob"), (C, "bob"), (A, "carol"), (A, "bob")]):
        (private,) = [m for m in replies(send(broker, sender, p.Pm(f"p{n}", to, "hi"))) if isinstance(m, p.Private)]
        seqs.append((private.to, private.seq))
    assert seqs == [("bob", 1), ("bob", 2), ("carol", 1), ("bob", 3)]


def test_a_pm_sent_while_its_target_reconnects_comes_again_after_the_welcome(broker: Broker) -> None:
    """The PRIVATE went to bob's old connection, which the ROUTER no longer has: it is not lost."""
    join(broker, A, "alice")
    join(broker, B, "bob", token="t-bob")
    send(broker, A, p.Pm("p1", "bob", "one"))
    shown = 1  # bob's client showed the first; the second goes to the stale identity B
    send(broker, A, p.Pm("p2", "bob", "two"))
    out = send(broker, b"\x00B2", p.Join("bob", "t-bob", private_seq=shown))
    welcome, *rest = replies(out, b"\x00B2")
    assert isinstance(welcome, p.Welcome)
    assert [(m.seq, m.text) for m in rest if isinstance(m, p.Private)] == [(2, "two")]
    assert len(rest) == 1
    # Asked again (a retried JOIN), it comes again; the client drops it by its seq.
    again = replies(send(broker, b"\x00B2", p.Join("bob", "t-bob", private_seq=shown)), b"\x00B2")
    assert [m.seq for m in again if isinstance(m, p.Private)] == [2]
    # A JOIN without private_seq (a client that does not count them) gets none again.
    assert replies(send(broker, b"\x00B2", p.Join("bob", "t-bob")), b"\x00B2")[1:] == []


def test_pong_reports_the_last_pm_sent_to_the_client_so_that_a_lost_one_is_noticed(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob", token="t-bob")
    assert replies(send(broker, B, p.Ping()), B) == [p.Pong({"#general": 2}, private_seq=0)]
    send(broker, A, p.Pm("p1", "bob", "one"))
    send(broker, A, p.Pm("p2", "alice", "to myself"))  # alice's own count, not bob's
    assert replies(send(broker, B, p.Ping()), B) == [p.Pong({"#general": 2}, private_seq=1)]


def test_pms_to_a_name_go_again_only_to_the_client_they_were_sent_to(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob", token="t-bob")
    send(broker, A, p.Pm("p1", "bob", "for the first bob"))
    send(broker, B, p.Leave())
    out = send(broker, C, p.Join("bob", "t-someone-else", private_seq=0))
    assert [m for m in replies(out, C) if isinstance(m, p.Private)] == []
    out = send(broker, A, p.Pm("p2", "bob", "for the second bob"))
    assert [(m.seq, m.text) for m in replies(out, C)] == [(2, "for the second bob")]


def test_a_pm_resent_to_a_restarted_broker_is_acked_as_before_and_not_delivered_again(
    tmp_path: Path, clock: Clock
) -> None:
    db = tmp_path / "history.db"
    broker = on_disk(db, clock)
    join(broker, A, "alice", token="t-alice")
    join(broker, B, "bob", token="t-bob")
    ack = replies(send(broker, A, p.Pm("p1", "bob", "psst")), A)[0]
    said_ack = say(broker, A, "hello", "s1")[1]
    clock.advance(5)
    restarted = crash_and_restart(broker, db, clock)
    join(restarted, A, "alice", token="t-alice")
    join(restarted, B, "bob", token="t-bob")
    assert send(restarted, A, p.Pm("p1", "bob", "psst")) == [Reply(A, ack)]
    assert send(restarted, A, p.Say("s1", "hello")) == [Reply(A, said_ack)]
    # bob's numbering goes on where it was
    (private,) = [m for m in replies(send(restarted, A, p.Pm("p2", "bob", "again")), B)]
    assert isinstance(private, p.Private) and private.seq == 2


def test_a_pm_stored_before_a_restart_comes_again_to_its_client_after_it(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "history.db"
    broker = on_disk(db, clock)
    join(broker, A, "alice", token="t-alice")
    join(broker, B, "bob", token="t-bob")
    send(broker, A, p.Pm("p1", "bob", "while you were away"))  # bob's connection was already stale
    restarted = crash_and_restart(broker, db, clock)
    out = send(restarted, B, p.Join("bob", "t-bob", private_seq=0))
    assert [(m.seq, m.text) for m in replies(out, B) if isinstance(m, p.Private)] == [(1, "while you were away")]


def test_resent_ids_are_recognised_per_user_up_to_the_last_1000(tmp_path: Path, clock: Clock) -> None:
    """PROTOCOL.md: the broker remembers each user's last 1000 ids, also across a restart."""
    db = tmp_path / "history.db"
    broker = on_disk(db, clock, rate=0)
    join(broker, A, "alice", "alice-token")
    join(broker, B, "bob")
    oldest = say(broker, A, "the oldest", "a0")[1]
    clock.advance(0.001)
    kept = say(broker, A, "kept", "a1")[1]
    for n in range(DEDUP_IDS_PER_NAME - 1):  # alice's newer ids push "a0" out; bob's do not count
        clock.advance(0.001)
        say(broker, A, f"{n}", f"a-{n}")
        say(broker, B, f"{n}", f"b-{n}")
    restarted = crash_and_restart(broker, db, clock, rate=0)
    join(restarted, A, "alice", "alice-token")  # takes the restored session over
    assert send(restarted, A, p.Say("a1", "kept")) == [Reply(A, kept)]
    event, ack = say(restarted, A, "the oldest", "a0")  # forgotten: taken for a new line
    assert ack != oldest and event.text == "the oldest"


def test_a_users_ids_are_recognised_after_a_restart_however_much_others_said_since(
    tmp_path: Path, clock: Clock
) -> None:
    """The ids reloaded at a restart were the last 20,000 of all users together: a busy room pushed a
    quiet user's line out, and its resend was published twice. Now they are loaded per user."""
    db = tmp_path / "history.db"
    broker = on_disk(db, clock, rate=0)
    join(broker, A, "alice", "alice-token")
    join(broker, B, "bob")
    quiet = say(broker, A, "said once", "a1")[1]
    for n in range(20_001):
        clock.advance(0.001)
        broker.handle(B, p.encode(p.Say(f"b-{n}", "busy")))
    restarted = crash_and_restart(broker, db, clock)
    join(restarted, A, "alice", "alice-token")  # takes the restored session over
    assert send(restarted, A, p.Say("a1", "said once")) == [Reply(A, quiet)]


# --------------------------------------------------------------------------- who, ping, fetch


def test_who_lists_everyone_sorted_case_insensitively(broker: Broker, clock: Clock) -> None:
    for identity, name in [(A, "carol"), (B, "Bob"), (C, "alice")]:
        join(broker, identity, name)
    clock.advance(3)
    assert send(broker, A, p.Who()) == [Reply(A, p.Roster("", ["alice", "Bob", "carol"], ms(clock.now)))]
    roster = replies(send(broker, A, p.Who("#general")), A)[0]
    assert isinstance(roster, p.Roster) and (roster.room, roster.names) == ("#general", ["alice", "Bob", "carol"])


def test_who_for_a_room_that_does_not_exist_is_no_such_room(broker: Broker) -> None:
    join(broker, A, "alice")
    error = only_error(send(broker, A, p.Who("#nowhere")), A)
    assert (error.code, error.ref) == (p.NO_SUCH_ROOM, "WHO")


def test_requests_about_unknown_rooms_leave_no_trace(broker: Broker) -> None:
    """A FETCH for a made-up room must not create it: else any client can grow the broker's memory
    without bound (one entry per made-up name, up to 64 KiB each) and WHO finds rooms that do not exist."""
    join(broker, A, "alice")
    assert only_error(send(broker, A, p.Fetch("#nowhere", 1, 1)), A).code in (p.HISTORY_RANGE, p.NO_SUCH_ROOM)
    error = only_error(send(broker, A, p.Who("#nowhere")), A)
    assert error.code == p.NO_SUCH_ROOM


def test_ping_gets_pong_with_the_room_seqs(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    say(broker, B, "hi", "1")
    assert send(broker, A, p.Ping()) == [Reply(A, p.Pong({"#general": 3}))]


def test_fetch_returns_the_events_in_range(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")
    published = []
    for i in range(5):
        clock.advance(1)
        published.append(say(broker, A, f"line {i}", f"id{i}")[0])
    out = send(broker, A, p.Fetch("#general", 3, 5))
    history = replies(out, A)[0]
    assert isinstance(history, p.History) and history.room == "#general"
    assert p.history_events(history) == published[1:4]
    assert events(out) == []


def test_fetch_answers_at_most_max_fetch_events() -> None:
    broker = Broker(pub_port=5556, clock=lambda: 0.0, wall_clock=lambda: 0.0, rate=0)  # short events: ts 0; no flood control
    join(broker, A, "a")
    for i in range(p.MAX_FETCH + 5):
        broker.handle(A, p.encode(p.Say(str(i), "x")))
    history = replies(send(broker, A, p.Fetch("#general", 2, p.MAX_FETCH + 6)), A)[0]
    assert isinstance(history, p.History)
    assert [e["seq"] for e in history.events] == list(range(2, p.MAX_FETCH + 2))


def test_a_history_reply_always_fits_in_one_frame(broker: Broker) -> None:
    """Twenty long lines are more than a frame may hold. The reply must be cut short (the client asks for
    the rest), not sent whole: a client refuses a frame over MAX_FRAME_BYTES as too_large, so it would never
    get those events and would ask again forever."""
    join(broker, A, "alice")
    for i in range(20):
        say(broker, A, "é" * p.MAX_TEXT_CHARS, str(i))  # 4000 bytes each
    out = broker.handle(A, p.encode(p.Fetch("#general", 1, 21)))
    history = replies(out, A)[0]
    assert isinstance(history, p.History)
    assert max(len(frame) for frame in p.encode(history)) <= p.MAX_FRAME_BYTES
    seqs = [e["seq"] for e in history.events]
    assert seqs and seqs == list(range(1, len(seqs) + 1))


@pytest.mark.parametrize("first, last", [(1, 4), (4, 4), (0, 2), (3, 2)])
def test_fetch_outside_the_history_is_history_range(broker: Broker, first: int, last: int) -> None:
    join(broker, A, "alice")
    say(broker, A, "hi", "1")
    say(broker, A, "there", "2")  # events 1 to 3
    error = only_error(send(broker, A, p.Fetch("#general", first, last)), A)
    assert (error.code, error.ref) == (p.HISTORY_RANGE, "FETCH")


def test_a_fetch_with_an_id_gets_it_back_in_its_history_and_its_error(broker: Broker) -> None:
    """PROTOCOL.md: FETCH takes an optional id, so that a client with fetches open in several rooms can
    tell which one an answer or an error is about."""
    join(broker, A, "alice")
    [history] = replies(send(broker, A, p.Fetch("#general", 1, 1, id="f-general")), A)
    assert isinstance(history, p.History) and history.id == "f-general"
    error = only_error(send(broker, A, p.Fetch("#general", 5, 9, id="f-2")), A)
    assert (error.code, error.ref) == (p.HISTORY_RANGE, "f-2")
    error = only_error(send(broker, A, p.Fetch("#nowhere", 1, 1, id="f-3")), A)
    assert (error.code, error.ref) == (p.NO_SUCH_ROOM, "f-3")


# --------------------------------------------------------------------------- leaving


def test_leave_publishes_quit_then_says_bye(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")
    clock.advance(2)
    out = send(broker, A, p.Leave())
    assert out == [p.Event(2, ms(T0 + 2), p.KIND_LEAVE, "alice", p.LEFT_QUIT, "#general"), Reply(A, p.Bye("goodbye"))]
    assert only_error(send(broker, A, p.Say("1", "still here?")), A).code == p.NOT_JOINED


def test_expire_idle_ends_silent_sessions_after_the_timeout_not_before(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    clock.advance(3)
    send(broker, B, p.Ping())  # bob is alive
    clock.advance(TIMEOUT - 3)  # alice silent for exactly the timeout
    assert broker.expire_idle() == []
    clock.advance(0.01)
    out = sendable(broker.expire_idle())
    assert out == [p.Event(3, ms(clock.now), p.KIND_LEAVE, "alice", p.LEFT_TIMEOUT, "#general")]
    assert only_error(send(broker, A, p.Ping()), A).code == p.NOT_JOINED
    assert replies(send(broker, B, p.Ping()), B) == [p.Pong({"#general": 3})]
    assert join(broker, C, "alice").name == "alice"  # the name is free again


def test_any_request_keeps_a_session_alive(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice")
    for _ in range(4):
        clock.advance(TIMEOUT - 1)
        send(broker, A, p.Who())
        assert broker.expire_idle() == []


def test_shutdown_says_bye_to_everyone(broker: Broker) -> None:
    join(broker, A, "alice")
    join(broker, B, "bob")
    out = sendable(broker.shutdown())
    assert events(out) == []
    assert sorted(r.identity for r in out if isinstance(r, Reply)) == [A, B]
    assert all(isinstance(m, p.Bye) for m in replies(out))
    assert only_error(send(broker, A, p.Ping()), A).code == p.NOT_JOINED


# --------------------------------------------------------------------------- taking a session back


def test_the_join_token_lets_a_new_connection_take_the_session_over(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice", token="5f0c9a3e8b7d41e2")
    join(broker, B, "bob")
    event, ack = say(broker, A, "before", "a-1")
    clock.advance(1)
    out = send(broker, C, p.Join("ALICE", token="5f0c9a3e8b7d41e2"))
    assert events(out) == []  # no leave, no join
    (welcome,) = replies(out)
    assert isinstance(welcome, p.Welcome) and welcome.name == "alice" and welcome.rooms == {"#general": 3}
    assert send(broker, C, p.Say("a-1", "before")) == [Reply(C, ack)]  # resend after reconnect: no repeat
    assert events(send(broker, C, p.Say("a-2", "after")))[0].name == "alice"
    assert only_error(send(broker, A, p.Ping()), A).code == p.NOT_JOINED  # the old connection lost it
    roster = replies(send(broker, B, p.Who()), B)[0]
    assert isinstance(roster, p.Roster) and roster.names == ["alice", "bob"]


@pytest.mark.parametrize("holder_token, token", [("right", "wrong"), ("right", ""), ("", "")])
def test_without_the_right_token_the_name_is_taken(broker: Broker, holder_token: str, token: str) -> None:
    join(broker, A, "alice", token=holder_token)
    error = only_error(send(broker, C, p.Join("alice", token=token)), C)
    assert (error.code, error.ref) == (p.NAME_TAKEN, "JOIN")
    assert replies(send(broker, A, p.Ping()), A) == [p.Pong({"#general": 1})]  # alice still has it


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "frames, code, ref",
    [
        ([b"garbage"], p.BAD_FRAMES, ""),
        ([], p.BAD_FRAMES, ""),
        ([p.PROTOCOL_TAG, b"SAY", b'{"id":"1","text":"hi"}', b"extra"], p.BAD_FRAMES, ""),
        ([b"chat/1", b"PING", b"{}"], p.BAD_VERSION, "PING"),
        ([b"chat/3", b"PING", b"{}"], p.BAD_VERSION, "PING"),
        ([p.PROTOCOL_TAG, b"SHOUT", b"{}"], p.BAD_TYPE, "SHOUT"),
        ([p.PROTOCOL_TAG, b"\xff\x00", b"{}"], p.BAD_TYPE, ""),  # an unreadable type is not echoed
        (p.encode(p.Welcome("x", 1, {}, 1, 1, "h")), p.BAD_TYPE, "WELCOME"),
        ([p.PROTOCOL_TAG, b"SAY", b"\xff"], p.BAD_JSON, "SAY"),
        ([p.PROTOCOL_TAG, b"SAY", b"{nope"], p.BAD_JSON, "SAY"),
        ([p.PROTOCOL_TAG, b"SAY", b"[]"], p.BAD_JSON, "SAY"),
        ([p.PROTOCOL_TAG, b"JOIN", b"{}"], p.BAD_FIELD, "JOIN"),
        ([p.PROTOCOL_TAG, b"SAY", b'{"id":1,"text":"hi"}'], p.BAD_FIELD, "SAY"),
        ([p.PROTOCOL_TAG, b"SAY", b'{"text":"hi"}'], p.BAD_FIELD, "SAY"),
        ([p.PROTOCOL_TAG, b"SAY", b'{"id":"s-9","text":7}'], p.BAD_FIELD, "s-9"),  # the id, when it has one
        ([p.PROTOCOL_TAG, b"FOO", b'{}'], p.BAD_TYPE, "FOO"),
        ([p.PROTOCOL_TAG, b"SAY", b'{"id":"1","text":"' + b"x" * p.MAX_FRAME_BYTES + b'"}'], p.TOO_LARGE, "1"),
    ],
)
def test_malformed_frames_get_an_error_and_the_broker_keeps_serving(
    broker: Broker, frames: list[bytes], code: str, ref: str
) -> None:
    """PROTOCOL.md: ref is the request's id when its body has one, else its type when frame 1 is readable
    (so that a client can tell which request failed), else empty."""
    join(broker, A, "alice")
    join(broker, B, "bob")
    error = only_error(send(broker, A, frames), A)
    assert (error.code, error.ref) == (code, ref)
    error = only_error(send(broker, C, frames), C)  # from a connection with no session, too
    assert error.code == code
    event, _ = say(broker, B, "still working", "b1")
    assert event.seq == 3  # nothing was published for the bad message, and no one was dropped
    assert replies(send(broker, A, p.Ping()), A) == [p.Pong({"#general": 3})]


@pytest.mark.parametrize(
    "message, ref",
    [
        (p.Join("bad name"), "JOIN"),
        (p.Join("alice", "t" * (p.MAX_ID_CHARS + 1)), "JOIN"),
        (p.Say("s1", "   "), "s1"),
        (p.Say("s2", "x" * (p.MAX_TEXT_CHARS + 1)), "s2"),
        (p.Say("s3", "hi", kind="join"), "s3"),
        (p.Pm("p1", "bob", ""), "p1"),
    ],
    ids=["join-name", "join-token", "say-blank", "say-long", "say-kind", "pm-empty"],
)
def test_a_request_that_breaks_a_field_rule_is_refused_with_its_ref(
    broker: Broker, message: p.Message, ref: str
) -> None:
    """PROTOCOL.md: ref is the id of the failed request, else its type; empty only when it could not be decoded.

    The reference client relies on it: it takes ``ref == "JOIN"`` as "name refused" (exit 3, or ask again),
    and drops an unacknowledged line from its resend queue only when the error names its id.
    """
    if not isinstance(message, p.Join):
        join(broker, A, "alice")
    error = only_error(send(broker, A, message), A)
    assert error.ref == ref


def test_deeply_nested_json_gets_an_error_reply(broker: Broker) -> None:
    """A 3 KB message of brackets must get bad_json, not raise out of handle() and stop the broker loop."""
    join(broker, A, "alice")
    error = only_error(send(broker, C, [p.PROTOCOL_TAG, b"SAY", b"[" * 3000]), C)
    assert error.code == p.BAD_JSON


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"1","text":"hi \\ud800"}',
        b'{"id":"\\udfff","text":"hi"}',
        b'{"id":"1","text":"hi","room":"\\udc00"}',
    ],
    ids=["text", "id", "room"],
)
def test_lone_surrogates_in_a_say_never_reach_the_wire(broker: Broker, body: bytes) -> None:
    """JSON may escape a lone surrogate; such a string cannot be encoded as UTF-8 again, so publishing or
    acknowledging it would raise UnicodeEncodeError in the server loop (the ``sendable`` check here)."""
    join(broker, A, "alice")
    send(broker, A, [p.PROTOCOL_TAG, b"SAY", body])


def test_lone_surrogates_in_names_and_tokens_never_crash_the_broker(broker: Broker) -> None:
    join(broker, A, "alice", token="good")
    send(broker, B, [p.PROTOCOL_TAG, b"JOIN", b'{"name":"alice","token":"\\ud800"}'])
    send(broker, C, [p.PROTOCOL_TAG, b"JOIN", b'{"name":"carol","token":"\\ud800"}'])
    send(broker, B, [p.PROTOCOL_TAG, b"JOIN", b'{"name":"carol","token":"x"}'])
    send(broker, A, [p.PROTOCOL_TAG, b"PM", b'{"id":"1","to":"\\ud800","text":"hi"}'])
    send(broker, A, [p.PROTOCOL_TAG, b"WHO", b'{"room":"\\ud800"}'])


def test_a_request_of_another_version_is_refused_in_that_version(broker: Broker) -> None:
    """ERROR looks the same in every version: tagged chat/1, a version 1 client can read why it is refused."""
    [reply] = broker.handle(A, [b"chat/1", b"JOIN", b'{"name": "old"}'])
    assert isinstance(reply, Reply) and isinstance(reply.message, p.Error)
    assert reply.tag == b"chat/1"
    assert (reply.message.code, reply.message.ref) == (p.BAD_VERSION, "JOIN")
    assert "this side speaks version 2" in reply.message.reason
    assert not broker.sessions
    [other] = broker.handle(A, [b"chat/2", b"SHOUT", b"{}"])  # any other refusal: in our version
    assert isinstance(other, Reply) and other.tag == p.PROTOCOL_TAG


# --------------------------------------------------------------------------- broker restarts and leaves


def restarted(broker: Broker, clock: Clock) -> Broker:
    """A new broker core on the same history, as a restarted broker.py on the same --db."""
    broker.shutdown()
    return Broker(pub_port=5556, clock=clock, session_timeout=TIMEOUT, history=broker.history)


def test_after_a_restart_a_client_with_its_token_resumes_without_join_or_leave(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice", token="t-alice")
    send(broker, A, p.Enter("#dev"))
    join(broker, B, "bob", token="t-bob")
    broker = restarted(broker, clock)
    [roster] = replies(send(broker, C, p.Join("carol")), C)[:1]  # someone new meanwhile: both are still listed
    assert isinstance(roster, p.Welcome)
    [who] = replies(send(broker, C, p.Who()), C)
    assert isinstance(who, p.Roster) and who.names == ["alice", "bob", "carol"]

    clock.advance(TIMEOUT * 1.5)  # within the grace period (two session timeouts)
    out = send(broker, B + b"2", p.Join("alice", token="t-alice", rooms=["#general"]))
    assert events(out) == []  # no join event: she resumes
    [welcome] = replies(out, B + b"2")
    assert isinstance(welcome, p.Welcome) and set(welcome.rooms) == {"#general", "#dev"}  # her rooms, kept
    assert isinstance(replies(send(broker, B + b"2", p.Say("a1", "back", "#dev")), B + b"2")[0], p.Ack)


def test_after_a_restart_those_who_do_not_come_back_leave_once_as_restarted(broker: Broker, clock: Clock) -> None:
    join(broker, A, "alice", token="t-alice")
    join(broker, B, "bob", token="t-bob")
    broker = restarted(broker, clock)
    join(broker, C, "bob", token="t-bob")  # bob is back, alice is not
    clock.advance(TIMEOUT * 1.5)
    send(broker, C, p.Ping())
    assert broker.expire_idle() == []  # alice still has time
    clock.advance(TIMEOUT)
    [leave] = broker.expire_idle()
    assert isinstance(leave, p.Event) and (leave.kind, leave.name, leave.text) == (p.KIND_LEAVE, "alice", "restarted")
    assert broker.expire_idle() == []
    assert join(broker, A, "alice").name == "alice"  # the name is free again


@pytest.mark.parametrize("token", ["wrong", ""])
def test_a_restored_session_is_not_taken_without_its_token(broker: Broker, clock: Clock, token: str) -> None:
    join(broker, A, "alice", token="t-alice")
    broker = restarted(broker, clock)
    error = only_error(send(broker, C, p.Join("alice", token=token)), C)
    assert error.code == p.NAME_TAKEN
    # Nor by a peer that picks the restored session's placeholder identity as its routing id.
    [identity] = [i for i, s in broker.sessions.items() if s.name == "alice"]
    assert only_error(send(broker, identity, p.Say("x1", "hijack")), identity).code == p.NOT_JOINED


def test_the_history_keeps_a_hash_of_the_token_never_the_token(broker: Broker) -> None:
    join(broker, A, "alice", token="t-alice-secret")
    [record] = broker.history.open_sessions()
    assert record.name == "alice" and "t-alice-secret" not in repr(record) and record.token_hash


def test_a_session_that_parted_every_room_leaves_where_it_was_last(broker: Broker, clock: Clock) -> None:
    """Others saw it in the roster of everyone online: they see it go, in the room it left last."""
    join(broker, A, "alice")
    send(broker, A, p.Enter("#dev"))
    send(broker, A, p.Part("#general"))
    send(broker, A, p.Part("#dev"))
    [leave] = events(send(broker, A, p.Leave()))
    assert (leave.room, leave.kind, leave.name, leave.text) == ("#dev", p.KIND_LEAVE, "alice", p.LEFT_QUIT)
    join(broker, B, "bob")
    send(broker, B, p.Part("#general"))
    clock.advance(TIMEOUT + 1)
    [leave] = broker.expire_idle()
    assert (leave.room, leave.text) == ("#general", p.LEFT_TIMEOUT)


def test_the_sqlite_history_keeps_who_is_online_across_a_reopening(clock: Clock, tmp_path: Path) -> None:
    first = Broker(pub_port=5556, clock=clock, session_timeout=TIMEOUT, history=SqliteHistory(tmp_path / "h.db"))
    join(first, A, "alice", token="t-alice")
    send(first, A, p.Enter("#dev"))
    join(first, B, "bob", token="t-bob")
    send(first, B, p.Leave())
    first.history.flush()  # as the server loop does after every batch; then the process is killed
    first.history.db.close()  # (which lets go of the file's lock)
    again = Broker(pub_port=5556, clock=clock, session_timeout=TIMEOUT, history=SqliteHistory(tmp_path / "h.db"))
    assert [s.name for s in again.sessions.values()] == ["alice"]  # bob had left
    out = send(again, C, p.Join("alice", token="t-alice"))
    [welcome] = replies(out, C)
    assert events(out) == [] and isinstance(welcome, p.Welcome) and set(welcome.rooms) == {"#general", "#dev"}
