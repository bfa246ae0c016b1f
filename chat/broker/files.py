"""File sharing on the broker: a content-addressed store, uploads in chunks, downloads in chunks.

The store is a folder beside the history::

    objects/<sha256>      a complete file, named by its SHA-256 (one copy, however often it is offered)
    partial/<sha256>      an upload in progress; kept across a broker restart, so that it resumes
    index.json            the offered files: number, name, size, sender, for whom; and the next number

An upload is ``OFFER`` (refused before any byte when over ``max_file_size`` or what ``quota`` can hold),
then ``PUT`` chunks, each checked (offset, size, CRC-32) and acknowledged with ``PUT_ACK``, so that a
client resends only what was not acknowledged. When the last byte is in and the SHA-256 matches, the
partial file becomes an object and the offer goes out: a ``file`` event in a room, or a ``PRIVATE`` to
the user. A partial that hears nothing for ``upload_timeout`` is removed.

A download is any number of ``GET`` requests, each for one chunk; the client keeps a few in flight (the
ZeroMQ Guide's credit-based file transfer, chapter 7): the broker holds no state per download, so a
slow downloader costs it no memory and a restart costs the downloader nothing but a resend.

File bytes go only over the ROUTER, to whoever asks and is allowed: never on the PUB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from chat import protocol as p
from chat.errors import RemoteProtocolError

if TYPE_CHECKING:  # the core hands itself in; no import cycle at run time
    from chat.broker.core import Broker, Outgoing, Session

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 100 * 1000**2  # --max-file-size
FILE_QUOTA = 2 * 1000**3  # --file-quota: all stored and partial files together
FILE_DAYS = 7.0  # --file-days: a file older than this is removed
UPLOAD_TIMEOUT = 60.0  # seconds an upload may stay silent before its partial data is removed
SWEEP_EVERY = 5.0  # seconds between looks for expired files and silent uploads
HASH_BLOCK = 1024 * 1024  # bytes read at a time to hash a partial file again after a restart
_SUFFIXES = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(text: str) -> int:
    """A byte count as typed on a command line: ``1048576``, ``100M``, ``2G``, ``512k`` (powers of 1000;
    ``KiB``-style ``Ki``, ``Mi``, ``Gi`` are powers of 1024). Raises ValueError."""
    text = text.strip().upper().removesuffix("B")
    binary = text.endswith("I")
    text = text.removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _SUFFIXES else (text, "")
    if binary and not unit:
        raise ValueError(text)
    factor = 1024 ** ("KMGT".index(unit) + 1) if binary else _SUFFIXES[unit]
    value = float(number)
    if value < 0 or value != value:
        raise ValueError(text)
    return int(value * factor)


@dataclass
class StoredFile:
    """One offer of a complete file, as index.json keeps it."""

    number: int
    sha256: str
    name: str  # safe_file_name of what the sender called it
    size: int
    sender: str
    created: float
    to: str = ""  # the recipient's name key (a private file), or ""
    to_key: str = ""  # the recipient's CURVE key where names belong to keys
    room: str = ""  # the room (a room's file), or ""


@dataclass
class Upload:
    """An upload in progress: bytes arrive in order into its partial file."""

    number: int
    offer_id: str
    owner: str  # the uploader's name key: its next connection (after a reconnect) carries on
    offer: p.Offer
    name: str
    handle: BinaryIO
    hasher: "hashlib._Hash"
    have: int
    last_heard: float
    to: str = ""
    to_key: str = ""
    room: str = ""


class FileStore:
    """The files on disk and their index; every decision about them is in ``FileService``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.objects = folder / "objects"
        self.partial = folder / "partial"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        self.index_path = folder / "index.json"
        self.files: dict[int, StoredFile] = {}
        self.next_number = 1
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.index_path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("file index %s unreadable (%s): starting with no files", self.index_path, exc)
            return
        try:
            self.next_number = int(raw.get("next", 1))
            entries = [StoredFile(**entry) for entry in raw.get("files", [])]
        except (AttributeError, TypeError, ValueError) as exc:
            log.warning("file index %s not understood (%s): starting with no files", self.index_path, exc)
            return
        for stored in entries:
            if p.SHA256_HEX.fullmatch(stored.sha256) and self.object_path(stored.sha256).exists():
                self.files[stored.number] = stored

    def save(self) -> None:
        """Write the index: to a temporary file, then renamed over the old one (never half written)."""
        body = json.dumps({"next": self.next_number, "files": [asdict(f) for f in self.files.values()]})
        fd, temp = tempfile.mkstemp(dir=self.folder, prefix=".index-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(body)
            os.replace(temp, self.index_path)
        except OSError:
            Path(temp).unlink(missing_ok=True)
            raise

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256

    def partial_path(self, sha256: str) -> Path:
        return self.partial / sha256

    def used(self, uploads: list[Upload]) -> int:
        """Bytes the store holds or has promised: each object once, and every upload's full size."""
        sizes = {f.sha256: f.size for f in self.files.values()}
        return sum(sizes.values()) + sum(u.offer.size for u in uploads if u.offer.sha256 not in sizes)

    def forget(self, number: int) -> None:
        """Remove an offer; its object goes when no other offer shares it."""
        stored = self.files.pop(number)
        if not any(f.sha256 == stored.sha256 for f in self.files.values()):
            self.object_path(stored.sha256).unlink(missing_ok=True)


class FileService:
    """The broker's decisions about files. ``handle`` answers OFFER, PUT and GET of a joined session."""

    def __init__(
        self,
        folder: Path,
        *,
        max_file_size: int = MAX_FILE_SIZE,
        quota: int = FILE_QUOTA,
        days: float = FILE_DAYS,
        upload_timeout: float = UPLOAD_TIMEOUT,
        temporary: bool = False,
    ) -> None:
        self.store = FileStore(folder)
        self.max_file_size = max_file_size
        self.quota = quota
        self.max_age = days * 86400
        self.upload_timeout = upload_timeout
        self.temporary = temporary  # a folder of its own (--db :memory:): removed on close
        self.uploads: dict[int, Upload] = {}
        self._next_sweep = 0.0
        self.sweep_every = min(SWEEP_EVERY, upload_timeout / 2)

    # ------------------------------------------------------------------ entry points

    def handle(self, broker: Broker, session: Session, message: p.Message, data: bytes, now: float) -> list[Outgoing]:
        if isinstance(message, p.Offer):
            return self._offer(broker, session, message, now)
        if isinstance(message, p.Put):
            return self._put(broker, session, message, data, now)
        assert isinstance(message, p.Get)
        return self._get(broker, session, message)

    def sweep(self, now: float) -> None:
        """Remove files past their age, silent uploads and partial files nobody is sending."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_every
        old = [n for n, f in self.store.files.items() if f.created < now - self.max_age]
        for number in old:
            self.store.forget(number)
        if old:
            self._save()
        for upload in [u for u in self.uploads.values() if u.last_heard < now - self.upload_timeout]:
            log.info("upload of file %d (%s) silent for %g s: removed", upload.number, upload.name, self.upload_timeout)
            self._drop(upload)
        busy = {u.offer.sha256 for u in self.uploads.values()}
        for part in self.store.partial.iterdir():
            try:
                if part.name not in busy and part.stat().st_mtime < now - self.upload_timeout:
                    part.unlink()
            except OSError as exc:
                log.warning("could not remove the partial file %s: %s", part, exc)

    def close(self) -> None:
        for upload in self.uploads.values():
            upload.handle.close()  # the partial stays: the upload resumes after a restart
        self.uploads.clear()
        if self.temporary:
            shutil.rmtree(self.store.folder, ignore_errors=True)

    # ------------------------------------------------------------------ uploads

    def _offer(self, broker: Broker, session: Session, offer: p.Offer, now: float) -> list[Outgoing]:
        from chat.broker.core import Reply

        name = p.safe_file_name(offer.name)
        to, to_key, room = self._audience(broker, session, offer.to)
        if offer.size > self.max_file_size:
            raise RemoteProtocolError(
                p.FILE_TOO_LARGE,
                f"{name} is {p.file_size_text(offer.size)}: this broker takes files of up to "
                f"{p.file_size_text(self.max_file_size)} (--max-file-size)",
            )
        for upload in list(self.uploads.values()):
            if upload.offer.sha256 == offer.sha256:
                if upload.owner != session.name_key:
                    raise RemoteProtocolError(
                        p.FILE_REFUSED, f"{name} is being uploaded by someone else; offer it again once that is done"
                    )
                upload.handle.close()  # the same user again (a reconnect): carry on where it was
                del self.uploads[upload.number]
        stored = self.store.object_path(offer.sha256)
        if stored.exists() and stored.stat().st_size == offer.size:  # those bytes are here already
            self._make_room(offer, name, exclude=offer.sha256)
            return self._publish(broker, session, self._new_stored(session, offer, name, to, to_key, room, now), offer.id)
        self._make_room(offer, name)
        if offer.size == 0:
            stored.touch()
            return self._publish(broker, session, self._new_stored(session, offer, name, to, to_key, room, now), offer.id)
        upload = self._open_upload(session, offer, name, to, to_key, room, now)
        self.uploads[upload.number] = upload
        return [Reply(session.identity, p.Uploading(offer.id, upload.number, upload.have))]

    def _audience(self, broker: Broker, session: Session, to: str) -> tuple[str, str, str]:
        """(recipient name key, its key, room) of an offer; refused when nobody may be offered it."""
        if to.startswith("#"):
            room = p.room_key(to)
            if room not in session.rooms:
                raise RemoteProtocolError(p.NO_SUCH_ROOM, f"you are not in {room}")
            return "", "", room
        target = broker.names.get(p.name_key(to))
        if target is None:
            raise RemoteProtocolError(p.NO_SUCH_USER, f"nobody called {p.neutralise(to)} is online")
        return target.name_key, target.key, ""

    def _make_room(self, offer: p.Offer, name: str, exclude: str = "") -> None:
        """Room for ``offer`` within the quota: the oldest stored files go first; refused if it cannot fit."""
        if exclude:
            return  # its bytes are stored already: it costs nothing more
        if offer.size > self.quota:
            raise RemoteProtocolError(
                p.FILE_TOO_LARGE,
                f"{name} is {p.file_size_text(offer.size)}: this broker keeps at most "
                f"{p.file_size_text(self.quota)} of files (--file-quota)",
            )
        uploads = list(self.uploads.values())
        removed = False
        while self.store.used(uploads) + offer.size > self.quota and self.store.files:
            oldest = min(self.store.files.values(), key=lambda f: (f.created, f.number))
            self.store.forget(oldest.number)
            removed = True
        if removed:
            self._save()
        if self.store.used(uploads) + offer.size > self.quota:
            raise RemoteProtocolError(
                p.FILE_TOO_LARGE,
                f"the broker's file store is full for now (--file-quota {p.file_size_text(self.quota)}, "
                "taken by uploads in progress); try again later",
            )

    def _open_upload(
        self, session: Session, offer: p.Offer, name: str, to: str, to_key: str, room: str, now: float
    ) -> Upload:
        """A new upload, or the one a restart or a lost connection cut: its partial file's bytes count."""
        path = self.store.partial_path(offer.sha256)
        hasher = hashlib.sha256()
        try:
            handle = open(path, "a+b")  # noqa: SIM115 - kept open for the upload's life
            handle.seek(0)
            have = 0
            while block := handle.read(HASH_BLOCK):
                hasher.update(block)
                have += len(block)
            if have > offer.size:  # not this file after all: start again
                handle.truncate(0)
                hasher, have = hashlib.sha256(), 0
        except OSError as exc:
            raise RemoteProtocolError(p.FILE_NOT_STORED, f"the broker cannot store {name}: {exc.strerror}") from None
        number = self.store.next_number
        self.store.next_number += 1
        return Upload(number, offer.id, session.name_key, offer, name, handle, hasher, have, now, to, to_key, room)

    def _put(self, broker: Broker, session: Session, put: p.Put, data: bytes, now: float) -> list[Outgoing]:
        from chat.broker.core import Reply

        upload = self.uploads.get(put.file)
        if upload is None or upload.owner != session.name_key or upload.offer_id != put.id:
            raise RemoteProtocolError(p.NO_SUCH_FILE, f"no upload {put.file} of yours is open: send OFFER again")
        if put.offset != upload.have:
            # Not an error the uploader must see: say where the broker is, it goes on from there.
            return [Reply(session.identity, p.PutAck(put.id, put.file, upload.have))]
        if not data or put.offset + len(data) > upload.offer.size:
            raise RemoteProtocolError(
                p.BAD_CHUNK, f"a chunk of 1 to {upload.offer.size - upload.have} bytes was due at {upload.have}"
            )
        if zlib.crc32(data) != put.crc32:
            raise RemoteProtocolError(p.BAD_CHUNK, f"the chunk at {put.offset} does not match its crc32: send it again")
        upload.last_heard = now
        try:
            upload.handle.write(data)
            upload.handle.flush()  # on disk (the OS's cache) before it is acknowledged
        except OSError as exc:
            self._drop(upload)
            raise RemoteProtocolError(
                p.FILE_NOT_STORED,
                f"the broker could not store {upload.name} ({exc.strerror or exc}); nothing of it was kept",
            ) from None
        upload.hasher.update(data)
        upload.have += len(data)
        if upload.have < upload.offer.size:
            return [Reply(session.identity, p.PutAck(put.id, put.file, upload.have))]
        return self._finish(broker, session, upload, now)

    def _finish(self, broker: Broker, session: Session, upload: Upload, now: float) -> list[Outgoing]:
        upload.handle.close()
        del self.uploads[upload.number]
        path = self.store.partial_path(upload.offer.sha256)
        if upload.hasher.hexdigest() != upload.offer.sha256:
            path.unlink(missing_ok=True)
            raise RemoteProtocolError(
                p.BAD_CHUNK, f"{upload.name} arrived with another SHA-256 than offered; nothing was kept"
            )
        try:
            os.replace(path, self.store.object_path(upload.offer.sha256))
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise RemoteProtocolError(p.FILE_NOT_STORED, f"the broker could not store {upload.name}: {exc.strerror}") from None
        stored = StoredFile(
            upload.number, upload.offer.sha256, upload.name, upload.offer.size, session.name, now,
            upload.to, upload.to_key, upload.room,
        )
        return self._publish(broker, session, stored, upload.offer_id)

    def _new_stored(
        self, session: Session, offer: p.Offer, name: str, to: str, to_key: str, room: str, now: float
    ) -> StoredFile:
        number = self.store.next_number
        self.store.next_number += 1
        return StoredFile(number, offer.sha256, name, offer.size, session.name, now, to, to_key, room)

    def _publish(self, broker: Broker, session: Session, stored: StoredFile, offer_id: str) -> list[Outgoing]:
        """Keep the file and offer it: a ``file`` event in its room, or a PRIVATE to its recipient."""
        from chat.broker.core import Reply

        self.store.files[stored.number] = stored
        try:
            self._save()
        except OSError as exc:
            self.store.forget(stored.number)
            raise RemoteProtocolError(p.FILE_NOT_STORED, f"the broker could not store {stored.name}: {exc.strerror}") from None
        text = p.offer_text(stored.number, stored.name, stored.size, stored.sha256)
        done = Reply(session.identity, p.PutAck(offer_id, stored.number, stored.size))
        if stored.room:
            return [broker.publish_file(stored.room, session, text), done]
        target = broker.names.get(stored.to)
        out: list[Outgoing] = [done]
        if target is not None:
            out = broker.private_to(session, target, text, file=stored.number) + out
        return out

    def _drop(self, upload: Upload) -> None:
        upload.handle.close()
        self.uploads.pop(upload.number, None)
        self.store.partial_path(upload.offer.sha256).unlink(missing_ok=True)

    def _save(self) -> None:
        self.store.save()

    # ------------------------------------------------------------------ downloads

    def _get(self, broker: Broker, session: Session, get: p.Get) -> list[Outgoing]:
        from chat.broker.core import Reply

        stored = self.store.files.get(get.file)
        if stored is None:
            raise RemoteProtocolError(
                p.NO_SUCH_FILE, f"there is no file {get.file} (files are kept {self.max_age / 86400:g} days at most)"
            )
        if stored.room and stored.room not in session.rooms:
            raise RemoteProtocolError(p.FILE_REFUSED, f"file {get.file} is for {stored.room}: join it to get the file")
        if stored.to and (stored.to != session.name_key or (stored.to_key and stored.to_key != session.key)):
            raise RemoteProtocolError(p.FILE_REFUSED, f"file {get.file} was offered to someone else")
        if get.offset > stored.size:
            raise RemoteProtocolError(p.BAD_CHUNK, f"file {get.file} has {stored.size} bytes; asked from {get.offset}")
        data = b""
        if get.size:
            try:
                with open(self.store.object_path(stored.sha256), "rb") as source:
                    source.seek(get.offset)
                    data = source.read(get.size)
            except OSError as exc:
                raise RemoteProtocolError(p.NO_SUCH_FILE, f"file {get.file} cannot be read: {exc.strerror}") from None
        chunk = p.Chunk(get.id, get.file, get.offset, stored.size, stored.sha256, stored.name, stored.sender)
        return [Reply(session.identity, chunk, data=data)]
