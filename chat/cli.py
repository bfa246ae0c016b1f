"""Command lines of ``broker.py`` and ``client.py`` (a public interface: flags are added, never changed)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from chat import protocol as p
from chat.broker.core import BURST, MAX_SESSIONS, RATE, SESSION_TIMEOUT
from chat.broker.server import PUB_HWM
from chat.client.core import ClientCore
from chat.client.events import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from chat.client.net import ClientCurve
from chat.discovery import BEACON_PORT, LISTEN_TIME
from chat.errors import StoreError
from chat.keys import BROKER_KEY, CLIENT_KEY, KeyFileError, default_key_dir, ensure_keypair, parse_public_key

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


def _room(text: str) -> str:
    problem = p.room_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return p.room_key(text)


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
        help=f"published messages (batches of events) queued per slow subscriber before it must fetch them again (default {PUB_HWM})",
    )
    limits = parser.add_argument_group("limits and flood control")
    limits.add_argument("--max-sessions", type=_count, default=MAX_SESSIONS, metavar="N", help="users at once (default %(default)s)")
    limits.add_argument(
        "--max-text",
        type=_text_limit,
        default=p.MAX_TEXT_CHARS,
        metavar="N",
        help=f"characters in one message (default and most {p.MAX_TEXT_CHARS})",
    )
    limits.add_argument("--rate", type=float, default=RATE, help="lines a user may send per second (default %(default)g; 0: no limit)")
    limits.add_argument("--burst", type=_count, default=BURST, help="lines a user may send at once (default %(default)s)")
    security = parser.add_argument_group("encryption (CurveZMQ)")
    security.add_argument("--secure", action="store_true", help="encrypt both sockets; clients need the broker's public key")
    security.add_argument(
        "--key-dir", type=Path, default=None, help=f"where the broker's key pair is kept (default {default_key_dir()})"
    )
    security.add_argument("--allow", type=Path, metavar="DIR", help="admit only the client public keys (*.key) in DIR")
    lan = parser.add_argument_group("discovery on the LAN")
    lan.add_argument("--announce", action="store_true", help="send a UDP beacon about once a second so clients find this broker")
    lan.add_argument(
        "--announce-to",
        default="255.255.255.255",
        metavar="ADDR",
        help="where the beacon goes: a broadcast address such as 192.168.1.255 (default %(default)s)",
    )
    lan.add_argument("--beacon-port", type=_port, default=BEACON_PORT, help="UDP port of the beacon (default %(default)s)")
    lan.add_argument("--name", default=None, help="the broker's name in its beacon (default: the host name)")
    return parser


def _text_limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= p.MAX_TEXT_CHARS:
        raise argparse.ArgumentTypeError(f"give a number from 1 to {p.MAX_TEXT_CHARS}")
    return value


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="client.py", description="Join a chat broker.")
    parser.add_argument(
        "--host",
        default=None,
        help="the broker's host name or address (default: a broker heard announcing itself on the LAN, else 127.0.0.1)",
    )
    parser.add_argument("--port", type=_port, default=None, help="the broker's ROUTER port (default 5555)")
    parser.add_argument("--name", help="your user name (asked for when not given)")
    parser.add_argument(
        "--history",
        type=_count,
        default=DEFAULT_HISTORY_LINES,
        metavar="N",
        help=f"recent lines to show on joining (default {DEFAULT_HISTORY_LINES}; 0 for none)",
    )
    parser.add_argument("--plain", action="store_true", help="plain line mode even on a terminal")
    parser.add_argument(
        "--room", type=_room, default=p.DEFAULT_ROOM, help=f"the room to start in (default {p.DEFAULT_ROOM})"
    )
    parser.add_argument("--list-brokers", action="store_true", help="print the brokers heard on the LAN and exit")
    parser.add_argument(
        "--listen", type=_seconds, default=LISTEN_TIME, metavar="SECONDS",
        help=f"how long to listen for brokers without --host (default {LISTEN_TIME:g})",
    )
    parser.add_argument("--beacon-port", type=_port, default=BEACON_PORT, help="UDP port of the beacons (default %(default)s)")
    parser.add_argument(
        "--server-key",
        metavar="KEY_OR_FILE",
        help="encrypt (CURVE): the broker's public key, or its .key file (the broker prints it with --secure)",
    )
    parser.add_argument(
        "--key-dir",
        type=Path,
        default=None,
        help=f"where this client's key pair is kept, made on first use (default {default_key_dir()})",
    )
    return parser


def broker_main(argv: list[str] | None = None) -> int:
    parser = broker_parser()
    args = parser.parse_args(argv)
    from chat.broker.core import Broker
    from chat.broker.history import MemoryHistory
    from chat.broker.server import Announce, Curve, serve
    from chat.store import SqliteHistory

    curve = None
    if args.allow and not args.secure:
        parser.error("--allow needs --secure")
    if args.allow and not args.allow.is_dir():
        parser.error(f"--allow: the folder {args.allow} does not exist")
    if args.secure:
        key_dir = args.key_dir or default_key_dir()
        try:
            public, secret, created = ensure_keypair(key_dir, BROKER_KEY)
        except (OSError, KeyFileError) as exc:
            print(f"broker: cannot get a key pair in {key_dir}: {exc}", file=sys.stderr)
            return 1
        made = "made" if created else "kept"
        print(f"broker: key pair {made} in {key_dir}; public key {public.decode()}", flush=True)
        curve = Curve(public, secret, args.allow)

    if args.db == ":memory:":
        history: MemoryHistory | SqliteHistory = MemoryHistory()
    else:
        path = args.db or default_db()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            history = SqliteHistory(path)
        except StoreError as exc:
            print(f"broker: cannot use the history database: {exc}", file=sys.stderr)
            return 1
        print(f"broker: history in {path}", flush=True)
    announce = None
    if args.announce:
        import socket

        announce = Announce(args.announce_to, args.beacon_port, args.name or socket.gethostname())
    broker = Broker(
        pub_port=0,  # set once the PUB socket is bound
        history=history,
        session_timeout=args.timeout,
        max_sessions=args.max_sessions,
        max_text=args.max_text,
        rate=args.rate,
        burst=args.burst,
        warn=lambda message: print(f"broker: {message}", file=sys.stderr, flush=True),
    )
    try:
        return serve(
            args.host, args.port, args.pub_port, broker, pub_hwm=args.pub_hwm, curve=curve, announce=announce
        )
    finally:
        if isinstance(history, SqliteHistory):
            history.close()


def client_curve(args: argparse.Namespace) -> ClientCurve | None:
    """CURVE keys for the client: the broker's public key, and our own pair (made on first use)."""
    if not args.server_key:
        return None
    server_key = parse_public_key(args.server_key)
    public, secret, created = ensure_keypair(args.key_dir or default_key_dir(), CLIENT_KEY)
    if created:
        print(f"client: made this client's key pair; public key {public.decode()}", file=sys.stderr)
    return ClientCurve(server_key, public, secret)


def find_broker(args: argparse.Namespace, interactive: bool) -> int | None:
    """Settle args.host and args.port, from the LAN's beacons when no --host was given (and
    args.server_key from a beacon's key, trusted on first use). An exit code to stop with, or None."""
    from chat.discovery import KeyChanged, known_brokers_file, listen, trust
    from chat.keys import fingerprint

    if args.host is not None and not args.list_brokers:
        args.port = args.port or DEFAULT_PORT
        return None
    found = listen(args.listen, args.beacon_port)
    if args.list_brokers:
        for broker in found:
            print(broker.describe())
        if not found:
            print(f"client: heard no broker announcing itself within {args.listen:g} s", file=sys.stderr)
        return EXIT_OK if found else EXIT_UNREACHABLE
    ours = [broker for broker in found if broker.version == p.VERSION]
    if found and not ours:
        listing = "\n".join(f"  {b.describe()}" for b in found)
        print(f"client: heard only brokers of another protocol version; use a client of theirs:\n{listing}",
              file=sys.stderr)
        return EXIT_REFUSED
    found = ours
    if not found:
        print(f"client: heard no broker on the LAN within {args.listen:g} s; trying 127.0.0.1", file=sys.stderr)
        args.host, args.port = "127.0.0.1", args.port or DEFAULT_PORT
        return None
    chosen = found[0]
    if len(found) > 1:
        listing = "\n".join(f"  {i}. {b.describe()}" for i, b in enumerate(found, 1))
        if not interactive:
            print(f"client: several brokers announce themselves; choose one with --host:\n{listing}", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"brokers on the LAN:\n{listing}")
        answer = input(f"which one [1-{len(found)}]? ").strip()
        if not answer.isdigit() or not 1 <= int(answer) <= len(found):
            print("client: no broker chosen", file=sys.stderr)
            return EXIT_USAGE
        chosen = found[int(answer) - 1]
    print(f"client: found {chosen.describe()}", file=sys.stderr)
    args.host, args.port = chosen.host, args.port or chosen.port
    if chosen.key and not args.server_key:
        path = known_brokers_file()
        try:
            key, first_time = trust(chosen, path)
        except KeyChanged as exc:
            print(f"client: REFUSING TO CONNECT: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if first_time:
            print(
                f"client: first time with this broker: its key has fingerprint {fingerprint(key.encode())}; "
                f"trusting it from now on (remembered in {path})",
                file=sys.stderr,
            )
            if interactive and input("connect? [y/N] ").strip().lower() not in ("y", "yes"):
                return EXIT_REFUSED
        args.server_key = key
    return None


def client_main(argv: list[str] | None = None) -> int:
    parser = client_parser()
    args = parser.parse_args(argv)
    from chat.client.net import Connection
    from chat.ui.plain import LineFrontEnd, run_line_mode

    stop = find_broker(args, sys.stdin.isatty() and not args.list_brokers)
    if stop is not None:
        return stop
    try:
        curve = client_curve(args)
    except (OSError, KeyFileError) as exc:
        parser.error(str(exc))

    interactive = sys.stdin.isatty()
    if interactive and sys.stdout.isatty() and not args.plain:
        # A person at a terminal: the full-screen client. --plain on a terminal gives the line prompt below.
        from chat.ui.tui import run_tui

        tui_core = ClientCore(args.name, interactive=True, history_lines=args.history, room=args.room)
        return run_tui(
            lambda show: Connection(tui_core, args.host, args.port, show, curve=curve),
            address=p.endpoint(args.host, args.port).removeprefix("tcp://"),
            encrypted=curve is not None,
        )
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    front = LineFrontEnd(sys.stdout, sys.stderr, colour=colour, interactive=interactive)
    core = ClientCore(args.name, interactive=interactive, history_lines=args.history, room=args.room)
    conn = Connection(core, args.host, args.port, front.show, curve=curve)
    # Ctrl-C and SIGTERM leave cleanly, like /quit.
    signal.signal(signal.SIGINT, lambda *_: conn.submit_eof())
    signal.signal(signal.SIGTERM, lambda *_: conn.submit_eof())
    return run_line_mode(conn, front)

