"""Finding a broker on the LAN without typing an address: UDP beacons, and trust on first use.

A broker started with ``--announce`` sends a beacon about once a second to a broadcast address (the
ZeroMQ ZRE/Zyre beacon is the model: a fixed prefix, a version, and what a peer needs to connect). A
client that is given no ``--host`` listens for a bounded time and joins the broker it hears. Beacons are
not authenticated, so with ``--secure`` the key a beacon carries is trusted only on first use, after
showing its fingerprint, and remembered like SSH's known_hosts; a changed key is refused loudly.

    beacon = b"LANCHAT" + JSON {"v": 2, "port": 5555, "name": "host", "key": "Z85 public key or empty"}
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from chat import protocol as p
from chat.keys import fingerprint

BEACON_PREFIX = b"LANCHAT"
BEACON_PORT = 5670  # UDP
ANNOUNCE_INTERVAL = 1.0  # seconds between beacons
LISTEN_TIME = 1.5  # seconds a client listens: long enough to hear every broker at least once
MAX_BEACON_BYTES = 512


@dataclass(frozen=True)
class Found:
    """A broker heard on the LAN: where its ROUTER is, what it calls itself, and its public key."""

    host: str
    port: int
    name: str
    key: str = ""
    version: int = p.VERSION  # the protocol version it speaks

    def describe(self) -> str:
        secure = f", encrypted, key fingerprint {fingerprint(self.key.encode())}" if self.key else ""
        other = f", protocol version {self.version} (this client: {p.VERSION})" if self.version != p.VERSION else ""
        return f"{self.name} at {self.host}:{self.port}{secure}{other}"


def beacon(port: int, name: str, key: str = "") -> bytes:
    body = {"v": p.VERSION, "port": port, "name": name[:64], "key": key}
    return BEACON_PREFIX + json.dumps(body, separators=(",", ":")).encode()


def parse_beacon(data: bytes, sender: str) -> Found | None:
    """The broker a datagram announces, or None for anything that is not a valid beacon.

    A broker of another protocol version is still a broker: shown with its version, and when a client
    joins it, the broker's bad_version answer says why it cannot (rather than "heard no broker")."""
    if not data.startswith(BEACON_PREFIX) or len(data) > MAX_BEACON_BYTES:
        return None
    try:
        body = json.loads(data[len(BEACON_PREFIX) :].decode())
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    version, port, name, key = body.get("v"), body.get("port"), body.get("name", ""), body.get("key", "")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 < version < 10_000:
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    if not isinstance(name, str) or not isinstance(key, str) or len(key) not in (0, 40):
        return None
    return Found(sender, port, p.neutralise(name)[:64] or sender, key, version)


class Announcer:
    """Sends the broker's beacon every ANNOUNCE_INTERVAL seconds from a thread, until ``stop``."""

    def __init__(self, target: str, beacon_port: int, payload: bytes) -> None:
        self.target = (target, beacon_port)
        self.payload = payload
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.sendto(self.payload, self.target)
            except OSError:
                pass  # no route yet (interface down): try again at the next beat
            self._stop.wait(ANNOUNCE_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2 * ANNOUNCE_INTERVAL)
        self.sock.close()


def listen(seconds: float = LISTEN_TIME, beacon_port: int = BEACON_PORT) -> list[Found]:
    """Every broker heard within ``seconds``, in the order first heard."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):  # several clients on one machine may listen at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    found: dict[tuple[str, int], Found] = {}
    try:
        sock.bind(("", beacon_port))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (sender, _) = sock.recvfrom(MAX_BEACON_BYTES + 1)
            except socket.timeout:
                break
            heard = parse_beacon(data, sender)
            if heard is not None:
                found.setdefault((heard.host, heard.port), heard)
    finally:
        sock.close()
    return list(found.values())


# ------------------------------------------------------------------ trust on first use


def load_known(path: Path) -> dict[str, str]:
    """host:port -> public key, from a known_brokers file."""
    known: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            where, _, key = line.strip().partition(" ")
            if where and len(key) == 40:
                known[where] = key
    return known


class KeyChanged(Exception):
    """The broker at a known address now announces another key."""


def trust(found: Found, path: Path) -> tuple[str, bool]:
    """The key to use for ``found`` and whether it was seen for the first time (then it is remembered).

    Raises KeyChanged when a different key was remembered for this address.
    """
    where = f"{found.host}:{found.port}"
    known = load_known(path).get(where)
    if known == found.key:
        return found.key, False
    if known is not None:
        raise KeyChanged(
            f"the broker at {where} now announces a DIFFERENT key (fingerprint {fingerprint(found.key.encode())},"
            f" remembered {fingerprint(known.encode())}). Someone may be impersonating it. If its key was"
            f" changed on purpose, delete the line for {where} from {path}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(f"{where} {found.key}\n")
    return found.key, True
