"""The full-screen client's start-up and a short chat, run by tests/test_platforms.py in a Windows-like
process: ``python tests/winlike/tui_session.py HOST PORT NAME``.

The app is the one ``client.py`` runs, with its signal handling on (``handle_signals``), driven by
Textual's Pilot on the headless driver (the Linux terminal driver needs termios, which a Windows-like
process does not have; on Windows Textual uses its own driver). Each step prints one line on stdout for
the test to wait on; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Callable

# Before Textual is imported: App() picks its driver when made, and the Linux one needs termios.
os.environ["TEXTUAL_DRIVER"] = "textual.drivers.headless_driver:HeadlessDriver"

from chat.client.core import ClientCore  # noqa: E402
from chat.client.net import Connection  # noqa: E402
from chat.ui.tui import ChatApp  # noqa: E402

WAIT = 10.0


async def until(pilot, what: str, condition: Callable[[], bool]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            lines = "\n".join(pilot.app.log_pane.text_lines())
            raise SystemExit(f"tui: gave up waiting for {what}; the screen shows:\n{lines}")
        await pilot.pause(0.02)


def shows(app: ChatApp, text: str) -> Callable[[], bool]:
    return lambda: any(text in line for line in app.log_pane.text_lines())


async def session(host: str, port: int, name: str) -> int:
    core = ClientCore(name, interactive=True, history_lines=0)
    app = ChatApp(lambda show: Connection(core, host, port, show), address=f"{host}:{port}", handle_signals=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, "our own join line", shows(app, f"{name} has joined the chat"))
        print("tui: joined", flush=True)
        app.input_line.value = "hello from the full-screen client"
        await pilot.press("enter")
        sent = shows(app, "hello from the full-screen client")
        await until(pilot, "the line to be acknowledged", lambda: sent() and not app._pending)
        print("tui: sent", flush=True)
        await until(pilot, "a line from bob", shows(app, "hi winnie"))
        print("tui: heard bob", flush=True)
        await pilot.press("ctrl+c")
        await until(pilot, "the app to exit", lambda: app.return_code is not None)
    return app.return_code or 0


if __name__ == "__main__":
    host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    code = asyncio.run(session(host, port, name))
    print(f"tui: exit {code}", flush=True)
    sys.exit(code)
