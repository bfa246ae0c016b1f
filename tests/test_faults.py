"""What a failing disk does to the broker: full or read-only, a damaged file, a second broker on it.

Without root: a full disk is the broker's own file-size limit (RLIMIT_FSIZE, set on the running broker
by ``prlimit``: every write to the history then fails as on a full disk, and lifting it is the disk
recovering); damage is bytes written over pages of the file. With root (CI), a real small file system
too: a tmpfs in a mount namespace of the test's own, filled up and freed again. A read-only file system
fails SQLite's writes the same way (any write error but ENOSPC is SQLITE_IOERR_WRITE, as EFBIG is
here); Linux refuses to remount one read-only while the broker holds its file open for writing, so that
is not staged for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from chat import protocol as p
from chat.broker.core import Broker, Reply
from chat.broker.history import MemoryHistory, PrivateRecord
from chat.errors import StoreError
from chat.broker.store import SqliteHistory
from conftest import HOST, LISTENING, REPO, START_TIMEOUT, Process, Processes, online, said

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

A, B = b"\x00A", b"\x00B"
T0 = 1_764_190_000.0


# --------------------------------------------------------------------------- the core, on a fake disk


class FlakyHistory(MemoryHistory):
    """A history whose writes fail while ``full`` is set, as SQLite's do on a full disk: nothing of the batch is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self._batch: list[p.Event] = []
        self._private_batch: list[PrivateRecord] = []

    def append(self, event: p.Event, msg_id: str = "") -> None:
        self._batch.append(event)

    def append_private(self, record: PrivateRecord) -> None:
        self._private_batch.append(record)

    def last_private_seq(self, recipient_key: str) -> int:
        pending = [r.message.seq for r in self._private_batch if r.recipient_key == recipient_key]
        return max(pending, default=super().last_private_seq(recipient_key))

    def flush(self) -> None:
        batch, self._batch = self._batch, []
        privates, self._private_batch = self._private_batch, []
        if (batch or privates) and self.full:
            raise StoreError("cannot write the history database (database or disk is full)")
        for record in privates:
            super().append_private(record)
        for event in batch:
            super().append(event)

    def fetch(self, room: str, first: int, last: int) -> list[p.Event]:
        return super().fetch(room, first, last) + [e for e in self._batch if e.room == room and first <= e.seq <= last]


def batch(broker: Broker, *requests: tuple[bytes, p.Message]) -> list[object]:
    """One batch of the server loop: handle each request, then commit (store, then send)."""
    out = []
    for identity, message in requests:
        out += broker.handle(identity, p.encode(message))
    return broker.commit(out)


def replies(out: list[object], identity: bytes) -> list[p.Message]:
    return [item.message for item in out if isinstance(item, Reply) and item.identity == identity]


def test_lines_that_cannot_be_stored_are_refused_and_the_broker_recovers_with_the_disk() -> None:
    history = FlakyHistory()
    warnings: list[str] = []
    broker = Broker(pub_port=1, history=history, clock=lambda: T0, wall_clock=lambda: T0, rate=0, warn=warnings.append)
    batch(broker, (A, p.Join("alice", "t1")), (B, p.Join("bob", "t2")))
    assert batch(broker, (A, p.Say("a-1", "stored", "#general")))[0] == p.Event(3, int(T0 * 1000), "msg", "alice", "stored", "#general")

    history.full = True
    out = batch(
        broker,
        (A, p.Say("a-2", "lost?", "#general")),
        (B, p.Ping()),
        (A, p.Say("a-1", "stored", "#general")),  # a resend of a line stored before: still acknowledged
        (A, p.Say("a-3", "again", "#general")),
    )
    assert [item for item in out if isinstance(item, p.Event)] == [], "nothing unstored is published"
    refused = replies(out, A)
    assert [(e.code, e.ref) for e in refused if isinstance(e, p.Error)] == [(p.STORE_FAILED, "a-2"), (p.STORE_FAILED, "a-3")]
    assert [a for a in refused if isinstance(a, p.Ack)] == [p.Ack("a-1", 3, int(T0 * 1000))]
    assert "disk is full or read-only" in refused[0].reason  # type: ignore[union-attr]
    assert replies(out, B) == [p.Pong({"#general": 3})], "numbers as stored, not as tried"
    # A private message is stored before it is delivered: refused too, and not delivered.
    out = batch(broker, (A, p.Pm("a-4", "bob", "psst")))
    assert [(e.code, e.ref) for e in replies(out, A) if isinstance(e, p.Error)] == [(p.STORE_FAILED, "a-4")]
    assert replies(out, B) == []
    # What needs no disk goes on: who is online, old history.
    out = batch(broker, (B, p.Who()), (B, p.Fetch("#general", 1, 3)))
    assert [m.names for m in replies(out, B) if isinstance(m, p.Roster)] == [["alice", "bob"]]
    assert [len(m.events) for m in replies(out, B) if isinstance(m, p.History)] == [3]
    assert len(warnings) == 1 and "lines are refused" in warnings[0], warnings

    history.full = False
    out = batch(broker, (A, p.Say("a-2", "lost?", "#general")))  # the client's resend of a refused line
    assert out[0] == p.Event(4, int(T0 * 1000), "msg", "alice", "lost?", "#general"), "no gap, no duplicate"
    assert replies(out, A) == [p.Ack("a-2", 4, int(T0 * 1000))]
    assert len(warnings) == 2 and "again" in warnings[1]
    assert [e.text for e in history.fetch("#general", 1, 10)] == ["", "", "stored", "lost?"]
    out = batch(broker, (A, p.Pm("a-4", "bob", "psst")))  # and of the refused private message
    assert [(m.text, m.seq) for m in replies(out, B) if isinstance(m, p.Private)] == [("psst", 1)], "its number given again"
    assert [a.id for a in replies(out, A) if isinstance(a, p.Ack)] == ["a-4"]


def test_a_topic_that_cannot_be_stored_is_not_set() -> None:
    history = FlakyHistory()
    broker = Broker(pub_port=1, history=history, clock=lambda: T0, wall_clock=lambda: T0, rate=0)
    batch(broker, (A, p.Join("alice", "t1")), (A, p.Topic("a-1", "#general", "old")))
    history.full = True
    out = batch(broker, (A, p.Topic("a-2", "#general", "new")), (A, p.Rooms()))
    assert [m.code for m in replies(out, A) if isinstance(m, p.Error)] == [p.STORE_FAILED]
    assert [m.rooms[0]["topic"] for m in replies(batch(broker, (A, p.Rooms())), A) if isinstance(m, p.RoomList)] == ["old"]


def test_a_failed_read_answers_that_request_with_an_error() -> None:
    class DamagedHistory(MemoryHistory):
        def fetch(self, room: str, first: int, last: int) -> list[p.Event]:
            raise StoreError("cannot read the history (database disk image is malformed)")

    broker = Broker(pub_port=1, history=DamagedHistory(), clock=lambda: T0)
    batch(broker, (A, p.Join("alice", "t1")))
    out = batch(broker, (A, p.Fetch("#general", 1, 1)), (A, p.Ping()))
    assert replies(out, A) == [
        p.Error(p.STORE_FAILED, "cannot read the history (database disk image is malformed)", "FETCH"),
        p.Pong({"#general": 1}),
    ]


# --------------------------------------------------------------------------- real brokers, real files


@pytest.fixture
def dealer() -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def request(sock: zmq.Socket, kind: bytes, body: dict[str, object]) -> tuple[bytes, dict[str, object]]:
    sock.send_multipart([p.PROTOCOL_TAG, kind, json.dumps(body).encode()])
    assert sock.poll(5000), f"no answer to {kind!r}"
    _, answer, raw = sock.recv_multipart()
    return answer, json.loads(raw)


def make_history(path: Path, events: int, text: str) -> None:
    history = SqliteHistory(path)
    for seq in range(1, events + 1):
        history.append(p.Event(seq, int(T0 * 1000) + seq, "msg", "old", f"{seq} {text}", "#general"))
    history.close()


def damage(path: Path, first_page: int, pages: int) -> None:
    """Write garbage over ``pages`` pages of the file from ``first_page`` (1 is the header)."""
    page_size = 4096
    with open(path, "r+b") as f:
        f.seek((first_page - 1) * page_size)
        f.write(b"\xa5" * page_size * pages)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="setting another process's file-size limit needs Linux prlimit")
def test_a_full_disk_refuses_lines_keeps_the_broker_up_and_recovers(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    broker = procs.broker(5.0, "--db", str(db))
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.send("stored before")
    bob.expect(said("alice", "stored before"))

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(broker.pid, resource.RLIMIT_FSIZE, (0, limit[1]))  # no file may grow: a full disk
    alice.send("typed on a full disk")
    alice.expect_err(r"^\*\*\* the broker cannot store messages at the moment .*; not sent$")
    alice.send("and again")
    alice.expect_err(r"not sent$")
    bob.send("/who")
    bob.expect(online("alice", "bob"))  # still serving
    broker.expect_err(r"^broker: cannot write the history database .*: lines are refused until")

    resource.prlimit(broker.pid, resource.RLIMIT_FSIZE, limit)  # the disk has room again
    alice.send("stored after")
    bob.expect(said("alice", "stored after"))
    broker.expect_err(r"^broker: the history can be written again")
    assert not bob.matching("full disk|and again"), "a line that was not stored was shown"
    assert len(broker.matching("lines are refused", err=True)) == 1, "said once, not once per line"
    assert broker.stop() == 0

    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq, kind, text FROM events ORDER BY seq").fetchall()
    assert [(seq, text) for seq, kind, text in rows if kind == "msg"] == [(3, "stored before"), (4, "stored after")]
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1)), "numbers without gaps"


@pytest.mark.timeout(30)
def test_a_damaged_database_is_refused_at_start_with_a_clear_message(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    make_history(db, 2000, "x" * 100)
    damage(db, 10, 20)
    broker = procs.process("broker.py", "--host", "127.0.0.1", "--port", "0", "--pub-port", "0", "--db", str(db))
    broker.assert_exit(1)
    assert broker.matching(rf"^broker: cannot use the history database: {re.escape(str(db))} is damaged .*backup", err=True)
    assert not broker.matching("Traceback", err=True)


@pytest.mark.timeout(30)
def test_a_page_damaged_while_the_broker_runs_fails_that_fetch_not_the_broker(
    procs: Processes, tmp_path: Path, dealer: zmq.Socket
) -> None:
    db = tmp_path / "history.db"
    make_history(db, 12_000, "x" * 800)  # 10 MB: far more than SQLite's page cache, so old pages are read again
    broker = procs.broker(5.0, "--db", str(db))
    dealer.connect(broker.endpoint)
    assert request(dealer, b"JOIN", {"name": "reader"})[0] == b"WELCOME"
    damage(db, 10, 200)  # the oldest events, on disk only

    kind, error = request(dealer, b"FETCH", {"room": "#general", "first": 1, "last": 20})
    assert kind == b"ERROR" and error["code"] == "store_failed" and error["ref"] == "FETCH", error
    assert "malformed" in str(error["reason"])
    kind, pong = request(dealer, b"PING", {})
    assert kind == b"PONG" and pong["rooms"] == {"#general": 12_001}
    assert broker.proc.poll() is None


@pytest.mark.timeout(30)
def test_a_second_broker_on_the_same_database_refuses_to_start(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    first = procs.broker(5.0, "--db", str(db))
    alice = procs.join("alice", first)
    second = procs.process("broker.py", "--host", "127.0.0.1", "--port", "0", "--pub-port", "0", "--db", str(db))
    second.assert_exit(1)
    assert second.matching(rf"^broker: cannot use the history database: {re.escape(str(db))} is in use by another broker", err=True)
    bob = procs.join("bob", first)
    alice.send("the first one goes on")
    bob.expect(said("alice", "the first one goes on"))
    assert first.stop() == 0


class MountNamespace:
    """A mount namespace held open by a process of the test, with a small tmpfs on ``disk``: the mount is
    seen only there, and goes with the namespace when the holder ends."""

    def __init__(self, procs: Processes, disk: Path) -> None:
        disk.mkdir()
        self.disk = disk
        prefix = ("unshare", "--mount", "--propagation", "private", "--")
        self.holder = Process("mount namespace", ["-c", "import sys; sys.stdin.read()"], stdin=True, prefix=prefix)
        procs._track(self.holder)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._own():  # until unshare has made the namespace and run the holder in it
            if self.holder.proc.poll() is not None:
                pytest.skip(f"cannot make a mount namespace here: {' '.join(self.holder.err.until_closed(1.0))}")
            assert time.monotonic() < deadline, "the mount namespace never came up"
            time.sleep(0.01)  # a poll with a deadline
        mounted = self.enter("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def _own(self) -> bool:
        try:
            return os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        except FileNotFoundError:  # it has exited
            return False

    def prefix(self) -> tuple[str, ...]:
        return ("nsenter", "-t", str(self.holder.pid), "-m", f"--wd={REPO}", "--")

    def enter(self, *command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.prefix(), *command], capture_output=True, timeout=10)

    def run(self, *command: str) -> None:
        done = self.enter(*command)
        assert done.returncode == 0, f"{command}: {done.stderr.decode()}"


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a file system of the test's own (tmpfs in a mount namespace) needs root and util-linux",
)
def test_a_real_disk_that_fills_up_and_frees_space(procs: Processes, tmp_path: Path) -> None:
    ns = MountNamespace(procs, tmp_path / "disk")
    db = ns.disk / "history.db"
    args = ["broker.py", "--host", HOST, "--port", "0", "--pub-port", "0", "--db", str(db)]
    broker = Process("broker (own disk)", args, stdin=False, prefix=ns.prefix())
    procs._track(broker)
    port = int(broker.expect(LISTENING, START_TIMEOUT)["port"])

    alice = procs.client("alice", port, "--history", "0")
    bob = procs.client("bob", port, "--history", "0")
    for client in (alice, bob):
        client.expect_err(r"^\*\*\* joined as ")
    alice.send("stored first")
    bob.expect(said("alice", "stored first"))

    ns.enter("dd", "if=/dev/zero", f"of={ns.disk / 'filler'}", "bs=64k")  # fails when the disk is full
    alice.send("on a full disk")
    alice.expect_err(r"not sent$")
    broker.expect_err(r"^broker: cannot write the history database .*full")
    ns.run("rm", str(ns.disk / "filler"))
    alice.send("stored second")
    bob.expect(said("alice", "stored second"))
    broker.expect_err(r"^broker: the history can be written again")

    bob.send("/who")
    bob.expect(online("alice", "bob"))
    assert not bob.matching("full disk")
    assert broker.proc.poll() is None
