"""Issue 16, broker side, end to end: broker.py and client.py as a user runs them (plain mode)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from conftest import TS, Broker, Processes, joined, online, private, said
from chat.broker import store

pytestmark = pytest.mark.timeout(40)

EXIT_OK = 0


def sent_at(client) -> str:  # type: ignore[no-untyped-def]
    """The time stamp of a client's own join line: a PM it sent just after has the same or a later one."""
    return client.matching(r"has joined the chat")[0][:21]


def notice(text: str) -> str:
    return rf"^\*\*\* {re.escape(text)}$"


def test_nick_is_announced_refused_names_change_nothing_and_history_keeps_the_old_name(
    procs: Processes, broker: Broker
) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.expect(joined("bob"))
    alice.send("before")
    bob.expect(said("alice", "before"))
    alice.send("/nick alicia")
    for client in (alice, bob):
        client.expect(rf"^{TS} alice is now known as alicia\.$")
    alice.expect_err(notice("you are now alicia"))
    for taken in ("bob", "BOB", "b0b"):
        alice.send(f"/nick {taken}")
        alice.expect_err(r"^\*\*\* the name .* (is taken|looks like bob, who is online); choose another$")
    alice.send("/nick #x")
    alice.expect_err(notice("a name cannot start with '#', '/' or '*'"))
    alice.send("after")
    bob.expect(said("alicia", "after"))
    bob.send("/pm alicia psst")
    alice.expect(private("bob", "psst"))
    carol = procs.join("carol", broker, history=10)
    carol.expect(said("alice", "before"))
    carol.expect(said("alicia", "after"))


def test_away_shows_in_who_and_answers_the_first_pm_of_each_sender(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    bob.send("/away at lunch")
    bob.expect_err(notice("you are marked as away; /back when you are back"))
    alice.send("/pm bob one")
    alice.expect_err(notice("bob is away: at lunch"))
    alice.send("/pm bob two")
    bob.expect(private("alice", "two"))
    alice.send("/who")
    alice.expect(rf"^{TS} online \(2\): alice, bob \(away: at lunch\)$")
    assert len(alice.matching(r"bob is away", err=True)) == 1  # the second PM was not answered again
    bob.send("/back")
    bob.expect_err(notice("you are no longer marked as away"))
    alice.send("/who")
    alice.expect(online("alice", "bob"))


def test_search_finds_lines_of_ones_rooms_never_pms_and_takes_syntax_as_words(procs: Processes, broker: Broker) -> None:
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.send('deploy "the build" NEAR(friday) -now*')
    alice.send("/pm bob deploy secret")
    bob.expect(private("alice", "deploy secret"))
    alice.send("/join #ops")
    alice.send("deploy from ops")
    bob.send('/search "deploy" NEAR( -now*')
    bob.expect(rf'^{TS} #general alice: deploy "the build" NEAR\(friday\) -now\*$')
    bob.expect_err(notice("search for \"deploy\" NEAR( -now*: 1 lines"))
    bob.send("/search #ops deploy")
    bob.expect_err(notice("you are not in #ops; join it to search it"))
    bob.send("/search *")
    bob.expect_err(notice("nothing to search for: give words of letters or digits"))
    alice.send("/search deploy")
    alice.expect(rf"^{TS} #ops alice: deploy from ops$")
    alice.expect_err(notice("search for deploy: 2 lines"))
    assert not bob.matching("alice: deploy secret") and not alice.matching("alice: deploy secret")  # PMs never


def test_topics_persist_and_an_old_history_file_is_upgraded_in_place(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    old = sqlite3.connect(db)  # a file as brokers wrote it before the schema had a version
    old.executescript(store.SCHEMA_V1)
    old.execute("INSERT INTO events VALUES ('#general', 1, 1000, 'msg', 'olga', 'an old release note', '', '')")
    old.commit()
    old.close()
    broker = procs.broker(5.0, "--db", str(db))
    alice = procs.join("alice", broker, history=5)
    alice.expect(said("olga", "an old release note"))
    alice.send("/topic release on friday")
    alice.expect(rf"^{TS} alice set the topic of #general: release on friday$")
    alice.close_stdin()
    alice.assert_exit(EXIT_OK)
    assert broker.stop() == 0, broker.context()

    restarted = procs.restart(broker)
    bob = procs.join("bob", restarted)
    bob.send("/rooms")
    bob.expect(rf"^{TS} rooms \(1\): #general \(1\) - release on friday$")
    bob.send("/search release")
    bob.expect(rf"^{TS} #general olga: an old release note$")


def test_a_history_file_of_a_newer_broker_is_refused_clearly(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    newer = sqlite3.connect(db)
    newer.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    newer.execute("CREATE TABLE future (x)")
    newer.commit()
    newer.close()
    before = db.read_bytes()
    broker = procs.process("broker.py", "--port", "0", "--db", str(db))
    assert broker.wait() == 1
    assert broker.matching(r"written by a newer broker", err=True), broker.describe()
    assert db.read_bytes() == before


def test_a_pm_to_someone_offline_is_delivered_on_their_next_join_across_a_restart(
    procs: Processes, tmp_path: Path
) -> None:
    broker = procs.broker(5.0, "--db", str(tmp_path / "chat.db"))
    bob = procs.join("bob", broker)
    bob.close_stdin()
    bob.assert_exit(EXIT_OK)
    alice = procs.join("alice", broker)
    alice.send("/pm nobody hello")
    alice.expect_err(r"^\*\*\* nobody called nobody is online or has been here$")
    alice.send("/pm bob see you monday")
    alice.expect_err(notice("bob is offline: the message waits for them and is delivered when they join"))
    alice.close_stdin()
    alice.assert_exit(EXIT_OK)
    assert broker.stop() == 0, broker.context()

    restarted = procs.restart(broker)
    bob = procs.join("bob", restarted)  # the PRIVATE comes right after the WELCOME: before the join line
    (line,) = bob.matching(rf"^{TS} alice \(private, while you were away\): see you monday$")
    assert sent_at(alice) <= line[:21] <= sent_at(bob)  # the time it was sent, not of its delivery

