"""Command lines of ``broker.py`` and ``client.py`` (a public interface: flags are added, never changed)."""

from __future__ import annotations

import argparse
import io
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from chat import __version__
from chat import protocol as p
from chat.broker.core import MAX_SESSIONS, SESSION_TIMEOUT
from chat.broker.history import History, MemoryHistory
from chat.broker.limits import BURST, JOIN_BURST, JOIN_RATE, MAX_PER_ADDRESS, RATE
from chat.client.core import ClientCore
from chat.client.events import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from chat.client.net import ClientCurve
from chat.client.personal import IgnoreList
from chat.defaults import DEFAULT_PORT, DEFAULT_PUB_PORT, PUB_HWM
from chat.discovery import BEACON_PORT, LISTEN_TIME
from chat.errors import StartupError, StoreError
from chat.keys import BROKER_KEY, CLIENT_KEY, KeyFileError, default_key_dir, ensure_keypair, parse_public_key
from chat.paths import downloads_dir, file_store, given, history_db, ignore_file, log_dir
from chat.ui.logs import ChatLogs, logging_to

if TYPE_CHECKING:
    from chat.broker.files import FileService
    from chat.broker.server import Curve
    from chat.client.host import BrokerAddress

DEFAULT_HISTORY_LINES = 20
# The client command a broker prints for its users, after how the broker itself was started.
CLIENT_LAUNCHERS = {"broker.py": "python client.py", "lanchat-broker": "lanchat"}


def _version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} (protocol {p.PROTOCOL_TAG.decode()})"
    )


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is a number from 0 to 65535 (0: any free port)")
    return port


def _client_port(text: str) -> int:
    port = _port(text)
    if port == 0:
        raise argparse.ArgumentTypeError("give the broker's port, a number from 1 to 65535")
    return port


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("give a number of lines a second, 0 or more (0: no limit)")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("give a number of 1 or more")
    return value


def _name(text: str) -> str:
    problem = p.name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


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
    if not text.startswith("#"):
        # --room dev is #dev: unquoted, a shell takes '--room #dev' for '--room' and a comment
        text = "#" + text
    problem = p.room_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return p.room_key(text)


def _db_path(text: str) -> str:
    if text == ":memory:":
        return text
    path = given(text)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {parent} does not exist")
    return str(path)


def _size(text: str) -> int:
    from chat.broker.files import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError("give a number of bytes, or one with K, M or G (100M, 2G)") from None


def _days(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError("give a number of days above 0, up to 3650")
    return value


def _byte_rate(text: str) -> int:
    return _size(text)


def broker_parser(prog: str = "broker.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run the chat broker: a ROUTER for requests and a PUB for the fan-out."
    )
    _version(parser)
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0: every interface)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="ROUTER port (default 5555; 0: any)")
    parser.add_argument("--pub-port", type=_port, default=DEFAULT_PUB_PORT, help="PUB port (default 5556; 0: any)")
    parser.add_argument(
        "--db",
        type=_db_path,
        default=None,
        help=f"history database file (default {history_db()}; :memory: keeps none after a stop)",
    )
    parser.add_argument(
        "--no-search-index",
        action="store_true",
        help="do not index new lines for /search (saves disk and CPU; lines stored meanwhile are never found)",
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
    limits.add_argument("--max-sessions", type=_at_least_one, default=MAX_SESSIONS, metavar="N", help="users at once (default %(default)s)")
    limits.add_argument(
        "--max-text",
        type=_text_limit,
        default=p.MAX_TEXT_CHARS,
        metavar="N",
        help=f"characters in one message (default and most {p.MAX_TEXT_CHARS})",
    )
    limits.add_argument("--rate", type=_rate, default=RATE, help="lines a user may send per second (default %(default)g; 0: no limit)")
    limits.add_argument("--burst", type=_at_least_one, default=BURST, help="lines a user may send at once (default %(default)s)")
    limits.add_argument(
        "--max-per-address",
        type=_count,
        default=MAX_PER_ADDRESS,
        metavar="N",
        help="users at once from one source address (default %(default)s; 0: no limit)",
    )
    limits.add_argument(
        "--join-rate",
        type=_rate,
        default=JOIN_RATE,
        metavar="R",
        help="joins and room changes a second from one source address (default %(default)g; 0: no limit)",
    )
    limits.add_argument(
        "--join-burst", type=_at_least_one, default=JOIN_BURST, metavar="N", help="... and at once (default %(default)s)"
    )
    from chat.broker.files import FILE_DAYS, FILE_QUOTA, MAX_FILE_SIZE, UPLOAD_TIMEOUT

    files = parser.add_argument_group("file sharing")
    files.add_argument("--file-dir", type=Path, metavar="DIR", help="where shared files are kept (default: beside --db; with :memory:, a temporary folder)")
    files.add_argument("--max-file-size", type=_size, default=MAX_FILE_SIZE, metavar="BYTES", help="largest file a user may send (default 100M; K, M, G suffixes)")
    files.add_argument("--file-quota", type=_size, default=FILE_QUOTA, metavar="BYTES", help="all shared files together; the oldest go first (default 2G)")
    files.add_argument("--file-days", type=_days, default=FILE_DAYS, metavar="DAYS", help="days a shared file is kept (default %(default)g)")
    files.add_argument("--upload-timeout", type=_seconds, default=UPLOAD_TIMEOUT, metavar="SECONDS", help="an upload silent this long is dropped with its partial data (default %(default)g)")
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
    webgroup = parser.add_argument_group("web client")
    webgroup.add_argument("--web", type=_port, metavar="PORT", help="also serve the web client on this port (of --host)")
    webgroup.add_argument("--web-cert", type=Path, help="serve the web client over HTTPS: the certificate (PEM)")
    webgroup.add_argument("--web-key", type=Path, help="serve the web client over HTTPS: the certificate's key (PEM)")
    ircgroup = parser.add_argument_group("IRC gateway")
    ircgroup.add_argument("--irc", type=_port, metavar="PORT", help="also let IRC clients connect on this port (of --host)")
    ircgroup.add_argument("--irc-cert", type=Path, help="IRC over TLS: the certificate (PEM)")
    ircgroup.add_argument("--irc-key", type=Path, help="IRC over TLS: the certificate's private key (PEM)")
    return parser


def _text_limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= p.MAX_TEXT_CHARS:
        raise argparse.ArgumentTypeError(f"give a number from 1 to {p.MAX_TEXT_CHARS}")
    return value


def client_parser(prog: str = "client.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Join a chat broker.")
    _version(parser)
    parser.add_argument(
        "--host",
        default=None,
        help="the broker's host name or address (default: a broker heard announcing itself on the LAN, else 127.0.0.1)",
    )
    parser.add_argument("--port", type=_client_port, default=None, help="the broker's ROUTER port (default 5555)")
    parser.add_argument("--name", type=_name, help="your user name (asked for when not given)")
    parser.add_argument(
        "--history",
        type=_count,
        default=DEFAULT_HISTORY_LINES,
        metavar="N",
        help=f"recent lines to show on joining (default {DEFAULT_HISTORY_LINES}; 0 for none)",
    )
    parser.add_argument("--plain", action="store_true", help="plain line mode even on a terminal")
    parser.add_argument(
        "--room", type=_room, default=p.DEFAULT_ROOM,
        help=f"the room to start in (default {p.DEFAULT_ROOM}; the '#' may be left out)",
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
    parser.add_argument(
        "--download-dir", type=Path, default=None, metavar="DIR",
        help=f"where /get saves files (default {downloads_dir()})",
    )
    parser.add_argument(
        "--file-rate", type=_byte_rate, default=0, metavar="BYTES",
        help="at most this many bytes a second for file transfers (K, M, G suffixes; default 0: no limit)",
    )
    _personal_flags(parser)
    return parser


def _personal_flags(parser: argparse.ArgumentParser) -> None:
    """The client's own habits: the bell on a mention, and its logs (chat.ui.logs)."""
    parser.add_argument(
        "--no-bell", action="store_true",
        help="no terminal bell when a line mentions your name (plain mode rings it on stderr, only on a terminal)",
    )
    logs = parser.add_mutually_exclusive_group()
    logs.add_argument(
        "--log-dir", type=given, default=None, metavar="DIR",
        help=f"keep a log per room and private talk per day in DIR (default {log_dir()})",
    )
    logs.add_argument("--no-log", action="store_true", help="keep no log")


def broker_main(argv: list[str] | None = None, prog: str = "broker.py") -> int:
    parser = broker_parser(prog)
    args = parser.parse_args(argv)
    from chat.broker.core import Broker
    from chat.broker.server import Announce, BrokerServer, Curve, raise_file_limit, serve

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

    def notice(text: str) -> None:  # the operator hears of a limit being hit (each says how often)
        print(f"broker: {text}", file=sys.stderr, flush=True)

    warning = raise_file_limit()
    if warning:
        print(f"broker: warning: {warning}", file=sys.stderr, flush=True)
    # The ports first: a broker that cannot listen must not create or touch a history file.
    try:
        server = BrokerServer(
            args.host, args.port, args.pub_port, pub_hwm=args.pub_hwm, curve=curve, notice=notice,
            unlimited=LOOPBACK if args.web is not None or args.irc is not None else frozenset(),
        )
    except StartupError as exc:
        return _cannot_start(exc)
    try:
        history = open_history(args.db, index=not args.no_search_index)
    except StartupError as exc:
        server.close()
        return _cannot_start(exc)
    try:
        files = open_files(args)
    except StartupError as exc:
        server.close()
        history.close()
        return _cannot_start(exc)
    announce = None
    if args.announce:
        import socket

        announce = Announce(args.announce_to, args.beacon_port, args.name or socket.gethostname())
    broker = Broker(
        pub_port=server.pub_port,
        history=history,
        session_timeout=args.timeout,
        max_sessions=args.max_sessions,
        max_text=args.max_text,
        rate=args.rate,
        burst=args.burst,
        max_per_address=args.max_per_address,
        join_rate=args.join_rate,
        join_burst=args.join_burst,
        notice=notice,
        warn=notice,
        files=files,
    )
    server.attach(broker)
    starters: list[Callable[[int], Callable[[], None]]] = []
    if args.web is not None:
        try:
            starters.append(web_beside(args, curve))
        except (OSError, KeyFileError, ValueError) as exc:
            parser.error(f"--web: {exc}")
    if args.irc is not None:
        try:
            starters.append(irc_beside(args, curve))
        except (OSError, KeyFileError, ValueError) as exc:
            parser.error(f"--irc: {exc}")
    beside = all_beside(starters) if starters else None
    try:
        return serve(
            server, announce=announce, launcher=CLIENT_LAUNCHERS.get(prog, "python client.py"), beside=beside
        )
    finally:
        files.close()
        history.close()


LOOPBACK = frozenset({"127.0.0.1", "::1"})  # where the broker's own gateways connect from


def open_files(args: argparse.Namespace) -> "FileService":
    """The broker's file store: --file-dir, else beside the history (a temporary folder for :memory:)."""
    import tempfile

    from chat.broker.files import FileService

    temporary = args.file_dir is None and args.db == ":memory:"
    if args.file_dir is not None:
        folder = given(str(args.file_dir))
    elif temporary:
        folder = Path(tempfile.mkdtemp(prefix="lanchat-files-"))
    else:
        folder = file_store(Path(args.db) if args.db else history_db())
    try:
        service = FileService(
            folder, max_file_size=args.max_file_size, quota=args.file_quota, days=args.file_days,
            upload_timeout=args.upload_timeout, temporary=temporary,
        )
    except OSError as exc:
        raise StartupError(f"cannot keep files in {folder}: {exc.strerror or exc}") from None
    if not temporary:
        print(f"broker: shared files in {folder}", flush=True)
    return service


def _cannot_start(problem: StartupError) -> int:
    print(f"broker: {problem}", file=sys.stderr)
    return 1


def open_history(db: str | None, index: bool = True) -> History:
    """The broker's history: in memory, or the SQLite file ``db`` (default: the data folder's), made
    when new. Raises StartupError naming the file or folder that cannot be used."""
    if db == ":memory:":
        return MemoryHistory()
    from chat.broker.store import SqliteHistory

    path = Path(db) if db else history_db()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot make the data folder {path.parent}: {exc.strerror or exc}") from None
    try:
        history = SqliteHistory(str(path), index=index)
    except StoreError as exc:  # not a history database, damaged, or in use by another broker
        raise StartupError(f"cannot use the history database: {exc}") from None
    print(f"broker: history in {path}", flush=True)
    return history


def all_beside(starters: list[Callable[[int], Callable[[], None]]]) -> Callable[[int], Callable[[], None]]:
    """Start every gateway once the broker listens; stop them all, the last started first."""

    def start(router_port: int) -> Callable[[], None]:
        stops = [starter(router_port) for starter in starters]

        def stop() -> None:
            for each in reversed(stops):
                each()

        return stop

    return start


def gateway_address(args: argparse.Namespace, curve: Curve | None, key_name: str, what: str) -> Callable[[int], BrokerAddress]:
    """Where a gateway beside the broker connects: this machine, with its own key pair when the broker
    is secure (a gateway is a client like any other)."""
    from chat.client.host import BrokerAddress

    gateway_curve = None
    if curve is not None:
        key_dir = args.key_dir or default_key_dir()
        public, secret, _ = ensure_keypair(key_dir, key_name)
        gateway_curve = ClientCurve(curve.public, public, secret)
        if args.allow and not (args.allow / f"{key_name}.key").is_file():
            print(f"broker: warning: the {what} gateway's key {key_dir / (key_name + '.key')} is not in {args.allow}: "
                  f"copy it there, or {what} users cannot join", file=sys.stderr, flush=True)
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(args.host, args.host)
    return lambda router_port: BrokerAddress(local, router_port, gateway_curve)


def web_beside(args: argparse.Namespace, curve: Curve | None) -> Callable[[int], Callable[[], None]]:
    """``--web``: what starts the web gateway once the broker listens (and returns how to stop it)."""
    from chat.web.run import WEB_KEY, tls_context, web_thread

    context = tls_context(args.web_cert, args.web_key)
    address = gateway_address(args, curve, WEB_KEY, "web")

    def start(router_port: int) -> Callable[[], None]:
        gateway = web_thread(address(router_port), args.host, args.web, context=context)
        gateway.start()
        return gateway.stop

    return start


def irc_beside(args: argparse.Namespace, curve: Curve | None) -> Callable[[int], Callable[[], None]]:
    """``--irc``: what starts the IRC gateway once the broker listens (and returns how to stop it)."""
    from chat.irc.run import IRC_KEY, irc_thread
    from chat.web.run import tls_context

    context = tls_context(args.irc_cert, args.irc_key, "--irc")
    address = gateway_address(args, curve, IRC_KEY, "IRC")

    def start(router_port: int) -> Callable[[], None]:
        gateway = irc_thread(address(router_port), args.host, args.irc, context=context)
        gateway.start()
        return gateway.stop

    return start


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
    from chat.discovery import KeyChanged, listen, trust
    from chat.paths import known_brokers_file
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


def personal_files(args: argparse.Namespace) -> tuple[IgnoreList, ChatLogs | None]:
    """The ignore list kept in the config folder, and the logs (None with --no-log)."""
    ignore = IgnoreList(ignore_file())
    if ignore.problem:
        print(f"client: {ignore.problem}; ignoring nobody", file=sys.stderr)
    return ignore, None if args.no_log else ChatLogs(args.log_dir or log_dir())


def client_main(argv: list[str] | None = None, prog: str = "client.py") -> int:
    parser = client_parser(prog)
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        # Windows writes pipes in its ANSI code page, which lacks most of Unicode: a line it cannot hold
        # is shown with "?" in place of what it lacks, rather than ending the client.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
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
    ignore, logs = personal_files(args)
    if interactive and sys.stdout.isatty() and not args.plain:
        # A person at a terminal: the full-screen client. --plain on a terminal gives the line prompt below.
        from chat.ui.tui import run_tui

        tui_core = ClientCore(
            args.name, interactive=True, history_lines=args.history, room=args.room,
            download_dir=args.download_dir, file_rate=args.file_rate, ignore=ignore,
        )
        return run_tui(
            lambda show: Connection(tui_core, args.host, args.port, logging_to(logs, show), curve=curve),
            address=p.endpoint(args.host, args.port).removeprefix("tcp://"),
            encrypted=curve is not None,
            bell=not args.no_bell,
        )
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    bell = sys.stdout.isatty() and not args.no_bell  # a person reads stdout: a script gets no BEL at all
    front = LineFrontEnd(sys.stdout, sys.stderr, colour=colour, interactive=interactive, bell=bell)
    core = ClientCore(
        args.name, interactive=interactive, history_lines=args.history, room=args.room,
        download_dir=args.download_dir, file_rate=args.file_rate, ignore=ignore,
    )
    conn = Connection(core, args.host, args.port, logging_to(logs, front.show), curve=curve)
    # Ctrl-C and SIGTERM leave cleanly, like /quit.
    signal.signal(signal.SIGINT, lambda *_: conn.submit_eof())
    signal.signal(signal.SIGTERM, lambda *_: conn.submit_eof())
    return run_line_mode(conn, front)



def lanchat() -> int:
    """The ``lanchat`` command of an installed package: ``client.py`` under another name."""
    return client_main(prog="lanchat")


def lanchat_broker() -> int:
    """The ``lanchat-broker`` command of an installed package: ``broker.py`` under another name."""
    return broker_main(prog="lanchat-broker")
