"""Every file the program keeps for its user, and where: the one place that decides (platformdirs).

- key pairs: ``CONFIG/keys``; brokers trusted on first use: ``CONFIG/known_brokers``
- the broker's default history: ``DATA/history.db``; its file store beside it: ``DATA/files``
- downloaded files: the user's downloads folder (``~/Downloads`` and the like)
- whom a client ignores (``/ignore``): ``CONFIG/ignored``; a client's logs (``--log-dir``): ``DATA/logs``

where CONFIG and DATA are ``~/.config/lanchat`` and ``~/.local/share/lanchat`` on Linux (or the XDG
variables), ``~/Library/Application Support/lanchat`` on macOS, and ``%APPDATA%\\lanchat`` and
``%LOCALAPPDATA%\\lanchat`` on Windows: keys and known brokers roam with the user's profile, a
broker's history, which can grow large, stays on its machine.

Earlier versions used the Linux folders on every system: where such a file or folder exists and the new
one does not, it is still used, so that nobody's keys, trusted brokers or history are lost by an
upgrade. No other module builds these paths (tests/test_paths.py checks).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from platformdirs.api import PlatformDirsABC

APP = "lanchat"


def platform_dirs(*, roaming: bool = True) -> PlatformDirsABC:
    """This system's folders for the program (the environment is read on every call: tests set it).
    ``roaming`` only matters on Windows: %APPDATA% rather than %LOCALAPPDATA%."""
    return platformdirs.PlatformDirs(APP, appauthor=False, roaming=roaming)


def legacy_config_dir() -> Path:
    """Where versions before platformdirs kept keys and known brokers, on every system."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / APP


def legacy_data_dir() -> Path:
    """Where versions before platformdirs kept the broker's history, on every system."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / APP


def given(text: str) -> Path:
    """A path the user typed (a flag's value), with ``~`` expanded as a shell would."""
    return Path(text).expanduser()


def _kept(new: Path, old: Path) -> Path:
    """``new``, unless only ``old`` exists (a file or folder of an earlier version, still used)."""
    # os.path.exists: False for a place we may not even look at (Path.exists raises PermissionError)
    return old if not os.path.exists(new) and os.path.exists(old) else new


def key_dir(dirs: PlatformDirsABC | None = None) -> Path:
    """The folder of this user's CURVE key pairs (clients and brokers)."""
    dirs = dirs or platform_dirs()
    return _kept(Path(dirs.user_config_dir) / "keys", legacy_config_dir() / "keys")


def known_brokers_file(dirs: PlatformDirsABC | None = None) -> Path:
    """The brokers' keys trusted on first use (``host:port key`` lines)."""
    dirs = dirs or platform_dirs()
    return _kept(Path(dirs.user_config_dir) / "known_brokers", legacy_config_dir() / "known_brokers")


def history_db(dirs: PlatformDirsABC | None = None) -> Path:
    """The broker's default history database (``--db``)."""
    dirs = dirs or platform_dirs(roaming=False)
    return _kept(Path(dirs.user_data_dir) / "history.db", legacy_data_dir() / "history.db")


def ignore_file(dirs: PlatformDirsABC | None = None) -> Path:
    """The users a client hides (``/ignore``), one name a line: kept with the user's settings."""
    dirs = dirs or platform_dirs()
    return Path(dirs.user_config_dir) / "ignored"


def log_dir(dirs: PlatformDirsABC | None = None) -> Path:
    """The default folder of a client's logs (``--log-dir``), one file per room per day: these grow,
    so they stay on this machine, beside the history."""
    dirs = dirs or platform_dirs(roaming=False)
    return Path(dirs.user_data_dir) / "logs"


def file_store(db: Path) -> Path:
    """The broker's file store (shared files): a folder beside its history database."""
    return db.parent / "files"


def downloads_dir(dirs: PlatformDirsABC | None = None) -> Path:
    """Where downloaded files go without --download-dir: the platform's downloads folder."""
    dirs = dirs or platform_dirs()
    return Path(dirs.user_downloads_dir)
