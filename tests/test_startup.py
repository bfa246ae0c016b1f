"""Starting up: --version, and bad input at start-up (a port in use, a data folder or --db that cannot be
used) giving one clear line on stderr, a non-zero exit code, and nothing written."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Iterator

import pytest

import conftest
from chat import __version__
from conftest import HOST, Processes

EXIT_FAILED, EXIT_USAGE = 1, 2


@pytest.mark.timeout(20)
@pytest.mark.parametrize("script", ["broker.py", "client.py"])
def test_version_names_the_program_and_the_protocol(procs: Processes, script: str) -> None:
    shown = procs.process(script, "--version")
    shown.assert_exit(0)
    assert shown.stdout() == [f"{script} {__version__} (protocol chat/2)"]


@pytest.fixture
def port_in_use() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that something else is listening on."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((HOST, 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def one_line(procs: Processes, pattern: str, code: int, *args: str) -> None:
    broker = procs.process("broker.py", "--host", HOST, *args)
    broker.assert_exit(code, timeout=10)
    errors = broker.stderr()
    assert len(errors) == 1 and re.fullmatch(pattern, errors[0]), broker.describe()
    assert not any(line.startswith("broker: listening") for line in broker.stdout()), broker.describe()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("which", ["--port", "--pub-port"])
def test_a_port_in_use_is_named_and_no_history_is_made(
    procs: Processes, port_in_use: int, tmp_path: Path, which: str
) -> None:
    other = "--pub-port" if which == "--port" else "--port"
    db = tmp_path / "history.db"
    socket_kind = "ROUTER" if which == "--port" else "PUB"
    one_line(
        procs,
        rf"broker: cannot listen on tcp://127\.0\.0\.1:{port_in_use} \({socket_kind}\): Address already in use; "
        rf"is another broker running\? choose another port with {which}",
        EXIT_FAILED,
        which, str(port_in_use), other, "0", "--db", str(db),
    )
    assert list(tmp_path.iterdir()) == []  # the history file is opened only once both ports are ours


@pytest.mark.timeout(20)
def test_a_data_folder_that_cannot_be_made_is_named(
    procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default history goes in the data folder; here a file stands where a folder must be made
    (which no user, root included, can get past)."""
    (tmp_path / "a-file").write_text("in the way")
    monkeypatch.setitem(conftest._HOME_OVERRIDES, "XDG_DATA_HOME", str(tmp_path / "a-file" / "data"))
    folder = tmp_path / "a-file" / "data" / "lanchat"
    one_line(procs, rf"broker: cannot make the data folder {re.escape(str(folder))}: Not a directory",
             EXIT_FAILED, "--port", "0", "--pub-port", "0")
    assert (tmp_path / "a-file").read_text() == "in the way"


@pytest.mark.timeout(20)
def test_a_db_that_is_not_a_database_is_named_and_left_alone(procs: Processes, tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_bytes(b"my notes, not a database\n" * 50)
    one_line(procs, rf"broker: cannot use the history database: {re.escape(str(db))}: file is not a database",
             EXIT_FAILED, "--port", "0", "--pub-port", "0", "--db", str(db))
    assert db.read_bytes() == b"my notes, not a database\n" * 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no -wal or -shm beside it
