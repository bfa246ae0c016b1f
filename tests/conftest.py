"""Helpers for tests that run ``broker.py`` and ``client.py`` as real processes.

Every process is started through a ``Processes`` registry (the ``procs`` fixture) and is ended by its own
PID when the test finishes, passed or failed. Nothing here sleeps to synchronise: tests wait for a line
of output, with a deadline, and a failure shows everything the process printed.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Pattern

import pytest

from chat.client import events as ev

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

START_TIMEOUT = 10.0  # seconds for a broker to print its listening line, even on a loaded machine
EXPECT_TIMEOUT = 10.0  # default wait for a line of output
STOP_TIMEOUT = 5.0  # seconds given to a process to exit after SIGTERM or end of input

# The line formats of chat/ui/format.py, as regular expressions.
TS = r"\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\]"
LISTENING = re.compile(
    r"^broker: listening on tcp://(?P<host>[^ ]+):(?P<port>\d+) \(ROUTER: [^)]*\) "
    r"and tcp://(?P<pub_host>[^ ]+):(?P<pub_port>\d+) \(PUB: fan-out\)$"
)


def said(name: str, text: str) -> str:
    """Pattern of a public line: ``[YYYY-MM-DD HH:MM:SS] name: text``."""
    return rf"^{TS} {re.escape(name)}: {re.escape(text)}$"


def acted(name: str, text: str) -> str:
    return rf"^{TS} \* {re.escape(name)} {re.escape(text)}$"


def private(name: str, text: str) -> str:
    return rf"^{TS} {re.escape(name)} \(private\): {re.escape(text)}$"


def joined(name: str) -> str:
    return rf"^{TS} {re.escape(name)} has joined the chat\.$"


def left(name: str) -> str:
    """A clean leave: the line ends right after "chat.", with no "(timed out)"."""
    return rf"^{TS} {re.escape(name)} has left the chat\.$"


def timed_out(name: str) -> str:
    return rf"^{TS} {re.escape(name)} has left the chat\. \(timed out\)$"


def online(*names: str) -> str:
    return rf"^{TS} online \({len(names)}\): {re.escape(', '.join(names))}$"


# Set by the session fixture below: where child processes keep data and keys instead of the user's home.
_HOME_OVERRIDES: dict[str, str] = {}


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NO_COLOR", None)  # pipes are not terminals: no colour either way
    env.update(_HOME_OVERRIDES)
    return env


@pytest.fixture(autouse=True, scope="session")
def _no_writes_to_the_users_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Default history files and key folders of child processes go to a temporary folder."""
    base = tmp_path_factory.mktemp("home")
    _HOME_OVERRIDES.update(XDG_DATA_HOME=str(base / "data"), XDG_CONFIG_HOME=str(base / "config"))
    try:
        yield
    finally:
        _HOME_OVERRIDES.clear()


# --------------------------------------------------------------------------- output streams


_EOF = None


class Stream:
    """One pipe of a child process, read line by line by a daemon thread.

    ``seen`` holds every line received so far; ``expect`` reads it from a cursor, so a line is matched at
    most once, and the lines it passes over are kept in ``unmatched``.
    """

    def __init__(self, label: str, pipe: IO[bytes]) -> None:
        self.label = label
        self.seen: list[str] = []
        self.unmatched: list[str] = []
        self.raw = bytearray()  # the exact bytes, for checks on control characters
        self.closed = False
        self._cursor = 0
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True, name=label)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        try:
            for line in iter(pipe.readline, b""):
                self.raw += line
                self._queue.put(line.decode("utf-8", errors="replace").rstrip("\n"))
        except (OSError, ValueError):  # the pipe was closed under us by the teardown
            pass
        finally:
            self._queue.put(_EOF)

    def _pull(self, timeout: float) -> bool:
        """Move one line from the queue to ``seen``; False at end of stream or when none came in time."""
        if self.closed:
            return False
        try:
            line = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return False
        if line is _EOF:
            self.closed = True
            return False
        self.seen.append(line)
        return True

    def expect(self, pattern: str | Pattern[str], timeout: float, describe: Callable[[], str]) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.seen):
                line = self.seen[self._cursor]
                self._cursor += 1
                match = regex.search(line)
                if match:
                    return match
                self.unmatched.append(line)
            left = deadline - time.monotonic()
            if left <= 0 or not self._pull(left):
                if self.closed or time.monotonic() >= deadline:
                    why = "the stream ended" if self.closed else f"nothing matched within {timeout:g} s"
                    pytest.fail(f"{self.label}: expected a line matching {regex.pattern!r}: {why}.\n{describe()}")

    def expect_all(
        self, patterns: list[str], timeout: float, describe: Callable[[], str]
    ) -> list[re.Match[str]]:
        """Wait until each pattern has matched a line, in any order, whatever ``expect`` has passed over.

        For lines that come through different sockets (public lines on SUB, private ones on DEALER),
        whose relative order nobody promises.
        """
        regexes = [re.compile(pattern) for pattern in patterns]
        deadline = time.monotonic() + timeout
        while True:
            found = [next((m for line in self.seen if (m := regex.search(line))), None) for regex in regexes]
            if all(found):
                return [m for m in found if m]
            left = deadline - time.monotonic()
            if left <= 0 or not self._pull(left):
                if self.closed or time.monotonic() >= deadline:
                    missing = [r.pattern for r, m in zip(regexes, found) if m is None]
                    why = "the stream ended" if self.closed else f"not within {timeout:g} s"
                    pytest.fail(f"{self.label}: no line matched {missing!r}: {why}.\n{describe()}")

    def lines(self) -> list[str]:
        """Every line received so far (whatever ``expect`` has or has not looked at)."""
        while self._pull(0):
            pass
        return list(self.seen)

    def until_closed(self, timeout: float) -> list[str]:
        """Every line up to the end of the stream (the process has exited)."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._pull(deadline - time.monotonic())
        return list(self.seen)


# --------------------------------------------------------------------------- processes


class Process:
    """A child Python process with its output read in the background."""

    def __init__(
        self,
        label: str,
        args: list[str],
        *,
        stdin: bool,
        prefix: tuple[str, ...] = (),
        program: str = sys.executable,
        cwd: Path = REPO,
    ) -> None:
        """``prefix`` runs the interpreter through another command, e.g. ``ip netns exec NS``;
        ``program`` is another program than this Python (an installed command, with ``cwd`` elsewhere)."""
        self.label = label
        self.args = args
        self.shown_as = "python" if program == sys.executable else program
        self.proc = subprocess.Popen(
            [*prefix, program, *args],
            cwd=cwd,
            env=python_env(),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Stream(f"{label} stdout", self.proc.stdout)
        self.err = Stream(f"{label} stderr", self.proc.stderr)
        # What a failure message shows: by default this process; the registry widens it to all of them.
        self.context: Callable[[], str] = self.describe

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> str:
        """Everything seen so far, for a failure message."""
        if self.proc.poll() is None:
            state = "running"
            out, err = self.out.lines(), self.err.lines()
        else:
            state = f"exited with {self.proc.returncode}"
            out, err = self.out.until_closed(1.0), self.err.until_closed(1.0)
        return (
            f"--- {self.label} (pid {self.pid}, {state}): {self.shown_as} {' '.join(self.args)}\n"
            f"stdout ({len(out)} lines):\n" + "".join(f"  | {line}\n" for line in out) +
            f"stderr ({len(err)} lines):\n" + "".join(f"  | {line}\n" for line in err)
        )

    def expect(self, pattern: str | Pattern[str], timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        """Wait for a stdout line matching ``pattern`` (re.search); lines passed over stay in ``out.unmatched``."""
        return self.out.expect(pattern, timeout, self.context)

    def expect_err(self, pattern: str | Pattern[str], timeout: float = EXPECT_TIMEOUT) -> re.Match[str]:
        return self.err.expect(pattern, timeout, self.context)

    def expect_all(self, *patterns: str, timeout: float = EXPECT_TIMEOUT) -> list[re.Match[str]]:
        """Wait until each pattern has matched a stdout line, in any order."""
        return self.out.expect_all(list(patterns), timeout, self.context)

    def stdout(self) -> list[str]:
        return self.out.lines()

    def stderr(self) -> list[str]:
        return self.err.lines()

    def assert_stdout(self, *patterns: str) -> None:
        """Everything on stdout so far is exactly one line per pattern, in this order."""
        lines = self.stdout()
        ok = len(lines) == len(patterns) and all(re.search(p, line) for p, line in zip(patterns, lines))
        if not ok:
            wanted = "".join(f"  | {p}\n" for p in patterns)
            pytest.fail(f"{self.label}: stdout is not, line by line:\n{wanted}{self.context()}")

    def matching(self, pattern: str, *, err: bool = False) -> list[str]:
        """The lines received so far (stdout, or stderr) that match ``pattern``: for "never" assertions."""
        regex = re.compile(pattern)
        return [line for line in (self.stderr() if err else self.stdout()) if regex.search(line)]

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit code; fails the test (after killing the process) if it does not exit in time."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.label} did not exit within {timeout:g} s\n{self.context()}")
        # The pipes close when the process exits: collect what is left, so that assertions see all of it.
        self.out.until_closed(timeout)
        self.err.until_closed(timeout)
        return code

    def assert_exit(self, expected: int, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for the process to exit with ``expected``; a failure shows what every process printed."""
        code = self.wait(timeout)
        if code != expected:
            pytest.fail(f"{self.label} exited with {code}, not {expected}\n{self.context()}")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL, by PID, and reap."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # it exited between poll and kill
                pass
        self.proc.wait()

    def cleanup(self) -> None:
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


class Broker(Process):
    """``broker.py`` on 127.0.0.1 with OS-chosen ports (or given ones, for a restart)."""

    def __init__(
        self,
        *,
        timeout: float,
        extra: tuple[str, ...] = (),
        port: int = 0,
        pub_port: int = 0,
        label: str = "broker",
        default_db: bool = False,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``default_db``: no --db at all, for tests of where the default goes (they set the home)."""
        self.timeout = timeout
        self.extra = extra
        args = ["broker.py", "--host", HOST, "--port", str(port), "--pub-port", str(pub_port)]
        args += ["--timeout", f"{timeout:g}"]
        if "--db" not in extra and not default_db:
            args += ["--db", ":memory:"]  # never the user's own history file, and nothing shared between tests
        args += extra
        super().__init__(label, args, stdin=False, prefix=prefix)
        self.port = port
        self.pub_port = pub_port

    def await_listening(self) -> None:
        """Read stdout up to the listening line and take both ports from it."""
        match = self.out.expect(
            LISTENING, START_TIMEOUT, lambda: "the broker never said where it listens\n" + self.describe()
        )
        assert match["host"] == HOST and match["pub_host"] == HOST, match.group(0)
        port, pub_port = int(match["port"]), int(match["pub_port"])
        assert self.port in (0, port) and self.pub_port in (0, pub_port), "a restarted broker moved ports"
        assert port > 0 and pub_port > 0 and port != pub_port
        self.port, self.pub_port = port, pub_port

    @property
    def endpoint(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    @property
    def pub_endpoint(self) -> str:
        return f"tcp://{HOST}:{self.pub_port}"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time (which fails the test)."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)


class Client(Process):
    """``client.py`` with pipes: write lines to it, wait for lines from it."""

    def __init__(self, name: str | None, port: int, args: tuple[str, ...] = ()) -> None:
        argv = ["client.py", "--host", HOST, "--port", str(port)]
        if name is not None:
            argv += ["--name", name]
        super().__init__(f"client {name or '(unnamed)'}", [*argv, *args], stdin=True)
        self.name = name

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pytest.fail(f"{self.label} no longer reads its input\n{self.context()}")

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()


class Processes:
    """Starts brokers and clients and ends every one of them, by PID, when the test is over."""

    def __init__(self) -> None:
        self.started: list[Process] = []

    def _track(self, process: Process) -> None:
        self.started.append(process)
        process.context = self.describe

    def broker(self, timeout: float = 5.0, *extra: str) -> Broker:
        return self.listening(Broker(timeout=timeout, extra=extra))

    def restart(self, old: Broker) -> Broker:
        """A new broker on the ports of ``old`` (which must have exited), with the same flags."""
        assert old.proc.poll() is not None, "stop or kill the old broker first"
        label = "broker (restarted)"
        return self.listening(
            Broker(timeout=old.timeout, extra=old.extra, port=old.port, pub_port=old.pub_port, label=label)
        )

    def listening(self, broker: Broker) -> Broker:
        """Track ``broker`` and wait until it listens."""
        self._track(broker)  # before waiting, so that it is ended even when the wait fails
        broker.await_listening()
        return broker

    def process(self, script: str, *args: str) -> Process:
        """Any script of the repository, with no input: for command-line checks."""
        process = Process(script, [script, *args], stdin=False)
        self._track(process)
        return process

    def command(self, program: Path, *args: str, cwd: Path, stdin: bool = False) -> Process:
        """An installed command (not this checkout's scripts), run from ``cwd``."""
        process = Process(program.name, list(args), stdin=stdin, program=str(program), cwd=cwd)
        self._track(process)
        return process

    def client(self, name: str | None, port: int, *args: str) -> Client:
        client = Client(name, port, args)
        self._track(client)
        return client

    def join(self, name: str, broker: Broker, *args: str, history: int | None = 0) -> Client:
        """A client that has joined: its WELCOME has arrived and, without history, it has shown its own
        join line (with history, that line follows the history: the test reads both). ``history=None``
        keeps the default."""
        if history is not None:
            args = ("--history", str(history), *args)
        client = self.client(name, broker.port, *args)
        client.expect_err(rf"^\*\*\* joined as {re.escape(name)}; type /help for commands$")
        if history == 0:
            client.expect(joined(name))
        return client

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.started)

    def end_all(self) -> None:
        problems = []
        for process in reversed(self.started):
            try:
                process.cleanup()
            except OSError as exc:  # go on: every other process must still be ended
                problems.append(f"{process.label} (pid {process.pid}): {exc!r}")
        assert not problems, f"could not end every process: {problems}"


# --------------------------------------------------------------------------- a link that can be cut


class Relay:
    """A TCP relay on loopback in front of broker ports: it records every byte that crosses it, both ways,
    and a test can cut its connections and refuse new ones.

    Cutting does to a client what a flaky Wi-Fi link does: its TCP connection breaks, libzmq reconnects on
    its own, and the broker's ROUTER sees a new peer identity (the old one is stale). ``same_ports``
    listens on the upstream port numbers (on another loopback address), for a client that must reach the
    PUB port the broker names.
    """

    def __init__(
        self, ports: list[int], *, listen_host: str = HOST, upstream_host: str = HOST, same_ports: bool = False
    ) -> None:
        self.upstream_host = upstream_host
        self.recorded = bytearray()
        self.accepting = threading.Event()
        self.accepting.set()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listeners: list[socket.socket] = []
        self._closed = threading.Event()
        self.ports: list[int] = []
        for port in ports:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((listen_host, port if same_ports else 0))
            listener.listen()
            listener.settimeout(0.05)
            self._listeners.append(listener)
            self.ports.append(listener.getsockname()[1])
            threading.Thread(target=self._accept, args=(listener, port), daemon=True, name="relay").start()

    @property
    def port(self) -> int:
        return self.ports[0]

    def _accept(self, listener: socket.socket, upstream_port: int) -> None:
        while not self._closed.is_set():
            # While the link is down, new connections wait in the listen backlog, unanswered, as over a
            # dead link (closing them at once would read as a failed ZMTP handshake, not a lost link).
            if not self.accepting.wait(0.05):
                continue
            try:
                near, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            far = socket.create_connection((self.upstream_host, upstream_port), timeout=5)
            far.settimeout(None)
            with self._lock:
                self._open += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True, name="relay pump").start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.recorded += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def seen(self) -> bytes:
        with self._lock:
            return bytes(self.recorded)

    def cut(self) -> None:
        """Break every connection through the relay, and hold new ones unanswered until ``restore``."""
        self.accepting.clear()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        self.accepting.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        for listener in self._listeners:
            listener.close()


@pytest.fixture
def relays() -> Iterator[Callable[..., Relay]]:
    """Make relays (``Relay(ports, ...)``); each is closed when the test ends."""
    made: list[Relay] = []

    def make(ports: list[int], **options: Any) -> Relay:
        relay = Relay(ports, **options)
        made.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in made:
            relay.close()


class ScriptedConnection:
    """Stands in for ``chat.client.net.Connection`` in a full-screen client with no broker: it records
    what the app submits and requests, and runs until end of input (``ended``)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.requests: list[ev.Request] = []
        self.ended = threading.Event()

    def run(self) -> ev.Exit:
        self.ended.wait(STOP_TIMEOUT)
        return ev.Exit(ev.EXIT_OK)

    def submit(self, line: str) -> None:
        self.submitted.append(line)

    def submit_eof(self) -> None:
        self.ended.set()

    def request(self, request: ev.Request) -> None:
        self.requests.append(request)


@pytest.fixture
def procs() -> Iterator[Processes]:
    registry = Processes()
    try:
        yield registry
    finally:
        registry.end_all()


@pytest.fixture
def broker(procs: Processes) -> Broker:
    """A broker with the default-like session timeout (5 s): nobody expires during a test by accident."""
    return procs.broker(timeout=5.0)
