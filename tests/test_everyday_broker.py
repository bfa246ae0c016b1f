"""Issue 16, broker side, through the broker core with no sockets: NICK, AWAY, SEARCH, WHO/ROOMS ids,
topics and the store's schema versions. End-to-end checks are in tests/test_everyday_e2e.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chat import protocol as p
from chat.broker import store
from chat.broker.core import Broker
from chat.broker.history import MemoryHistory
from chat.broker.store import SqliteHistory
from chat.errors import StoreError
from test_broker_core import TIMEOUT, Clock, broker, clock, events, join, on_disk, only_error, raw, replies, say, send  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(30)

KEY_A, KEY_B = "A" * 40, "B" * 40


def secure_join(broker: Broker, identity: bytes, name: str, key: str) -> list:
    return broker.handle(identity, p.encode(p.Join(name, "t" + name)), peer_key=key)


def test_nick_renames_announces_and_keeps_old_lines_under_the_old_name(broker: Broker) -> None:
    join(broker, b"a", "alice", "ta")
    join(broker, b"b", "bob", "tb")
    before, _ = say(broker, b"a", "before", "1")
    out = send(broker, b"a", p.Nick("n1", "alicia"))
    (nick,) = events(out)
    assert (nick.kind, nick.name, nick.text, nick.room) == (p.KIND_NICK, "alice", "alicia", "#general")
    assert replies(out, b"a") == [p.Renamed("n1", "alicia", 0)]
    after, _ = say(broker, b"a", "after", "2")
    assert after.name == "alicia"
    assert [e.name for e in broker.history.fetch("#general", before.seq, after.seq)] == ["alice", "alice", "alicia"]
    who = replies(send(broker, b"b", p.Who("", "w1")), b"b")[0]
    assert isinstance(who, p.Roster) and who.names == ["alicia", "bob"] and who.id == "w1"
    # The old name is free again; the new one reaches the renamed session.
    join(broker, b"c", "alice", "tc")
    out = send(broker, b"b", p.Pm("pm1", "alicia", "hi"))
    assert [r.identity for r in out][0] == b"a"


@pytest.mark.parametrize(
    "name, code",
    [("bob", p.NAME_TAKEN), ("BOB", p.NAME_TAKEN), ("b0b", p.NAME_TAKEN), ("#bob", p.NAME_INVALID), ("a b", p.NAME_INVALID)],
)
def test_nick_to_a_taken_confusable_or_invalid_name_changes_nothing(broker: Broker, name: str, code: str) -> None:
    join(broker, b"a", "alice", "ta")
    join(broker, b"b", "bob", "tb")
    error = only_error(send(broker, b"a", raw(b"NICK", {"id": "n1", "name": name})), b"a")
    assert (error.code, error.ref) == (code, "n1")
    assert broker.names[p.name_key("alice")].name == "alice"
    assert sorted(broker.names) == ["alice", "bob"]


def test_nick_to_a_name_owned_by_another_key_is_refused(broker: Broker) -> None:
    secure_join(broker, b"b", "bob", KEY_B)
    broker.commit(broker.handle(b"b", p.encode(p.Leave()), peer_key=KEY_B))
    secure_join(broker, b"a", "alice", KEY_A)
    out = broker.handle(b"a", p.encode(p.Nick("n1", "bob")), peer_key=KEY_A)
    assert only_error(out, b"a").code == p.NAME_OWNED
    out = broker.handle(b"a", p.encode(p.Nick("n2", "alicia")), peer_key=KEY_A)
    assert replies(out, b"a") == [p.Renamed("n2", "alicia", 0)]
    assert broker.history.name_owner("alicia") == KEY_A  # the new name is now the key's too


def test_away_is_in_who_and_answers_the_first_pm_of_each_sender(broker: Broker) -> None:
    join(broker, b"a", "alice")
    join(broker, b"b", "bob")
    join(broker, b"c", "carol")
    assert replies(send(broker, b"b", p.Away("w1", "lunch")), b"b")[0] == p.Ack("w1", 0, pytest.approx(0, abs=10**13))
    roster = replies(send(broker, b"a", p.Who("")), b"a")[0]
    assert isinstance(roster, p.Roster) and roster.away == {"bob": "lunch"}
    acks = [replies(send(broker, who, p.Pm(f"{who!r}{n}", "bob", "hi")), who)[0] for n in range(2) for who in (b"a", b"c")]
    assert [a.away for a in acks] == ["lunch", "lunch", "", ""]
    send(broker, b"b", p.Away("w2", ""))
    roster = replies(send(broker, b"a", p.Who("")), b"a")[0]
    assert roster.away == {}
    assert replies(send(broker, b"a", p.Pm("later", "bob", "hi")), b"a")[0].away == ""


def test_rooms_replies_carry_the_request_id(broker: Broker) -> None:
    join(broker, b"a", "alice")
    listing = replies(send(broker, b"a", p.Rooms("r7")), b"a")[0]
    assert isinstance(listing, p.RoomList) and listing.id == "r7"


@pytest.mark.parametrize("history", ["memory", "sqlite"])
def test_search_finds_words_pages_like_history_and_only_in_ones_rooms(
    history: str, clock: Clock, tmp_path: Path
) -> None:
    store_ = MemoryHistory() if history == "memory" else SqliteHistory(tmp_path / "chat.db")
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, session_timeout=TIMEOUT, history=store_, rate=0)
    join(broker, b"a", "alice")
    join(broker, b"b", "bob")
    for n in range(p.MAX_FOUND + 10):
        broker.commit(send(broker, b"a", p.Say(f"s{n}", f"deploy number {n}")))
    broker.commit(send(broker, b"a", p.Enter("#secret")))
    broker.commit(send(broker, b"a", p.Say("x", "deploy in secret", "#secret")))
    broker.commit(send(broker, b"a", p.Pm("pm", "bob", "deploy privately")))
    first = replies(send(broker, b"b", p.Search("q1", "DEPLOY")), b"b")[0]
    assert isinstance(first, p.Found) and first.id == "q1"
    texts = [e["text"] for e in first.events]
    assert texts == [f"deploy number {n}" for n in range(p.MAX_FOUND + 9, 9, -1)]  # newest first
    assert first.before
    second = replies(send(broker, b"b", p.Search("q2", "deploy", before=first.before)), b"b")[0]
    assert [e["text"] for e in second.events] == [f"deploy number {n}" for n in range(9, -1, -1)]
    assert second.before == 0
    assert {e["room"] for e in first.events + second.events} == {"#general"}  # not #secret, not the PM
    mine = replies(send(broker, b"a", p.Search("q3", "deploy secret")), b"a")[0]
    assert [(e["room"], e["text"]) for e in mine.events] == [("#secret", "deploy in secret")]
    error = only_error(send(broker, b"b", p.Search("q4", "deploy", "#secret")), b"b")
    assert (error.code, error.ref) == (p.NO_SUCH_ROOM, "q4")


@pytest.mark.parametrize("text", ['"deploy', "deploy*", "-deploy", "NEAR(deploy number)", "deploy OR x", "^deploy:"])
def test_search_syntax_characters_are_words_not_a_query(text: str, broker: Broker, tmp_path: Path, clock: Clock) -> None:
    broker = on_disk(tmp_path / "chat.db", clock)
    join(broker, b"a", "alice")
    broker.commit(send(broker, b"a", p.Say("1", "deploy number 1")))
    broker.commit(send(broker, b"a", p.Say("2", "near or x")))
    found = replies(send(broker, b"a", p.Search("q", text)), b"a")[0]
    assert isinstance(found, p.Found), found
    expected = {"NEAR(deploy number)": [], "deploy OR x": []}.get(text, ["deploy number 1"])
    assert [e["text"] for e in found.events] == expected


@pytest.mark.parametrize("text", ["*", '""', " - ", "NEAR( )"[4:]])
def test_a_search_without_words_is_refused(text: str, broker: Broker) -> None:
    join(broker, b"a", "alice")
    error = only_error(send(broker, b"a", raw(b"SEARCH", {"id": "q", "text": text})), b"a")
    assert (error.code, error.ref) == (p.BAD_FIELD, "q")


def test_a_search_that_takes_too_long_is_cut_short(tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = on_disk(tmp_path / "chat.db", clock)
    join(broker, b"a", "alice")
    broker.commit(send(broker, b"a", p.Say("1", "deploy")))
    monkeypatch.setattr(store, "SEARCH_BUDGET", -1.0)
    monkeypatch.setattr(store, "SEARCH_CHECK_EVERY", 1)
    error = only_error(send(broker, b"a", p.Search("q", "deploy")), b"a")
    assert (error.code, error.ref) == (p.STORE_FAILED, "q")


def test_topics_outlive_a_restart_and_an_empty_room(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "chat.db"
    broker = on_disk(db, clock)
    join(broker, b"a", "alice", "ta")
    broker.commit(send(broker, b"a", p.Topic("t", "#general", "release on friday")))
    broker.commit(send(broker, b"a", p.Leave()))
    broker.history.close()
    broker = on_disk(db, clock)
    join(broker, b"b", "bob")
    listing = replies(send(broker, b"b", p.Rooms()), b"b")[0]
    assert listing.rooms == [{"room": "#general", "members": 1, "topic": "release on friday"}]


def _old_file(path: Path) -> None:
    """A history file as brokers wrote it before the schema was versioned (user_version 0)."""
    db = sqlite3.connect(path)
    db.executescript(store.SCHEMA_V1)
    db.execute("INSERT INTO events VALUES ('#general', 1, 1000, 'msg', 'olga', 'an old deploy line', '', '')")
    db.commit()
    db.close()


def test_an_old_history_file_is_upgraded_in_place(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "old.db"
    _old_file(db)
    broker = on_disk(db, clock)
    assert broker.history.fetch("#general", 1, 1)[0].text == "an old deploy line"
    join(broker, b"a", "alice")
    found = replies(send(broker, b"a", p.Search("q", "deploy")), b"a")[0]
    assert [e["text"] for e in found.events] == ["an old deploy line"]
    broker.history.close()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION


def test_a_history_file_of_a_newer_broker_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    _old_file(db)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="newer broker"):
        SqliteHistory(db)
    assert db.read_bytes() == before


def test_a_pm_to_someone_offline_waits_for_their_next_join_and_is_delivered_once(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "chat.db"
    broker = on_disk(db, clock)
    join(broker, b"b", "bob", "tb1")
    broker.commit(send(broker, b"b", p.Leave()))
    join(broker, b"a", "alice", "ta")
    nobody = only_error(send(broker, b"a", p.Pm("m0", "nobody", "hi")), b"a")
    assert nobody.code == p.NO_SUCH_USER
    out = broker.commit(send(broker, b"a", p.Pm("m1", "bob", "are you there?")))
    assert replies(out, b"a") == [p.Ack("m1", 0, out[0].message.ts, queued=True)]
    sent_at = out[0].message.ts
    broker.history.close()
    clock.advance(60)
    broker = on_disk(db, clock)  # kept across a restart
    out = broker.commit(send(broker, b"a2", p.Join("alice", "ta")))
    resend = broker.commit(send(broker, b"a2", p.Pm("m1", "bob", "are you there?")))  # the same id again
    assert [(m.id, m.ts) for m in replies(resend, b"a2")] == [("m1", sent_at)]  # acknowledged, not queued twice
    out = broker.commit(send(broker, b"b2", p.Join("BOB", "tb2", private_seq=0)))
    (welcome, private) = replies(out, b"b2")
    assert isinstance(welcome, p.Welcome)
    assert private == p.Private("alice", "bob", "are you there?", sent_at, 1, queued=True)
    broker.commit(send(broker, b"b2", p.Leave()))
    out = broker.commit(send(broker, b"b3", p.Join("bob", "tb3", private_seq=0)))
    assert [type(m) for m in replies(out, b"b3")] == [p.Welcome]  # delivered once, then no longer queued


def test_queued_pms_are_only_for_the_key_that_owned_the_name(broker: Broker) -> None:
    secure_join(broker, b"b", "bob", KEY_B)
    broker.commit(broker.handle(b"b", p.encode(p.Leave()), peer_key=KEY_B))
    secure_join(broker, b"a", "alice", KEY_A)
    broker.commit(broker.handle(b"a", p.encode(p.Pm("m1", "bob", "for bob's key only")), peer_key=KEY_A))
    broker.commit(broker.handle(b"a", p.encode(p.Leave()), peer_key=KEY_A))
    # Without keys, a session cannot take bob's name from its key at all; with another key neither:
    refused = broker.handle(b"x", p.encode(p.Join("bob", "tx")), peer_key="C" * 40)
    assert only_error(refused, b"x").code == p.NAME_OWNED
    out = broker.commit(broker.handle(b"b2", p.encode(p.Join("bob", "tb")), peer_key=KEY_B))
    assert [m.text for m in replies(out, b"b2") if isinstance(m, p.Private)] == ["for bob's key only"]


def test_queued_pms_are_bounded_per_recipient_and_per_sender(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    from chat.broker import commands

    monkeypatch.setattr(commands, "MAX_QUEUED", 5)
    monkeypatch.setattr(commands, "MAX_QUEUED_PER_SENDER", 3)
    broker = Broker(pub_port=5556, clock=clock, wall_clock=clock, session_timeout=TIMEOUT, rate=0)
    for name in ("bob", "carol", "dave"):
        join(broker, name.encode(), name)
        broker.commit(send(broker, name.encode(), p.Leave()))
    join(broker, b"a", "alice")
    join(broker, b"e", "erin")
    codes = []
    for n in range(4):
        out = broker.commit(send(broker, b"a", p.Pm(f"a{n}", "bob", "hi")))
        codes.append(out[0].message.code if isinstance(out[0].message, p.Error) else "queued")
    assert codes == ["queued", "queued", "queued", p.QUEUE_FULL]  # alice's share
    codes = []
    for n in range(3):
        out = broker.commit(send(broker, b"e", p.Pm(f"e{n}", "bob", "hi")))
        codes.append(out[0].message.code if isinstance(out[0].message, p.Error) else "queued")
    assert codes == ["queued", "queued", p.QUEUE_FULL]  # bob's 5
    assert isinstance(replies(send(broker, b"e", p.Pm("e9", "carol", "hi")))[0], p.Ack)  # others still can


def test_lines_are_indexed_off_their_path_when_the_broker_is_idle(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "INDEX_BEFORE_SEARCH", 0)  # only idle time indexes
    monkeypatch.setattr(store, "INDEX_WHEN_IDLE", 2)
    broker = on_disk(tmp_path / "chat.db", clock)
    join(broker, b"a", "alice")
    for n in range(3):
        broker.commit(send(broker, b"a", p.Say(f"s{n}", f"deploy {n}")))

    def found() -> list[str]:
        return [e["text"] for e in replies(send(broker, b"a", p.Search(f"q{clock()}", "deploy")), b"a")[0].events]

    assert found() == []  # stored, acknowledged and published, not indexed yet
    broker.idle()
    assert found() == ["deploy 1", "deploy 0"]
    broker.idle()
    assert found() == ["deploy 2", "deploy 1", "deploy 0"]
