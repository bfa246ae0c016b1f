"""Line-mode front ends: plain (pipes, scripts, bots) and a simple interactive prompt on a terminal.

Plain mode writes one line per event to stdout and the client's own notices to stderr, so that a
script reading stdout sees only the chat. Interactive mode writes everything to the terminal and keeps
what the user is typing intact: an incoming line erases the prompt line, prints, and redraws the prompt
with the text typed so far.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from chat import protocol as p
from chat.client import events as ev
from chat.client.net import Connection
from chat.ui.format import LineFormatter, progress_text

PROMPT = "> "
NAME_PROMPT = "Your name: "


class LineFrontEnd:
    """Shows ``events.Show`` items as lines. ``show`` is called from the network thread."""

    def __init__(self, out: TextIO, err: TextIO, *, colour: bool, interactive: bool, bell: bool = False) -> None:
        self.out = out
        self.bell = bell  # ring on stderr at a line that mentions us (client.py: only when stdout is a terminal)
        self.err = err
        self.fmt = LineFormatter(colour)
        self.interactive = interactive
        self.prompt = NAME_PROMPT
        self.prompt_open = False  # interactive: the cursor is on the prompt's line
        # Set once the prompt is known (a name is asked for, or the session is joined): until then the
        # reader does not draw one, so that ``--name`` never shows "Your name: " under the first lines.
        self.prompt_known = threading.Event()
        self._lock = threading.Lock()

    def show(self, item: ev.Show) -> None:
        if isinstance(item, ev.Public):
            self._line(self.fmt.event(item.event, item.show_room))
            if item.mention and not item.history:
                self._ring()
        elif isinstance(item, ev.RoomsListed):
            self._line(self.fmt.room_list(item.listing))
        elif isinstance(item, ev.Older):
            for event in item.events:
                self._line(self.fmt.event(event))
        elif isinstance(item, ev.PrivateIn):
            self._line(self.fmt.private(item.private))
        elif isinstance(item, ev.NothingOlder):
            self._notice(item.reason)
        elif isinstance(item, ev.RosterShown):
            self._line(self.fmt.roster(item.roster))
        elif isinstance(item, ev.Found):
            for event in item.events:
                self._line(self.fmt.event(event, show_room=True))
            self._notice(self.fmt.found_summary(item.text, len(item.events), item.more))
        elif isinstance(item, ev.Renamed):
            self._notice(f"you are now {item.name}")
        elif isinstance(item, ev.Notice):
            self._notice(item.text)
        elif isinstance(item, ev.Progress):
            self._notice(progress_text(item))
        elif isinstance(item, ev.AskName):
            self.prompt = NAME_PROMPT
            if item.reason:
                self._notice(f"{item.reason}")
            if not self.interactive and item.reason == "":
                self._notice("reading the name from the first input line")
            self.prompt_known.set()
        elif isinstance(item, ev.Status) and item.state == "connected":
            self.prompt = PROMPT
            self._notice(f"joined as {item.name}; type /help for commands")
            self.prompt_known.set()
        # Sent and Acked: our own lines are not echoed in line mode.

    def _notice(self, text: str) -> None:
        lines = [f"*** {p.neutralise(line)}" for line in text.splitlines()]
        if self.interactive:
            for line in lines:
                self._line(self.fmt.dim(line))
        else:
            with self._lock:
                self.err.write("\n".join(lines) + "\n")
                self.err.flush()

    def _ring(self) -> None:
        """A mention: one BEL on stderr, so that stdout keeps its line format (docs: Mentions)."""
        if self.bell:
            with self._lock:
                self.err.write("\a")
                self.err.flush()

    def end_line(self) -> None:
        """End the prompt's line if the cursor is on it (interactive mode: after Ctrl-D, or a prompt drawn
        again under a line that came in), so that what follows starts on a line of its own."""
        with self._lock:
            if self.prompt_open:
                self.prompt_open = False
                self.out.write("\n")
                self.out.flush()

    def fail(self, text: str) -> None:
        """The client's last words, always on stderr."""
        with self._lock:
            self.err.write(f"client: {p.neutralise(text)}\n")
            self.err.flush()

    def _line(self, line: str) -> None:
        with self._lock:
            if self.interactive and self.prompt_open:
                # Erase the prompt line, print, then redraw the prompt and what was typed so far.
                self.out.write(f"\r\x1b[K{line}\n{self.prompt}{_typed_so_far()}")
            else:  # (interactive, before the first prompt: input() draws it once the prompt is known)
                self.out.write(line + "\n")
            self.out.flush()


def _typed_so_far() -> str:
    try:
        import readline
    except ImportError:  # pragma: no cover - readline is missing on some platforms
        return ""
    return readline.get_line_buffer()


def read_input(conn: Connection, front: LineFrontEnd, stdin: TextIO) -> None:
    """Feed lines from ``stdin`` to the connection until end of input (run in a daemon thread)."""
    if front.interactive:
        try:
            import readline  # noqa: F401 - enables line editing and Up/Down recall in input()
        except ImportError:  # pragma: no cover
            pass
        front.prompt_known.wait()  # (a daemon thread: it ends with the client if the join never comes)
        while True:
            front.prompt_open = True  # input() draws it
            try:
                line = input(front.prompt)
            except (EOFError, KeyboardInterrupt):
                break  # Ctrl-D leaves the cursor after the prompt: run_line_mode ends that line
            front.prompt_open = False  # Enter took the cursor to the next line
            conn.submit(line)
    else:
        for line in stdin:
            conn.submit(line)
    conn.submit_eof()


def run_line_mode(conn: Connection, front: LineFrontEnd, stdin: TextIO = sys.stdin) -> int:
    reader = threading.Thread(target=read_input, args=(conn, front, stdin), daemon=True)
    reader.start()
    result = conn.run()
    front.end_line()  # the shell's prompt, or the last words, on a line of their own
    if result.reason:
        front.fail(result.reason)
    return result.code
