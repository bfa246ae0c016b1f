"""File transfers of one client session: ``/send``, ``/get``, ``/files``. Used by the client core, so that
every front end (plain, full-screen, web, IRC) has the same transfers.

Uploads go in PUT chunks, at most UPLOAD_WINDOW bytes unacknowledged; downloads ask for GET chunks, at
most PIPELINE in flight (the ZeroMQ Guide's credit-based transfer): either end can be slow without the
other buffering more than that. A download is written to a hidden temporary file in the target folder,
named by the file's SHA-256, and renamed only when the whole file's SHA-256 matches; a later ``/get``
of the same file (after the client was killed, say) resumes from what that file holds. A finished file
never overwrites another: ``report.pdf`` becomes ``report (1).pdf``.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from chat import protocol as p
from chat.client import events as ev
from chat.paths import downloads_dir, given

UPLOAD_CHUNK = p.MAX_PUT_BYTES  # bytes in one PUT
UPLOAD_WINDOW = 16 * UPLOAD_CHUNK  # bytes sent and not yet acknowledged, at most
DOWNLOAD_CHUNK = 256 * 1024  # bytes one GET asks for
PIPELINE = 8  # GETs in flight at once: the credit
RESEND_AFTER = 3.0  # seconds without an answer before the unanswered part is asked for (or sent) again
PROGRESS_EVERY = 1.0  # seconds between progress reports (and at every tenth of the way)
HASH_BLOCK = 1024 * 1024
PART_SUFFIX = ".lanchat-part"
MAX_OFFERS = 1000  # offers /files remembers
UP_ID, GET_ID = "file-up-", "file-get-"  # ids of transfer requests: an ERROR's ref names the transfer


class Rate:
    """A token bucket of bytes a second for file transfers (0: no limit)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.allowance = 0.0
        self.at = 0.0

    def chunk(self, size: int) -> int:
        return min(size, self.per_second) if self.per_second else size

    def take(self, size: int, now: float) -> bool:
        if not self.per_second:
            return True
        self.allowance = min(float(self.per_second), self.allowance + (now - self.at) * self.per_second)
        self.at = now
        if self.allowance < size:
            return False
        self.allowance -= size
        return True

    def wait(self, size: int) -> float:
        return max(0.0, (size - self.allowance) / self.per_second) if self.per_second else 0.0


@dataclass
class Progress:
    """When a transfer last reported how far it is."""

    reported_at: float = -PROGRESS_EVERY
    tenth: int = 0
    last_moved: float = 0.0

    def report(self, direction: str, number: int, name: str, done: int, total: int, now: float) -> list[ev.Action]:
        self.last_moved = now
        tenth = done * 10 // total if total else 10
        if tenth == self.tenth and now - self.reported_at < PROGRESS_EVERY:
            return []
        self.tenth, self.reported_at = tenth, now
        return [ev.Progress(direction, number, name, done, total)]


@dataclass
class Upload:
    id: str
    to: str
    path: Path
    name: str
    size: int
    sha256: str
    number: int = 0  # given by UPLOADING
    handle: BinaryIO | None = None
    acked: int = 0
    sent: int = 0
    heard: float = 0.0
    progress: Progress = field(default_factory=Progress)


@dataclass
class Download:
    number: int
    folder: Path
    name: str = ""  # known from the first CHUNK
    size: int = -1
    sha256: str = ""
    temp: Path | None = None
    handle: BinaryIO | None = None
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    received: int = 0  # bytes written, in order
    asked: int = 0  # the next offset to ask for
    in_flight: dict[int, int] = field(default_factory=dict)  # offset -> size, asked and not answered
    early: dict[int, bytes] = field(default_factory=dict)  # answered out of order
    heard: float = 0.0
    progress: Progress = field(default_factory=Progress)

    @property
    def id(self) -> str:
        return f"{GET_ID}{self.number}"


@dataclass(frozen=True)
class Offered:
    number: int
    sender: str
    text: str
    where: str  # a room, or "private"


class Transfers:
    """Every transfer of one session, and the offers it has seen. Methods return the core's actions."""

    def __init__(self, download_dir: Path | None = None, rate: int = 0, *, next_id: Callable[[], str]) -> None:
        self.download_dir = download_dir
        self.rate = Rate(rate)
        self.next_id = next_id
        self.offers: OrderedDict[int, Offered] = OrderedDict()
        self.uploads: dict[str, Upload] = {}
        self.downloads: dict[int, Download] = {}

    def active(self) -> int:
        return len(self.uploads) + len(self.downloads)

    def last_moved(self) -> float:
        times = [u.progress.last_moved for u in self.uploads.values()]
        times += [d.progress.last_moved for d in self.downloads.values()]
        return max(times, default=0.0)

    # ------------------------------------------------------------------ commands

    def send(self, rest: str, now: float) -> list[ev.Action]:
        """``/send NAME PATH`` or ``/send #room PATH``."""
        to, _, path_text = rest.partition(" ")
        path_text = path_text.strip()
        if not to or not path_text:
            return [ev.Notice("usage: /send NAME PATH or /send #room PATH", "error")]
        if to.startswith("#") and (problem := p.room_problem(to)):
            return [ev.Notice(problem, "error")]
        path = given(path_text)
        try:
            size = path.stat().st_size
            if not path.is_file():
                return [ev.Notice(f"{path} is not a file", "error")]
            sha256 = _hash_file(path)
        except OSError as exc:
            return [ev.Notice(f"cannot read {path}: {exc.strerror or exc}", "error")]
        upload = Upload(f"{UP_ID}{self.next_id()}", to, path, p.safe_file_name(path.name), size, sha256, heard=now)
        self.uploads[upload.id] = upload
        upload.progress.last_moved = now
        notice = ev.Notice(f"offering {upload.name} ({p.file_size_text(size)}) to {p.neutralise(to)}")
        return [notice, self._offer(upload)]

    @staticmethod
    def _offer(upload: Upload) -> ev.Send:
        return ev.Send(p.Offer(upload.id, upload.to, upload.path.name, upload.size, upload.sha256))

    def get(self, rest: str, now: float) -> list[ev.Action]:
        """``/get N [DIR]``."""
        number_text, _, folder_text = rest.partition(" ")
        if not number_text.isdigit() or int(number_text) < 1:
            return [ev.Notice("usage: /get N [DIR], N the number of an offer (/files lists them)", "error")]
        number = int(number_text)
        if number in self.downloads:
            return [ev.Notice(f"file {number} is on its way already", "error")]
        folder = given(folder_text.strip()) if folder_text.strip() else self._default_folder()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return [ev.Notice(f"cannot save files in {folder}: {exc.strerror or exc}", "error")]
        download = Download(number, folder, heard=now)
        download.progress.last_moved = now
        self.downloads[number] = download
        return [ev.Send(p.Get(download.id, number))]

    def _default_folder(self) -> Path:
        return self.download_dir if self.download_dir is not None else downloads_dir()

    def listing(self) -> list[ev.Action]:
        """``/files``: the offers seen in this session, newest last."""
        if not self.offers:
            return [ev.Notice("no files offered to you yet")]
        lines = [f"files offered ({len(self.offers)}):"]
        for offer in self.offers.values():
            lines.append(f"  {offer.number}: {p.neutralise(offer.sender)} {p.neutralise(offer.text)} ({offer.where})")
        return [ev.Notice("\n".join(lines))]

    def seen(self, number: int, sender: str, text: str, where: str) -> None:
        """An offer in a room's ``file`` event or a PRIVATE: listed by /files."""
        if number:
            self.offers[number] = Offered(number, sender, text, where)
            self.offers.move_to_end(number)
            while len(self.offers) > MAX_OFFERS:
                self.offers.popitem(last=False)

    # ------------------------------------------------------------------ answers

    def uploading(self, answer: p.Uploading, now: float) -> list[ev.Action]:
        upload = self.uploads.get(answer.id)
        if upload is None:
            return []
        upload.number, upload.acked, upload.sent, upload.heard = answer.file, answer.offset, answer.offset, now
        if answer.offset:
            resumed = f"the broker has {p.file_size_text(answer.offset)} of {upload.name} already: sending the rest"
            out: list[ev.Action] = [ev.Notice(resumed)]
        else:
            out = []
        if upload.handle is None:
            try:
                upload.handle = open(upload.path, "rb")  # noqa: SIM115 - open for the upload's life
            except OSError as exc:
                del self.uploads[upload.id]
                return [ev.Notice(f"cannot read {upload.path}: {exc.strerror or exc}", "error")]
        return out + self._pump_upload(upload, now)

    def put_ack(self, ack: p.PutAck, now: float) -> list[ev.Action]:
        upload = self.uploads.get(ack.id)
        if upload is None:
            return []
        upload.heard = now
        if ack.have >= upload.size:
            self._close_upload(upload)
            where = p.neutralise(upload.to)
            return [
                ev.Progress("sending", ack.file, upload.name, upload.size, upload.size),
                ev.Notice(f"sent {upload.name} to {where} (file {ack.file})"),
            ]
        if ack.have < upload.acked:  # the broker is behind what it acknowledged: send from there
            upload.sent = ack.have
        upload.acked = ack.have
        upload.sent = max(upload.sent, upload.acked)
        out = upload.progress.report("sending", upload.number, upload.name, upload.acked, upload.size, now)
        return out + self._pump_upload(upload, now)

    def _pump_upload(self, upload: Upload, now: float) -> list[ev.Action]:
        out: list[ev.Action] = []
        assert upload.handle is not None
        while upload.sent < upload.size and upload.sent - upload.acked < UPLOAD_WINDOW:
            size = self.rate.chunk(min(UPLOAD_CHUNK, upload.size - upload.sent))
            if not self.rate.take(size, now):
                break
            try:
                upload.handle.seek(upload.sent)
                data = upload.handle.read(size)
            except OSError as exc:
                self._close_upload(upload)
                return out + [ev.Notice(f"cannot read {upload.path}: {exc.strerror or exc}", "error")]
            if not data:
                self._close_upload(upload)
                return out + [ev.Notice(f"{upload.path} got shorter while it was sent: not sent", "error")]
            out.append(ev.Send(p.Put(upload.id, upload.number, upload.sent, zlib.crc32(data)), data))
            upload.sent += len(data)
        return out

    def _close_upload(self, upload: Upload) -> None:
        if upload.handle is not None:
            upload.handle.close()
        self.uploads.pop(upload.id, None)

    def chunk(self, chunk: p.Chunk, data: bytes, now: float) -> list[ev.Action]:
        download = self.downloads.get(chunk.file)
        if download is None or chunk.id != download.id:
            return []
        download.heard = now
        if download.size < 0:
            return self._begin(download, chunk, now)
        want = download.in_flight.pop(chunk.offset, None)
        if want is None or len(data) != want:
            if want is not None:  # short or long: ask for everything from there again
                download.asked = download.received
                download.in_flight.clear()
                download.early.clear()
            return self._pump_download(download, now)
        if chunk.offset != download.received:
            download.early[chunk.offset] = data
            return self._pump_download(download, now)
        problem = self._write(download, data)
        while not problem and download.received in download.early:
            problem = self._write(download, download.early.pop(download.received))
        if problem:
            return self._fail(download, problem)
        if download.received >= download.size:
            return self._finish(download)
        out = download.progress.report("receiving", download.number, download.name, download.received, download.size, now)
        return out + self._pump_download(download, now)

    def _begin(self, download: Download, chunk: p.Chunk, now: float) -> list[ev.Action]:
        """The first answer says what the file is: resume from a temporary file of it, if one is there."""
        if not p.SHA256_HEX.fullmatch(chunk.sha256) or chunk.size < 0:
            return self._fail(download, "the broker described it oddly")
        download.name, download.size, download.sha256 = p.safe_file_name(chunk.name), chunk.size, chunk.sha256
        download.temp = download.folder / f".{chunk.sha256[:32]}{PART_SUFFIX}"
        out: list[ev.Action] = []
        try:
            download.handle = open(download.temp, "a+b")  # noqa: SIM115 - open for the download's life
            download.handle.seek(0)
            while block := download.handle.read(HASH_BLOCK):
                download.hasher.update(block)
                download.received += len(block)
            if download.received > download.size:
                download.handle.truncate(0)
                download.hasher, download.received = hashlib.sha256(), 0
        except OSError as exc:
            return self._fail(download, f"cannot write in {download.folder}: {exc.strerror or exc}")
        download.asked = download.received
        size = p.file_size_text(download.size)
        if download.received:
            done = p.file_size_text(download.received)
            out.append(ev.Notice(f"resuming {download.name} at {done} of {size} (file {download.number})"))
        else:
            out.append(ev.Notice(f"receiving {download.name} ({size}, file {download.number})"))
        if download.received >= download.size:
            return out + self._finish(download)
        return out + self._pump_download(download, now)

    def _write(self, download: Download, data: bytes) -> str:
        assert download.handle is not None
        try:
            download.handle.write(data)
        except OSError as exc:
            return f"cannot write {download.temp}: {exc.strerror or exc}"
        download.hasher.update(data)
        download.received += len(data)
        return ""

    def _pump_download(self, download: Download, now: float) -> list[ev.Action]:
        out: list[ev.Action] = []
        while download.asked < download.size and len(download.in_flight) < PIPELINE:
            size = self.rate.chunk(min(DOWNLOAD_CHUNK, download.size - download.asked))
            if not self.rate.take(size, now):
                break
            download.in_flight[download.asked] = size
            out.append(ev.Send(p.Get(download.id, download.number, download.asked, size)))
            download.asked += size
        return out

    def _finish(self, download: Download) -> list[ev.Action]:
        assert download.handle is not None and download.temp is not None
        download.handle.close()
        del self.downloads[download.number]
        if download.hasher.hexdigest() != download.sha256:
            download.temp.unlink(missing_ok=True)
            return [ev.Notice(
                f"{download.name} did not match its SHA-256: removed; /get {download.number} to try again", "error"
            )]
        try:
            final = save_as(download.temp, download.folder, download.name)
        except OSError as exc:
            return [ev.Notice(f"cannot save {download.name} in {download.folder}: {exc.strerror or exc}", "error")]
        size = p.file_size_text(download.size)
        return [
            ev.Progress("receiving", download.number, download.name, download.size, download.size),
            ev.Notice(f"saved {download.name} as {final} ({size}, SHA-256 checked)"),
        ]

    def _fail(self, download: Download, why: str) -> list[ev.Action]:
        if download.handle is not None:
            download.handle.close()
        self.downloads.pop(download.number, None)
        return [ev.Notice(f"file {download.number}: {why}", "error")]

    def error(self, error: p.Error, now: float) -> list[ev.Action]:
        """An ERROR about one of our transfers (its ref is a transfer id)."""
        reason = p.neutralise(error.reason)
        upload = self.uploads.get(error.ref)
        if upload is not None:
            if error.code == p.NO_SUCH_FILE:  # the broker lost the upload (timed out): offer it again
                if upload.handle is None:
                    return []  # offered again already: this answers a PUT that was in flight
                upload.handle.close()
                upload.handle = None
                return [self._offer(upload)]
            self._close_upload(upload)
            return [ev.Notice(f"{upload.name} not sent: {reason}", "error")]
        if error.ref.startswith(GET_ID) and error.ref[len(GET_ID) :].isdigit():
            download = self.downloads.get(int(error.ref[len(GET_ID) :]))
            if download is not None:
                return self._fail(download, reason)
        return []

    # ------------------------------------------------------------------ timers and reconnects

    def resume(self, now: float) -> list[ev.Action]:
        """Back in after a lost connection or a broker restart: offer the uploads again (the broker says
        where each one is), and ask again for what the downloads had asked for."""
        out: list[ev.Action] = []
        for upload in self.uploads.values():
            upload.heard = now
            out.append(self._offer(upload))
        for download in self.downloads.values():
            out += self._ask_again(download, now)
        return out

    def _ask_again(self, download: Download, now: float) -> list[ev.Action]:
        download.heard = now
        if download.size < 0:
            return [ev.Send(p.Get(download.id, download.number))]
        download.asked = download.received
        download.in_flight.clear()
        download.early.clear()
        return self._pump_download(download, now)

    def tick(self, now: float) -> list[ev.Action]:
        out: list[ev.Action] = []
        for upload in list(self.uploads.values()):
            if now - upload.heard >= RESEND_AFTER:
                upload.heard = now
                if upload.handle is None:  # the OFFER went unanswered
                    out.append(self._offer(upload))
                    continue
                upload.sent = upload.acked
            if upload.handle is not None:
                out += self._pump_upload(upload, now)
        for download in list(self.downloads.values()):
            if now - download.heard >= RESEND_AFTER:
                out += self._ask_again(download, now)
            elif download.size >= 0:
                out += self._pump_download(download, now)
        return out

    def next_wakeup(self, now: float) -> float:
        if not self.active():
            return 60.0
        wait = RESEND_AFTER
        if self.rate.per_second:
            wait = min(wait, self.rate.wait(self.rate.chunk(DOWNLOAD_CHUNK)) + 0.001)
        return wait


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def save_as(temp: Path, folder: Path, name: str) -> Path:
    """Give the finished ``temp`` its name in ``folder`` without overwriting anything: ``name``, else
    ``name (1)``, ``name (2)``... before the extension. A hard link claims a name atomically."""
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, dot + ext) if stem else (name, "")
    for n in range(10_000):
        candidate = folder / (name if n == 0 else f"{stem} ({n}){ext}")
        try:
            os.link(temp, candidate)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: claim the name by creating it
            try:
                with open(candidate, "xb"):
                    pass
            except FileExistsError:
                continue
            os.replace(temp, candidate)
            return candidate
        temp.unlink()
        return candidate
    raise FileExistsError(f"no free name for {name} in {folder}")
