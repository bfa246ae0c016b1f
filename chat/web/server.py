"""The web gateway: HTTP for the page, a WebSocket per browser tab, one client-core session per tab.

A gateway translates; it does not decide: names, time, order and rights stay with the broker. Each
tab's JSON (``chat.web.wire``) becomes input to its session (``chat.client.host``), and what the session
shows goes back as JSON. aiohttp serves both the files and the WebSockets on one port.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from importlib import resources
from typing import Any, Awaitable, Callable

from aiohttp import WSMsgType, web

from chat.client import events as ev
from chat.client.host import MAX_SESSIONS, MAX_SESSIONS_PER_ADDRESS, BrokerAddress, Session, SessionHost, SessionLimit
from chat.web import wire

WS_HEARTBEAT = 3.0  # seconds between pings to a browser: a vanished one leaves in ~4.5 s, within the broker's 5
MAX_QUEUED = 20_000  # messages waiting for a slow browser before its tab is dropped (the page resumes)
RATE = 10.0  # messages a second a tab may send on average...
BURST = 40  # ...and at once
STATIC = ("index.html", "app.js", "style.css")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# No inline script or style, no other origin, no framing: text that slipped into markup could not run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Bucket:
    """Token bucket: ``take`` is False when the tab sends faster than RATE with bursts of BURST."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Tab:
    """One browser tab: its WebSocket, its session, and what waits to be sent to it."""

    def __init__(self, host: SessionHost, address: str, send: Callable[[str], Awaitable[None]]) -> None:
        self.host = host
        self.address = address
        self._send = send
        self.session: Session | None = None
        self.outbox: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.bucket = Bucket(RATE, BURST)
        self.overflowed = False
        self.exit: ev.Exit | None = None

    # ------------------------------------------------------------------ to the browser

    def put(self, message: dict[str, Any]) -> None:
        if len(self.outbox) >= MAX_QUEUED:
            self.overflowed = True  # the writer closes the tab; the page resumes and catches up
        else:
            self.outbox.append(message)
        self.wake.set()

    def show(self, item: ev.Show) -> None:
        if type(item) is ev.Public:  # nearly everything under load: straight to the outbox
            self.put(wire.public(item.event, item.mention))
            return
        core = self.session.core if self.session is not None else None
        message = wire.shown(item, core.current if core is not None else "")
        if message is not None:
            self.put(message)
        if isinstance(item, ev.Status) and item.state == "connected" and core is not None:
            self.put(wire.session(core.token, core.history_id))

    def ended(self, exit: ev.Exit) -> None:
        self.exit = exit
        self.put(wire.exited(exit))

    async def write(self) -> None:
        """Send what was shown, one JSON array per turn of the loop, until the tab is closed."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.overflowed:
                return
            batch, self.outbox = self.outbox, []
            if batch:
                try:
                    await self._send(wire.encode(batch))
                except ConnectionError:  # the browser went away; the reader sees the close
                    return
            if self.exit is not None and not self.outbox:
                return

    # ------------------------------------------------------------------ from the browser

    def receive(self, data: str) -> None:
        """One message from the browser: checked, then handed to its handler. Never raises."""
        if not self.bucket.take():
            self.put(wire.error(wire.RATE_LIMITED, f"at most {RATE:g} messages a second; this one was dropped"))
            return
        try:
            request = wire.parse(data)
            handler = HANDLERS[type(request)]
            if self.session is None and not isinstance(request, wire.Hello):
                raise wire.WireError(wire.NOT_YET, "send hello first")
            handler(self, request)
        except wire.WireError as exc:
            self.put(wire.error(exc.code, exc.reason))

    def _hello(self, hello: wire.Hello) -> None:
        if self.session is not None:
            raise wire.WireError(wire.BAD_TYPE, "this tab has a session already")
        resume = wire.resume_of(hello.resume) if hello.resume is not None else None
        try:
            self.session = self.host.open(
                self.address, self.show, name=hello.name, room=hello.room, resume=resume, on_exit=self.ended
            )
        except SessionLimit as exc:
            raise wire.WireError(wire.FULL, str(exc)) from None

    def _line(self, line: wire.Line) -> None:
        assert self.session is not None
        text = line.text
        self.session.focus(line.room)
        if line.to and not text.startswith("/"):
            text = f"/pm {line.to} {text}"  # typed in a private conversation
        self.session.submit(text)

    def _older(self, older: wire.Older) -> None:
        assert self.session is not None
        self.session.focus(older.room)
        self.session.submit(f"/history {older.count}")

    def _who(self, who: wire.Who) -> None:
        assert self.session is not None
        self.session.submit(f"/who {who.room}".rstrip())

    def _quit(self, _: wire.Quit) -> None:
        assert self.session is not None
        self.session.leave()

    def closed(self) -> None:
        """The WebSocket is gone: the session delivers what was typed, then leaves."""
        if self.session is not None and self.exit is None:
            self.session.leave()


# ergo's habit: every request with its handler, on one screen.
HANDLERS: dict[type, Callable[[Tab, Any], None]] = {
    wire.Hello: Tab._hello,
    wire.Line: Tab._line,
    wire.Older: Tab._older,
    wire.Who: Tab._who,
    wire.Quit: Tab._quit,
}


def origin_allowed(request: web.Request) -> bool:
    """Cross-site WebSocket hijacking: a browser's Origin must be this gateway itself. Clients that
    are not browsers send no Origin and are let in (they could forge one anyway)."""
    origin = request.headers.get("Origin")
    return origin is None or origin.lower() == f"{request.scheme}://{request.host}".lower()


@web.middleware
async def security_headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    response = await handler(request)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


class Gateway:
    """The aiohttp application: the page's files, and ``/ws``."""

    def __init__(self, host: SessionHost, ping: float = WS_HEARTBEAT) -> None:
        self.host = host
        self.ping = ping
        self.per_address = host.per_address
        self.tabs: Counter[str] = Counter()
        self.files = {name: (resources.files("chat.web") / "static" / name).read_bytes() for name in STATIC}
        self.app = web.Application(middlewares=[security_headers])
        self.app.router.add_get("/", self.page)
        self.app.router.add_get("/ws", self.websocket)
        for name in STATIC:
            self.app.router.add_get(f"/{name}", self.page)

    async def page(self, request: web.Request) -> web.Response:
        name = request.path.lstrip("/") or "index.html"
        suffix = name[name.rindex("."):]
        return web.Response(
            body=self.files[name], content_type=CONTENT_TYPES[suffix], charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if not origin_allowed(request):
            return web.Response(status=403, text="this WebSocket is for the page of this gateway only")
        address = request.remote or ""
        if self.tabs[address] >= self.per_address:
            return web.Response(status=429, text=f"at most {self.per_address} tabs from one address")
        # No per-message deflate: on a LAN it costs the gateway more CPU than it saves on the wire.
        ws = web.WebSocketResponse(max_msg_size=wire.MAX_MESSAGE_BYTES, heartbeat=self.ping, compress=False)
        await ws.prepare(request)
        self.tabs[address] += 1
        tab = Tab(self.host, address, ws.send_str)
        writer = asyncio.ensure_future(tab.write())
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    tab.receive(message.data)
                elif message.type == WSMsgType.BINARY:
                    tab.put(wire.error(wire.BAD_JSON, "send JSON text, not binary messages"))
                if writer.done():
                    break  # the tab ended (its session exited, or it fell too far behind)
        finally:
            tab.closed()
            self.tabs[address] -= 1
            if self.tabs[address] <= 0:
                del self.tabs[address]
            if not writer.done():
                tab.wake.set()
                try:
                    await asyncio.wait_for(writer, 1.0)
                except (asyncio.TimeoutError, ConnectionError):
                    writer.cancel()
            await ws.close()
        return ws


def url(host: str, port: int, tls: bool) -> str:
    """The address to open, as a person types it (an IPv6 address in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/"


async def run_gateway(
    broker: BrokerAddress,
    listen_host: str,
    listen_port: int,
    *,
    stop: asyncio.Event,
    ready: Callable[[str], None],
    ssl_context: ssl.SSLContext | None = None,
    history_lines: int = 20,
    max_sessions: int = MAX_SESSIONS,
    per_address: int = MAX_SESSIONS_PER_ADDRESS,
    ping: float = WS_HEARTBEAT,
) -> None:
    """Serve the web client until ``stop`` is set; ``ready`` gets the URL once it listens. At most
    ``per_address`` tabs (WebSockets, and so sessions) from one address."""
    host = SessionHost(broker, history_lines=history_lines, max_sessions=max_sessions, per_address=per_address)
    gateway = Gateway(host, ping)
    runner = web.AppRunner(gateway.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen_host, listen_port, ssl_context=ssl_context)
        await site.start()
        server = site._server
        port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else listen_port
        ready(url(listen_host, port, ssl_context is not None))
        await stop.wait()
    finally:
        host.close_all()
        await runner.cleanup()
