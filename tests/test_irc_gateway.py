"""The IRC gateway between raw IRC sockets and real ``client.py`` users, through a real broker.

Each test starts ``broker.py --irc 0`` (or ``python -m chat.irc`` beside a broker) and speaks IRC over
a plain TCP socket, as an IRC client does: what it checks is the bytes a client gets. The real IRC
client (irssi) is in test_irc_irssi.py.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
from pathlib import Path
from datetime import datetime, timezone

import pytest

from conftest import HOST, TS, Broker, Processes, acted, joined, left, private, said, timed_out

pytestmark = pytest.mark.timeout(40)
WAIT = 10.0
TIME_TAG = r"@time=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"


def irc_broker(procs: Processes, *extra: str) -> tuple[Broker, int]:
    broker = procs.broker(5.0, "--irc", "0", *extra)
    port = int(broker.expect(r"^irc: IRC clients connect to 127\.0\.0\.1:(\d+)$")[1])
    return broker, port


class Irc:
    """A raw IRC connection: send lines, wait for lines matching a pattern (with a deadline)."""

    def __init__(self, port: int, receive_buffer: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:  # a small window, so that what the client does not read waits in the gateway
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(WAIT)
        self.sock.connect((HOST, port))
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock)
        self.buffer = b""
        self.seen: list[str] = []
        self.cursor = 0

    def send(self, *lines: str | bytes) -> None:
        self.sock.sendall(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\r\n" for line in lines))

    def _pull(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not data:
            raise AssertionError(f"the gateway closed the connection; seen:\n" + "\n".join(self.seen))
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\r\n")
        self.seen += [line.decode("utf-8", errors="replace") for line in complete]
        return True

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The next line (after those matched before) that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self.cursor < len(self.seen):
                line = self.seen[self.cursor]
                self.cursor += 1
                if match := regex.search(line):
                    return match
            if time.monotonic() >= deadline or (not self._pull(deadline) and time.monotonic() >= deadline):
                pytest.fail(f"no line matched {pattern!r} within {timeout:g} s; seen:\n" + "\n".join(self.seen))

    def closed(self, timeout: float = WAIT) -> list[str]:
        """Read until the gateway closes the connection; every line seen."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionError:
                return self.seen
            if not data:
                self.seen += [line.decode("utf-8", "replace") for line in self.buffer.split(b"\r\n") if line]
                return self.seen
            self.buffer += data
            *complete, self.buffer = self.buffer.split(b"\r\n")
            self.seen += [line.decode("utf-8", errors="replace") for line in complete]
        pytest.fail("the gateway did not close the connection; seen:\n" + "\n".join(self.seen))

    def register(self, nick: str, caps: str = "server-time echo-message batch message-tags") -> None:
        self.send("CAP LS 302", f"NICK {nick}", "USER u 0 * :A User")
        if caps:
            self.send(f"CAP REQ :{caps}")
            self.expect(rf" CAP \* ACK :{re.escape(caps)}$")
        self.send("CAP END")
        self.expect(rf"^:lanchat 001 {re.escape(nick)} ")
        self.expect(rf"JOIN #general$")
        self.expect(r" 366 ")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ircs() -> list[Irc]:
    opened: list[Irc] = []
    yield opened
    for conn in opened:
        conn.close()


def test_registration_refused_names_and_bad_input_get_the_numerics_a_server_sends(
    procs: Processes, ircs: list[Irc]
) -> None:
    broker, port = irc_broker(procs)
    bob = procs.join("bob", broker)
    irc = Irc(port)
    ircs.append(irc)
    irc.send("JOIN #general")
    irc.expect(r"^:lanchat 451 \* :You have not registered$")
    irc.send("CAP LS 302")
    irc.expect(r"^:lanchat CAP \* LS :server-time message-tags echo-message batch$")
    irc.send("NICK a!b", "NICK BOB", "USER u 0 * :Real")
    irc.expect(r"^:lanchat 432 \* a!b :Erroneous nickname")
    irc.send("CAP REQ :server-time unknown-cap")
    irc.expect(r"^:lanchat CAP \* NAK :server-time unknown-cap$")
    irc.send("CAP END")
    irc.expect(r"^:lanchat 433 \* BOB :Nickname is already in use")  # case-insensitively, as the broker says
    irc.send("NICK alice")
    irc.expect(r"^:lanchat 001 alice :Welcome")
    isupport = irc.expect(r"^:lanchat 005 alice (.*) :are supported by this server$")[1].split()
    for token in ("CHANTYPES=#", "NICKLEN=32", "CASEMAPPING=rfc7613", "CHANNELLEN=33", "TOPICLEN=300"):
        assert token in isupport
    irc.expect(r"^:lanchat 422 alice :MOTD File is missing$")
    irc.expect(r"^:alice!alice@lanchat JOIN #general$")  # the broker puts everyone in #general
    irc.expect(r"^:lanchat 353 alice = #general :?alice bob$")
    irc.expect(r"^:lanchat 366 alice #general :End of /NAMES list$")

    irc.send("FROB x", "PRIVMSG", "PRIVMSG #general :" + "x" * 600, b"PRIVMSG #general :caf\xe9 ok", "PING :tok")
    irc.expect(r"^:lanchat 421 alice FROB :Unknown command$")
    irc.expect(r"^:lanchat 461 alice PRIVMSG :Not enough parameters$")
    irc.expect(r"^:lanchat 417 alice :")
    irc.expect(r"^:lanchat PONG lanchat :?tok$")
    bob.expect(said("alice", "caf\ufffd ok"))  # bad UTF-8: replaced, the line still goes
    irc.send("NICK other")  # /nick: the broker renames the session, everyone sees it
    irc.expect(r"^(@\S+ )?:alice!alice@lanchat NICK other$")
    bob.expect(rf"^{TS} alice is now known as other\.$")
    irc.send("PRIVMSG #nowhere :x", "JOIN bad", "PART #nowhere")
    irc.expect(r"^:lanchat 404 other #nowhere :Cannot send to channel")
    irc.expect(r"^:lanchat 403 other bad :")
    irc.expect(r"^:lanchat 442 other #nowhere :")
    irc.send("AWAY :at lunch")  # kept by the broker: terminal users see it in /who
    irc.expect(r"^:lanchat 306 other :You have been marked as being away$")
    bob.send("/who")
    bob.expect(rf"^{TS} online \(2\): bob, other \(away: at lunch\)$")
    # A flood of lines over the limits did not cost the gateway: a second user still registers.
    second = Irc(port)
    ircs.append(second)
    second.register("carol")


def test_irc_and_terminal_users_chat_both_ways_with_the_brokers_time(procs: Processes, ircs: list[Irc]) -> None:
    broker, port = irc_broker(procs)
    bob = procs.join("bob", broker)
    alice = Irc(port)
    ircs.append(alice)
    alice.register("alice")
    bob.expect(joined("alice"))

    alice.send("PRIVMSG #general :hello bob")
    bob.expect(said("alice", "hello bob"))
    echo = alice.expect(rf"^{TIME_TAG} :alice!alice@lanchat PRIVMSG #general :hello bob$")  # echo-message: the ack
    stamp = datetime.strptime(echo[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(stamp.timestamp() - time.time()) < 10

    bob.send("hi alice")
    alice.expect(rf"^{TIME_TAG} :bob!bob@lanchat PRIVMSG #general :hi alice$")
    bob.send("/me waves")
    alice.expect(rf"^{TIME_TAG} :bob!bob@lanchat PRIVMSG #general :\x01ACTION waves\x01$")
    alice.send("PRIVMSG #general :\x01ACTION bows\x01", "NOTICE #general :a bot's notice")
    bob.expect(acted("alice", "bows"))
    bob.expect(said("alice", "a bot's notice"))

    alice.send("PRIVMSG Bob :just between us")
    bob.expect(private("alice", "just between us"))
    bob.send("/pm alice and back")
    alice.expect(rf"^{TIME_TAG} :bob!bob@lanchat PRIVMSG alice :and back$")
    alice.send("PRIVMSG nobody :hello?")
    alice.expect(r"^:lanchat 401 alice nobody :No such nick")
    alice.send("PRIVMSG bob :\x01VERSION\x01")
    alice.expect(r"^:bob!bob@lanchat NOTICE alice :\x01VERSION lanchat-irc-1 ")
    long_line = " ".join(["word"] * 350)  # 1749 characters: one chat line, several IRC lines
    bob.send(long_line)
    pieces = [alice.expect(r"^@time=\S+ :bob!bob@lanchat PRIVMSG #general :(.*)$")[1] for _ in range(4)]
    assert " ".join(pieces) == long_line and all(len(piece) < 500 for piece in pieces)

    bob.send("/quit")
    alice.expect(rf"^{TIME_TAG} :bob!bob@lanchat QUIT :?Quit$")
    alice.send("QUIT :bye")
    assert any(line.startswith("ERROR :Closing link") for line in alice.closed())


def test_channels_topics_names_who_list_and_history_playback(procs: Processes, ircs: list[Irc]) -> None:
    broker, port = irc_broker(procs)
    bob = procs.join("bob", broker)
    bob.send("before you came")
    odd = procs.join("x@y!", broker)  # valid for the broker, not as an IRC nick
    odd.send("/me is odd")
    bob.expect(acted("x@y!", "is odd"))
    alice = Irc(port)
    ircs.append(alice)
    alice.send("CAP LS 302", "NICK alice", "USER u 0 * :A", "CAP REQ :server-time batch", "CAP END")
    alice.expect(r"^:lanchat 353 alice = #general :?alice bob x\uff20y\uff01$")
    batch = alice.expect(r"^:lanchat BATCH \+(\S+) chathistory #general$")[1]
    alice.expect(rf"^@time=\S+;batch={batch} :bob!bob@lanchat PRIVMSG #general :before you came$")
    alice.expect(rf"PRIVMSG #general :\x01ACTION is odd\x01$")
    alice.expect(rf"^:lanchat BATCH -{batch}$")

    alice.send("PRIVMSG x\uff20y\uff01 :which one are you?")  # the shown nick reaches its owner
    odd.expect(private("alice", "which one are you?"))

    alice.send("JOIN #Dev,#ops")
    alice.expect(r"^:alice!alice@lanchat JOIN #dev$")
    alice.expect(r"^:alice!alice@lanchat JOIN #ops$")
    bob.send("/join #dev")
    alice.expect(r"^@time=\S+ :bob!bob@lanchat JOIN #dev$")
    alice.send("TOPIC #dev :release on friday")
    bob.expect(r"alice set the topic of #dev: release on friday")
    alice.expect(r"^@time=\S+ :alice!alice@lanchat TOPIC #dev :release on friday$")
    alice.send("TOPIC #dev", "NAMES #dev", "WHO #dev", "LIST")
    alice.expect(r"^:lanchat 332 alice #dev :release on friday$")
    alice.expect(r"^:lanchat 353 alice = #dev :?alice bob$")
    alice.expect(r"^:lanchat 352 alice #dev alice lanchat lanchat alice H :0 alice$")
    alice.expect(r"^:lanchat 352 alice #dev bob ")
    alice.expect(r"^:lanchat 315 alice #dev :End of /WHO list$")
    alice.expect(r"^:lanchat 322 alice #dev 2 :release on friday$")
    alice.expect(r"^:lanchat 322 alice #general 3 :?$")
    alice.expect(r"^:lanchat 322 alice #ops 1 :?$")
    alice.expect(r"^:lanchat 323 alice :End of /LIST$")

    alice.send("PRIVMSG #dev :in dev only")
    bob.expect(r"#dev alice: in dev only$")
    bob.send("/leave #dev")
    alice.expect(r"^@time=\S+ :bob!bob@lanchat PART #dev$")
    alice.send("PART #ops")
    alice.expect(r"^:alice!alice@lanchat PART #ops$")
    odd.close_stdin()
    alice.expect(r"^@time=\S+ :x\uff20y\uff01!x\uff20y\uff01@lanchat QUIT :?Quit$")


def test_a_silent_client_is_pinged_then_dropped_and_its_session_times_out(procs: Processes, ircs: list[Irc]) -> None:
    broker = procs.broker(2.0)
    gateway = procs.process("-m", "chat.irc", "--host", HOST, "--port", str(broker.port), "--listen", f"{HOST}:0",
                            "--ping-interval", "0.5", "--ping-timeout", "1")
    port = int(gateway.expect(r"^irc: IRC clients connect to 127\.0\.0\.1:(\d+)$")[1])
    bob = procs.join("bob", broker)
    quiet, polite = Irc(port), Irc(port)
    ircs += [quiet, polite]
    quiet.register("quiet", caps="")
    polite.register("polite", caps="")
    bob.expect_all(joined("quiet"), joined("polite"))
    polite.send("QUIT")
    polite.closed()
    bob.expect(left("polite"))
    quiet.expect(r"^(:lanchat )?PING :?lanchat$")
    assert any("Closing link: Ping timeout" in line for line in quiet.closed())
    bob.expect(timed_out("quiet"))


def test_a_slow_reader_loses_nothing_and_one_that_never_reads_is_dropped(procs: Processes, ircs: list[Irc]) -> None:
    broker = procs.broker(5.0, "--rate", "0")
    gateway = procs.process("-m", "chat.irc", "--host", HOST, "--port", str(broker.port), "--listen", f"{HOST}:0",
                            "--send-queue", "16384", "--slow-timeout", "6")
    port = int(gateway.expect(r"^irc: IRC clients connect to 127\.0\.0\.1:(\d+)$")[1])
    bob = procs.join("bob", broker)
    fast, slow, deaf = Irc(port), Irc(port, receive_buffer=4096), Irc(port, receive_buffer=4096)
    ircs += [fast, slow, deaf]
    for nick, conn in (("fast", fast), ("slow", slow), ("deaf", deaf)):
        conn.register(nick, caps="")
    bob.expect_all(joined("fast"), joined("slow"), joined("deaf"))
    lines = [f"{n:04d} " + "x" * 395 for n in range(1200)]  # 480 kB: past the send queue, the kernel and its limit
    for line in lines:
        bob.send(line)
    got = [fast.expect(r"^:bob!bob@lanchat PRIVMSG #general :(\d{4} x+)$")[1] for _ in lines]
    assert got == lines
    # slow has read nothing while all that went by; now it reads, and gets every line, in order.
    got = [slow.expect(r"^:bob!bob@lanchat PRIVMSG #general :(\d{4} x+)$")[1] for _ in lines]
    assert got == lines
    bob.expect(left("deaf"), timeout=15)  # dropped once it stayed behind for --slow-timeout
    deaf.closed()  # reset: what waited for it, and the ERROR after it, are thrown away with the connection
    slow.send("PRIVMSG #general :still here")
    bob.expect(said("slow", "still here"))


def test_the_gateway_speaks_tls_with_a_certificate_and_says_so(procs: Processes, ircs: list[Irc], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    broker = procs.broker(5.0, "--rate", "0")
    gateway = procs.process("-m", "chat.irc", "--host", HOST, "--port", str(broker.port), "--listen", f"{HOST}:0",
                            "--irc-cert", str(cert), "--irc-key", str(key))
    port = int(gateway.expect(r"^irc: IRC clients connect to 127\.0\.0\.1:(\d+) \(TLS\)$")[1])
    trusted = ssl.create_default_context(cafile=str(cert))
    trusted.check_hostname = False  # the certificate names 127.0.0.1 as its CN only
    bob = procs.join("bob", broker)
    alice = Irc(port, tls=trusted)
    ircs.append(alice)
    alice.register("alice", caps="")
    bob.expect(joined("alice"))
    alice.send("PRIVMSG #general :over tls")
    bob.expect(said("alice", "over tls"))
    plain = socket.create_connection((HOST, port), timeout=WAIT)  # no TLS: refused, the gateway goes on
    plain.sendall(b"NICK eve\r\nUSER e 0 * :e\r\n")
    plain.settimeout(WAIT)
    try:
        assert b" 001 " not in plain.recv(4096)
    except (ConnectionError, socket.timeout):
        pass
    plain.close()
    bob.send("still served")
    alice.expect(r"^:bob!bob@lanchat PRIVMSG #general :still served$")
