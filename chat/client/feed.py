"""One room's public events as a client sees them: each shown once, in order, gaps asked for.

Every event carries the room's sequence number. ``expected`` is the next one to show: an event below
it is a duplicate, one above it is held back while the gap is fetched over the DEALER (FETCH), and the
expected one is shown with everything held behind it. Pure: no sockets, no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chat import protocol as p

MAX_HELD = 10_000  # early events held back while a gap is fetched

Range = tuple[int, int]  # first and last sequence numbers, inclusive


@dataclass
class Fetching:
    """The FETCH we are waiting on."""

    first: int
    last: int
    sent_at: float


@dataclass
class Feed:
    expected: int  # the next sequence number to show
    live_from: int  # the first number of this session: our own events from here on are not shown again
    oldest: int  # the oldest number shown so far, for /history
    held: dict[int, p.Event] = field(default_factory=dict)
    fetching: Fetching | None = None
    reported: int | None = None  # the last number a PONG reported
    browsing: Range | None = None  # the range /history asked for

    @classmethod
    def starting_after(cls, last: int, history_lines: int) -> Feed:
        """A feed that starts live after event ``last``, showing ``history_lines`` before it first."""
        first = max(1, last + 1 - history_lines)
        return cls(expected=first, live_from=last + 1, oldest=first)

    def receive(self, event: p.Event, trusted: bool) -> tuple[list[p.Event], Range | None]:
        """The events to show now, in order, and a gap to fetch (None: nothing to ask for).

        Not ``trusted`` (heard while getting back in): held until the WELCOME says whose history it is.
        """
        if event.seq < self.expected:
            return [], None  # a duplicate
        if event.seq > self.expected or not trusted:
            if len(self.held) < MAX_HELD:
                self.held[event.seq] = event
            if self.fetching is not None or not trusted:
                return [], None
            return [], (self.expected, event.seq - 1)
        return self._deliver(event), None

    def resume(self) -> list[p.Event]:
        """After a WELCOME: what was held back and follows on now."""
        event = self.held.pop(self.expected, None)
        return self._deliver(event) if event is not None else []

    def answered(self, events: list[p.Event], asked: Range) -> tuple[list[p.Event], Range | None, int]:
        """Take a HISTORY answer to ``asked``: (events to show, range still to ask for, events lost).

        The events of any answer are used. Whether more must be asked for, or is gone for good, is
        decided only from the answer to the range we are waiting on (a retried FETCH gets two answers).
        """
        shown: list[p.Event] = []
        ask: Range | None = None
        for event in events:
            now_shown, gap = self.receive(event, trusted=True)
            shown += now_shown
            ask = ask or gap
        fetching = self.fetching
        if fetching is None or (fetching.first, fetching.last) != asked or self.expected > fetching.last:
            return shown, ask, 0
        if events and self.expected > events[-1].seq:  # cut short to fit a frame: ask for the rest
            return shown, (self.expected, fetching.last), 0
        more, lost = self.skip_unrecoverable()  # the broker no longer has the start of the range
        return shown + more, None, lost

    def skip_unrecoverable(self) -> tuple[list[p.Event], int]:
        """The broker no longer has what we are missing: move on to what we hold. (shown, lost)"""
        if self.fetching is None:
            return [], 0
        resume = min(self.held) if self.held else self.fetching.last + 1
        self.fetching = None
        lost = max(0, resume - self.expected)
        self.expected = max(self.expected, resume)
        event = self.held.pop(resume, None)
        return (self._deliver(event) if event is not None else []), lost

    def pong(self, last: int) -> Range | None:
        """A PONG reported ``last``. Only what the previous PONG reported counts as missing: newer events
        may still be on their way over the SUB."""
        previous, self.reported = self.reported, last
        if previous is not None and previous >= self.expected and self.fetching is None:
            return self.expected, previous
        return None

    def older(self, lines: int) -> Range | None:
        """The range /history should fetch for ``lines`` more lines, or None when nothing is older."""
        if self.oldest <= 1:
            return None
        first = max(1, self.oldest - lines)
        self.browsing = (first, self.oldest - 1)
        self.oldest = first
        return self.browsing

    def _deliver(self, event: p.Event) -> list[p.Event]:
        """``event`` (the expected one) and whatever was held back behind it."""
        shown = []
        while True:
            self.expected = event.seq + 1
            shown.append(event)
            following = self.held.pop(event.seq + 1, None)
            if following is None:
                break
            event = following
        if self.fetching is not None and self.expected > self.fetching.last:
            self.fetching = None
        return shown
