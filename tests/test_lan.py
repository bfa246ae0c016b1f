"""Across machines: a broker and clients on separate network hosts that the test makes itself.

Layout (network namespaces joined by veth pairs to a bridge; nothing touches the machine's own
interfaces, and no packet leaves these namespaces)::

    ns <tag>b  broker   eth0 10.231.77.1/24 --+
    ns <tag>a  client   eth0 10.231.77.2/24 --+-- br0 in ns <tag>s (the "switch")
    ns <tag>c  client   eth0 10.231.77.3/24 --+

Needs root and iproute2 (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

from conftest import TS, Process, Processes, said

SUBNET = "10.231.77"
BROADCAST = f"{SUBNET}.255"
HOSTS = {"b": 1, "a": 2, "c": 3}
pytestmark = pytest.mark.timeout(60)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Lan:
    tag: str

    def ns(self, host: str) -> str:
        return f"{self.tag}{host}"

    def addr(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    def prefix(self, host: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns(host))

    def link(self, host: str, state: str) -> None:
        ip("-n", self.ns(host), "link", "set", "eth0", state)


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    tag = f"lc{os.getpid() % 100000}"
    net = Lan(tag)
    made: list[str] = []
    try:
        for host in ("s", *HOSTS):
            ip("netns", "add", net.ns(host))
            made.append(net.ns(host))
            ip("-n", net.ns(host), "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        switch = net.ns("s")
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for host, number in HOSTS.items():
            ns = net.ns(host)
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"to{host}", "netns", switch)
            ip("-n", switch, "link", "set", f"to{host}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{number}/24", "broadcast", BROADCAST, "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield net
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def start(procs: Processes, lan: Lan, host: str, label: str, args: list[str], stdin: bool) -> Process:
    process = Process(label, args, stdin=stdin, prefix=lan.prefix(host))
    procs._track(process)
    return process


def broker(procs: Processes, lan: Lan, *extra: str) -> Process:
    process = start(procs, lan, "b", "broker (host b)", ["broker.py", "--db", ":memory:", "--timeout", "2", *extra], False)
    process.expect(r"^broker: listening on tcp://0\.0\.0\.0:5555 .* and tcp://0\.0\.0\.0:5556 ")
    return process


def client(procs: Processes, lan: Lan, host: str, name: str, *extra: str) -> Process:
    args = ["client.py", "--name", name, "--history", "0", *extra]
    return start(procs, lan, host, f"client {name} (host {host})", args, True)


def joined_as(process: Process, name: str, timeout: float = 15) -> None:
    process.expect_err(rf"^\*\*\* joined as {name}; ", timeout=timeout)


def send(process: Process, line: str) -> None:
    assert process.proc.stdin is not None
    process.proc.stdin.write(line.encode() + b"\n")
    process.proc.stdin.flush()


def test_clients_on_two_hosts_chat_through_a_broker_on_a_third(procs: Processes, lan: Lan) -> None:
    broker(procs, lan)
    alice = client(procs, lan, "a", "alice", "--host", lan.addr("b"))
    carol = client(procs, lan, "c", "carol", "--host", lan.addr("b"))
    joined_as(alice, "alice")
    joined_as(carol, "carol")
    send(alice, "hello from host a")
    carol.expect(said("alice", "hello from host a"))
    send(carol, "/pm alice hello back from host c")
    alice.expect(rf"^{TS} carol \(private\): hello back from host c$")


def test_a_cut_link_times_out_and_the_client_catches_up_when_it_is_back(procs: Processes, lan: Lan) -> None:
    broker(procs, lan)
    alice = client(procs, lan, "a", "alice", "--host", lan.addr("b"))
    carol = client(procs, lan, "c", "carol", "--host", lan.addr("b"))
    joined_as(alice, "alice")
    joined_as(carol, "carol")
    lan.link("a", "down")
    carol.expect(rf"^{TS} alice has left the chat\. \(timed out\)$", timeout=15)
    alice.expect_err(r"^\*\*\* lost the broker", timeout=15)
    send(carol, "said while alice was cut off")
    send(alice, "typed while cut off")
    lan.link("a", "up")
    alice.expect_err(r"^\*\*\* back in: reconnected to the broker$", timeout=20)
    alice.expect(said("carol", "said while alice was cut off"))  # caught up
    carol.expect(rf"^{TS} alice has joined the chat\.$")
    carol.expect(said("alice", "typed while cut off"))


def test_a_client_without_host_finds_the_announcing_broker(procs: Processes, lan: Lan) -> None:
    broker(procs, lan, "--announce", "--announce-to", BROADCAST, "--name", "office")
    lister = start(procs, lan, "c", "lister (host c)", ["client.py", "--list-brokers"], False)
    assert lister.wait(10) == 0, lister.describe()
    assert lister.matching(rf"^office at {re.escape(lan.addr('b'))}:5555$"), lister.describe()

    started = time.monotonic()
    alice = client(procs, lan, "a", "alice")  # no --host
    alice.expect_err(rf"^client: found office at {re.escape(lan.addr('b'))}:5555$")
    joined_as(alice, "alice")
    elapsed = time.monotonic() - started
    print(f"python client.py with no --host: joined after {elapsed:.2f} s")
    assert elapsed < 8, f"joining through discovery took {elapsed:.1f} s"
    carol = client(procs, lan, "c", "carol", "--host", lan.addr("b"))
    joined_as(carol, "carol")
    send(carol, "found you")
    alice.expect(said("carol", "found you"))


def test_no_broker_heard_says_so(procs: Processes, lan: Lan) -> None:
    lister = start(procs, lan, "a", "lister (host a)", ["client.py", "--list-brokers", "--listen", "1"], False)
    assert lister.wait(10) == 1
    assert lister.matching(r"^client: heard no broker announcing itself within 1 s$", err=True), lister.describe()


def test_a_beacon_key_is_trusted_on_first_use_and_a_changed_one_refused(procs: Processes, lan: Lan, tmp_path) -> None:
    first = broker(procs, lan, "--secure", "--key-dir", str(tmp_path / "k1"), "--announce", "--announce-to", BROADCAST)
    alice = client(procs, lan, "a", "alice")
    alice.expect_err(r"^client: first time with this broker: its key has fingerprint [0-9a-f:]{47}; trusting it")
    joined_as(alice, "alice")
    send(alice, "/quit")
    assert alice.wait(10) == 0
    first.signal(15)
    assert first.wait(10) == 0

    broker(procs, lan, "--secure", "--key-dir", str(tmp_path / "k2"), "--announce", "--announce-to", BROADCAST)
    again = client(procs, lan, "a", "alice")
    assert again.wait(15) == 3, again.describe()
    assert again.matching(r"^client: REFUSING TO CONNECT: the broker at .* now announces a DIFFERENT key", err=True)


def test_a_broker_of_another_protocol_version_is_named_not_joined(procs: Processes, lan: Lan) -> None:
    """A beacon of version 1 on the LAN: the client says which broker it heard and why it cannot join."""
    old = (
        "import json, threading; from chat.discovery import Announcer;"
        f" Announcer({BROADCAST!r}, 5670, b'LANCHAT' + json.dumps({{'v': 1, 'port': 5555, 'name': 'old'}}).encode()).start();"
        " threading.Event().wait()"  # until the test ends it
    )
    start(procs, lan, "b", "version 1 beacon (host b)", ["-c", old], False)
    lister = start(procs, lan, "c", "lister (host c)", ["client.py", "--list-brokers"], False)
    assert lister.wait(10) == 0, lister.describe()
    assert lister.matching(rf"^old at {re.escape(lan.addr('b'))}:5555, protocol version 1 \(this client: 2\)$")

    alice = client(procs, lan, "a", "alice")  # no --host
    assert alice.wait(10) == 3, alice.describe()
    assert alice.matching(r"^client: heard only brokers of another protocol version", err=True), alice.describe()
    assert alice.matching(r"^  old at .*, protocol version 1 \(this client: 2\)$", err=True), alice.describe()
