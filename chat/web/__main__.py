"""``python -m chat.web --host BROKER --listen 0.0.0.0:8080``: the web gateway on its own machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chat.client.driver import ClientCurve
from chat.client.host import HISTORY_LINES, MAX_SESSIONS, MAX_SESSIONS_PER_ADDRESS, BrokerAddress
from chat.keys import KeyFileError, default_key_dir, ensure_keypair, parse_public_key
from chat.web.run import WEB_KEY, listen_address, serve, tls_context
from chat.web.server import WS_HEARTBEAT

DEFAULT_BROKER_PORT = 5555


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chat.web", description="Serve the chat's web client: one broker session per browser tab."
    )
    parser.add_argument("--host", default="127.0.0.1", help="the broker's host name or address (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT, help="the broker's ROUTER port (default %(default)s)")
    parser.add_argument("--listen", type=listen_address, default=("0.0.0.0", 8080), metavar="HOST:PORT",
                        help="where browsers connect (default 0.0.0.0:8080; port 0: any free port)")
    parser.add_argument("--history", type=int, default=HISTORY_LINES, metavar="N",
                        help="recent lines a new tab shows (default %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=MAX_SESSIONS, metavar="N",
                        help="browser tabs at once (default %(default)s)")
    parser.add_argument("--max-per-address", type=int, default=MAX_SESSIONS_PER_ADDRESS, metavar="N",
                        help="browser tabs from one address (default %(default)s)")
    parser.add_argument("--ping", type=float, default=WS_HEARTBEAT, metavar="SECONDS",
                        help="seconds between pings to each browser; one that does not answer within half of it "
                             "is dropped (default %(default)g)")
    parser.add_argument("--server-key", metavar="KEY_OR_FILE",
                        help="the broker runs --secure: its public key (write --server-key=KEY)")
    parser.add_argument("--key-dir", type=Path, default=None,
                        help=f"where the gateway's key pair ({WEB_KEY}) is kept (default {default_key_dir()})")
    parser.add_argument("--web-cert", type=Path, help="serve HTTPS: the certificate (PEM)")
    parser.add_argument("--web-key", type=Path, help="serve HTTPS: the certificate's private key (PEM)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    curve = None
    try:
        if args.server_key:
            public, secret, created = ensure_keypair(args.key_dir or default_key_dir(), WEB_KEY)
            if created:
                print(f"web: made the gateway's key pair; public key {public.decode()}", file=sys.stderr)
            curve = ClientCurve(parse_public_key(args.server_key), public, secret)
        context = tls_context(args.web_cert, args.web_key)
    except (OSError, KeyFileError, ValueError) as exc:
        parser().error(str(exc))
    host, port = args.listen
    return serve(BrokerAddress(args.host, args.port, curve), host, port, context=context, history_lines=args.history,
                 max_sessions=args.max_sessions, per_address=args.max_per_address, ping=args.ping)


if __name__ == "__main__":
    sys.exit(main())
