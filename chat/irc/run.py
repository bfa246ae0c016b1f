"""Running the IRC gateway: on its own (``python -m chat.irc``) or beside a broker (``broker.py --irc``)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable, TextIO

from chat.client.host import BrokerAddress
from chat.irc.server import run_gateway
from chat.web.run import GatewayThread, serve_until_stopped

IRC_KEY = "irc"  # the gateway's own CURVE key pair, in the key folder


def announce(host: str, port: int, out: TextIO) -> None:
    shown = f"[{host}]" if ":" in host else host
    print(f"irc: IRC clients connect to {shown}:{port}", file=out, flush=True)


def serve(broker: BrokerAddress, host: str, port: int, *, out: TextIO = sys.stdout, **options: Any) -> int:
    """Run the gateway in this thread until Ctrl-C or SIGTERM."""
    return serve_until_stopped(
        "irc",
        host,
        port,
        lambda stop: run_gateway(broker, host, port, stop=stop, ready=lambda h, p: announce(h, p, out), **options),
        out,
    )


def irc_thread(broker: BrokerAddress, host: str, port: int, *, out: TextIO = sys.stdout) -> GatewayThread:
    """The IRC gateway beside a broker (``broker.py --irc``)."""

    async def run(stop: asyncio.Event, started: Callable[[], None]) -> None:
        def ready(listen_host: str, listen_port: int) -> None:
            announce(listen_host, listen_port, out)
            started()

        await run_gateway(broker, host, port, stop=stop, ready=ready)

    return GatewayThread("irc", run)
