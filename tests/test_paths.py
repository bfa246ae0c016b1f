"""Where files go: every path the program writes comes from chat/paths.py, per platform (platformdirs),
with the folders of earlier versions still used where they exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from platformdirs.macos import MacOS
from platformdirs.windows import Windows

import conftest
from chat import paths
from conftest import REPO, Broker, Processes, said

# What only chat/paths.py may use to find a place in the user's home.
HOME_FINDERS = {"expanduser", "home", "user_config_dir", "user_data_dir", "user_config_path", "user_data_path"}
HOME_STRINGS = re.compile(r"XDG_|APPDATA|\.config|\.local|^~")


def _home_lookups(source: str) -> list[str]:
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}  # may name folders
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in HOME_FINDERS:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and HOME_STRINGS.search(node.value):
            if id(node) not in docstrings:
                found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"line {node.lineno}: import {n}" for n in names if n.split(".")[0] == "platformdirs"]
    return found


def test_only_chat_paths_finds_places_in_the_users_home() -> None:
    offenders = {}
    for module in sorted((REPO / "chat").rglob("*.py")):
        if module == REPO / "chat" / "paths.py":
            continue
        found = _home_lookups(module.read_text())
        if found:
            offenders[str(module.relative_to(REPO))] = found
    assert offenders == {}, f"build user paths through chat.paths only: {offenders}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of our own, with no XDG variables: the defaults of each platform apply."""
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_macos_uses_application_support_unless_only_the_old_linux_folders_exist(home: Path) -> None:
    mac = MacOS(paths.APP, appauthor=False)
    support = home / "Library" / "Application Support" / "lanchat"
    assert paths.key_dir(mac) == support / "keys"
    assert paths.known_brokers_file(mac) == support / "known_brokers"
    assert paths.history_db(mac) == support / "history.db"

    # An earlier version wrote the Linux folders on a Mac: they are still read, so nothing is lost.
    (home / ".config" / "lanchat" / "keys").mkdir(parents=True)
    (home / ".config" / "lanchat" / "known_brokers").write_text("")
    (home / ".local" / "share" / "lanchat").mkdir(parents=True)
    (home / ".local" / "share" / "lanchat" / "history.db").write_bytes(b"")
    assert paths.key_dir(mac) == home / ".config" / "lanchat" / "keys"
    assert paths.known_brokers_file(mac) == home / ".config" / "lanchat" / "known_brokers"
    assert paths.history_db(mac) == home / ".local" / "share" / "lanchat" / "history.db"

    (support / "keys").mkdir(parents=True)  # once the new one exists, it wins
    assert paths.key_dir(mac) == support / "keys"


def test_windows_keeps_keys_in_appdata_and_the_history_in_localappdata(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIN_PD_OVERRIDE_APPDATA", r"C:\Users\ann\AppData\Roaming")
    monkeypatch.setenv("WIN_PD_OVERRIDE_LOCAL_APPDATA", r"C:\Users\ann\AppData\Local")
    roaming = Windows(paths.APP, appauthor=False, roaming=True)
    local = Windows(paths.APP, appauthor=False, roaming=False)
    # (On this system the parts are joined with "/"; on Windows with "\\".)
    assert re.fullmatch(r"C:\\Users\\ann\\AppData\\Roaming[\\/]lanchat/keys", str(paths.key_dir(roaming)))
    assert re.fullmatch(r"C:\\Users\\ann\\AppData\\Roaming[\\/]lanchat/known_brokers",
                        str(paths.known_brokers_file(roaming)))
    assert re.fullmatch(r"C:\\Users\\ann\\AppData\\Local[\\/]lanchat/history.db", str(paths.history_db(local)))


def test_linux_paths_are_those_of_earlier_versions(home: Path) -> None:
    assert paths.key_dir() == home / ".config" / "lanchat" / "keys"
    assert paths.known_brokers_file() == home / ".config" / "lanchat" / "known_brokers"
    assert paths.history_db() == home / ".local" / "share" / "lanchat" / "history.db"


@pytest.mark.timeout(30)
def test_broker_and_client_write_only_where_chat_paths_says(
    procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secure broker and a client with no --db and no --key-dir: every file they make in their home
    is one that chat.paths names (this test's process computes them with the same environment)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg"), "XDG_DATA_HOME": str(home / "data")}
    for var, value in env.items():
        monkeypatch.setitem(conftest._HOME_OVERRIDES, var, value)
        monkeypatch.setenv(var, value)
    broker = procs.listening(Broker(timeout=5.0, extra=("--secure",), default_db=True))
    assert f"broker: history in {paths.history_db()}" in broker.stdout()  # printed before listening
    key = broker.expect(r"--server-key='?(?P<key>[^' ]{40})'?$")["key"]
    alice = procs.join("alice", broker, f"--server-key={key}")
    bob = procs.join("bob", broker, f"--server-key={key}")
    alice.send("files?")
    bob.expect(said("alice", "files?"))
    for client in (alice, bob):
        client.close_stdin()
        client.assert_exit(0)
    assert broker.stop() == 0

    written = sorted(p for p in home.rglob("*") if p.is_file())
    allowed = {paths.key_dir(), paths.history_db().parent}
    stray = [p for p in written if not any(folder in p.parents for folder in allowed)]
    assert written and stray == [], f"written outside chat.paths' folders: {stray} (all: {written})"
    assert {p.name for p in written} >= {"broker.key", "broker.key_secret", "client.key", "client.key_secret"}
