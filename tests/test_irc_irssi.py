"""A person in a real IRC client: Debian's irssi, in a detached tmux session, talks with a ``client.py``
user through ``broker.py --irc``. The screen is polled with a deadline, as in test_tui_tmux.py."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import HOST, Processes, acted, joined, left, private, said
from test_irc_gateway import irc_broker
from test_tui_tmux import TMUX, Tmux, tmux  # noqa: F401 (tmux: the fixture)

IRSSI = shutil.which("irssi")
pytestmark = [
    pytest.mark.skipif(TMUX is None or IRSSI is None, reason="irssi and tmux are installed by .ci/run (apt)"),
    pytest.mark.timeout(60),
]
CONFIG = 'settings = { core = { real_name = "Alice"; user_name = "alice"; nick = "alice"; }; };\n'


@pytest.fixture
def irssi_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="chat-irssi-"))
    (home / "config").write_text(CONFIG)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_an_irssi_user_and_a_terminal_user_chat_both_ways(procs: Processes, tmux: Tmux, irssi_home: Path) -> None:
    broker, port = irc_broker(procs)
    bob = procs.join("bob", broker)
    assert IRSSI is not None
    tmux.start([IRSSI, f"--home={irssi_home}", "-c", HOST, "-p", str(port), "-n", "alice"])
    bob.expect(joined("alice"))
    tmux.wait_for("the welcome", r"Welcome to the LAN chat, alice", procs)
    tmux.type("/window goto #general")
    tmux.keys("Enter")
    tmux.wait_for("the channel and its names", r"alice \[alice@lanchat\] has joined #general(.|\n)*\[ alice\] \[ bob *\]", procs)

    bob.send("hello irssi")
    tmux.wait_for("bob's line", r"^\d\d:\d\d < ?bob> hello irssi", procs)
    bob.send("/me nods")
    tmux.wait_for("bob's action", r"^\d\d:\d\d +\* bob nods", procs)
    tmux.type("hi bob, from irssi")
    tmux.keys("Enter")
    bob.expect(said("alice", "hi bob, from irssi"))
    tmux.type("/me waves")
    tmux.keys("Enter")
    bob.expect(acted("alice", "waves"))

    tmux.type("/msg bob just between us")
    tmux.keys("Enter")
    bob.expect(private("alice", "just between us"))
    bob.send("/pm alice and back")
    tmux.type("/window goto bob")
    tmux.keys("Enter")
    tmux.wait_for("bob's private line", r"^\d\d:\d\d < ?bob> and back", procs)

    tmux.type("/quit see you")
    tmux.keys("Enter")
    bob.expect(left("alice"))
    assert tmux.exit_status(procs) == 0
