"""File sharing end to end: real brokers and clients, files of a few MB over loopback (issue 18).

Cuts in the middle of a transfer are made deterministic with the client's ``--file-rate``: at 1 MB/s
a 3 MB file takes 3 s, so the test sees the partial file grow and cuts while it is partial.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import pytest
import zmq

from chat import protocol as p
from conftest import HOST, TS, Broker, Client, Processes, timed_out

MB = 1_000_000


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def offered(sender: str, name: str, data: bytes) -> str:
    """The offer line a recipient sees; group 1 is the file's number."""
    sha = hashlib.sha256(data).hexdigest()
    size = re.escape(p.file_size_text(len(data)))
    return rf"^{TS} {re.escape(sender)} offers {re.escape(name)} \({size}, sha256 {sha[:8]}\.\.\.\) - /get (\d+)$"


SAVED = r"^\*\*\* saved (?P<name>.+) as (?P<path>.+) \((?P<size>[^,]+), SHA-256 checked\)$"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def parts(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.lanchat-part"))


@pytest.mark.timeout(60)
def test_a_private_file_goes_to_its_recipient_only_and_never_overwrites(procs: Processes, tmp_path: Path) -> None:
    broker = procs.broker()
    data = make_file(tmp_path / "report.pdf", 2 * MB)
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker, "--download-dir", str(tmp_path / "bob"))
    carol = procs.join("carol", broker, "--download-dir", str(tmp_path / "carol"))
    alice.send(f"/send bob {tmp_path / 'report.pdf'}")
    alice.expect_err(r"^\*\*\* sending report\.pdf: \d+% ")  # progress on stderr
    alice.expect_err(r"^\*\*\* sent report\.pdf to bob \(file \d+\)$")
    number = bob.expect(offered("alice", "report.pdf", data))[1]
    bob.send(f"/get {number}")
    bob.expect_err(r"^\*\*\* receiving report\.pdf: \d+% ")
    saved = bob.expect_err(SAVED)
    assert Path(saved["path"]) == tmp_path / "bob" / "report.pdf"
    assert (tmp_path / "bob" / "report.pdf").read_bytes() == data
    bob.send(f"/get {number}")  # again: a second copy beside the first, never over it
    again = bob.expect_err(SAVED)
    assert Path(again["path"]) == tmp_path / "bob" / "report (1).pdf"
    assert (tmp_path / "bob" / "report (1).pdf").read_bytes() == data
    assert not parts(tmp_path / "bob")
    bob.send("/files")
    bob.expect_err(rf"^\*\*\*   {number}: alice offers report\.pdf .* \(private\)$")
    carol.send(f"/get {number}")  # not for her: refused, nothing written
    carol.expect_err(rf"^\*\*\* file {number}: file {number} was offered to someone else$")
    assert not carol.matching(r"offers report\.pdf")
    assert not (tmp_path / "carol").exists() or not any((tmp_path / "carol").iterdir())


@pytest.mark.timeout(60)
def test_a_room_file_is_for_the_members_of_the_room(procs: Processes, tmp_path: Path) -> None:
    broker = procs.broker()
    data = make_file(tmp_path / "notes.txt", 1 * MB)
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker, "--download-dir", str(tmp_path / "bob"))
    carol = procs.join("carol", broker, "--download-dir", str(tmp_path / "carol"))
    for user in (alice, bob):
        user.send("/join #dev")
        user.expect_err(r"^\*\*\* joined #dev")
    alice.send(f"/send #dev {tmp_path / 'notes.txt'}")
    alice.expect_err(r"^\*\*\* sent notes\.txt to #dev \(file \d+\)$")
    number = bob.expect(offered("alice", "notes.txt", data).replace(rf"^{TS} ", rf"^{TS} #dev "))[1]
    bob.send(f"/get {number} {tmp_path / 'elsewhere'}")  # DIR given: there instead of --download-dir
    saved = bob.expect_err(SAVED)
    assert (tmp_path / "elsewhere" / "notes.txt").read_bytes() == data, saved.group(0)
    carol.send(f"/get {number}")
    carol.expect_err(rf"^\*\*\* file {number}: file {number} is for #dev: join it to get the file$")
    bob.send("chat goes on")
    alice.expect(rf"^{TS} #dev bob: chat goes on$")


def half_way_down(procs: Processes, broker: Broker, folder: Path, tmp_path: Path) -> tuple[Client, Client, bytes, str]:
    """alice offers bob 3 MB, which bob gets at 1 MB/s: back once a good part of it is in (not all)."""
    data = make_file(tmp_path / "big.bin", 3 * MB)
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker, "--download-dir", str(folder), "--file-rate", "1M")
    alice.send(f"/send bob {tmp_path / 'big.bin'}")
    number = bob.expect(offered("alice", "big.bin", data))[1]
    bob.send(f"/get {number}")
    wait_for(lambda: len(parts(folder)) == 1 and 500_000 <= size_of(parts(folder)[0]) < 2 * MB, "a partial download")
    return alice, bob, data, number


@pytest.mark.timeout(60)
def test_a_download_resumes_after_the_downloader_was_killed(procs: Processes, tmp_path: Path) -> None:
    broker = procs.broker(2.0)  # the killed client's session ends soon, so that bob can come back
    alice, bob, data, number = half_way_down(procs, broker, tmp_path / "bob", tmp_path)
    folder = tmp_path / "bob"
    bob.kill()
    kept = size_of(parts(folder)[0])
    alice.expect(timed_out("bob"), timeout=10)
    bob = procs.join("bob", broker, "--download-dir", str(folder))
    bob.send(f"/get {number}")
    resumed = bob.expect_err(r"^\*\*\* resuming big\.bin at (?P<at>[\d.]+) (?P<unit>[KM])B of 3\.0 MB")
    assert float(resumed["at"]) * (1000 if resumed["unit"] == "K" else MB) >= kept - 1000
    bob.expect_err(SAVED)
    assert (folder / "big.bin").read_bytes() == data
    assert not parts(folder)


def broker_with_files(procs: Processes, tmp_path: Path, *extra: str) -> Broker:
    return procs.broker(5.0, "--db", str(tmp_path / "history.db"), *extra)


@pytest.mark.timeout(60)
def test_an_upload_goes_on_after_a_broker_restart(procs: Processes, tmp_path: Path) -> None:
    broker = broker_with_files(procs, tmp_path)
    data = make_file(tmp_path / "big.bin", 3 * MB)
    alice = procs.join("alice", broker, "--file-rate", "1M")
    bob = procs.join("bob", broker, "--download-dir", str(tmp_path / "bob"))
    alice.send(f"/send #general {tmp_path / 'big.bin'}")
    partial = tmp_path / "files" / "partial" / hashlib.sha256(data).hexdigest()
    wait_for(lambda: 500_000 <= size_of(partial) < 2 * MB, "a partial upload on the broker")
    broker.stop()
    broker = procs.restart(broker)
    alice.expect_err(r"^\*\*\* the broker has [\d.]+ [KM]B of big\.bin already: sending the rest$", timeout=15)
    alice.expect_err(r"^\*\*\* sent big\.bin to #general \(file \d+\)$", timeout=15)
    number = bob.expect(offered("alice", "big.bin", data), timeout=15)[1]
    bob.send(f"/get {number}")
    bob.expect_err(SAVED)
    assert (tmp_path / "bob" / "big.bin").read_bytes() == data
    assert not partial.exists()


@pytest.mark.timeout(60)
def test_a_download_goes_on_after_a_broker_restart(procs: Processes, tmp_path: Path) -> None:
    broker = broker_with_files(procs, tmp_path)
    alice, bob, data, number = half_way_down(procs, broker, tmp_path / "bob", tmp_path)
    folder = tmp_path / "bob"
    broker.stop()
    broker = procs.restart(broker)
    bob.expect_err(r"^\*\*\* back in: reconnected to the broker$", timeout=15)
    bob.expect_err(SAVED, timeout=15)
    assert (folder / "big.bin").read_bytes() == data
    assert not parts(folder)


@pytest.mark.timeout(60)
def test_files_over_the_size_limit_or_the_quota_are_refused_before_any_byte(procs: Processes, tmp_path: Path) -> None:
    broker = broker_with_files(procs, tmp_path, "--max-file-size", "1M", "--file-quota", "1500K")
    make_file(tmp_path / "large.bin", 1_200_000)
    make_file(tmp_path / "fits.bin", 900_000)
    alice = procs.join("alice", broker)
    procs.join("bob", broker)
    alice.send(f"/send bob {tmp_path / 'large.bin'}")
    alice.expect_err(
        r"^\*\*\* large\.bin not sent: large\.bin is 1\.2 MB: this broker takes files of up to 1\.0 MB \(--max-file-size\)$"
    )
    assert not any((tmp_path / "files" / "partial").iterdir()), "bytes were taken before the refusal"
    alice.send(f"/send bob {tmp_path / 'fits.bin'}")
    alice.expect_err(r"^\*\*\* sent fits\.bin to bob \(file (\d+)\)$")
    # A second file that fits the size limit but not beside the first: the oldest goes to make room.
    make_file(tmp_path / "second.bin", 900_000)
    alice.send(f"/send bob {tmp_path / 'second.bin'}")
    alice.expect_err(r"^\*\*\* sent second\.bin to bob \(file (\d+)\)$")
    assert len(list((tmp_path / "files" / "objects").iterdir())) == 1


class RawClient:
    """A DEALER speaking the protocol by hand: for what the reference client never sends."""

    def __init__(self, ctx: zmq.Context, broker: Broker, name: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{HOST}:{broker.port}")
        self.send(p.Join(name))
        assert isinstance(self.reply(p.Welcome), p.Welcome)

    def send(self, message: p.Message, data: bytes | None = None) -> None:
        frames = p.encode(message)
        self.sock.send_multipart(frames + [data] if data is not None else frames)

    def reply(self, kind: type[p.Message], timeout: float = 10.0) -> p.Message:
        """The next direct message of type ``kind`` or an ERROR, skipping others."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(int((deadline - time.monotonic()) * 1000) + 1):
                message = p.decode_broker(self.sock.recv_multipart())
                if isinstance(message, (kind, p.Error)):
                    return message
        pytest.fail(f"no {kind.__name__} within {timeout} s")

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def raw_clients() -> Callable[..., RawClient]:
    ctx = zmq.Context()
    made: list[RawClient] = []

    def make(broker: Broker, name: str) -> RawClient:
        made.append(RawClient(ctx, broker, name))
        return made[-1]

    yield make
    for client in made:
        client.close()
    ctx.term()


def upload(client: RawClient, to: str, name: str, data: bytes) -> p.Message:
    sha = hashlib.sha256(data).hexdigest()
    client.send(p.Offer("file-up-1", to, name, len(data), sha))
    answer = client.reply(p.Uploading)
    assert isinstance(answer, p.Uploading), answer
    for offset in range(0, len(data), p.MAX_PUT_BYTES):
        chunk = data[offset : offset + p.MAX_PUT_BYTES]
        client.send(p.Put("file-up-1", answer.file, offset, zlib.crc32(chunk)), chunk)
    while True:
        ack = client.reply(p.PutAck)
        if not isinstance(ack, p.PutAck) or ack.have == len(data):
            return ack


@pytest.mark.timeout(60)
def test_path_tricks_in_offered_names_are_made_safe(
    procs: Processes, tmp_path: Path, raw_clients: Callable[..., RawClient]
) -> None:
    broker = broker_with_files(procs, tmp_path)
    bob = procs.join("bob", broker, "--download-dir", str(tmp_path / "bob"))
    mallory = raw_clients(broker, "mallory")
    tricks = {
        "../../etc/passwd": "passwd",
        "/etc/shadow": "shadow",
        "C:\\Windows\\system.ini": "system.ini",
        "CON": "_CON",
        "nul.txt": "_nul.txt",
        "evil\x1b[31m\x07.txt": "evil_[31m_.txt",
        "x" * 300 + ".pdf": "x" * 251 + ".pdf",
    }
    for n, (trick, safe) in enumerate(tricks.items()):
        data = f"content {n}".encode()
        assert isinstance(upload(mallory, "bob", trick, data), p.PutAck)
        number = bob.expect(offered("mallory", safe, data))[1]
        bob.send(f"/get {number}")
        saved = bob.expect_err(SAVED)
        assert Path(saved["path"]) == tmp_path / "bob" / safe
        assert (tmp_path / "bob" / safe).read_bytes() == data
    assert not (tmp_path.parent / "etc").exists()
    assert sorted(f.name for f in (tmp_path / "files").iterdir()) == ["index.json", "objects", "partial"]
    assert len(list((tmp_path / "files" / "objects").iterdir())) == len(tricks)


@pytest.mark.timeout(60)
def test_bad_chunks_are_refused_and_a_vanished_uploader_leaves_nothing(
    procs: Processes, tmp_path: Path, raw_clients: Callable[..., RawClient]
) -> None:
    broker = broker_with_files(procs, tmp_path, "--upload-timeout", "1")
    procs.join("bob", broker)
    mallory = raw_clients(broker, "mallory")
    data = os.urandom(200_000)
    mallory.send(p.Offer("file-up-1", "bob", "x.bin", len(data), hashlib.sha256(data).hexdigest()))
    started = mallory.reply(p.Uploading)
    assert isinstance(started, p.Uploading) and started.offset == 0
    chunk = data[:1000]
    mallory.send(p.Put("file-up-1", started.file, 0, zlib.crc32(chunk) ^ 1), chunk)  # wrong checksum
    error = mallory.reply(p.PutAck)
    assert isinstance(error, p.Error) and error.code == p.BAD_CHUNK and "crc32" in error.reason
    mallory.send(p.Put("file-up-1", started.file, 0, zlib.crc32(chunk)), chunk)
    ack = mallory.reply(p.PutAck)
    assert isinstance(ack, p.PutAck) and ack.have == 1000
    mallory.send(p.Put("file-up-1", started.file, 5000, zlib.crc32(chunk)), chunk)  # wrong offset
    ack = mallory.reply(p.PutAck)
    assert isinstance(ack, p.PutAck) and ack.have == 1000, "the broker says where it is"
    too_long = os.urandom(p.MAX_PUT_BYTES + 1)
    mallory.send(p.Put("file-up-1", started.file, 1000, zlib.crc32(too_long)), too_long)  # wrong size
    error = mallory.reply(p.PutAck)
    assert isinstance(error, p.Error) and error.code == p.BAD_CHUNK
    mallory.send(p.Get("file-get-1", started.file, 0, 10))  # not complete: nothing to get
    error = mallory.reply(p.Chunk)
    assert isinstance(error, p.Error) and error.code == p.NO_SUCH_FILE
    partial = tmp_path / "files" / "partial" / hashlib.sha256(data).hexdigest()
    assert size_of(partial) == 1000
    mallory.close()  # and never comes back: the partial data goes after --upload-timeout
    wait_for(lambda: not partial.exists(), "the partial upload to be removed", timeout=15)
    # A wrong SHA-256: the whole upload is refused and nothing kept.
    other = raw_clients(broker, "trudy")
    other.send(p.Offer("file-up-1", "bob", "y.bin", 100, "0" * 64))
    started = other.reply(p.Uploading)
    assert isinstance(started, p.Uploading)
    body = os.urandom(100)
    other.send(p.Put("file-up-1", started.file, 0, zlib.crc32(body)), body)
    error = other.reply(p.PutAck)
    assert isinstance(error, p.Error) and error.code == p.BAD_CHUNK and "SHA-256" in error.reason
    assert not any((tmp_path / "files" / "partial").iterdir()) and not any((tmp_path / "files" / "objects").iterdir())


LIMIT_FILE_SIZE = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (500000, 500000)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE (a disk that fills up) is POSIX")
def test_a_full_disk_on_the_broker_is_a_clear_error_and_chat_goes_on(procs: Processes, tmp_path: Path) -> None:
    # Files over 500 KB cannot be written by this broker: its disk is "full" half-way through the upload.
    broker = procs.listening(
        Broker(timeout=5.0, extra=("--file-dir", str(tmp_path / "files")), prefix=(sys.executable, "-c", LIMIT_FILE_SIZE))
    )
    make_file(tmp_path / "big.bin", 1 * MB)
    alice = procs.join("alice", broker)
    bob = procs.join("bob", broker)
    alice.send(f"/send bob {tmp_path / 'big.bin'}")
    alice.expect_err(
        r"^\*\*\* big\.bin not sent: the broker could not store big\.bin \(File too large\); nothing of it was kept$"
    )
    assert not any((tmp_path / "files" / "partial").iterdir()) and not any((tmp_path / "files" / "objects").iterdir())
    alice.send("still here")
    bob.expect(rf"^{TS} alice: still here$")
    assert not bob.matching("offers big.bin")
    assert broker.proc.poll() is None


@pytest.mark.parametrize(
    "offered_name, safe",
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("/abs/path/x.pdf", "x.pdf"),
        ("..", "file"),
        ("", "file"),
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("LPT9.log", "_LPT9.log"),
        ("COM10", "COM10"),
        ("a<b>c:d|e?f*g\"h", "a_b_c_d_e_f_g_h"),
        ("tab\there\x7f", "tab_here_"),
        ("\u202eexe.pdf", "_exe.pdf"),
        (".hidden", "hidden"),
        ("trailing. . ", "trailing"),
        ("é" * 200 + ".tar.gz", "é" * 126 + ".gz"),  # 252 + 3 bytes
    ],
)
def test_offered_names_are_made_safe_to_show_and_to_save(offered_name: str, safe: str) -> None:
    got = p.safe_file_name(offered_name)
    assert got == safe
    assert len(got.encode()) <= p.MAX_FILE_NAME_BYTES and "/" not in got and "\\" not in got


@pytest.mark.parametrize(
    "text, size", [("100", 100), ("100M", 100_000_000), ("2G", 2_000_000_000), ("512k", 512_000), ("1.5M", 1_500_000),
                   ("4Ki", 4096), ("1MiB", 1_048_576), ("7KB", 7000)],
)
def test_sizes_take_k_m_g_suffixes(text: str, size: int) -> None:
    from chat.broker.files import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1", "ten", "5X", "nan"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    from chat.broker.files import parse_size

    with pytest.raises(ValueError):
        parse_size(text)


def test_a_finished_download_never_overwrites(tmp_path: Path) -> None:
    from chat.client.files import save_as

    (tmp_path / "a.pdf").write_bytes(b"mine")
    (tmp_path / "a (1).pdf").write_bytes(b"mine too")
    for content in (b"new", b"newer"):
        temp = tmp_path / ".part"
        temp.write_bytes(content)
        save_as(temp, tmp_path, "a.pdf")
    assert (tmp_path / "a.pdf").read_bytes() == b"mine" and (tmp_path / "a (1).pdf").read_bytes() == b"mine too"
    assert (tmp_path / "a (2).pdf").read_bytes() == b"new" and (tmp_path / "a (3).pdf").read_bytes() == b"newer"
    assert not (tmp_path / ".part").exists()


@pytest.mark.parametrize("index", ["not json", '{"next": "x"}', '{"files": [{"number": 1}]}', '[1, 2]'])
def test_a_damaged_file_index_starts_a_broker_with_no_files_rather_than_none(tmp_path: Path, index: str) -> None:
    from chat.broker.files import FileService

    (tmp_path / "index.json").write_text(index)
    service = FileService(tmp_path)
    assert service.store.files == {} and service.store.next_number >= 1


def test_an_upload_the_broker_lost_is_offered_again_once_not_per_chunk_in_flight(tmp_path: Path) -> None:
    from chat.client import events as ev
    from chat.client.files import Transfers

    (tmp_path / "f.bin").write_bytes(os.urandom(300_000))
    ids = iter(range(1, 100))
    transfers = Transfers(tmp_path, next_id=lambda: str(next(ids)))
    [offer] = [a.message for a in transfers.send(f"bob {tmp_path / 'f.bin'}", 0.0) if isinstance(a, ev.Send)]
    assert isinstance(offer, p.Offer)
    puts = [a for a in transfers.uploading(p.Uploading(offer.id, 1, 0), 0.0) if isinstance(a, ev.Send)]
    assert len(puts) == 5  # 300 KB in chunks of 64 KiB, all within the window
    lost = p.Error(p.NO_SUCH_FILE, "no upload 1 of yours is open", offer.id)
    again = [a.message for answer in range(len(puts)) for a in transfers.error(lost, 1.0) if isinstance(a, ev.Send)]
    assert again == [offer]


@pytest.mark.timeout(60)
def test_end_of_input_waits_for_the_upload_as_scripts_expect(procs: Processes, tmp_path: Path) -> None:
    broker = procs.broker()
    data = make_file(tmp_path / "log.txt", 2 * MB)
    bob = procs.join("bob", broker, "--download-dir", str(tmp_path / "bob"))
    alice = procs.join("alice", broker)
    alice.send(f"/send bob {tmp_path / 'log.txt'}")
    alice.close_stdin()  # as `echo "/send bob log.txt" | client.py` does at once
    alice.assert_exit(0, timeout=15)
    assert alice.matching(r"^\*\*\* sent log\.txt to bob \(file \d+\)$", err=True)
    number = bob.expect(offered("alice", "log.txt", data))[1]
    bob.send(f"/get {number}")
    bob.close_stdin()  # and a download, the same
    bob.assert_exit(0, timeout=15)
    assert (tmp_path / "bob" / "log.txt").read_bytes() == data
