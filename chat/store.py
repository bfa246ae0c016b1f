"""Persistent history: every public event in SQLite (WAL), written in batches.

The broker appends events while it handles a batch of requests and calls ``flush`` once before it sends
anything: one transaction per batch, and nothing is acknowledged or published before it is on disk. WAL
with ``synchronous=NORMAL`` keeps every committed transaction through a crash of the broker process
(SIGKILL); only a power cut can lose the last ones.

The file is locked for the broker's lifetime (SQLite's exclusive locking mode): a second broker on the
same file refuses at start instead of numbering the same events. A failed write (disk full, read-only
file system) raises ``StoreError`` and forgets the batch, so that the broker can refuse it and go on;
the next batch tries again, which is how the store recovers when the disk does.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any

from chat import protocol as p
from chat.errors import StoreError

SCHEMA = """
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
"""
RECENT_IDS = 20_000  # acknowledged ids loaded at start, so that resends after a restart are recognised
LOCK_WAIT = 1.0  # seconds a starting broker waits for the file's lock (a broker that is still stopping)


class SqliteHistory:
    """A ``History`` (see ``chat.broker.history``) kept in an SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=LOCK_WAIT)
            # Before the first access: the lock is then taken at once and kept, and WAL needs no -shm file.
            self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("BEGIN EXCLUSIVE")  # take the write lock now, not at the first line
            self.db.execute("COMMIT")
            self._check_integrity()
            self.db.executescript(SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key = 'history_id'").fetchone()
            if row is None:
                self.history_id = secrets.token_hex(8)
                self.db.execute("INSERT INTO meta VALUES ('history_id', ?)", (self.history_id,))
            else:
                self.history_id = row[0]
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StoreError(f"{self.path} is in use by another broker (the file is locked)") from None
            raise StoreError(f"{self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self._pending: list[tuple[p.Event, str]] = []
        self._owners: dict[str, str] = {}  # name owners set in this batch, written with its events
        self._last: dict[str, int] = {}

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

        When that fails, nothing of it is kept (``StoreError``): the caller refuses the batch."""
        if not self._pending and not self._owners:
            return
        rows = [
            (e.room, e.seq, e.ts, e.kind, e.name, e.text, p.name_key(e.name) if msg_id else "", msg_id)
            for e, msg_id in self._pending
        ]
        try:
            with self.db:  # BEGIN ... COMMIT, or ROLLBACK
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self.db.executemany("INSERT OR REPLACE INTO owners VALUES (?, ?)", self._owners.items())
        except sqlite3.Error as exc:
            for event, _ in self._pending:
                self._last.pop(event.room, None)  # read again from what is stored
            raise StoreError(f"cannot write the history database {self.path} ({exc})") from None
        finally:
            self._pending.clear()
            self._owners.clear()

    def fetch(self, room: str, first: int, last: int) -> list[p.Event]:
        rows = self._read(
            "SELECT seq, ts, kind, name, text FROM events WHERE room = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            (room, first, last),
        )
        events = [p.Event(seq=s, ts=t, kind=k, name=n, text=x, room=room) for s, t, k, n, x in rows]
        events += [e for e, _ in self._pending if e.room == room and first <= e.seq <= last]
        return events

    def recent_acks(self, limit: int = RECENT_IDS) -> list[tuple[str, p.Ack]]:
        """(sender key, ACK) of the most recent acknowledged lines, oldest first."""
        rows = self._read(
            "SELECT sender_key, msg_id, seq, ts FROM events WHERE msg_id != '' ORDER BY ts DESC LIMIT ?", (limit,)
        )
        return [(key, p.Ack(msg_id, seq, ts)) for key, msg_id, seq, ts in reversed(rows)]

    def name_owner(self, name_key: str) -> str:
        if name_key in self._owners:
            return self._owners[name_key]
        rows = self._read("SELECT public_key FROM owners WHERE name_key = ?", (name_key,))
        return rows[0][0] if rows else ""

    def set_name_owner(self, name_key: str, public_key: str) -> None:
        self._owners[name_key] = public_key  # written with the batch (flush), like its events

    def close(self) -> None:
        self.flush()
        self.db.close()
