"""chat.irc.lines: IRC lines <-> ``Line``, with no socket (and fuzzed with hypothesis)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import protocol as p
from chat.irc import lines as irc
from chat.irc.lines import Line


def test_a_line_with_tags_source_middle_and_trailing_parameters() -> None:
    line = irc.parse(b"@time=2026-12-03T14:00:00.000Z;msgid=a\\sb :alice!a@h PRIVMSG #general :hello  there\r\n")
    assert line == Line("PRIVMSG", ("#general", "hello  there"), "alice!a@h", {"time": "2026-12-03T14:00:00.000Z", "msgid": "a b"})


def test_commands_are_case_insensitive_and_spaces_between_parameters_do_not_count() -> None:
    assert irc.parse(b"privmsg   bob   :hi") == Line("PRIVMSG", ("bob", "hi"))
    assert irc.parse(b"NICK alice") == Line("NICK", ("alice",))
    assert irc.parse(b"TOPIC #dev :") == Line("TOPIC", ("#dev", ""))
    assert irc.parse(b"USER a 0 * :Real Name") == Line("USER", ("a", "0", "*", "Real Name"))


def test_bad_utf8_is_decoded_with_replacement_characters() -> None:
    assert irc.parse(b"PRIVMSG #a :caf\xe9") == Line("PRIVMSG", ("#a", "caf\ufffd"))


@pytest.mark.parametrize(
    "raw, numeric",
    [
        (b"PRIVMSG #a :" + b"x" * 500, "417"),  # over 512 bytes with CR LF
        (b"@" + b"t" * 9000 + b" PING x", "417"),  # tags over 8191 bytes
        (b"@a=b", "421"),  # tags and nothing else
        (b":source", "421"),  # a source and no command
        (b"PING a\x00b", "417"),
        (b"X " + b"p " * 16, "461"),  # more than 15 parameters
    ],
)
def test_lines_a_server_refuses_name_the_numeric_to_answer(raw: bytes, numeric: str) -> None:
    with pytest.raises(irc.LineError) as refused:
        irc.parse(raw)
    assert refused.value.numeric == numeric


def test_a_line_of_exactly_512_bytes_is_taken_and_the_tags_do_not_count() -> None:
    raw = b"PRIVMSG #a :" + b"x" * (510 - len(b"PRIVMSG #a :"))
    assert len(raw) + 2 == 512
    assert irc.parse(b"@" + b"t=v;" * 1000 + b" " + raw).params[1] == "x" * 498


def test_encode_writes_the_trailing_parameter_only_when_it_needs_the_colon() -> None:
    assert Line("PRIVMSG", ("#a", "hi there"), "bob!bob@h", {"time": "T"}).encode() == b"@time=T :bob!bob@h PRIVMSG #a :hi there\r\n"
    assert Line("JOIN", ("#a",), "bob!bob@h").encode() == b":bob!bob@h JOIN #a\r\n"
    assert Line("TOPIC", ("#a", "")).encode() == b"TOPIC #a :\r\n"
    assert Line("X", ("a", ":b")).encode() == b"X a ::b\r\n"


@pytest.mark.parametrize("params", [("a b", "c"), ("", "c"), ("a\r\nQUIT", ), (":a", "b")])
def test_encode_refuses_what_would_be_read_back_otherwise(params: tuple[str, ...]) -> None:
    with pytest.raises(irc.LineError):
        Line("PRIVMSG", params).encode()


def test_split_lines_takes_complete_lines_and_keeps_the_rest() -> None:
    buffer = bytearray(b"NICK a\r\nUSER a 0 * :A\n\r\nPING")
    assert irc.split_lines(buffer) == [b"NICK a", b"USER a 0 * :A"]
    assert buffer == b"PING"


def test_ctcp_and_formatting() -> None:
    assert irc.ctcp("\x01ACTION waves\x01") == ("ACTION", "waves")
    assert irc.ctcp("\x01version\x01") == ("VERSION", "")
    assert irc.ctcp("plain") is None
    assert irc.strip_formatting("\x02bold\x02 \x0304,12red\x03 \x1funder\x0f 3\x0312") == "bold red under 3"


def test_server_time_is_utc_with_milliseconds() -> None:
    assert irc.server_time(1764770400123) == "2025-12-03T14:00:00.123Z"


def test_long_text_is_cut_on_character_boundaries_within_the_budget() -> None:
    text = "é" * 300 + " word " + "x" * 100
    pieces = irc.split_text(text, 200)
    assert all(len(piece.encode()) <= 200 for piece in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_names_irc_forbids_are_shown_in_fullwidth_forms_that_are_the_same_name_to_the_broker() -> None:
    for name in ("a!b", "x@y", "c,d", "*", "$cash", "~tilde", "ok.dot", "+plus"):
        if p.name_problem(name):
            continue
        shown = irc.shown_nick(name)
        assert irc.nick_problem(shown) is None, shown
        assert p.name_key(shown) == p.name_key(name)  # a PRIVMSG to the shown nick reaches its owner
    assert irc.shown_nick("alice") == "alice" and irc.shown_nick("9lives[]") == "9lives[]"
    assert irc.shown_nick("a!b") == "a\uff01b"


# --------------------------------------------------------------------------- fuzzing

middle = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00 "), min_size=1, max_size=20).filter(
    lambda s: not s.startswith(":")
)
trailing = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=60)
command = st.text(st.characters(whitelist_categories=("Lu",), max_codepoint=127), min_size=1, max_size=10)


@given(command, st.lists(middle, max_size=5), trailing)
def test_every_encoded_line_parses_back_to_itself(cmd: str, middles: list[str], last: str) -> None:
    line = Line(cmd, (*middles, last))
    assert irc.parse(line.encode()) == line if len(line.encode()) <= irc.MAX_LINE_BYTES else True


@given(st.binary(max_size=1200))
def test_any_bytes_give_a_line_or_a_line_error(raw: bytes) -> None:
    try:
        line = irc.parse(raw)
    except irc.LineError as exc:
        assert exc.numeric in ("417", "421", "461")
        return
    assert line.command and line.command == line.command.upper()


@given(st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=32))
def test_shown_nicks_are_valid_and_keep_the_broker_key(name: str) -> None:
    if p.name_problem(name) or unicodedata.normalize("NFKC", name) != name:
        return
    shown = irc.shown_nick(name)
    assert irc.nick_problem(shown) is None
    assert p.name_key(shown) == p.name_key(name)


def test_a_room_line_is_written_once_for_every_connection_with_or_without_its_time() -> None:
    from chat.irc.server import RoomLines

    lines = RoomLines(kept=4)
    event = p.Event(7, 1_764_772_200_123, p.KIND_ACTION, "x@y", "waves", "#general")
    timed = lines(event, True)
    assert lines(event, True) is timed  # the same event object: the same bytes for the next connection
    assert timed == b"@time=2025-12-03T14:30:00.123Z :x\xef\xbc\xa0y!x\xef\xbc\xa0y@lanchat PRIVMSG #general :\x01ACTION waves\x01\r\n"
    assert lines(event, False) == b":x\xef\xbc\xa0y!x\xef\xbc\xa0y@lanchat PRIVMSG #general :\x01ACTION waves\x01\r\n"
    long = p.Event(8, 0, p.KIND_MSG, "bob", "word " * 200, "#general")
    assert all(len(line) + 2 <= irc.MAX_LINE_BYTES for line in lines(long, False).split(b"\r\n"))
    assert lines(long, False).count(b"\r\n") > 1  # cut into lines that fit, as Connection.say does
