"""LAN beacons on their own (no sockets): what counts as a broker's beacon, and how it is shown."""

from __future__ import annotations

import json

import pytest

from chat import protocol as p
from chat.discovery import BEACON_PREFIX, Found, beacon, parse_beacon

KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"


def datagram(**body: object) -> bytes:
    return BEACON_PREFIX + json.dumps(body).encode()


def test_a_beacon_names_the_broker_its_port_key_and_version() -> None:
    assert parse_beacon(beacon(5555, "office", KEY), "10.0.0.5") == Found("10.0.0.5", 5555, "office", KEY, p.VERSION)
    assert parse_beacon(beacon(6000, ""), "10.0.0.6") == Found("10.0.0.6", 6000, "10.0.0.6", "", p.VERSION)


def test_a_broker_of_another_version_is_found_and_shown_with_its_version() -> None:
    old = parse_beacon(datagram(v=1, port=5555, name="old"), "10.0.0.7")
    assert old is not None and old.version == 1
    assert old.describe() == f"old at 10.0.0.7:5555, protocol version 1 (this client: {p.VERSION})"
    assert "version" not in parse_beacon(beacon(5555, "new"), "10.0.0.8").describe()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"LANCHAT",
        b"LANCHAT{not json",
        b"LANCHAT\xff\xfe",
        b"OTHER" + json.dumps({"v": 2, "port": 5555}).encode(),
        datagram(port=5555),  # no version
        datagram(v=True, port=5555),
        datagram(v="2", port=5555),
        datagram(v=0, port=5555),
        datagram(v=2),  # no port
        datagram(v=2, port=0),
        datagram(v=2, port=70000),
        datagram(v=2, port=True),
        datagram(v=2, port=5555, key="short"),
        datagram(v=2, port=5555, name=5),
        datagram(v=2, port=5555, name="x" * 600),  # longer than a beacon may be
        BEACON_PREFIX + b"[2, 5555]",
    ],
)
def test_anything_else_is_not_a_beacon(data: bytes) -> None:
    assert parse_beacon(data, "10.0.0.9") is None


def test_a_name_with_escape_sequences_is_shown_harmlessly() -> None:
    found = parse_beacon(datagram(v=2, port=5555, name="evil\x1b]0;pwned\x07"), "10.0.0.10")
    assert found is not None and "\x1b" not in found.name and "\x07" not in found.name
