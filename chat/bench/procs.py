"""The processes a bench run starts, and what /proc says about them.

Every process is started here and ended here by its PID (SIGTERM, then SIGKILL), also when a run fails
or is interrupted: callers register each one on an ``ExitStack``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from chat.bench.load import Control, run_worker

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1  # prctl(2)
STOP_TIMEOUT = 3.0  # seconds a process gets to exit after SIGTERM before SIGKILL


class BenchError(Exception):
    """A run could not be done; the message says why and shows what the process concerned printed."""


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, every thread included (libzmq's I/O thread does much of a relay's work).

    From /proc/PID/task/*/schedstat (nanoseconds) where the kernel keeps it, else utime + stime from
    /proc/PID/stat (clock ticks, usually 10 ms: coarse for short runs).
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        if total:
            return total / 1e9
    except (FileNotFoundError, ValueError, IndexError):
        pass  # no schedstat, or a thread ended while being read: fall back to the whole-process counters
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time of a process's main thread alone: for the broker, the Python work (libzmq's I/O
    threads, which write each event to every subscriber, are left out). 0.0 without schedstat."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (FileNotFoundError, ValueError, IndexError):
        return 0.0


def memory_kib(pid: int, key: str = "VmRSS") -> int:
    """A line of /proc/PID/status in KiB: VmRSS (resident now) or VmHWM (resident at most)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


class Relay:
    """A relay under test (``broker.py`` or a baseline) as a child process; its output is kept."""

    def __init__(self, label: str, args: list[str], open_files: int | None = None) -> None:
        self.label = label
        self.args = args
        self.lines: list[str] = []

        def prepare() -> None:  # in the child, before exec
            _die_with_parent()
            if open_files is not None:  # a higher open-file limit, for many clients
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))

        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own session: Ctrl-C reaches only the bench, which then ends this process by PID.
            start_new_session=True,
            preexec_fn=prepare,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True, name=f"{label} output").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``; polls the list the reader thread fills, with a deadline."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader thread take the last lines
                raise BenchError(f"{self.label} exited with {self.proc.returncode}\n{self.output()}")
            time.sleep(0.02)
        raise BenchError(f"{self.label}: no line matching {pattern!r} within {timeout:g} s\n{self.output()}")

    def output(self, last: int = 30) -> str:
        shown = self.lines[-last:]
        return f"--- {self.label} (pid {self.pid}): python {' '.join(self.args)}\n" + "".join(
            f"  | {line}\n" for line in shown
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with {self.proc.returncode} during the run\n{self.output()}")

    def stop(self) -> None:
        _end(self.pid, lambda: self.proc.poll() is not None, self.proc.wait)


class Worker:
    """A load process (multiprocessing, spawned) and the bench's end of its control pipe."""

    _mp = multiprocessing.get_context("spawn")

    def __init__(self, label: str, body: Callable[[Control, dict[str, Any]], None], cfg: dict[str, Any]) -> None:
        self.label = label
        self.conn, child = self._mp.Pipe()
        self.proc = self._mp.Process(target=run_worker, args=(body, child, cfg), name=label, daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, kind: str, **data: Any) -> None:
        self.conn.send((kind, data))

    def expect(self, kind: str, timeout: float, watch: Relay | None = None) -> dict[str, Any]:
        """Wait for the report ``kind`` from the load process; fail if it fails, dies, or takes too long."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.label}: no {kind!r} within {timeout:g} s")
            if watch is not None:
                watch.check_alive()
            try:
                if not self.conn.poll(min(left, 0.5)):
                    continue
                got, data = self.conn.recv()
            except (EOFError, OSError):
                self.proc.join(1)
                raise BenchError(f"{self.label} exited with {self.proc.exitcode} before {kind!r}") from None
            if got == "error":
                last = data["reason"].strip().splitlines()[-1]
                raise BenchError(f"{self.label} failed: {last}\n{data['reason']}")
            if got != kind:
                raise BenchError(f"{self.label}: expected {kind!r}, got {got!r}: {data}")
            return data

    def stop(self) -> None:
        self.conn.close()
        if self.proc.pid is not None:
            _end(self.proc.pid, lambda: not self.proc.is_alive(), lambda: self.proc.join())


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the bench dies, even by SIGKILL (which no finally block sees)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the bench's own clean-up is all there is


def _end(pid: int, done: Callable[[], bool], reap: Callable[[], object]) -> None:
    """SIGTERM, a few seconds, then SIGKILL: by PID, never by name."""
    for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        if done():
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while not done() and time.monotonic() < deadline:
            time.sleep(0.02)
    reap()
