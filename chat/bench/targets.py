"""What a workload runs against: the broker in three set-ups, and the two baselines."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import zmq

from chat.bench.load import Peer
from chat.bench.procs import Relay
from chat.protocol import endpoint

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for a relay to say where it listens, even on a loaded machine
LISTENING = r"listening on tcp://127\.0\.0\.1:(\d+) \(.*\) and tcp://127\.0\.0\.1:(\d+) \(PUB: fan-out\)"
PUBLIC_KEY = r"public key (\S{40})$"


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "broker", "floor" or "limit"
    history: bool = False  # --db FILE instead of --db :memory:
    secure: bool = False  # --secure
    batch_acks: bool = True  # its clients JOIN with batch_acks, as the reference client does (False: one ACK a line)
    search_index: bool = True  # with history: False runs --no-search-index (what the index costs)

    @property
    def broker(self) -> bool:
        return self.kind == "broker"


LIMIT = Target("limit", "limit")
FLOOR = Target("floor", "floor")
BROKER = Target("broker", "broker")
HISTORY = Target("broker+history", "broker", history=True)
HISTORY_UNINDEXED = Target("broker+history-unindexed", "broker", history=True, search_index=False)
SECURE = Target("broker+secure", "broker", secure=True)
HISTORY_ACK = Target("broker+history/ACK", "broker", history=True, batch_acks=False)  # as before ACKS
TARGETS = {t.name: t for t in (LIMIT, FLOOR, BROKER, HISTORY, HISTORY_UNINDEXED, HISTORY_ACK, SECURE)}
FANOUT_DEFAULT = [LIMIT, FLOOR, BROKER, HISTORY, SECURE]


@dataclass
class Running:
    target: Target
    relay: Relay
    peer: Peer

    @property
    def pid(self) -> int:
        return self.relay.pid


def broker_args(
    target: Target, tmp: Path, run_id: str, max_sessions: int | None = None, extra: tuple[str, ...] = ()
) -> list[str]:
    """The broker under test: loopback, OS-chosen ports, no flood control (per user or per address: every
    load socket comes from 127.0.0.1), no PUB high-water mark; ``extra`` flags after those."""
    args = ["broker.py", "--host", HOST, "--port", "0", "--pub-port", "0", "--rate", "0", "--pub-hwm", "0"]
    args += ["--max-per-address", "0", "--join-rate", "0"]
    args += ["--db", str(tmp / f"history-{run_id}.db") if target.history else ":memory:"]
    if not target.search_index:
        args.append("--no-search-index")
    if target.secure:
        args += ["--secure", "--key-dir", str(tmp / "keys")]
    if max_sessions is not None:
        args += ["--max-sessions", str(max_sessions)]
    return args + list(extra)


def start(
    target: Target,
    stack: ExitStack,
    tmp: Path,
    run_id: str,
    *,
    open_files: int | None = None,
    max_sessions: int | None = None,
    extra: tuple[str, ...] = (),
) -> Running:
    """Start ``target`` (its end is registered on ``stack``) and wait until it listens."""
    if target.broker:
        args = broker_args(target, tmp, run_id, max_sessions, extra)
    else:
        args = ["-m", "chat.bench.relays", target.kind]
    relay = Relay(target.name, args, open_files)
    stack.callback(relay.stop)
    match = relay.wait_for(LISTENING, START_TIMEOUT)
    port, pub_port = int(match[1]), int(match[2])
    server_key = relay.wait_for(PUBLIC_KEY, START_TIMEOUT)[1].encode() if target.secure else None
    peer = Peer(
        mode="chat" if target.broker else "raw",
        inlet=zmq.PUSH if target.kind == "limit" else zmq.DEALER,
        endpoint=endpoint(HOST, port),
        pub_endpoint=endpoint(HOST, pub_port),
        server_key=server_key,
        batch_acks=target.broker and target.batch_acks,
    )
    return Running(target, relay, peer)
