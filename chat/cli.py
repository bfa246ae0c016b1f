"""Command lines of ``broker.py`` and ``client.py`` (a public interface: flags are added, never changed)."""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
from pathlib import Path

from chat.broker.core import SESSION_TIMEOUT
from chat.broker.server import PUB_HWM
from chat.client.core import ClientCore

DEFAULT_PORT = 5555
DEFAULT_PUB_PORT = 5556
DEFAULT_HISTORY_LINES = 20


def default_db() -> str:
    """Where the broker keeps its history unless told otherwise: the user's data folder (XDG)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "lanchat", "history.db")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is a number from 0 to 65535 (0: any free port)")
    return port


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("give a number of seconds from 0.1 to 3600")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("give a count of 0 or more")
    return value


def _db_path(text: str) -> str:
    if text == ":memory:":
        return text
    parent = Path(text).expanduser().resolve().parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {parent} does not exist")
    return text


def broker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker.py", description="Run the chat broker: a ROUTER for requests and a PUB for the fan-out."
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0: every interface)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="ROUTER port (default 5555; 0: any)")
    parser.add_argument("--pub-port", type=_port, default=DEFAULT_PUB_PORT, help="PUB port (default 5556; 0: any)")
    parser.add_argument(
        "--db",
        type=_db_path,
        default=None,
        help=f"history database file (default {default_db()}; :memory: keeps none after a stop)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=SESSION_TIMEOUT,
        help=f"seconds of silence before a client is dropped as gone (default {SESSION_TIMEOUT:g})",
    )
    parser.add_argument(
        "--pub-hwm",
        type=_count,
        default=PUB_HWM,
        metavar="N",
        help=f"events queued per slow subscriber before it must fetch them again (default {PUB_HWM})",
    )
    return parser


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="client.py", description="Join a chat broker.")
    parser.add_argument("--host", default="127.0.0.1", help="the broker's host name or address (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="the broker's ROUTER port (default 5555)")
    parser.add_argument("--name", help="your user name (asked for when not given)")
    parser.add_argument(
        "--history",
        type=_count,
        default=DEFAULT_HISTORY_LINES,
        metavar="N",
        help=f"recent lines to show on joining (default {DEFAULT_HISTORY_LINES}; 0 for none)",
    )
    parser.add_argument("--plain", action="store_true", help="plain line mode even on a terminal")
    return parser


def broker_main(argv: list[str] | None = None) -> int:
    args = broker_parser().parse_args(argv)
    from chat.broker.history import MemoryHistory
    from chat.broker.server import serve
    from chat.store import SqliteHistory

    if args.db == ":memory:":
        history: MemoryHistory | SqliteHistory = MemoryHistory()
    else:
        path = args.db or default_db()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            history = SqliteHistory(path)
        except sqlite3.Error as exc:
            print(f"broker: cannot open the history database {path}: {exc}", file=sys.stderr)
            return 1
        print(f"broker: history in {path}", flush=True)
    try:
        return serve(
            args.host, args.port, args.pub_port, session_timeout=args.timeout, history=history, pub_hwm=args.pub_hwm
        )
    finally:
        if isinstance(history, SqliteHistory):
            history.close()


def client_main(argv: list[str] | None = None) -> int:
    args = client_parser().parse_args(argv)
    from chat.client.net import Connection
    from chat.ui.plain import LineFrontEnd, run_line_mode

    interactive = sys.stdin.isatty() and not args.plain
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    front = LineFrontEnd(sys.stdout, sys.stderr, colour=colour, interactive=interactive)
    core = ClientCore(args.name, interactive=interactive, history_lines=args.history)
    conn = Connection(core, args.host, args.port, front.show)
    # Ctrl-C and SIGTERM leave cleanly, like /quit.
    signal.signal(signal.SIGINT, lambda *_: conn.submit_eof())
    signal.signal(signal.SIGTERM, lambda *_: conn.submit_eof())
    return run_line_mode(conn, front)

