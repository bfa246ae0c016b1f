"""A person at a terminal: ``client.py`` in a detached tmux session (100x30), driven with send-keys.

Everything waits on what is on the screen (capture-pane, polled with a deadline), never on a fixed sleep.
The tmux server is a private one (its own socket name), so a user's own tmux sessions are never touched;
the session is killed by its name and every process is ended in teardown, also when the test fails.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import HOST, REPO, Broker, Processes, left, python_env, said

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed: the person-like check of the full-screen client runs under tmux"
)

WIDTH, HEIGHT = 100, 30
WAIT = 10.0  # seconds for something to appear on the screen
TMUX_TIMEOUT = 5.0  # seconds for one tmux command


class Tmux:
    """One detached session on a private tmux server."""

    def __init__(self, folder: Path) -> None:
        assert TMUX is not None
        self.tmux = TMUX
        self.socket = str(folder / "tmux.sock")  # a private server; a short path, as socket paths are limited
        self.session = "alice"
        self.config = folder / "tmux.conf"
        self.config.write_text("set -g remain-on-exit on\n")  # keep the pane (and its last words) after exit
        self.status = folder / "status"
        self.pids: list[int] = []  # the pane's shell, then the client
        # Without COLUMNS and LINES (pytest-xdist's workers set 80 and 24): the client would take them for
        # the size of its terminal instead of the pane's, and never follow a resize.
        self.env = {k: v for k, v in python_env().items() if k not in ("COLUMNS", "LINES")}

    def cmd(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-S", self.socket, "-f", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=TMUX_TIMEOUT,
            env=self.env,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, argv: list[str], then: str = "") -> None:
        """Run ``argv`` in the pane; the shell around it writes its exit status to a file, then runs ``then``.

        (tmux itself sometimes reaps a pane's process seconds late, so ``#{pane_dead_status}`` cannot be
        waited on; nor can the screen right after the exit, which tmux redraws as the pane dies.)
        """
        command = " ".join(shlex.quote(a) for a in argv) + f"; echo $? > {shlex.quote(str(self.status))}"
        if then:
            command += f"; {then}"
        self.cmd("new-session", "-d", "-s", self.session, "-x", str(WIDTH), "-y", str(HEIGHT), "-c", str(REPO), command)
        shell = int(self.pane("#{pane_pid}"))
        self.pids.append(shell)
        deadline = time.monotonic() + WAIT
        while not (children := _children(shell)):
            if time.monotonic() > deadline:
                pytest.fail(f"the client did not start; the screen:\n{self.screen()}")
            time.sleep(0.02)
        self.pids += children

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str) -> None:
        """tmux key names: Enter, Tab, Up, C-c ..."""
        self.cmd("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        """Literal text, as typed."""
        self.cmd("send-keys", "-t", self.session, "-l", text)

    def pane(self, what: str) -> str:
        return self.cmd("display-message", "-p", "-t", self.session, what).strip()

    def wait_for(self, what: str, pattern: str, procs: Processes, timeout: float = WAIT) -> str:
        """The screen, once ``pattern`` (a multi-line regex) matches it."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if regex.search(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"waited {timeout:g} s for {what} ({pattern!r}); the screen:\n{screen}\n{procs.describe()}")
            time.sleep(0.05)  # the polling interval of a wait with a deadline, not a synchronisation

    def exit_status(self, procs: Processes, timeout: float = WAIT) -> int:
        """The client's exit status, once the shell around it has written it."""
        deadline = time.monotonic() + timeout
        while not (self.status.exists() and self.status.read_text().endswith("\n")):
            if time.monotonic() > deadline:
                pytest.fail(f"the client did not exit within {timeout:g} s; the screen:\n{self.screen()}\n{procs.describe()}")
            time.sleep(0.05)  # the polling interval of a wait with a deadline
        return int(self.status.read_text())

    def close(self) -> None:
        for args in (["kill-session", "-t", self.session], ["kill-server"]):
            subprocess.run([self.tmux, "-S", self.socket, *args], capture_output=True, timeout=TMUX_TIMEOUT, check=False)
        for pid in reversed(self.pids):  # normally gone already, with the pane
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children(pid: int) -> list[int]:
    listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=TMUX_TIMEOUT)
    return [int(word) for word in listed.stdout.split()]


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    folder = Path(tempfile.mkdtemp(prefix="chat-tmux-"))
    session = Tmux(folder)
    try:
        yield session
    finally:
        session.close()
        shutil.rmtree(folder, ignore_errors=True)


def user_row(name: str) -> str:
    """A line of the screen whose user-list column holds ``name``."""
    return rf"▏ {re.escape(name)}\s*$"


@pytest.mark.timeout(40)
def test_a_person_chats_in_the_full_screen_client(procs: Processes, broker: Broker, tmux: Tmux) -> None:
    tmux.start([sys.executable, "client.py", "--host", HOST, "--port", str(broker.port), "--name", "alice"])
    tmux.wait_for("alice to join", r"│ connected │ not encrypted │ 1:#general │ alice", procs)
    screen = tmux.wait_for("the user list", user_row("alice"), procs)
    assert re.search(r"^ #general — LAN chat", screen, re.MULTILINE), screen  # the title line
    assert screen.rstrip("\n").splitlines()[-1].startswith("[alice] "), screen  # the input, at the bottom

    bob = procs.join("bob", broker)
    carol = procs.join("carol", broker)
    tmux.wait_for("bob and carol in the list", rf"{user_row('bob')}\n.*{user_row('carol')}", procs)
    bob.send("hello alice")
    carol.send("/me waves at everyone")
    bob.send("/pm alice psst, a secret")
    tmux.wait_for("bob's line", r"^\d\d:\d\d <bob> hello alice", procs)
    tmux.wait_for("carol's action", r"^\d\d:\d\d  \* carol waves at everyone", procs)
    # The private line opens a buffer of its own (2, with one unread line): Alt+2 reads it, Alt+1 goes back.
    tmux.wait_for("a buffer for bob's private line", r"│ 1:#general 2:bob\[1\] │ alice", procs)
    tmux.keys("M-2")
    tmux.wait_for("bob's private line", r"^\d\d:\d\d \[private\] <bob> psst, a secret", procs)
    tmux.keys("M-1")
    tmux.wait_for("back in #general", r"│ 1:#general 2:bob │ alice", procs)

    # Alice answers, completing bob's name with Tab; both see it, and she sees it once, time-stamped.
    tmux.type("hi b")
    tmux.keys("Tab")
    tmux.wait_for("the completed name", r"^\[alice\] hi bob\s*$", procs)
    tmux.type("and carol")
    tmux.keys("Enter")
    bob.expect(said("alice", "hi bob and carol"))
    carol.expect(said("alice", "hi bob and carol"))
    screen = tmux.wait_for("her line, acknowledged", r"^\d\d:\d\d <alice> hi bob and carol", procs)
    assert screen.count("hi bob and carol") == 1, screen

    # Traffic while she types leaves the input line alone.
    tmux.type("still typ")
    tmux.wait_for("the half-typed line", r"^\[alice\] still typ\s*$", procs)
    for n in range(5):
        carol.send(f"interrupting {n}")
    screen = tmux.wait_for("carol's lines", r"<carol> interrupting 4", procs)
    assert screen.rstrip("\n").splitlines()[-1].rstrip() == "[alice] still typ", screen
    tmux.type("ing")
    tmux.keys("Enter")
    bob.expect(said("alice", "still typing"))
    tmux.wait_for("her second line, acknowledged", r"^\d\d:\d\d <alice> still typing", procs)
    tmux.keys("Up")
    screen = tmux.wait_for("the recalled line", r"^\[alice\] still typing\s*$", procs)
    print(f"\n--- alice's screen ({WIDTH}x{HEIGHT}) ---\n{screen}")
    tmux.keys("C-u")

    # A smaller terminal: everything re-laid out, the status and input lines still at the bottom.
    tmux.cmd("resize-window", "-t", tmux.session, "-x", "80", "-y", "24")
    # (From the title on the first row to the input line on the last: a screen drawn whole, not mid-redraw.)
    whole = r"\A #general — LAN chat[\s\S]*"
    bottom = r"1:#general 2:bob │ alice\s*\n\[alice\][^\n]*\n*\Z"
    screen = tmux.wait_for("the 80x24 layout", whole + r"│ connected │ not encrypted │ " + bottom, procs)
    rows = screen.rstrip("\n").splitlines()
    assert len(rows) == 24 and max(len(r) for r in rows) <= 80, screen
    carol.close_stdin()
    screen = tmux.wait_for("carol gone from the list", r"<-- carol has left the chat", procs)
    assert not re.search(user_row("carol"), screen, re.MULTILINE), screen
    print(f"\n--- alice's screen (80x24) ---\n{screen}")

    # Smaller still: the user list gives way; the status line keeps her name.
    tmux.cmd("resize-window", "-t", tmux.session, "-x", "50", "-y", "15")
    no_user_list = r"\A(?![\s\S]*▏)"
    screen = tmux.wait_for("the 50x15 layout", no_user_list + whole + bottom, procs)
    assert max(len(r) for r in screen.splitlines()) <= 50, screen

    # A paste of several lines (bracketed, as a terminal pastes): every line goes, in order.
    tmux.cmd("set-buffer", "pasted one\npasted two\npasted three")
    tmux.cmd("paste-buffer", "-p", "-t", tmux.session)
    for line in ("pasted one", "pasted two", "pasted three"):
        bob.expect(said("alice", line))
    tmux.wait_for("the pasted lines, acknowledged", r"^\d\d:\d\d <alice> pasted three", procs)

    tmux.keys("C-d")  # on an empty input line: leave
    assert tmux.exit_status(procs) == 0
    bob.expect(left("alice"))


@pytest.mark.timeout(30)
def test_ctrl_d_at_the_plain_prompt_leaves_and_the_shell_prompt_starts_on_its_own_line(
    procs: Processes, broker: Broker, tmux: Tmux
) -> None:
    bob = procs.join("bob", broker)
    argv = [sys.executable, "client.py", "--plain", "--host", HOST, "--port", str(broker.port), "--name", "alice"]
    tmux.start(argv, then="printf 'SHELL$ '")  # what a shell prompt would print
    tmux.wait_for("alice's prompt", r"^>$", procs)  # (capture-pane drops trailing spaces)
    bob.send("hi alice")
    tmux.wait_for("bob's line, and the prompt again", r"bob: hi alice\n>$", procs)
    tmux.keys("C-d")
    assert tmux.exit_status(procs) == 0
    screen = tmux.wait_for("the shell's prompt", r"^SHELL\$", procs)
    assert re.search(r"^> *\n(.*\n)*SHELL\$", screen, re.MULTILINE), screen
    bob.expect(left("alice"))
