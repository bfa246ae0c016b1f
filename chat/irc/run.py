"""Running the IRC gateway: on its own (``python -m chat.irc``) or beside a broker (``broker.py --irc``)."""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import Any, Callable, TextIO

from chat.client.host import BrokerAddress
from chat.irc.server import run_gateway
from chat.web.run import GatewayThread, serve_until_stopped

IRC_KEY = "irc"  # the gateway's own CURVE key pair, in the key folder


def announce(host: str, port: int, out: TextIO, tls: bool = False) -> None:
    shown = f"[{host}]" if ":" in host else host
    print(f"irc: IRC clients connect to {shown}:{port}" + (" (TLS)" if tls else ""), file=out, flush=True)


def serve(broker: BrokerAddress, host: str, port: int, *, out: TextIO = sys.stdout,
          ssl_context: ssl.SSLContext | None = None, **options: Any) -> int:
    """Run the gateway in this thread until Ctrl-C or SIGTERM."""
    tls = ssl_context is not None
    return serve_until_stopped(
        "irc",
        host,
        port,
        lambda stop: run_gateway(broker, host, port, stop=stop, ready=lambda h, p: announce(h, p, out, tls),
                                 ssl_context=ssl_context, **options),
        out,
    )


def irc_thread(broker: BrokerAddress, host: str, port: int, *, out: TextIO = sys.stdout,
               context: ssl.SSLContext | None = None) -> GatewayThread:
    """The IRC gateway beside a broker (``broker.py --irc``)."""

    async def run(stop: asyncio.Event, started: Callable[[], None]) -> None:
        def ready(listen_host: str, listen_port: int) -> None:
            announce(listen_host, listen_port, out, context is not None)
            started()

        await run_gateway(broker, host, port, stop=stop, ready=ready, ssl_context=context)

    return GatewayThread("irc", run)
