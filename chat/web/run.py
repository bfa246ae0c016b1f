"""Running the web gateway: on its own (``python -m chat.web``) or beside a broker (``broker.py --web``)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Awaitable, Callable, TextIO

from chat.client.host import BrokerAddress
from chat.web.server import run_gateway

WEB_KEY = "web"  # the gateway's own CURVE key pair, in the key folder
STOP_TIMEOUT = 5.0  # seconds the broker waits for its gateway thread to end


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``PORT`` (every interface) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "0.0.0.0", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError("give HOST:PORT, such as 0.0.0.0:8080 (port 0: any free port)")
    return host, int(port)


def tls_context(cert: Path | None, key: Path | None, flags: str = "--web") -> ssl.SSLContext | None:
    """TLS for a gateway's listener (HTTPS and WSS for browsers, TLS for IRC clients), from a
    certificate and its key (PEM files), given as ``{flags}-cert`` and ``{flags}-key``."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError(f"give both {flags}-cert and {flags}-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def shown_url(url: str) -> str:
    """A URL on every interface names this machine instead, as a person on the LAN opens it."""
    for anywhere in ("//0.0.0.0:", "//[::]:"):
        url = url.replace(anywhere, f"//{socket.gethostname()}:")
    return url


def announce(url: str, out: TextIO) -> None:
    shown = shown_url(url)
    serving = f" (serving {url})" if shown != url else ""
    print(f"web: the web client is at {shown}{serving}", file=out, flush=True)


def serve(broker: BrokerAddress, host: str, port: int, *, context: ssl.SSLContext | None, history_lines: int,
          max_sessions: int, per_address: int, ping: float, out: TextIO = sys.stdout) -> int:
    """Run the gateway in this thread until Ctrl-C or SIGTERM."""
    return serve_until_stopped(
        "web",
        host,
        port,
        lambda stop: run_gateway(broker, host, port, stop=stop, ready=lambda url: announce(url, out),
                                 ssl_context=context, history_lines=history_lines, max_sessions=max_sessions,
                                 per_address=per_address, ping=ping),
        out,
    )


def serve_until_stopped(
    label: str, host: str, port: int, gateway: Callable[[asyncio.Event], Awaitable[None]], out: TextIO
) -> int:
    """Run a gateway's coroutine (``gateway(stop)``) in this thread until Ctrl-C or SIGTERM; 1 when it
    cannot listen. What ``python -m chat.web`` and ``python -m chat.irc`` both do."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
            except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises KeyboardInterrupt instead
                pass
        await gateway(stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"{label}: cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"{label}: stopped", file=out, flush=True)
    return 0


class GatewayThread:
    """A gateway beside a broker, in a thread of the broker's process with its own event loop.

    ``run(stop, ready)`` is the gateway's coroutine: it serves until ``stop`` is set and calls ``ready``
    once it listens (the web and the IRC gateway both run this way)."""

    def __init__(self, label: str, run: Callable[[asyncio.Event, Callable[[], None]], Awaitable[None]]) -> None:
        self.label = label
        self._run_gateway = run
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"{label} gateway", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(STOP_TIMEOUT)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self._run_gateway(self._stop, self._started.set)

        try:
            asyncio.run(main())
        except OSError as exc:
            self.error = exc
            print(f"{self.label}: cannot listen: {exc}", file=sys.stderr, flush=True)
        finally:
            self._started.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop ended in between
                pass
        self._thread.join(STOP_TIMEOUT)


def web_thread(broker: BrokerAddress, host: str, port: int, *, context: ssl.SSLContext | None,
               out: TextIO = sys.stdout) -> GatewayThread:
    """The web gateway beside a broker (``broker.py --web``)."""

    async def run(stop: asyncio.Event, started: Callable[[], None]) -> None:
        def ready(url: str) -> None:
            announce(url, out)
            started()

        await run_gateway(broker, host, port, stop=stop, ready=ready, ssl_context=context)

    return GatewayThread("web", run)
