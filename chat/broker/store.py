"""The broker's one store: public events, private messages, topics, sessions, name owners and the
search index, in one SQLite file (WAL), written in batches.

The broker appends events while it handles a batch of requests and calls ``flush`` once before it sends
anything: one transaction per batch, and nothing is acknowledged or published before it is on disk. WAL
with ``synchronous=NORMAL`` keeps every committed transaction through a crash of the broker process
(SIGKILL); only a power cut can lose the last ones.

The file is locked for the broker's lifetime (SQLite's exclusive locking mode): a second broker on the
same file refuses at start instead of numbering the same events. A failed write (disk full, read-only
file system) raises ``StoreError`` and forgets the batch, so that the broker can refuse it and go on;
the next batch tries again, which is how the store recovers when the disk does.

The schema is versioned with ``PRAGMA user_version``: a file of an older version is upgraded in place
(each step in one transaction, so a failed upgrade leaves the file as it was), and a file written by a
newer broker is refused, never touched.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from chat import protocol as p
from chat.broker.history import RECENT_ACKS, SEARCHED_KINDS, Found, PrivateRecord, SessionRecord, search_words
from chat.errors import StoreError

# Version 1: the schema before it was versioned (user_version 0 in those files, the same tables).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    sender_key TEXT NOT NULL DEFAULT '',
    msg_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (name_key TEXT PRIMARY KEY, public_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS private (
    recipient_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    name TEXT NOT NULL,
    recipient TEXT NOT NULL,
    text TEXT NOT NULL,
    sender_key TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    PRIMARY KEY (recipient_key, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_sender ON events (sender_key, ts) WHERE sender_key != '';
CREATE INDEX IF NOT EXISTS private_by_sender ON private (sender_key, ts);
CREATE TABLE IF NOT EXISTS sessions (
    name_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    rooms TEXT NOT NULL,
    public_key TEXT NOT NULL,
    last_room TEXT NOT NULL
) WITHOUT ROWID;
"""
# Version 2: topics that outlive a restart, the full-text index of lines, actions and topics (rows to
# index are noted with the batch, ``search_rows``; the index itself, contentless FTS5 keyed by their id,
# is filled when the broker is idle, and before a search: off the path of lines), the names
# that have joined (to whom a PM can be queued), and private messages queued for someone offline: in
# ``private``, numbered in the recipient's sequence, marked ``queued`` (and ``for_key``: only the key that
# owned the name when it was sent may have them) until that name next joins.
SCHEMA_V2 = f"""
CREATE TABLE topics (room TEXT PRIMARY KEY, text TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE known (name_key TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO known SELECT DISTINCT sender_key, name FROM events WHERE sender_key != '';
ALTER TABLE private ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
ALTER TABLE private ADD COLUMN for_key TEXT NOT NULL DEFAULT '';
CREATE INDEX private_queued ON private (recipient_key, seq) WHERE queued = 1;
CREATE INDEX private_queued_by_sender ON private (sender_key) WHERE queued = 1;
CREATE TABLE search_rows (id INTEGER PRIMARY KEY, room TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE VIRTUAL TABLE search USING fts5(text, content = '', columnsize = 0, tokenize = 'unicode61');
INSERT INTO search_rows (room, seq)
    SELECT room, seq FROM events WHERE kind IN ({", ".join(repr(k) for k in SEARCHED_KINDS)}) ORDER BY ts, room, seq;
INSERT OR REPLACE INTO meta VALUES ('indexed_upto', '0');
"""
MIGRATIONS = (SCHEMA_V1, SCHEMA_V2)  # MIGRATIONS[n] takes a file from version n to n + 1
SCHEMA_VERSION = len(MIGRATIONS)
SEARCH_BUDGET = 0.25  # seconds one search may take before it is cut short
SEARCH_CHECK_EVERY = 10_000  # SQLite steps between looks at the clock during a search
INDEX_WHEN_IDLE = 500  # lines indexed at a time while the broker has nothing else to do (a few ms)
INDEX_BEFORE_SEARCH = 20_000  # lines indexed at most before a search (the newest beyond: not found yet)
LOCK_WAIT = 1.0  # seconds a starting broker waits for the file's lock (a broker that is still stopping)


class SqliteHistory:
    """A ``History`` (see ``chat.broker.history``) kept in an SQLite file."""

    def __init__(self, path: str | Path, index: bool = True) -> None:
        self.path = str(path)
        self.index = index  # False (--no-search-index): new lines are not indexed for search
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=LOCK_WAIT)
            # Before the first access: the lock is then taken at once and kept, and WAL needs no -shm file.
            self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._check_version()  # before WAL mode, which would write to a file we must not touch
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("BEGIN EXCLUSIVE")  # take the write lock now, not at the first line
            self.db.execute("COMMIT")
            self._check_integrity()
            self._migrate()
            row = self.db.execute("SELECT value FROM meta WHERE key = 'history_id'").fetchone()
            if row is None:
                self.history_id = secrets.token_hex(8)
                self.db.execute("INSERT INTO meta VALUES ('history_id', ?)", (self.history_id,))
            else:
                self.history_id = row[0]
            self._indexed = int(self.db.execute("SELECT value FROM meta WHERE key = 'indexed_upto'").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StoreError(f"{self.path} is in use by another broker (the file is locked)") from None
            raise StoreError(f"{self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self._pending: list[tuple[p.Event, str]] = []
        self._pending_private: list[PrivateRecord] = []
        self._sessions: dict[str, SessionRecord | None] = {}  # name key -> to keep, or None: to drop
        self._owners: dict[str, str] = {}  # name owners set in this batch, written with its events
        self._topics: dict[str, str] = {}  # topics set in this batch
        self._known: dict[str, str] = {}  # names that joined in this batch
        self._delivered: list[tuple[str, str, str, int]] = []  # queued ones delivered: (token hash, recipient key, for key, up to seq)
        self._last: dict[str, int] = {}
        self._last_private: dict[str, int] = {}

    def _check_integrity(self) -> None:
        """A damaged file is refused at start rather than failing on some later read."""
        try:
            problems = [" ".join(row[0].split()) for row in self.db.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            raise StoreError(
                f"{self.path} is damaged ({'; '.join(problems)}); restore it from a backup, "
                "or move it away to start a new history"
            )

    def _check_version(self) -> None:
        """Refuse a file of a newer broker: this one cannot know what its tables mean."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer broker (schema version {version}; this one knows up to "
                f"{SCHEMA_VERSION}): run that broker, or give this one another --db; the file is left as it is"
            )

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, one step per transaction."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version, SCHEMA_VERSION):
            try:
                self.db.executescript(f"BEGIN; {MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;")
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def last_seq(self, room: str) -> int:
        if room not in self._last:
            row = self._read("SELECT MAX(seq) FROM events WHERE room = ?", (room,))[0]
            self._last[room] = row[0] or 0
        return self._last[room]

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """Rows of a query; a failed read (a damaged page) is a ``StoreError``, never a crash."""
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the history ({exc})") from None

    def append(self, event: p.Event, msg_id: str = "") -> None:
        self._pending.append((event, msg_id))
        self._last[event.room] = event.seq

    def flush(self) -> None:
        """Write what was appended since the last flush, in one transaction.

        When that fails, none of its events and private messages are kept (``StoreError``): the caller
        refuses them. Who is online and who owns a name are written again with the next batch."""
        if not (
            self._pending or self._pending_private or self._sessions or self._owners or self._topics
            or self._known or self._delivered
        ):
            return
        rows = [
            (e.room, e.seq, e.ts, e.kind, e.name, e.text, p.name_key(e.name) if msg_id else "", msg_id)
            for e, msg_id in self._pending
        ]
        private_rows = [
            (r.recipient_key, r.message.seq, r.message.ts, r.message.name, r.message.to, r.message.text,
             r.sender_key, r.msg_id, r.token_hash, int(r.queued), r.for_key)
            for r in self._pending_private
        ]
        kept = [
            (r.name_key, r.name, r.token_hash, json.dumps(r.rooms), r.key, r.last_room)
            for r in self._sessions.values()
            if r is not None
        ]
        dropped = [(key,) for key, r in self._sessions.items() if r is None]
        searched = [(e.room, e.seq) for e, _ in self._pending if e.kind in SEARCHED_KINDS and self.index]
        try:
            with self.db:  # BEGIN ... COMMIT, or ROLLBACK
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self.db.executemany("INSERT INTO private VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", private_rows)
                self.db.executemany(
                    "UPDATE private SET queued = 0, token_hash = ? WHERE recipient_key = ? AND queued = 1"
                    " AND for_key IN ('', ?) AND seq <= ?",
                    self._delivered,
                )
                self.db.executemany("INSERT OR REPLACE INTO known VALUES (?, ?)", self._known.items())
                self.db.executemany("DELETE FROM sessions WHERE name_key = ?", dropped)
                self.db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?)", kept)
                self.db.executemany("INSERT OR REPLACE INTO owners VALUES (?, ?)", self._owners.items())
                self.db.executemany("INSERT INTO search_rows (room, seq) VALUES (?, ?)", searched)
                self.db.executemany("INSERT OR REPLACE INTO topics VALUES (?, ?)", self._topics.items())
        except sqlite3.Error as exc:
            for event, _ in self._pending:
                self._last.pop(event.room, None)  # read again from what is stored
            for record in self._pending_private:
                self._last_private.pop(record.recipient_key, None)
            raise StoreError(f"cannot write the history database {self.path} ({exc})") from None
        finally:
            self._pending.clear()
            self._pending_private.clear()
            self._topics.clear()  # the broker puts back the topics of a refused batch itself
            self._delivered.clear()  # still queued: delivered again on the next join
        self._known.clear()
        self._sessions.clear()
        self._owners.clear()

    def forget(self, room: str) -> None:
        """Drop the cached last seq of a room (its events stay on disk); not while some wait to be written."""
        if not any(event.room == room for event, _ in self._pending):
            self._last.pop(room, None)

    def fetch(self, room: str, first: int, last: int) -> list[p.Event]:
        rows = self._read(
            "SELECT seq, ts, kind, name, text FROM events WHERE room = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            (room, first, last),
        )
        events = [p.Event(seq=s, ts=t, kind=k, name=n, text=x, room=room) for s, t, k, n, x in rows]
        events += [e for e, _ in self._pending if e.room == room and first <= e.seq <= last]
        return events

    def recent_acks(self, sender_key: str, limit: int = RECENT_ACKS) -> list[p.Ack]:
        """The last ``limit`` ACKs of one user (lines, topics and private messages), oldest first."""
        rows = self._read(
            "SELECT * FROM ("
            " SELECT msg_id, seq, ts FROM events WHERE sender_key = ? ORDER BY ts DESC, seq DESC LIMIT ?)"
            " UNION ALL SELECT * FROM ("
            " SELECT msg_id, 0, ts FROM private WHERE sender_key = ? AND msg_id != '' ORDER BY ts DESC, seq DESC LIMIT ?)",
            (sender_key, limit, sender_key, limit),
        )
        rows.sort(key=lambda row: row[2])
        return [p.Ack(msg_id, seq, ts) for msg_id, seq, ts in rows[-limit:]]

    def last_private_seq(self, recipient_key: str) -> int:
        if recipient_key not in self._last_private:
            row = self._read("SELECT MAX(seq) FROM private WHERE recipient_key = ?", (recipient_key,))[0]
            self._last_private[recipient_key] = row[0] or 0
        return self._last_private[recipient_key]

    def append_private(self, record: PrivateRecord) -> None:
        self._pending_private.append(record)
        self._last_private[record.recipient_key] = record.message.seq

    def privates_after(self, recipient_key: str, after: int, hashed_token: str, limit: int) -> list[p.Private]:
        rows = self._read(
            "SELECT name, recipient, text, ts, seq FROM private"
            " WHERE recipient_key = ? AND seq > ? AND token_hash = ? ORDER BY seq LIMIT ?",
            (recipient_key, after, hashed_token, limit),
        )
        found = [p.Private(name, to, text, ts, seq) for name, to, text, ts, seq in rows]
        found += [
            r.message
            for r in self._pending_private
            if r.recipient_key == recipient_key and r.message.seq > after and r.token_hash == hashed_token
        ]
        return found[:limit]

    def _value(self, batch: dict[str, str], sql: str, key: str) -> str:
        """A value set in this batch, or else the stored one ("" when none): names, owners, topics."""
        if key in batch:
            return batch[key]
        rows = self._read(sql, (key,))
        return rows[0][0] if rows else ""

    def known_name(self, name_key: str) -> str:
        return self._value(self._known, "SELECT name FROM known WHERE name_key = ?", name_key)

    def mark_known(self, name_key: str, name: str) -> None:
        self._known[name_key] = name

    def queued_counts(self, recipient_key: str, sender_key: str) -> tuple[int, int]:
        to_them = self._read("SELECT COUNT(*) FROM private WHERE recipient_key = ? AND queued = 1", (recipient_key,))
        from_them = self._read("SELECT COUNT(*) FROM private WHERE sender_key = ? AND queued = 1", (sender_key,))
        pending = [r for r in self._pending_private if r.queued]
        return (
            to_them[0][0] + sum(r.recipient_key == recipient_key for r in pending),
            from_them[0][0] + sum(r.sender_key == sender_key for r in pending),
        )

    def deliver_queued(self, recipient_key: str, public_key: str, hashed_token: str, limit: int) -> list[p.Private]:
        rows = self._read(
            "SELECT name, recipient, text, ts, seq FROM private WHERE recipient_key = ? AND queued = 1"
            " AND for_key IN ('', ?) ORDER BY seq LIMIT ?",
            (recipient_key, public_key, limit),
        )
        found = [p.Private(name, to, text, ts, seq, queued=True) for name, to, text, ts, seq in rows]
        if found:
            self._delivered.append((hashed_token, recipient_key, public_key, found[-1].seq))
        return found

    def name_owner(self, name_key: str) -> str:
        return self._value(self._owners, "SELECT public_key FROM owners WHERE name_key = ?", name_key)

    def set_name_owner(self, name_key: str, public_key: str) -> None:
        self._owners[name_key] = public_key  # written with the batch (flush), like its events

    def keep_session(self, record: SessionRecord) -> None:
        self._sessions[record.name_key] = record

    def drop_session(self, name_key: str) -> None:
        self._sessions[name_key] = None

    def open_sessions(self) -> list[SessionRecord]:
        rows = self._read("SELECT name_key, name, token_hash, rooms, public_key, last_room FROM sessions", ())
        return [SessionRecord(k, n, t, tuple(json.loads(r)), pk, lr) for k, n, t, r, pk, lr in rows]

    def topic(self, room: str) -> str:
        return self._value(self._topics, "SELECT text FROM topics WHERE room = ?", room)

    def set_topic(self, room: str, text: str) -> None:
        self._topics[room] = text  # written with the batch, like the topic event

    def idle(self) -> None:
        """Index a few more lines (the broker has nothing else to do)."""
        self.index_some(INDEX_WHEN_IDLE)

    def index_some(self, lines: int) -> int:
        """Index up to ``lines`` stored lines not indexed yet; how many it did."""
        rows = self._read(
            "SELECT r.id, e.text FROM search_rows r JOIN events e ON e.room = r.room AND e.seq = r.seq"
            " WHERE r.id > ? ORDER BY r.id LIMIT ?",
            (self._indexed, lines),
        )
        if not rows:
            return 0
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO search (rowid, text) VALUES (?, ?)", rows)
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'indexed_upto'", (str(rows[-1][0]),))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the search index of {self.path} ({exc})") from None
        self._indexed = rows[-1][0]
        return len(rows)

    def search(self, text: str, rooms: list[str], before: int, limit: int) -> Found:
        """Newest first; every word of ``text`` must be in the line (as words: FTS5's syntax is quoted)."""
        words = search_words(text)
        if not words or not rooms:
            return Found([], 0)
        self.index_some(INDEX_BEFORE_SEARCH)
        query = " ".join(f'"{word}"' for word in words)  # \w+ words: no quote inside to escape
        marks = ", ".join("?" for _ in rooms)
        sql = (
            f"SELECT s.rowid, e.room, e.seq, e.ts, e.kind, e.name, e.text FROM search s"
            f" JOIN search_rows r ON r.id = s.rowid JOIN events e ON e.room = r.room AND e.seq = r.seq"
            f" WHERE search MATCH ? AND s.rowid < ? AND r.room IN ({marks}) ORDER BY s.rowid DESC LIMIT ?"
        )
        deadline = time.monotonic() + SEARCH_BUDGET
        self.db.set_progress_handler(_past(deadline), SEARCH_CHECK_EVERY)
        try:
            rows = self.db.execute(sql, (query, before or 2**62, *rooms, limit + 1)).fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise StoreError("the search took too long; add words or name a room") from None
            raise StoreError(f"cannot search the history ({exc})") from None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot search the history ({exc})") from None
        finally:
            self.db.set_progress_handler(None, 0)
        events = [p.Event(seq=q, ts=t, kind=k, name=n, text=x, room=r) for _, r, q, t, k, n, x in rows[:limit]]
        return Found(events, rows[limit - 1][0] if len(rows) > limit else 0)

    def close(self) -> None:
        self.flush()
        self.db.close()


def _past(deadline: float) -> Callable[[], int]:
    """A progress handler that interrupts a query once ``deadline`` (monotonic) has passed."""
    return lambda: int(time.monotonic() > deadline)
