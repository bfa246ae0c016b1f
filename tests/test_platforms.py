"""Windows, as far as it can be proved on Linux: the broker, the plain client and the full-screen client
run in processes where the POSIX-only modules cannot be imported and the POSIX-only signals are absent
(tests/winlike/sitecustomize.py), and chat with each other. An unguarded ``import resource`` or
``signal.SIGHUP`` anywhere on their path makes these tests fail.

What this cannot show (checked by reading, see the closing note of issue 13): libzmq's own behaviour on
Windows, Textual's Windows driver, and the Windows firewall.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import conftest
from conftest import REPO, Processes, joined, left, said

WINLIKE = REPO / "tests" / "winlike"
EXIT_REFUSED = 3


@pytest.fixture
def windows_like(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Every process this test starts is Windows-like; returns the environment that makes it so."""
    path = os.pathsep.join([str(WINLIKE), str(REPO)])
    monkeypatch.setitem(conftest._HOME_OVERRIDES, "PYTHONPATH", path)
    return {**conftest.python_env(), "PYTHONPATH": path}


PROBE = """
import asyncio, signal
missing = []
for name in ("resource", "fcntl", "termios", "pwd", "grp"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        missing.append(name)
loop = asyncio.new_event_loop()
try:
    loop.add_signal_handler(signal.SIGINT, print)
except NotImplementedError:
    missing.append("add_signal_handler")
print(" ".join(missing), hasattr(signal, "SIGHUP"), hasattr(signal, "SIGTERM"))
"""


@pytest.mark.timeout(20)
def test_the_windows_like_process_really_lacks_what_windows_lacks(windows_like: dict[str, str]) -> None:
    """Without this, a sitecustomize that silently failed to load would make every test here vacuous."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=windows_like, cwd=REPO, capture_output=True, text=True, timeout=15
    )
    assert out.stdout.split() == ["resource", "fcntl", "termios", "pwd", "grp", "add_signal_handler", "False", "True"], out


@pytest.mark.timeout(60)
def test_broker_plain_client_and_full_screen_client_chat_without_posix(
    procs: Processes, windows_like: dict[str, str]
) -> None:
    broker = procs.broker(5.0)
    for script in ("broker.py", "client.py"):
        usage = procs.process(script, "--help")
        usage.expect(rf"^usage: {script}")
        usage.assert_exit(0)
    bob = procs.join("bob", broker)
    tui = procs.process("tests/winlike/tui_session.py", conftest.HOST, str(broker.port), "winnie")
    tui.expect(r"^tui: joined$", timeout=20)  # its own join line is on its screen
    bob.expect(joined("winnie"))
    tui.expect(r"^tui: sent$")
    bob.expect(said("winnie", "hello from the full-screen client"))
    bob.send("hi winnie")
    tui.expect(r"^tui: heard bob$")
    tui.expect(r"^tui: exit 0$")  # Ctrl-C, handled as a key: no signal handlers on this event loop
    tui.assert_exit(0)
    bob.expect(left("winnie"))  # a clean leave, not a time-out
    bob.close_stdin()
    bob.assert_exit(0)
    assert broker.stop() == 0


@pytest.mark.timeout(60)
def test_a_key_copied_into_allow_is_admitted_without_sighup(
    procs: Processes, windows_like: dict[str, str], tmp_path: Path
) -> None:
    """On Windows there is no kill -HUP: the broker re-reads the --allow folder when its keys change."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    broker = procs.broker(5.0, "--secure", "--key-dir", str(tmp_path / "broker-keys"), "--allow", str(allowed))
    key = broker.expect(r"--server-key='?(?P<key>[^' ]{40})'?$")["key"]
    alice_keys = ("--key-dir", str(tmp_path / "alice-keys"))
    refused = procs.client("alice", broker.port, f"--server-key={key}", *alice_keys)
    refused.assert_exit(EXIT_REFUSED, timeout=10)  # and on the way, made alice's key pair

    shutil.copy(tmp_path / "alice-keys" / "client.key", allowed / "alice.key")
    broker.expect(rf"^broker: re-read {re.escape(str(allowed))}: 1 client key\(s\) admitted$")
    alice = procs.join("alice", broker, f"--server-key={key}", *alice_keys)
    alice.close_stdin()
    alice.assert_exit(0)


@pytest.mark.timeout(30)
def test_text_the_output_encoding_cannot_hold_is_replaced_not_fatal(
    procs: Processes, windows_like: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows writes pipes in the ANSI code page (cp1252 here), which has no CJK or emoji: a reader
    must show such a line with replacement characters and go on, not die of UnicodeEncodeError."""
    broker = procs.broker(5.0)
    monkeypatch.setitem(conftest._HOME_OVERRIDES, "PYTHONIOENCODING", "cp1252")
    bob = procs.join("bob", broker)
    monkeypatch.delitem(conftest._HOME_OVERRIDES, "PYTHONIOENCODING")
    alice = procs.join("alice", broker)
    bob.expect(joined("alice"))
    alice.send("\u65e5\u672c \u2713 ok")
    alice.send("still there?")
    bob.expect(said("alice", "?? ? ok"))
    bob.expect(said("alice", "still there?"))
    bob.close_stdin()
    bob.assert_exit(0)


class FakeResource:
    """The open-file limit of a Mac: an unlimited hard limit, and a soft one of 256."""

    RLIMIT_NOFILE = 8
    RLIM_INFINITY = -1

    def __init__(self) -> None:
        self.soft = 256

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.RLIM_INFINITY

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if limits[0] > 10240:  # what macOS does above OPEN_MAX
            raise ValueError("current limit exceeds maximum limit")
        self.soft = limits[0]


def test_macos_open_file_limit_is_raised_to_what_macos_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat.broker import server

    fake = FakeResource()
    monkeypatch.setattr(server, "resource", fake)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert server.raise_file_limit() == ""  # 10240 files: room for about 5000 clients, no warning
    assert fake.soft == server.MACOS_OPEN_MAX
