"""The per-room ordering of chat.client.feed, on its own (ClientCore's tests cover it through the core)."""

from __future__ import annotations

from chat import protocol as p
from chat.client.feed import Feed, Fetching


def event(seq: int) -> p.Event:
    return p.Event(seq=seq, ts=seq, kind=p.KIND_MSG, name="bob", text=f"line {seq}")


def seqs(events: list[p.Event]) -> list[int]:
    return [e.seq for e in events]


def test_a_new_feed_starts_with_the_history_lines_before_the_live_ones() -> None:
    feed = Feed.starting_after(last=10, history_lines=3)
    assert (feed.expected, feed.live_from, feed.oldest) == (8, 11, 8)
    assert Feed.starting_after(last=2, history_lines=20).expected == 1


def test_in_order_shown_early_held_and_asked_for_duplicates_dropped() -> None:
    feed = Feed.starting_after(last=0, history_lines=0)
    assert feed.receive(event(1), trusted=True) == ([event(1)], None)
    assert feed.receive(event(4), trusted=True) == ([], (2, 3))
    feed.fetching = Fetching(2, 3, 0.0)
    assert feed.receive(event(5), trusted=True) == ([], None)  # a fetch is already out
    shown, ask, lost = feed.answered([event(2), event(3)], (2, 3))
    assert (seqs(shown), ask, lost, feed.fetching) == ([2, 3, 4, 5], None, 0, None)
    assert feed.receive(event(3), trusted=True) == ([], None)


def test_untrusted_events_wait_for_the_welcome() -> None:
    feed = Feed.starting_after(last=0, history_lines=0)
    assert feed.receive(event(1), trusted=False) == ([], None)
    assert seqs(feed.resume()) == [1]


def test_what_the_broker_no_longer_has_is_counted_and_skipped() -> None:
    feed = Feed.starting_after(last=0, history_lines=0)
    feed.receive(event(6), trusted=True)
    feed.fetching = Fetching(1, 5, 0.0)
    shown, ask, lost = feed.answered([event(4), event(5)], (1, 5))
    assert (seqs(shown), ask, lost) == ([4, 5, 6], None, 3)


def test_the_second_pong_asks_for_the_tail_and_history_pages_back() -> None:
    feed = Feed.starting_after(last=4, history_lines=2)
    assert feed.pong(6) is None and feed.pong(7) == (3, 6)
    assert feed.older(10) == (1, 2) and feed.oldest == 1 and feed.older(5) is None
