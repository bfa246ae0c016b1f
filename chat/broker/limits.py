"""What one user, or one host, may make the broker do: token buckets and their defaults.

Every limit here runs on the broker's monotonic clock (a wall clock that jumps must neither expire live
sessions nor refill a bucket), and each is a token bucket: ``burst`` at once, refilled at ``rate`` a
second. A rate of 0 switches a limit off.
"""

from __future__ import annotations

from dataclasses import dataclass

RATE = 5.0  # lines a session may send per second, on average (SAY, PM, WHO, ENTER and PART count)
BURST = 20  # lines a session may send at once before RATE applies
MAX_PER_ADDRESS = 64  # sessions at once from one source address (0: no limit)
JOIN_RATE = 2.0  # JOIN, ENTER and PART a second from one source address, on average
JOIN_BURST = 30  # ... and at once
ROOMS_PER_MINUTE = 10  # rooms one session may create (ENTER of a room that does not exist) a minute
ROOM_IDLE = 300.0  # seconds after which a room without members is forgotten (its numbers and caches)
FETCH_BYTES_RATE = 64 * 1024  # bytes of HISTORY a session may be sent per second, on average (a page)
FETCH_BYTES_BURST = 256 * 1024  # ... and at once (4 pages: about 4,000 short events)
FETCH_UNREAD = 32 * 1024  # bytes stuck in a connection's full send buffer, beyond which it gets no HISTORY
FETCH_MIN_COST = 4096  # bytes charged for any FETCH, however small its answer: at most 64 a second


@dataclass
class Bucket:
    """A token bucket. ``ready`` says whether ``need`` tokens are there; ``spend`` may run into debt
    (a reply is charged what it turned out to cost), which later refills pay back."""

    rate: float
    burst: float
    level: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> Bucket:
        return cls(rate, float(burst), float(burst), now)

    def _refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)

    def ready(self, now: float, need: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        self._refill(now)
        return self.level >= need

    def spend(self, amount: float = 1.0) -> None:
        if self.rate > 0:
            self.level -= amount

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend ``amount`` if it is there; False (and nothing spent) if not."""
        if not self.ready(now, amount):
            return False
        self.spend(amount)
        return True

    def is_full(self, now: float) -> bool:
        return self.rate <= 0 or (self.ready(now, self.burst))


@dataclass
class Address:
    """One source address (a host): its sessions, and what it may still do."""

    sessions: int
    moves: Bucket  # JOIN, ENTER and PART of every session from this address
