"""What the client core asks of the world: things to send (for the driver) and things to show (for a UI).

Every front end (plain line mode, the full-screen UI) consumes the same ``Show`` items. What a front end
asks of the core on its own account, rather than as a line the user typed, is a ``Request``: it is
answered with typed items, never with text to be matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import msgspec

from chat import protocol as p

# ---------------------------------------------------------------- for the network driver


@dataclass(frozen=True)
class Send:
    message: p.Message
    data: bytes = b""  # a PUT's file data: sent as a fourth frame


@dataclass(frozen=True)
class Reconnect:
    """Throw the DEALER away and open a new one (the Lazy Pirate pattern: a fresh socket drops stale queues)."""


@dataclass(frozen=True)
class Unsubscribe:
    """Stop receiving a room's events (libzmq then filters them out at the broker's PUB)."""

    room: str


@dataclass(frozen=True)
class Subscribe:
    """Connect the SUB socket to the broker's PUB port (if not yet) and subscribe to these rooms."""

    pub_port: int
    rooms: tuple[str, ...]


# ---------------------------------------------------------------- from a front end


@dataclass(frozen=True)
class AskRoster:
    """Who is in ``room`` ("": everyone online), for a user list: answered by a ``RosterShown`` with
    ``asked=False``, which a front end shows in its list and does not print."""

    room: str


@dataclass(frozen=True)
class AskOlder:
    """``lines`` public events of ``room`` older than the oldest shown: answered by ``Older`` or
    ``NothingOlder``."""

    room: str
    lines: int


@dataclass(frozen=True)
class TypeInto:
    """Make ``room`` (one of ours) the room typed into, without a notice: answered by ``RoomsChanged``."""

    room: str


Request = Union[AskRoster, AskOlder, TypeInto]

# ---------------------------------------------------------------- for a front end


class Public(msgspec.Struct, frozen=True):
    """A public event to show: a line, an action, a join or a leave. (A struct, not a dataclass: a
    gateway makes one per line and session, and a struct is several times quicker to make.)"""

    event: p.Event
    show_room: bool = False  # we are in several rooms: say which room it is from
    history: bool = False  # from before we joined the room (the --history lines shown on joining)
    mention: bool = False  # a line or action that mentions our name (chat.client.personal)


@dataclass(frozen=True)
class RoomsChanged:
    """Our rooms, or the one we type into, changed."""

    rooms: tuple[str, ...]
    current: str


@dataclass(frozen=True)
class RoomsListed:
    """The answer to /rooms."""

    listing: p.RoomList


@dataclass(frozen=True)
class Older:
    """Older public events the user asked for with /history, oldest first (shown above the rest)."""

    events: tuple[p.Event, ...]
    mentions: frozenset[int] = frozenset()  # the seqs of those that mention us (chat.client.personal)


@dataclass(frozen=True)
class NothingOlder:
    """/history (or ``AskOlder``) found nothing older in ``room``: the beginning is on screen."""

    room: str
    reason: str


@dataclass(frozen=True)
class PrivateIn:
    """A private message to us."""

    private: p.Private


@dataclass(frozen=True)
class Sent:
    """We sent a line (``kind`` msg, action or pm); it is pending until ``Acked`` with the same id."""

    id: str
    kind: str
    text: str
    to: str = ""  # a pm: its addressee
    room: str = ""  # a line or an action: its room


@dataclass(frozen=True)
class Failed:
    """The broker refused a line we sent (``Sent`` with the same id) for good: it was not delivered."""

    id: str
    reason: str


@dataclass(frozen=True)
class Acked:
    id: str
    seq: int
    ts: int


@dataclass(frozen=True)
class RosterShown:
    """The members of a room (or everyone online). ``asked``: the user typed /who (print it); otherwise
    it answers a front end's ``AskRoster`` (a user list only)."""

    roster: p.Roster
    asked: bool = True


@dataclass(frozen=True)
class Renamed:
    """The broker renamed us (``/nick``): the events of it (``nick``) come as Public like everyone's."""

    name: str


@dataclass(frozen=True)
class Found:
    """Lines a ``/search`` found, oldest first; ``more``: older ones are there (``/search`` again)."""

    text: str
    events: tuple[p.Event, ...]
    more: bool


@dataclass(frozen=True)
class Notice:
    """A line from the client itself. ``level`` is "info" or "error"."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class AskName:
    """The front end should ask the user for a name; the next input line is taken as one."""

    reason: str = ""


@dataclass(frozen=True)
class Status:
    """Connection state changed: "connecting", "connected" or "reconnecting"."""

    state: str
    name: str = ""


@dataclass(frozen=True)
class Progress:
    """How far a file transfer is: ``direction`` "sending" or "receiving", ``done`` of ``total`` bytes."""

    direction: str
    number: int
    name: str
    done: int
    total: int


@dataclass(frozen=True)
class Exit:
    code: int
    reason: str = ""


Show = Union[
    Public, RoomsChanged, RoomsListed, Older, NothingOlder, PrivateIn, Sent, Acked, Failed, RosterShown, Notice,
    AskName, Status, Progress, Renamed, Found,
]
Action = Union[Send, Reconnect, Subscribe, Unsubscribe, Show, Exit]

# Exit codes of client.py (a public interface: scripts depend on them).
EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
