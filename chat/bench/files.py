"""Workload 5: file transfer (issue 18). One file (200 MB by default) goes up to the broker and down again
through real ``client.py`` processes (plain mode, the same client core as every front end), while the
latency workload's clients chat (10 clients, 100 lines/s by default). Measured:

- upload and download MB/s as a user sees them: from the command to the client's "sent" / "saved"
  line, hashing included (the sender hashes the file before it offers it, the receiver checks it);
- the same file copied with ``shutil.copyfile`` (what ``cp`` does), for the ratio;
- the chat's latency percentiles without a transfer and with transfers running the whole time.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from chat.bench.latency import run_latency
from chat.bench.procs import REPO, BenchError, _die_with_parent, _end
from chat.bench.targets import BROKER, HOST, start

TRANSFER_TIMEOUT = 120.0  # seconds one upload or download may take before the run is called failed


class ClientProcess:
    """``client.py`` in plain mode with a pipe to its input; its output (stdout and stderr) is kept."""

    def __init__(self, name: str, port: int, *args: str) -> None:
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "client.py", "--host", HOST, "--port", str(port), "--name", name, "--history", "0", *args],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, preexec_fn=_die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True, name=f"{name} output").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> tuple[re.Match[str], int]:
        """The first line from index ``start`` on matching ``pattern``, and the index after it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for i in range(start, len(self.lines)):
                    match = regex.search(self.lines[i])
                    if match:
                        return match, i + 1
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "".join(f"  | {line}\n" for line in self.lines[-20:])
                    raise BenchError(f"client: no line matching {pattern!r} within {timeout:g} s\n{tail}")
                self._seen.wait(min(left, 0.5))

    def stop(self) -> None:
        _end(self.proc.pid, lambda: self.proc.poll() is not None, self.proc.wait)


class Transfers:
    """An uploader and a downloader on one broker; ``upload`` and ``download`` return seconds taken."""

    def __init__(self, stack: ExitStack, port: int, folder: Path) -> None:
        self.folder = folder
        self.up = ClientProcess("bench-up", port)
        stack.callback(self.up.stop)
        self.down = ClientProcess("bench-down", port, "--download-dir", str(folder / "down"))
        stack.callback(self.down.stop)
        self._at = {id(self.up): 0, id(self.down): 0}
        for client in (self.up, self.down):
            self._wait(client, r"^\*\*\* joined as ")
        self.number = 0

    def _wait(self, client: ClientProcess, pattern: str) -> re.Match[str]:
        match, self._at[id(client)] = client.wait_for(pattern, TRANSFER_TIMEOUT, self._at[id(client)])
        return match

    def upload(self, path: Path) -> float:
        t0 = time.monotonic()
        self.up.send(f"/send #general {path}")
        self.number = int(self._wait(self.up, r"^\*\*\* sent .* \(file (\d+)\)$")[1])
        return time.monotonic() - t0

    def download(self) -> float:
        t0 = time.monotonic()
        self.down.send(f"/get {self.number}")
        saved = self._wait(self.down, r"^\*\*\* saved .* as (.+) \([^,]+, SHA-256 checked\)$")
        seconds = time.monotonic() - t0
        Path(saved[1]).unlink()  # the next download takes the same name
        return seconds


def copy_seconds(source: Path, folder: Path) -> float:
    """``cp`` of the same file: shutil.copyfile (sendfile/copy_file_range on Linux), then fsync-free, as cp."""
    target = folder / "copy.bin"
    t0 = time.monotonic()
    shutil.copyfile(source, target)
    seconds = time.monotonic() - t0
    target.unlink()
    return seconds


def make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        left = size
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
            block = block[1:] + block[:1]  # not one block repeated: nothing compresses or dedups by accident


def run_files(opts: Any, tmp: Path) -> dict[str, Any]:
    size = opts.file_mb * 1_000_000
    folder = tmp / "files"
    folder.mkdir(exist_ok=True)
    source = folder / "payload.bin"
    make_file(source, size)
    chat = _ChatOptions(opts)
    # Two brokers, each fresh: the chat's clients join both under the same names and ids, which one
    # broker would take as resends of lines it has already published.
    quiet = run_latency(BROKER, chat, tmp)
    cp = copy_seconds(source, folder)
    with ExitStack() as stack:
        running = start(BROKER, stack, tmp, "files", extra=("--max-file-size", f"{size + 1}", "--file-quota", f"{4 * size}"))
        port = int(running.peer.endpoint.rsplit(":", 1)[1])
        transfers = Transfers(stack, port, folder)
        busy: dict[str, Any] = {}
        timings: dict[str, list[float]] = {"upload": [], "download": []}
        errors: list[str] = []
        stop = threading.Event()

        def keep_transferring() -> None:
            try:
                timings["upload"].append(transfers.upload(source))
                while not stop.is_set():
                    timings["download"].append(transfers.download())
            except BenchError as exc:
                errors.append(str(exc))

        mover = threading.Thread(target=keep_transferring, daemon=True, name="transfers")
        mover.start()
        try:
            busy = run_latency(BROKER, chat, tmp, running)
        finally:
            stop.set()
            mover.join(TRANSFER_TIMEOUT)
        if errors:
            raise BenchError(errors[0])
        if not timings["download"]:
            raise BenchError("no download finished during the chat run: make --latency-seconds longer")
    mb = size / 1_000_000
    best_down = min(timings["download"])
    return {
        "workload": "files",
        "target": "broker",
        "file_mb": mb,
        "chat_clients": chat.latency_clients,
        "chat_rate": chat.latency_rate,
        "upload_mb_s": mb / timings["upload"][0],
        "download_mb_s": mb / best_down,
        "download_mb_s_all": [mb / s for s in timings["download"]],
        "cp_mb_s": mb / cp,
        "upload_vs_cp": cp / timings["upload"][0],
        "download_vs_cp": cp / best_down,
        "chat_quiet": quiet,
        "chat_busy": busy,
        "p99_quiet_ms": quiet["latency_ms"]["p99"],
        "p99_busy_ms": busy["latency_ms"]["p99"],
        "p99_ratio": busy["latency_ms"]["p99"] / max(quiet["latency_ms"]["p99"], 1e-9),
        "loss": quiet["loss"] + busy["loss"],
    }


class _ChatOptions:
    """The latency workload's options for the chat beside the transfer."""

    def __init__(self, opts: Any) -> None:
        self.latency_clients = opts.file_chat_clients
        self.latency_rate = opts.file_chat_rate
        self.latency_seconds = opts.file_chat_seconds
        self.line_bytes = opts.line_bytes


def files_table(row: dict[str, Any]) -> str:
    if "failure" in row:
        return f"  FAILED: {row['failure']}"
    return "\n".join([
        f"  file {row['file_mb']:g} MB: upload {row['upload_mb_s']:.0f} MB/s ({row['upload_vs_cp']:.2f} x cp), "
        f"download {row['download_mb_s']:.0f} MB/s ({row['download_vs_cp']:.2f} x cp; best of "
        f"{len(row['download_mb_s_all'])}, median {statistics.median(row['download_mb_s_all']):.0f}); "
        f"cp {row['cp_mb_s']:.0f} MB/s",
        f"  chat ({row['chat_clients']} clients, {row['chat_rate']:g} lines/s): p99 {row['p99_quiet_ms']:.2f} ms "
        f"without a transfer, {row['p99_busy_ms']:.2f} ms during transfers ({row['p99_ratio']:.2f} x); "
        f"p50 {row['chat_quiet']['latency_ms']['p50']:.2f} -> {row['chat_busy']['latency_ms']['p50']:.2f} ms; "
        f"loss {row['loss']}",
    ])
