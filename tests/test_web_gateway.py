"""The web gateway as a process (``python -m chat.web``) between WebSocket clients and a real broker.

No browser here (see test_web_browser.py): aiohttp's client speaks the JSON of docs/WEB.md, which is
enough to check what a browser cannot show well: origins, limits, malformed frames, a tab that vanishes.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest

from conftest import HOST, Broker, Process, Processes, left, said

pytestmark = pytest.mark.timeout(40)
WAIT = 10.0


def gateway(procs: Processes, broker: Broker) -> tuple[Process, str]:
    web = procs.process("-m", "chat.web", "--host", HOST, "--port", str(broker.port), "--listen", f"{HOST}:0")
    url = web.expect(r"^web: the web client is at (http://127\.0\.0\.1:\d+/)$")[1]
    return web, url


class Tab:
    """A WebSocket client that reads the gateway's JSON arrays into one list."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send_str(json.dumps(message))

    async def until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            while True:
                for message in self.seen:
                    if wanted(message):
                        return message
                frame = await self.ws.receive()
                if frame.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"the WebSocket ended ({frame.type}, {frame.data}); seen {self.seen}")
                self.seen += json.loads(frame.data)

        return await asyncio.wait_for(read(), WAIT)


def of_type(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == kind and all(m.get(k) == v for k, v in fields.items())


def test_the_page_is_served_with_a_policy_against_inline_script_and_foreign_origins_are_refused(
    procs: Processes, broker: Broker
) -> None:
    _, url = gateway(procs, broker)

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as page:
                assert page.status == 200 and "text/html" in page.headers["Content-Type"]
                csp = page.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
                assert '<script type="module" src="app.js">' in await page.text()
            async with http.get(url + "app.js") as script:
                assert script.status == 200
                assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", await script.text())
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url + "ws", origin="http://evil.example")
            assert refused.value.status == 403
            async with http.ws_connect(url + "ws", origin=url.rstrip("/")) as ws:
                tab = Tab(ws)
                await tab.send(type="hello", name="alice")
                await tab.until(of_type("status", state="connected", name="alice"))

    asyncio.run(main())


def test_malformed_frames_get_errors_an_oversized_one_ends_only_its_tab_and_a_vanished_tab_leaves(
    procs: Processes, broker: Broker
) -> None:
    web, url = gateway(procs, broker)
    carol = procs.join("carol", broker)

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            alice = Tab(await http.ws_connect(url + "ws"))
            bob = Tab(await http.ws_connect(url + "ws"))
            await alice.send(type="hello", name="alice")
            await bob.send(type="hello", name="bob")
            await alice.until(of_type("status", state="connected"))
            await bob.until(of_type("status", state="connected"))
            for bad in ("{", "[]", '{"type": "nope"}', '{"type": "line", "text": 1}'):
                await alice.ws.send_str(bad)
            await alice.ws.send_bytes(b"\x00\xff")
            await alice.until(lambda m: sum(x["type"] == "error" for x in alice.seen) == 5)
            await alice.send(type="line", text="still here <script>x</script>")
            await asyncio.to_thread(carol.expect, said("alice", "still here <script>x</script>"))

            await bob.ws.send_str("x" * 100_000)  # beyond the gateway's cap: that tab is closed
            closed = await asyncio.wait_for(bob.ws.receive(), WAIT)
            while closed.type == aiohttp.WSMsgType.TEXT:  # what was on its way before
                closed = await asyncio.wait_for(bob.ws.receive(), WAIT)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            await asyncio.to_thread(carol.expect, left("bob"))

            await alice.send(type="line", text="after bob")
            await asyncio.to_thread(carol.expect, said("alice", "after bob"))
            alice.ws._response.connection.transport.abort()  # the browser vanishes: no close frame
            await asyncio.to_thread(carol.expect, left("alice"), broker.timeout + 2)

    asyncio.run(main())
    assert web.proc.poll() is None, "the gateway must not crash on input"


def test_with_a_secure_broker_the_gateway_joins_with_curve_and_web_and_terminal_users_chat(
    procs: Processes, tmp_path: Path
) -> None:
    broker = procs.broker(5.0, "--secure", "--key-dir", str(tmp_path / "broker-keys"), "--web", "0")
    key = broker.expect(r"^broker: clients join with: .* --server-key='?(?P<key>[^' ]{40})'?$")["key"]
    url = broker.expect(r"^web: the web client is at (http://127\.0\.0\.1:\d+/)$")[1]
    carol = procs.join("carol", broker, f"--server-key={key}", "--key-dir", str(tmp_path / "carol-keys"))

    async def main() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url + "ws") as ws:
            alice = Tab(ws)
            await alice.send(type="hello", name="alice")
            await alice.until(of_type("status", state="connected"))  # a plain DEALER would be refused
            await alice.send(type="line", text="encrypted hello")
            await asyncio.to_thread(carol.expect, said("alice", "encrypted hello"))
            carol.send("and back")
            await alice.until(of_type("event", name="carol", text="and back"))

    asyncio.run(main())
    assert (tmp_path / "broker-keys" / "web.key").is_file()  # the gateway's own key pair


def test_the_gateway_serves_https_and_wss_with_a_certificate(procs: Processes, broker: Broker, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    web = procs.process("-m", "chat.web", "--host", HOST, "--port", str(broker.port), "--listen", f"{HOST}:0",
                        "--web-cert", str(cert), "--web-key", str(key))
    url = web.expect(r"^web: the web client is at (https://127\.0\.0\.1:\d+/)$")[1]
    trusted = ssl.create_default_context(cafile=str(cert))
    trusted.check_hostname = False  # the certificate names 127.0.0.1 as its CN only

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, ssl=trusted) as page:
                assert page.status == 200
            async with http.ws_connect(url + "ws", ssl=trusted) as ws:
                tab = Tab(ws)
                await tab.send(type="hello", name="alice")
                await tab.until(of_type("status", state="connected"))

    asyncio.run(main())
