"""Running the IRC gateway: on its own (``python -m chat.irc``) or beside a broker (``broker.py --irc``)."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, Callable, TextIO

from chat.client.host import BrokerAddress
from chat.irc.server import run_gateway
from chat.web.run import GatewayThread

IRC_KEY = "irc"  # the gateway's own CURVE key pair, in the key folder


def announce(host: str, port: int, out: TextIO) -> None:
    shown = f"[{host}]" if ":" in host else host
    print(f"irc: IRC clients connect to {shown}:{port}", file=out, flush=True)


def serve(broker: BrokerAddress, host: str, port: int, *, out: TextIO = sys.stdout, **options: Any) -> int:
    """Run the gateway in this thread until Ctrl-C or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises KeyboardInterrupt instead
                pass
        await run_gateway(broker, host, port, stop=stop, ready=lambda h, p: announce(h, p, out), **options)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"irc: cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 1
    print("irc: stopped", file=out, flush=True)
    return 0


def irc_thread(broker: BrokerAddress, host: str, port: int, *, out: TextIO = sys.stdout) -> GatewayThread:
    """The IRC gateway beside a broker (``broker.py --irc``)."""

    async def run(stop: asyncio.Event, started: Callable[[], None]) -> None:
        def ready(listen_host: str, listen_port: int) -> None:
            announce(listen_host, listen_port, out)
            started()

        await run_gateway(broker, host, port, stop=stop, ready=ready)

    return GatewayThread("irc", run)
