"""IRC lines <-> typed messages (RFC 1459/2812 as modern.ircdocs.horse describes them, with IRCv3
message tags). Pure: no sockets, no asyncio, so it can be tested and fuzzed on its own, as
``chat.protocol`` is for ZeroMQ frames.

    @tag=value;other :source COMMAND param param :trailing param

``parse`` takes one line as received (bytes, without CR LF) and never raises anything but
``LineError``; bad UTF-8 is decoded with replacement characters, as servers do. ``Line.encode``
writes a line back, and refuses (``LineError``) what cannot be written: a space in a middle
parameter, CR, LF or NUL anywhere.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from chat.errors import ChatError

MAX_LINE_BYTES = 512  # the line without its tags, CR LF included
MAX_TAGS_BYTES = 8191  # the tags part ('@' ... ' ') a client may send
MAX_PARAMS = 15
CTCP = "\x01"

# IRC formatting codes (bold, colour, reset, reverse, italics, underline, strike, monospace): the
# chat has no formatting, and the broker would show them as ^B, ^C...; they are taken out.
_FORMATTING = {"\x02", "\x0f", "\x16", "\x1d", "\x1f", "\x1e", "\x11"}
_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_TAG_UNESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}


class LineError(ChatError):
    """A line that cannot be read (or written): ``numeric`` is the reply a server gives."""

    def __init__(self, numeric: str, reason: str) -> None:
        super().__init__(f"{numeric}: {reason}")
        self.numeric = numeric
        self.reason = reason


@dataclass(frozen=True)
class Line:
    command: str
    params: tuple[str, ...] = ()
    source: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The line as sent, CR LF included."""
        out = []
        if self.tags:
            out.append("@" + ";".join(_tag(k, v) for k, v in self.tags.items()))
        if self.source:
            out.append(":" + self.source)
        out.append(self.command)
        for i, param in enumerate(self.params):
            if "\r" in param or "\n" in param or "\x00" in param:
                raise LineError("417", "a parameter cannot hold CR, LF or NUL")
            last = i == len(self.params) - 1
            if not last and (not param or " " in param or param.startswith(":")):
                raise LineError("461", f"only the last parameter can be empty, hold spaces or start with ':': {param!r}")
            out.append(":" + param if last and (not param or " " in param or param.startswith(":")) else param)
        return " ".join(out).encode("utf-8") + b"\r\n"


def _tag(key: str, value: str) -> str:
    if not value:
        return key
    return key + "=" + "".join(_TAG_UNESCAPES.get(ch, ch) for ch in value)


def _untag(value: str) -> str:
    out = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append(_TAG_ESCAPES.get(nxt, nxt))  # an unknown escape is the character itself
        else:
            out.append(ch)
    return "".join(out)


def parse(raw: bytes) -> Line:
    """One received line (CR LF or LF already taken off). Raises ``LineError`` with the numeric to send."""
    raw = raw.rstrip(b"\r\n")
    tags: dict[str, str] = {}
    if raw.startswith(b"@"):
        end = raw.find(b" ")
        if end < 0:
            raise LineError("421", "a line of tags only")
        if end + 1 > MAX_TAGS_BYTES:
            raise LineError("417", f"tags longer than {MAX_TAGS_BYTES} bytes")
        for item in raw[1:end].decode("utf-8", errors="replace").split(";"):
            key, _, value = item.partition("=")
            if key:
                tags[key] = _untag(value)
        raw = raw[end + 1:]
    if len(raw) + 2 > MAX_LINE_BYTES:
        raise LineError("417", f"a line is at most {MAX_LINE_BYTES} bytes")
    text = raw.decode("utf-8", errors="replace")
    if "\x00" in text:
        raise LineError("417", "a line cannot hold NUL")
    text = text.lstrip(" ")
    source = ""
    if text.startswith(":"):
        source, _, text = text[1:].partition(" ")
        text = text.lstrip(" ")
    command, _, text = text.partition(" ")
    if not command:
        raise LineError("421", "a line without a command")
    params: list[str] = []
    text = text.lstrip(" ")
    while text:
        if text.startswith(":"):
            params.append(text[1:])
            break
        word, _, text = text.partition(" ")
        params.append(word)
        text = text.lstrip(" ")
    if len(params) > MAX_PARAMS:
        raise LineError("461", f"at most {MAX_PARAMS} parameters")
    return Line(command.upper(), tuple(params), source, tags)


def split_lines(buffer: bytearray) -> list[bytes]:
    """Take every complete line (ending in LF) off the front of ``buffer``; blank lines are skipped."""
    lines = []
    while True:
        end = buffer.find(b"\n")
        if end < 0:
            return lines
        line = bytes(buffer[:end]).rstrip(b"\r")
        del buffer[: end + 1]
        if line.strip():
            lines.append(line)


def strip_formatting(text: str) -> str:
    """IRC colours and styles taken out (``\\x03`` with its optional ``FG[,BG]`` digits too)."""
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == "\x03":
            for _ in range(2):
                if i < len(text) and text[i].isdigit():
                    i += 1
            if i + 1 < len(text) and text[i] == "," and text[i + 1].isdigit():
                i += 2
                if i < len(text) and text[i].isdigit():
                    i += 1
        elif ch not in _FORMATTING:
            out.append(ch)
    return "".join(out)


def ctcp(text: str) -> tuple[str, str] | None:
    """``("ACTION", "waves")`` for ``\\x01ACTION waves\\x01``; None for text that is not CTCP."""
    if not text.startswith(CTCP):
        return None
    body = text[1:].rstrip(CTCP)
    verb, _, rest = body.partition(" ")
    return verb.upper(), rest


def split_text(text: str, budget: int) -> list[str]:
    """``text`` cut into pieces of at most ``budget`` UTF-8 bytes, on character boundaries (at a space
    when there is one in the second half of a piece), so that each fits in one line."""
    budget = max(budget, 4)
    pieces = []
    data = text.encode("utf-8")
    while len(data) > budget:
        cut = budget
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not inside a character
            cut -= 1
        space = data.rfind(b" ", budget // 2, cut)
        if space > 0:
            cut = space + 1
        pieces.append(data[:cut].decode("utf-8").rstrip(" ") or data[:cut].decode("utf-8"))
        data = data[cut:]
    if data or not pieces:
        pieces.append(data.decode("utf-8"))
    return pieces


@functools.lru_cache(maxsize=1024)  # the same time stamp goes to every client in the room
def server_time(ts_ms: int) -> str:
    """IRCv3 ``server-time``: ``2026-12-03T14:30:00.123Z`` for the broker's milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ms // 1000)) + f".{ts_ms % 1000:03d}Z"


# --------------------------------------------------------------------------- nicknames

# Characters a nickname must not contain, and must not start with (modern.ircdocs.horse, "Clients"),
# besides whitespace: '.' is kept out too, since clients take a name with a dot for a server.
NOT_IN_NICK = frozenset(",*?!@.")
NOT_FIRST_IN_NICK = frozenset("$:#&~%+")


def nick_problem(nick: str) -> str | None:
    """Why an IRC client cannot register ``nick`` (before the broker's own rules), or None."""
    if any(ch in NOT_IN_NICK or ch.isspace() for ch in nick) or nick[:1] in NOT_FIRST_IN_NICK:
        return "a nickname cannot hold ' , * ? ! @ .' nor start with '$ : # & ~ % +'"
    return None


def shown_nick(name: str) -> str:
    """A broker name as an IRC nick: each character IRC forbids becomes its fullwidth form (``!`` ->
    ``！``, U+FF01). The broker compares names after NFKC, which maps those forms back, so the shown
    nick is the *same* name to the broker: two users cannot look alike, and a PRIVMSG to the shown nick
    reaches its owner with no table of our own."""
    chars = list(name)
    for i, ch in enumerate(chars):
        if ch in NOT_IN_NICK or (i == 0 and ch in NOT_FIRST_IN_NICK):
            chars[i] = chr(ord(ch) - 0x21 + 0xFF01)
    return "".join(chars)
