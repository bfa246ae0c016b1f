"""The asyncio driver (chat.client.aio) and the session host of the gateways, against a real broker.

The same client core as the thread driver; what is checked here is the driving: many sessions on one
loop, a session taken back by a new driver (``Resume``) without a gap or a duplicate, and the limits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable, Coroutine, Any

import pytest

from chat import protocol as p
from chat.client import events as ev
from chat.client.host import BrokerAddress, Resume, Session, SessionHost, SessionLimit
from conftest import HOST, Broker

pytestmark = pytest.mark.timeout(30)
WAIT = 10.0  # seconds for anything to arrive


class Seen:
    """What one session showed, with a way to wait for something in it."""

    def __init__(self) -> None:
        self.items: list[ev.Show] = []
        self.changed = asyncio.Event()

    def __call__(self, item: ev.Show) -> None:
        self.items.append(item)
        self.changed.set()

    async def until(self, wanted: Callable[[ev.Show], bool], timeout: float = WAIT) -> ev.Show:
        async def wait() -> ev.Show:
            while True:
                for item in self.items:
                    if wanted(item):
                        return item
                self.changed.clear()
                await self.changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"not shown within {timeout:g} s; shown: {self.items!r}")

    def public(self, text: str) -> list[ev.Public]:
        return [i for i in self.items if isinstance(i, ev.Public) and i.event.text == text]


def said(text: str) -> Callable[[ev.Show], bool]:
    return lambda item: isinstance(item, ev.Public) and item.event.text == text


def connected(item: ev.Show) -> bool:
    return isinstance(item, ev.Status) and item.state == "connected"


def run(test: Callable[[SessionHost], Coroutine[Any, Any, None]], broker: Broker, **limits: int) -> None:
    async def main() -> None:
        host = SessionHost(BrokerAddress(HOST, broker.port), history_lines=0, **limits)
        try:
            await test(host)
        finally:
            host.close_all()

    asyncio.run(main())


async def joined(host: SessionHost, *names: str) -> list[tuple[Session, Seen]]:
    """Sessions under these names (each from its own address), once each is in."""
    sessions = []
    for name in names:
        seen = Seen()
        sessions.append((host.open(name, seen, name=name), seen))
    for _, seen in sessions:
        await seen.until(connected)
    return sessions


def test_two_sessions_on_one_loop_chat_in_public_and_in_private(broker: Broker) -> None:
    async def test(host: SessionHost) -> None:
        (alice, alice_seen), (bob, bob_seen) = await joined(host, "alice", "bob")
        alice.submit("hello bob")
        await bob_seen.until(said("hello bob"))
        await alice_seen.until(lambda i: isinstance(i, ev.Acked))
        bob.submit("/pm alice just us")
        pm = await alice_seen.until(lambda i: isinstance(i, ev.PrivateIn))
        assert isinstance(pm, ev.PrivateIn) and (pm.private.name, pm.private.text) == ("bob", "just us")
        alice.submit("/join #dev")
        await alice_seen.until(lambda i: isinstance(i, ev.RoomsChanged) and i.current == "#dev")
        alice.focus("#General")
        alice.focus("#nowhere")  # not one of hers: no change
        alice.submit("back in general")
        await bob_seen.until(said("back in general"))
        bob.leave()
        assert (await asyncio.wait_for(bob.wait(), WAIT)).code == ev.EXIT_OK
        await alice_seen.until(lambda i: isinstance(i, ev.Public) and i.event.kind == p.KIND_LEAVE)
        assert len(host.sessions) == 1

    run(test, broker)


def test_a_new_driver_takes_the_session_back_without_a_gap_or_a_duplicate(broker: Broker) -> None:
    """What a gateway restart does: the page hands back token, history id, last seqs and pending lines."""

    async def test(host: SessionHost) -> None:
        (alice, alice_seen), (bob, bob_seen) = await joined(host, "alice", "bob")
        alice.submit("one")
        sent = await alice_seen.until(lambda i: isinstance(i, ev.Sent))
        acked = await alice_seen.until(lambda i: isinstance(i, ev.Acked))
        assert isinstance(sent, ev.Sent) and isinstance(acked, ev.Acked)
        token, history_id = alice.core.token, alice.core.history_id
        alice.close()  # the gateway died: no goodbye
        bob.submit("two")
        bob.submit("three")
        await bob_seen.until(lambda i: isinstance(i, ev.Acked) and i.seq == acked.seq + 2)

        # "one" again under its own id (its ACK never reached the page) and "four", never sent.
        pending = [p.Say(sent.id, "one", p.DEFAULT_ROOM), p.Say("page-1", "four", p.DEFAULT_ROOM)]
        resume = Resume(token, history_id, {p.DEFAULT_ROOM: acked.seq}, p.DEFAULT_ROOM, pending)
        again_seen = Seen()
        host.open("a", again_seen, name="alice", resume=resume)
        await again_seen.until(said("three"))
        await bob_seen.until(said("four"))
        await again_seen.until(lambda i: isinstance(i, ev.Acked) and i.id == sent.id)
        assert [i.event.text for i in again_seen.items if isinstance(i, ev.Public)] == ["two", "three"]
        assert len(bob_seen.public("one")) == 1  # the broker dropped the resent duplicate
        kinds = [i.event.kind for i in bob_seen.items if isinstance(i, ev.Public) and i.event.name == "alice"]
        assert p.KIND_LEAVE not in kinds and p.KIND_JOIN not in kinds  # taken over, not left and rejoined

    run(test, broker)


def test_the_host_refuses_sessions_beyond_its_limits_and_frees_them_when_they_end(broker: Broker) -> None:
    async def test(host: SessionHost) -> None:
        first_seen = Seen()
        first = host.open("10.0.0.1", first_seen, name="first")
        with pytest.raises(SessionLimit, match="one address"):
            host.open("10.0.0.1", Seen(), name="second")
        other: Session = host.open("10.0.0.2", Seen(), name="third")
        with pytest.raises(SessionLimit, match="hosts 2 sessions"):
            host.open("10.0.0.3", Seen(), name="fourth")
        await first_seen.until(connected)
        first.leave()
        await asyncio.wait_for(first.wait(), WAIT)
        host.open("10.0.0.1", Seen(), name="fifth")  # room again
        assert len(host.sessions) == 2 and other in host.sessions

    run(test, broker, max_sessions=2, per_address=1)


def test_a_gateway_session_cannot_send_or_save_files_on_the_gateways_disk(broker: Broker, tmp_path: Path) -> None:
    """A browser or an IRC client typing /send or /get must not read or write the gateway machine's files."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the gateway's own file")

    async def test(host: SessionHost) -> None:
        (alice, alice_seen), (bob, bob_seen) = await joined(host, "alice", "bob")
        alice.submit(f"/send bob {secret}")
        refused = await alice_seen.until(lambda i: isinstance(i, ev.Notice) and "/send is not available" in i.text)
        assert isinstance(refused, ev.Notice) and refused.level == "error"
        alice.submit("/get 1")
        await alice_seen.until(lambda i: isinstance(i, ev.Notice) and "/get is not available" in i.text)
        assert not alice.core.files.active() and not any(isinstance(i, ev.PrivateIn) for i in bob_seen.items)

    run(test, broker)
