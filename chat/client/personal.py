"""What each user decides for themselves, on the client side: what mentions them, and whom they ignore.

The broker is not involved in either: a mention is a line that names you, an ignored user's lines and
private messages are still delivered to your client, which does not show them. Both are kept by the
client core, so every front end (plain, full-screen, the web and IRC gateways) gets them.

The mention rule (the web page's ``app.js`` shows the core's verdict, so there is one rule)::

    your name as a word, case-insensitively (NFKC + casefold, as names are compared), "@name" too:
    "hi Alice", "@alice:", "alice's" mention alice; "malice", "alice_b", "alice2" do not

A "word" is bounded by anything that is not a letter, a digit or "_" (or by the ends of the text), so a
name made of other characters (``c++``, ``a.b``, ``x(y``) is matched literally, never as a pattern.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from chat import protocol as p

MAX_MENTIONS = 100  # mentions kept for /mentions (the oldest go first)
MENTION_KINDS = frozenset((p.KIND_MSG, p.KIND_ACTION))  # what can mention you: lines and actions
IGNORED_KINDS = frozenset((p.KIND_MSG, p.KIND_ACTION))  # what /ignore hides (joins and leaves still show)
IGNORE_HEADER = "# lanchat: users whose lines and private messages this client hides (/ignore), one a line\n"

PERSONAL_HELP = """  /ignore NAME           hide NAME's lines and private messages (kept for the next start)
  /unignore NAME         show them again; /ignore alone lists whom you ignore
  /mentions              the recent lines that mention your name"""


def mention_pattern(name: str) -> re.Pattern[str] | None:
    """The pattern of ``name`` as a word, in text already in ``name_key`` form (None: no name yet)."""
    if not name:
        return None
    return re.compile(r"(?<!\w)" + re.escape(p.name_key(name)) + r"(?!\w)")


def mentions(name: str, text: str) -> bool:
    """Whether ``text`` mentions ``name`` (the rule at the top of this module)."""
    return MentionRule()(name, text)


class MentionRule:
    """``mentions`` for one name, compiled once (the name may change: it is compiled again)."""

    def __init__(self) -> None:
        self._name = ""
        self._pattern: re.Pattern[str] | None = None

    def __call__(self, name: str, text: str) -> bool:
        if name != self._name:
            self._name, self._pattern = name, mention_pattern(name)
        return self._pattern is not None and self._pattern.search(p.name_key(text)) is not None


class IgnoreList:
    """The users whose lines and private messages are hidden, by ``name_key``; kept in ``path`` (a text
    file, one name a line) when there is one, else for this session only (a gateway's sessions)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._names: dict[str, str] = {}  # key -> the name as the user typed it
        self.problem = ""  # why the file could not be read, when it could not
        if path is not None:
            self._names = self._read()

    def __contains__(self, name: str) -> bool:
        return bool(self._names) and p.name_key(name) in self._names

    def names(self) -> list[str]:
        return sorted(self._names.values(), key=p.name_key)

    def add(self, name: str) -> bool:
        """Ignore ``name``; False if it was already. Raises OSError when the file cannot be written."""
        return self._change(name, add=True)

    def remove(self, name: str) -> bool:
        """Stop ignoring ``name``; False if it was not ignored. Raises OSError as ``add`` does."""
        return self._change(name, add=False)

    def _change(self, name: str, *, add: bool) -> bool:
        if self.path is not None:
            self._names = self._read()  # another client of this user may have changed it meanwhile
        key = p.name_key(name)
        if (key in self._names) == add:
            return False
        if add:
            self._names[key] = name
        else:
            del self._names[key]
        if self.path is not None:
            self._write(self._names.values())
        return True

    def _read(self) -> dict[str, str]:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            self.problem = f"could not read the ignore list {self.path}: {exc}"
            return dict(self._names)
        names = (line.strip() for line in text.splitlines())
        return {p.name_key(n): n for n in names if n and not n.startswith("#") and p.name_problem(n) is None}

    def _write(self, names: Iterable[str]) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".new")
        temporary.write_text(IGNORE_HEADER + "".join(f"{n}\n" for n in sorted(names, key=p.name_key)), encoding="utf-8")
        os.replace(temporary, self.path)  # whole or not at all, even if the client dies mid-write
