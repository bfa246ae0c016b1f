"""``python -m chat.irc --host BROKER --listen 0.0.0.0:6667``: the IRC gateway on its own machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chat.client.driver import ClientCurve
from chat.client.host import HISTORY_LINES, MAX_SESSIONS, MAX_SESSIONS_PER_ADDRESS, BrokerAddress
from chat.irc.run import IRC_KEY, serve
from chat.irc.server import PING_INTERVAL, PING_TIMEOUT, SEND_QUEUE, SLOW_TIMEOUT, Limits
from chat.keys import KeyFileError, default_key_dir, ensure_keypair, parse_public_key
from chat.web.run import listen_address, tls_context

DEFAULT_BROKER_PORT = 5555


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat.irc", description="Let IRC clients join the chat: one broker session per IRC connection."
    )
    parser.add_argument("--host", default="127.0.0.1", help="the broker's host name or address (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT, help="the broker's ROUTER port (default %(default)s)")
    parser.add_argument("--listen", type=listen_address, default=("0.0.0.0", 6667), metavar="HOST:PORT",
                        help="where IRC clients connect (default 0.0.0.0:6667; port 0: any free port)")
    parser.add_argument("--history", type=int, default=HISTORY_LINES, metavar="N",
                        help="recent lines played back on joining a channel (default %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=MAX_SESSIONS, metavar="N",
                        help="IRC connections at once (default %(default)s)")
    parser.add_argument("--max-per-address", type=int, default=MAX_SESSIONS_PER_ADDRESS, metavar="N",
                        help="IRC connections from one address (default %(default)s)")
    parser.add_argument("--ping-interval", type=float, default=PING_INTERVAL, metavar="SECONDS",
                        help="silence before the gateway PINGs a client (default %(default)g)")
    parser.add_argument("--ping-timeout", type=float, default=PING_TIMEOUT, metavar="SECONDS",
                        help="then silence before it drops the client (default %(default)g)")
    parser.add_argument("--send-queue", type=int, default=SEND_QUEUE, metavar="BYTES",
                        help="bytes waiting for a slow client before the gateway stops reading for it (default %(default)s)")
    parser.add_argument("--slow-timeout", type=float, default=SLOW_TIMEOUT, metavar="SECONDS",
                        help="how long a client may stay that slow before it is dropped (default %(default)g)")
    parser.add_argument("--server-key", metavar="KEY_OR_FILE",
                        help="the broker runs --secure: its public key (write --server-key=KEY)")
    parser.add_argument("--key-dir", type=Path, default=None,
                        help=f"where the gateway's key pair ({IRC_KEY}) is kept (default {default_key_dir()})")
    parser.add_argument("--irc-cert", type=Path, help="IRC over TLS: the certificate (PEM)")
    parser.add_argument("--irc-key", type=Path, help="IRC over TLS: the certificate's private key (PEM)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    curve = None
    try:
        context = tls_context(args.irc_cert, args.irc_key, "--irc")
    except (OSError, ValueError) as exc:
        parser().error(str(exc))
    if args.server_key:
        try:
            public, secret, created = ensure_keypair(args.key_dir or default_key_dir(), IRC_KEY)
            curve = ClientCurve(parse_public_key(args.server_key), public, secret)
        except (OSError, KeyFileError, ValueError) as exc:
            parser().error(str(exc))
        if created:
            print(f"irc: made the gateway's key pair; public key {public.decode()}", file=sys.stderr)
    host, port = args.listen
    return serve(BrokerAddress(args.host, args.port, curve), host, port, history_lines=args.history,
                 max_sessions=args.max_sessions, per_address=args.max_per_address, ssl_context=context,
                 limits=Limits(args.ping_interval, args.ping_timeout, args.send_queue, args.slow_timeout))


if __name__ == "__main__":
    sys.exit(main())
