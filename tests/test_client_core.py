"""The client's decisions without sockets or a terminal: frames and typed lines in, actions out."""

from __future__ import annotations

import msgspec

import pytest

from chat import protocol as p
from chat.broker.core import Broker, Reply
from chat.client import core as client_core
from chat.client import events as ev
from chat.client.core import ClientCore

GENERAL = p.DEFAULT_ROOM
WELCOME = p.Welcome(name="alice", pub_port=5556, rooms={GENERAL: 3}, heartbeat_ms=1000, timeout_ms=5000,
                    history_id="hist-1")
T_JOINED = 0.1


def direct(core: ClientCore, message: p.Message, now: float) -> list[ev.Action]:
    return core.on_direct(p.encode(message), now)


def publish(core: ClientCore, event: p.Event, now: float = 1.0) -> list[ev.Action]:
    [message] = p.encode_events([event])
    return core.on_published(message, now)


def event(seq: int, name: str = "bob", text: str | None = None, kind: str = p.KIND_MSG) -> p.Event:
    return p.Event(seq=seq, ts=1_764_190_000_000 + seq, kind=kind, name=name,
                   text=f"line {seq}" if text is None else text, room=GENERAL)


def gap_fetch(first: int, last: int, room: str = GENERAL) -> p.Fetch:
    """The FETCH the client sends to fill a gap: its id names the room, so that an error names it too."""
    return p.Fetch(room, first, last, id=client_core.GAP_FETCH + room)


def history(*events: p.Event, first: int = 0, last: int = 0) -> p.History:
    """A HISTORY reply; ``first`` and ``last`` echo the FETCH it answers (by default its events' range)."""
    if events and not first:
        first, last = events[0].seq, events[-1].seq
    return p.History(GENERAL, [p.event_body(e) for e in events], first, last)


def sent(actions: list[ev.Action]) -> list[p.Message]:
    return [a.message for a in actions if isinstance(a, ev.Send)]


def shown(actions: list[ev.Action]) -> list[int]:
    """Sequence numbers of the public events shown."""
    return [a.event.seq for a in actions if isinstance(a, ev.Public)]


def notices(actions: list[ev.Action], level: str = "error") -> list[str]:
    return [a.text for a in actions if isinstance(a, ev.Notice) and a.level == level]


def exits(actions: list[ev.Action]) -> list[int]:
    return [a.code for a in actions if isinstance(a, ev.Exit)]


def own_join(seq: int = 4, name: str = "alice") -> p.Event:
    return event(seq, name=name, kind=p.KIND_JOIN, text="")


def joined(name: str = "alice", *, interactive: bool = False, **welcome) -> ClientCore:
    """A client that has started, been welcomed at T_JOINED and shown its own join event in each room
    (seq 4 by default, fetched as the broker answers it): it expects seq 5 next."""
    core = ClientCore(name, interactive=interactive)
    core.start(0.0)
    message = msgspec.structs.replace(WELCOME, name=name, **welcome)
    actions = direct(core, message, T_JOINED)
    assert sent(actions) == [gap_fetch(last + 1, last + 1, room) for room, last in message.rooms.items()]
    for room, last in message.rooms.items():
        own = msgspec.structs.replace(own_join(last + 1, name), room=room)
        answer = p.History(room, [p.event_body(own)], last + 1, last + 1)
        assert shown(direct(core, answer, T_JOINED)) == [last + 1]
    return core


def typed(core: ClientCore, line: str, now: float = 1.0) -> tuple[list[ev.Action], p.Message | None]:
    """Type ``line``; return the actions and the one message sent, if any."""
    actions = core.on_input(line, now)
    messages = sent(actions)
    assert len(messages) <= 1, actions
    return actions, (messages[0] if messages else None)


# --------------------------------------------------------------------------- joining


def test_start_with_a_name_sends_join_with_a_random_token() -> None:
    core = ClientCore("alice", interactive=False)
    actions = core.start(0.0)
    assert ev.Status("connecting") in actions
    assert sent(actions) == [p.Join("alice", core.token, [GENERAL], private_seq=0)]
    assert len(core.token) >= 16 and core.token != ClientCore("alice", interactive=False).token


def test_start_without_a_name_asks_for_one_and_takes_the_next_line() -> None:
    core = ClientCore(None, interactive=True)
    assert core.start(0.0) == [ev.AskName()]
    actions = core.on_input("alice\n", 0.5)
    assert sent(actions) == [p.Join("alice", core.token, [GENERAL], private_seq=0)]


def test_a_typed_name_that_breaks_the_rules_is_asked_again_without_sending() -> None:
    core = ClientCore(None, interactive=True)
    core.start(0.0)
    actions = core.on_input("al ice", 0.5)
    assert sent(actions) == [] and [type(a) for a in actions] == [ev.AskName]
    assert "spaces" in actions[0].reason


def test_welcome_subscribes_and_reports_connected() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    actions = direct(core, WELCOME, T_JOINED)
    assert actions[:2] == [ev.Subscribe(5556, (GENERAL,)), ev.Status("connected", "alice")]
    # No history asked for, only our own join event: the broker published it just before the WELCOME,
    # before our SUB was connected.
    assert sent(actions) == [gap_fetch(4, 4)]


def test_welcome_name_is_the_registered_one() -> None:
    core = ClientCore("ALICE", interactive=False)
    core.start(0.0)
    actions = direct(core, WELCOME, T_JOINED)  # the broker kept the spelling "alice" of an earlier session
    assert ev.Status("connected", "alice") in actions
    assert shown(publish(core, own_join())) == [4]  # our join is shown, as everyone sees it
    assert shown(publish(core, event(5, name="alice", text="my line"))) == []  # our lines are not


@pytest.mark.parametrize("interactive", [False, True])
def test_no_welcome_within_connect_timeout_exits_unreachable(interactive: bool) -> None:
    core = ClientCore("alice", interactive=interactive)
    core.start(0.0)
    assert exits(core.tick(client_core.CONNECT_TIMEOUT - 0.01)) == []
    assert exits(core.tick(client_core.CONNECT_TIMEOUT)) == [ev.EXIT_UNREACHABLE]


def test_name_taken_non_interactive_exits_refused() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    actions = direct(core, p.Error(p.NAME_TAKEN, "the name alice is taken; choose another", "JOIN"), 0.2)
    assert exits(actions) == [ev.EXIT_REFUSED]
    assert sent(actions) == []


def test_name_taken_interactive_asks_again_and_uses_the_next_line() -> None:
    core = ClientCore("alice", interactive=True)
    core.start(0.0)
    actions = direct(core, p.Error(p.NAME_TAKEN, "the name alice is taken; choose another", "JOIN"), 0.2)
    assert actions == [ev.AskName("the name alice is taken; choose another")]
    assert exits(core.tick(client_core.CONNECT_TIMEOUT + 1)) == []  # a person is being asked: no time-out
    actions = core.on_input("alice2", 10.0)
    assert sent(actions) == [p.Join("alice2", core.token, [GENERAL], private_seq=0)]
    assert ev.Status("connected", "alice2") in direct(core, msgspec.structs.replace(WELCOME, name="alice2"), 10.1)


def pump(core: ClientCore, broker: Broker, actions: list[ev.Action], now: float) -> list[ev.Action]:
    """Carry what the client sends to a real broker core and the broker's replies back, until quiet."""
    seen = list(actions)
    queue = sent(actions)
    while queue:
        for item in broker.handle(b"client", p.encode(queue.pop(0))):
            if isinstance(item, Reply) and item.identity == b"client":
                more = direct(core, item.message, now)
                seen += more
                queue += sent(more)
    return seen


@pytest.mark.parametrize("interactive, outcome", [(False, ev.Exit), (True, ev.AskName)])
def test_a_name_the_broker_finds_invalid_is_refused_at_once(interactive: bool, outcome: type) -> None:
    """``client.py --name "bad name"`` must end like a taken name (exit 3, or ask again), not wait for
    CONNECT_TIMEOUT and then claim that the broker could not be reached (exit 1)."""
    broker = Broker(pub_port=5556, clock=lambda: 0.0, wall_clock=lambda: 0.0)
    core = ClientCore("bad name", interactive=interactive)
    seen = pump(core, broker, core.start(0.0), 0.1)
    assert [type(a) for a in seen if isinstance(a, (ev.Exit, ev.AskName))] == [outcome]
    assert exits(seen) in ([], [ev.EXIT_REFUSED])


# --------------------------------------------------------------------------- order of public events


def test_in_order_events_are_shown_once() -> None:
    core = joined()
    assert shown(publish(core, own_join())) == []  # our own join, shown already: a duplicate now
    assert shown(publish(core, event(5))) == [5]
    assert shown(publish(core, event(6, name="carol"))) == [6]
    actions = publish(core, event(5)) + publish(core, event(6)) + publish(core, event(3))
    assert actions == []  # duplicates and old events: dropped, nothing asked


def test_own_events_are_not_shown_but_others_are() -> None:
    core = joined()
    assert shown(publish(core, event(5, name="ALICE", text="my line"))) == []
    assert shown(publish(core, event(6, name="alice", text="waves", kind=p.KIND_ACTION))) == []
    assert shown(publish(core, event(7, name="alice", text="", kind=p.KIND_ENTER))) == []  # ENTERED said it
    assert shown(publish(core, event(8, name="alicia"))) == [8]


def test_own_join_comes_with_the_first_welcome_even_without_history() -> None:
    """Seed parity: the joining user sees "alice has joined the chat." like everyone else, at once,
    though the join event was published before the SUB was connected (it is fetched, not waited for)."""
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    (fetch,) = sent(direct(core, WELCOME, T_JOINED))
    assert fetch == gap_fetch(4, 4)
    answer = direct(core, history(own_join()), T_JOINED + 0.01)
    assert [(a.event.kind, a.event.name) for a in answer if isinstance(a, ev.Public)] == [("join", "alice")]


def test_own_leave_and_join_after_the_broker_ended_our_session_are_shown() -> None:
    """Away longer than the timeout: the broker published our leave (timed out), and our JOIN on the
    new connection was a new session, not a takeover. Both are shown, in order, as others saw them."""
    core = joined()
    t, _ = lose(core)
    actions = direct(core, msgspec.structs.replace(WELCOME, rooms={GENERAL: 6}), t + 0.5)
    assert gap_fetch(5, 6) in sent(actions)  # after a reconnect: only what the WELCOME reports
    missed = history(event(5), event(6, name="alice", kind=p.KIND_LEAVE, text=p.LEFT_TIMEOUT))
    assert shown(direct(core, missed, t + 0.6)) == [5, 6]
    assert shown(publish(core, own_join(7), now=t + 0.7)) == [7]


def test_own_leave_while_leaving_is_not_shown() -> None:
    core = joined()
    assert sent(core.on_eof(1.0)) == [p.Leave()]
    assert shown(publish(core, event(5, name="alice", kind=p.KIND_LEAVE, text=p.LEFT_QUIT), now=1.1)) == []


def test_public_events_are_shown_as_they_came_but_neutralised() -> None:
    core = joined()
    publish(core, event(4, name="alice", kind=p.KIND_JOIN, text=""))
    e = event(5, name="bob\x07", text="hi \x1b[31m", kind=p.KIND_ACTION)
    safe = event(5, name="bob^G", text="hi ^[[31m", kind=p.KIND_ACTION)
    assert publish(core, e) == [ev.Public(safe)]  # every front end gets text it can show (and formats it)


def test_a_gap_is_fetched_and_the_history_fills_it_in_order() -> None:
    core = joined()
    publish(core, event(4, name="alice", kind=p.KIND_JOIN, text=""))
    assert shown(publish(core, event(5))) == [5]
    actions = publish(core, event(7), now=2.0)
    assert shown(actions) == [] and sent(actions) == [gap_fetch(6, 6)]
    assert publish(core, event(8), now=2.1) == []  # held back too; the fetch is already out
    actions = direct(core, history(event(6)), 2.2)
    assert shown(actions) == [6, 7, 8] and sent(actions) == []
    assert publish(core, event(7), now=2.3) == []  # late copy over SUB: shown already
    assert shown(publish(core, event(9), now=2.4)) == [9]
    assert sent(core.tick(2.2 + client_core.FETCH_RETRY + 0.1)) == [p.Ping()]  # no fetch left to retry


def test_an_unanswered_fetch_is_asked_again() -> None:
    core = joined()
    publish(core, event(4, name="alice", kind=p.KIND_JOIN, text=""))
    publish(core, event(7), now=1.0)
    later = 1.0 + client_core.FETCH_RETRY
    direct(core, p.Pong({GENERAL: 7}), later - 0.1)  # the broker is alive
    assert gap_fetch(5, 6) in sent(core.tick(later))


def test_events_the_broker_no_longer_has_are_reported_and_skipped() -> None:
    core = joined()
    publish(core, event(4, name="alice", kind=p.KIND_JOIN, text=""))
    publish(core, event(8), now=1.0)  # 5 to 7 missing
    actions = direct(core, history(first=5, last=7), 1.1)  # the broker has none of them
    assert shown(actions) == [8]
    assert any("3 event(s)" in n for n in notices(actions))


def test_a_partial_history_asks_for_the_rest() -> None:
    core = joined()
    publish(core, event(4, name="alice", kind=p.KIND_JOIN, text=""))
    publish(core, event(9), now=1.0)  # fetch 5..8
    actions = direct(core, history(event(5), event(6), first=5, last=8), 1.1)
    assert shown(actions) == [5, 6] and sent(actions) == [gap_fetch(7, 8)]
    assert shown(direct(core, history(event(7), event(8)), 1.2)) == [7, 8, 9]


def test_a_late_answer_to_a_retried_fetch_does_not_skip_the_next_gap() -> None:
    """Found by python -m chat.stress: the second answer to a retried FETCH came after a new gap had
    opened, made "no progress", and the client wrongly gave the new gap up as unrecoverable."""
    core = joined()
    publish(core, event(4, name="alice", kind=p.KIND_JOIN, text=""))
    assert sent(publish(core, event(7), now=1.0)) == [gap_fetch(5, 6)]
    retry = 1.0 + client_core.FETCH_RETRY
    direct(core, p.Pong({GENERAL: 7}), retry - 0.1)
    assert gap_fetch(5, 6) in sent(core.tick(retry))
    assert shown(direct(core, history(event(5), event(6)), retry + 0.1)) == [5, 6, 7]
    assert sent(publish(core, event(10), now=retry + 0.2)) == [gap_fetch(8, 9)]
    late = direct(core, history(event(5), event(6)), retry + 0.3)  # the retry's answer
    assert shown(late) == [] and notices(late) == [] and sent(late) == []
    assert shown(direct(core, history(event(8), event(9)), retry + 0.4)) == [8, 9, 10]


def test_pong_reporting_more_than_we_have_fetches_the_tail_on_the_second_pong() -> None:
    core = joined()  # expects 5 next; nothing arrives over SUB (slow joiner)
    assert sent(direct(core, p.Pong({GENERAL: 6}), 1.0)) == []  # may still be on the way
    assert sent(direct(core, p.Pong({GENERAL: 6}), 2.0)) == [gap_fetch(5, 6)]
    actions = direct(core, history(event(5), event(6)), 2.1)
    assert shown(actions) == [5, 6]
    assert sent(direct(core, p.Pong({GENERAL: 6}), 3.0)) == []


def test_no_tail_fetch_when_the_events_arrive_between_pongs() -> None:
    core = joined()
    direct(core, p.Pong({GENERAL: 6}), 1.0)
    for seq in (4, 5, 6):
        publish(core, event(seq), now=1.5)
    assert sent(direct(core, p.Pong({GENERAL: 6}), 2.0)) == []


# --------------------------------------------------------------------------- typing


def test_a_line_is_sent_as_say_and_shown_as_pending() -> None:
    core = joined()
    actions, message = typed(core, "hello there")
    assert isinstance(message, p.Say) and (message.text, message.room, message.kind) == ("hello there", GENERAL, "msg")
    assert actions == [ev.Sent(message.id, "msg", "hello there", room=GENERAL), ev.Send(message)]
    assert direct(core, p.Ack(message.id, 5, 123), 1.1) == [ev.Acked(message.id, 5, 123)]
    assert direct(core, p.Ack(message.id, 5, 123), 1.2) == []  # the ack of a resend


def test_every_line_gets_its_own_id() -> None:
    core = joined()
    ids = {typed(core, f"line {i}")[1].id for i in range(20)}  # type: ignore[union-attr]
    assert len(ids) == 20


def test_unknown_command_is_an_error_notice_and_sends_nothing() -> None:
    core = joined()
    actions, message = typed(core, "/frobnicate now")
    assert message is None
    assert len(actions) == 1 and "/frobnicate" in notices(actions)[0]
    assert core.unacked == {}


@pytest.mark.parametrize("command", ["/pm", "/msg", "/PM"])
def test_pm_command(command: str) -> None:
    core = joined()
    actions, message = typed(core, f"{command} bob see you at 5")
    assert isinstance(message, p.Pm) and (message.to, message.text) == ("bob", "see you at 5")
    assert ev.Sent(message.id, "pm", "see you at 5", "bob") in actions


@pytest.mark.parametrize("line", ["/pm", "/pm bob", "/pm bob   ", "/me", "/me   "])
def test_commands_without_their_arguments_get_usage(line: str) -> None:
    core = joined()
    actions, message = typed(core, line)
    assert message is None and "usage" in notices(actions)[0]


def test_me_sends_an_action() -> None:
    core = joined()
    actions, message = typed(core, "/me waves")
    assert isinstance(message, p.Say) and (message.text, message.kind) == ("waves", p.KIND_ACTION)
    assert ev.Sent(message.id, p.KIND_ACTION, "waves", room=GENERAL) in actions


@pytest.mark.parametrize("line, room", [("/who", ""), ("/whosonline", ""), ("/WHO", "")])
def test_who_asks_for_the_roster(line: str, room: str) -> None:
    core = joined()
    _, message = typed(core, line)
    assert message == p.Who(room)
    roster = p.Roster("", ["alice", "bob"], 5)
    assert direct(core, roster, 1.1) == [ev.RosterShown(roster)]


def test_a_roster_a_front_end_asks_for_is_told_apart_from_one_the_user_asked_for() -> None:
    core = joined()
    _, typed_who = typed(core, "/who #general")
    asked_by_ui = sent(core.on_request(ev.AskRoster("#General"), 1.0))
    assert typed_who == p.Who("#general") and asked_by_ui == [p.Who("#General")]
    roster = p.Roster(GENERAL, ["alice", "bob"], 5)
    assert direct(core, roster, 1.1) == [ev.RosterShown(roster, asked=True)]
    assert direct(core, roster, 1.2) == [ev.RosterShown(roster, asked=False)]
    assert direct(core, roster, 1.3) == [ev.RosterShown(roster, asked=True)]  # unasked: printed


def test_a_front_end_asks_for_older_lines_of_a_room_and_hears_when_there_are_none() -> None:
    core = joined(rooms={GENERAL: 3, "#dev": 0})
    assert sent(core.on_request(ev.AskOlder(GENERAL, 2), 1.0)) == [p.Fetch(GENERAL, 2, 3, id="older#general")]
    assert direct(core, history(first=2, last=3), 1.1) == [ev.NothingOlder(GENERAL, "nothing older is kept in #general")]
    assert core.on_request(ev.AskOlder("#dev", 20), 1.2) == [ev.NothingOlder("#dev", "there is nothing older in #dev")]
    core.current = "#dev"
    assert core.on_input("/history", 1.3) == [ev.NothingOlder("#dev", "there is nothing older in #dev")]


def test_a_front_end_changes_the_room_typed_into_without_a_notice() -> None:
    core = joined(rooms={GENERAL: 3, "#dev": 0})
    assert core.on_request(ev.TypeInto("#DEV"), 1.0) == [ev.RoomsChanged((GENERAL, "#dev"), "#dev")]
    _, message = typed(core, "there")
    assert isinstance(message, p.Say) and message.room == "#dev"
    assert notices(core.on_request(ev.TypeInto("#nowhere"), 1.1)) and core.current == "#dev"


def test_help_lists_the_commands_and_sends_nothing() -> None:
    core = joined()
    actions, message = typed(core, "/help")
    assert message is None
    (text,) = [a.text for a in actions if isinstance(a, ev.Notice)]
    for command in ("/who", "/pm", "/me", "/quit", "//"):
        assert command in text


def test_double_slash_sends_a_line_starting_with_a_slash() -> None:
    core = joined()
    _, message = typed(core, "//etc/passwd is a file")
    assert isinstance(message, p.Say) and message.text == "/etc/passwd is a file" and message.kind == "msg"


def test_blank_line_does_nothing() -> None:
    core = joined()
    assert core.on_input("   \n", 1.0) == []


def test_a_line_over_the_limit_goes_as_several_broken_between_words() -> None:
    core = joined()
    words = " ".join(f"word{n:04}" for n in range(500))  # 4499 characters
    actions = core.on_input(words, 1.0)
    says = sent(actions)
    assert len(says) == 3 and all(isinstance(m, p.Say) and len(m.text) <= p.MAX_TEXT_CHARS for m in says)
    assert " ".join(m.text for m in says) == words  # only the spaces at the breaks go
    assert all(not m.text.startswith(" ") and not m.text.endswith(" ") for m in says)
    assert len({m.id for m in says}) == 3 and list(core.unacked) == [m.id for m in says]  # in order
    assert [(a.id, a.text) for a in actions if isinstance(a, ev.Sent)] == [(m.id, m.text) for m in says]
    _, message = typed(core, "x" * p.MAX_TEXT_CHARS)  # the limit itself: one line
    assert isinstance(message, p.Say) and len(message.text) == p.MAX_TEXT_CHARS


@pytest.mark.parametrize("line, kind", [("/me ", p.KIND_ACTION), ("/pm bob ", "pm"), ("", p.KIND_MSG)])
def test_a_word_longer_than_the_limit_is_cut_and_nothing_is_lost(line: str, kind: str) -> None:
    core = joined()
    text = "y" * (2 * p.MAX_TEXT_CHARS + 5)
    messages = sent(core.on_input(line + text, 1.0))
    assert [len(m.text) for m in messages] == [p.MAX_TEXT_CHARS, p.MAX_TEXT_CHARS, 5]
    assert "".join(m.text for m in messages) == text
    assert all(getattr(m, "kind", "pm") == kind for m in messages)


def test_lines_are_broken_to_fit_the_limit_the_broker_says() -> None:
    core = joined(max_text=10)
    messages = sent(core.on_input("a few words over ten characters", 1.0))
    assert [m.text for m in messages] == ["a few", "words over", "ten", "characters"]


def test_split_text_keeps_short_text_whole_and_drops_only_the_white_space_at_a_break() -> None:
    assert client_core.split_text(" a b", 4) == [" a b"]
    assert client_core.split_text("ab cd", 3) == ["ab", "cd"]
    assert client_core.split_text("ab\tcdef", 5) == ["ab", "cdef"]
    assert client_core.split_text("ab  " + " " * 6 + "e", 4) == ["ab", "e"]


def test_an_unacknowledged_line_is_resent_with_the_same_id() -> None:
    core = joined()
    _, message = typed(core, "hello", now=1.0)
    direct(core, p.Pong({GENERAL: 4}), 1.0 + client_core.RESEND_AFTER - 0.5)  # the broker is alive
    assert message not in sent(core.tick(1.0 + client_core.RESEND_AFTER - 0.1))
    assert message in sent(core.tick(1.0 + client_core.RESEND_AFTER))


def test_lines_typed_before_the_welcome_are_sent_after_it_in_order() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    early = [core.on_input(line, 0.01 * i) for i, line in enumerate(["one", "/me two", "/pm bob three"])]
    assert all(sent(actions) == [] for actions in early)
    assert all(any(isinstance(a, ev.Sent) for a in actions) for actions in early)  # shown as pending
    actions = direct(core, WELCOME, T_JOINED)
    lines = [m for m in sent(actions) if not isinstance(m, p.Fetch)]  # the FETCH of our own join aside
    assert [(type(m).__name__, m.text) for m in lines] == [("Say", "one"), ("Say", "two"), ("Pm", "three")]
    assert actions.index(ev.Status("connected", "alice")) < actions.index(ev.Send(lines[0]))


def test_an_error_about_a_line_stops_its_resending() -> None:
    core = joined()
    _, message = typed(core, "/pm nobody hello")
    assert isinstance(message, p.Pm)
    actions = direct(core, p.Error(p.NO_SUCH_USER, "nobody called nobody is online", message.id), 1.1)
    assert notices(actions) == ["nobody called nobody is online"]
    assert message not in sent(core.tick(1.1 + client_core.RESEND_AFTER))


def test_private_message_is_shown() -> None:
    core = joined()
    private = p.Private("bob", "alice", "psst", 7)
    assert direct(core, private, 1.0) == [ev.PrivateIn(private)]


def test_a_private_message_sent_again_is_not_shown_again_and_the_rejoin_names_the_last_one() -> None:
    core = joined()
    first, second = p.Private("bob", "alice", "one", 7, seq=1), p.Private("bob", "alice", "two", 8, seq=2)
    assert direct(core, first, 1.0) == [ev.PrivateIn(first)]
    assert direct(core, second, 1.1) == [ev.PrivateIn(second)]
    t, actions = lose(core)
    assert p.Join("alice", core.token, [GENERAL], private_seq=2) in sent(actions)
    direct(core, WELCOME, t + 0.5)
    third = p.Private("bob", "alice", "three", 9, seq=3)
    # the broker sends again what came after the JOIN's private_seq; a retried JOIN may bring it twice
    assert direct(core, first, t + 0.6) == []
    assert direct(core, third, t + 0.6) == [ev.PrivateIn(third)]
    assert direct(core, third, t + 0.7) == []


def test_a_pong_naming_a_private_message_never_seen_asks_for_it_again_once() -> None:
    """A PRIVATE travels before the PONG on the same connection: if the PONG names a later one, it was
    lost (the ROUTER drops what it cannot queue). The client JOINs again on the same connection, which
    brings it; it asks once per loss, not on every PONG."""
    core = joined()
    direct(core, p.Private("bob", "alice", "one", 7, seq=1), 1.0)
    assert sent(direct(core, p.Pong({GENERAL: 3}, private_seq=1), 1.1)) == []
    asked = sent(direct(core, p.Pong({GENERAL: 3}, private_seq=3), 1.2))
    assert asked == [p.Join("alice", core.token, [GENERAL], private_seq=1)]
    assert direct(core, WELCOME, 1.3) == []  # the answer to a JOIN on a joined connection
    assert sent(direct(core, p.Pong({GENERAL: 3}, private_seq=3), 1.4)) == []
    lost = p.Private("carol", "alice", "three", 9, seq=3)
    assert direct(core, lost, 1.5) == [ev.PrivateIn(lost)]
    assert sent(direct(core, p.Pong({GENERAL: 3}, private_seq=4), 1.6)) != []


def test_private_messages_are_counted_afresh_with_another_history() -> None:
    core = joined()
    direct(core, p.Private("bob", "alice", "one", 7, seq=5), 1.0)
    t, _ = lose(core)
    direct(core, msgspec.structs.replace(WELCOME, history_id="hist-2"), t + 0.5)  # a broker without its store
    fresh = p.Private("bob", "alice", "new", 9, seq=1)
    assert direct(core, fresh, t + 0.6) == [ev.PrivateIn(fresh)]


def test_malformed_frames_from_the_broker_are_a_notice() -> None:
    core = joined()
    assert notices(core.on_direct([p.PROTOCOL_TAG, b"ACK", b"{}"], 1.0))
    assert notices(core.on_direct([b"junk"], 1.0))
    assert notices(core.on_published([b"#general", p.PROTOCOL_TAG, b"EVENTS", b"{}"], 1.0))
    assert notices(core.on_published([b"#general\x00", b"chat/1", b"EVENT", b'{"seq":4}'], 1.0))
    assert shown(publish(core, event(5))) == [5]  # and it goes on


def test_a_history_reply_with_a_lone_surrogate_is_a_notice_not_a_crash() -> None:
    core = joined()
    publish(core, event(6))  # fetch 4..5
    body = b'{"room":"#general","events":[{"seq":4,"ts":1,"kind":"msg","name":"\\ud800","text":"x"}]}'
    actions = core.on_direct([p.PROTOCOL_TAG, b"HISTORY", body], 1.1)
    assert notices(actions)


# --------------------------------------------------------------------------- leaving


@pytest.mark.parametrize("how", ["/quit", "/exit", "eof"])
def test_quit_sends_leave_then_bye_exits_ok(how: str) -> None:
    core = joined()
    actions = core.on_eof(1.0) if how == "eof" else core.on_input(how, 1.0)
    assert sent(actions) == [p.Leave()]
    assert direct(core, p.Bye("goodbye"), 1.1) == [ev.Exit(ev.EXIT_OK)]


def test_quit_exits_ok_even_without_bye() -> None:
    core = joined()
    core.on_input("/quit", 1.0)
    assert exits(core.tick(1.0 + client_core.QUIT_TIMEOUT - 0.01)) == []
    assert exits(core.tick(1.0 + client_core.QUIT_TIMEOUT)) == [ev.EXIT_OK]


def test_quit_waits_for_typed_lines_to_be_acknowledged() -> None:
    core = joined()
    _, message = typed(core, "last words", now=1.0)
    assert sent(core.on_eof(1.0)) == []
    assert sent(direct(core, p.Ack(message.id, 5, 9), 1.1)) == [p.Leave()]  # type: ignore[union-attr]


def test_eof_before_the_welcome_sends_what_was_typed_then_leaves() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    core.on_input("hello", 0.01)
    assert sent(core.on_eof(0.02)) == []
    actions = direct(core, WELCOME, T_JOINED)
    (say,) = [m for m in sent(actions) if isinstance(m, p.Say)]
    assert say.text == "hello"
    assert sent(direct(core, p.Ack(say.id, 5, 1), 0.2)) == [p.Leave()]


# --------------------------------------------------------------------------- losing the broker


def lose(core: ClientCore, t: float = T_JOINED) -> tuple[float, list[ev.Action]]:
    """Let the broker go silent (from ``t``) until the client notices; return when it did and what it did."""
    while True:
        t = round(t + 0.5, 3)
        actions = core.tick(t)
        if ev.Status("reconnecting") in actions:
            return t, actions
        assert t < 10, "the client never noticed that the broker went silent"


def test_broker_silence_beyond_the_timeout_means_reconnecting() -> None:
    core = joined()
    first_token = core.token
    assert core.tick(T_JOINED + 5.0) == [ev.Send(p.Ping())]  # silent for exactly the timeout: not yet
    t, actions = lose(core, T_JOINED + 5.0)
    assert t > T_JOINED + WELCOME.timeout_ms / 1000
    assert notices(actions)
    retry = core.tick(t + client_core.RETRY_INTERVAL)
    everything = actions + retry
    assert ev.Reconnect() in everything
    assert p.Join("alice", first_token, [GENERAL], private_seq=0) in sent(everything)
    assert retry == [ev.Reconnect(), ev.Send(p.Join("alice", first_token, [GENERAL], private_seq=0))]  # and again, every RETRY_INTERVAL


def test_bye_from_a_stopping_broker_means_reconnecting() -> None:
    core = joined()
    actions = direct(core, p.Bye("the broker is shutting down"), 1.0)
    assert ev.Status("reconnecting") in actions


def test_after_a_new_welcome_unacknowledged_lines_are_resent() -> None:
    core = joined()
    _, one = typed(core, "one", now=0.5)
    _, two = typed(core, "two", now=0.6)
    direct(core, p.Ack(one.id, 5, 1), 0.7)  # type: ignore[union-attr]
    t, _ = lose(core)
    _, three = typed(core, "three", now=t + 0.1)
    assert three is None  # not sent while away
    actions = direct(core, WELCOME, t + 0.5)
    assert ev.Status("connected", "alice") in actions
    resent = [m for m in sent(actions) if isinstance(m, p.Say)]
    assert [m.text for m in resent] == ["two", "three"]
    assert resent[0] == two  # the same id: the broker drops it if it had it already


def test_reconnect_with_the_same_history_fetches_what_was_missed() -> None:
    core = joined()
    publish(core, event(4, name="alice", kind=p.KIND_JOIN, text=""))
    publish(core, event(5))
    t, _ = lose(core)
    actions = direct(core, msgspec.structs.replace(WELCOME, rooms={GENERAL: 9}), t + 0.5)
    assert gap_fetch(6, 9) in sent(actions)


def test_not_joined_while_joined_rejoins_at_once() -> None:
    core = joined()
    actions = direct(core, p.Error(p.NOT_JOINED, "join first", "PING"), 1.0)
    assert ev.Status("reconnecting") in actions
    assert p.Join("alice", core.token, [GENERAL], private_seq=0) in sent(actions + core.tick(1.0))


def test_a_line_refused_with_not_joined_is_sent_again_after_the_rejoin_not_dropped() -> None:
    """PROTOCOL.md: not_joined means "rejoin and resend" (a line queued across a broker restart)."""
    core = joined()
    _, line = typed(core, "queued on the old connection", now=0.5)
    assert isinstance(line, p.Say)
    actions = direct(core, p.Error(p.NOT_JOINED, "join first", line.id), 1.0)
    assert not [a for a in actions if isinstance(a, ev.Failed)]
    assert p.Join("alice", core.token, [GENERAL], private_seq=0) in sent(actions)
    assert line in sent(direct(core, WELCOME, 1.2))


# --------------------------------------------------------------------------- recent history on joining


def test_history_lines_fetches_the_last_n_on_the_first_welcome() -> None:
    core = ClientCore("alice", interactive=False, history_lines=5)
    core.start(0.0)
    actions = direct(core, msgspec.structs.replace(WELCOME, rooms={GENERAL: 20}), T_JOINED)
    assert sent(actions) == [gap_fetch(16, 21)]  # the last 5, then our own join
    older = [event(seq, name="alice" if seq == 18 else "bob") for seq in range(16, 21)] + [own_join(21)]
    actions = direct(core, p.History(GENERAL, [p.event_body(e) for e in older], 16, 21), 0.2)
    # Our own line from an earlier session is history too; our join comes after the history, in order.
    assert shown(actions) == [16, 17, 18, 19, 20, 21]
    publics = [a for a in actions if isinstance(a, ev.Public)]
    assert [a.history for a in publics] == [True] * 5 + [False]  # from before we joined; our join is not
    assert [a.history for a in publish(core, event(22))] == [False]


@pytest.mark.parametrize("last, expected", [(3, [gap_fetch(1, 4)]), (0, [gap_fetch(1, 1)])])
def test_history_lines_never_asks_before_the_first_event(last: int, expected: list) -> None:
    core = ClientCore("alice", interactive=False, history_lines=20)
    core.start(0.0)
    assert sent(direct(core, msgspec.structs.replace(WELCOME, rooms={GENERAL: last}), T_JOINED)) == expected


def test_a_refused_handshake_ends_the_client_with_its_reason_not_as_unreachable() -> None:
    """Seen under load: fewer than HANDSHAKE_FAILURES unclear failures before the connect timeout
    used to end in "could not reach the broker" (exit 1) instead of the handshake's reason (exit 3)."""
    core = ClientCore("eve", interactive=False)
    core.start(0.0)
    assert core.on_handshake_failed("wrong key, probably", False, 0.5) == []  # not certain yet
    assert core.tick(client_core.CONNECT_TIMEOUT + 0.1) == [ev.Exit(ev.EXIT_REFUSED, "wrong key, probably")]
    certain = ClientCore("eve", interactive=False)
    certain.start(0.0)
    assert certain.on_handshake_failed("not admitted", True, 0.1) == [ev.Exit(ev.EXIT_REFUSED, "not admitted")]


def test_a_line_refused_for_good_is_reported_as_failed_and_not_resent() -> None:
    core = joined()
    actions = core.on_input("/pm nobody hello", T_JOINED + 1)
    (pm,) = sent(actions)
    assert isinstance(pm, p.Pm)
    refusal = direct(core, p.Error(p.NO_SUCH_USER, "nobody called nobody is online", pm.id), T_JOINED + 1.1)
    assert ev.Failed(pm.id, "nobody called nobody is online") in refusal
    assert all(m != pm for m in sent(core.tick(T_JOINED + 1.1 + client_core.RESEND_AFTER + 0.1)))


# --------------------------------------------------------------------------- protocol version 2


def test_a_published_batch_is_shown_event_by_event_and_its_gap_fetched() -> None:
    core = joined()  # expects seq 5 next
    [batch] = p.encode_events([event(seq) for seq in (7, 8, 9)])
    actions = core.on_published(batch, 1.0)
    assert shown(actions) == []  # 5 and 6 are missing: held until they come
    assert sent(actions) == [gap_fetch(5, 6)]
    [gap] = p.encode_events([event(5), event(6)])
    assert shown(core.on_published(gap, 1.1)) == [5, 6, 7, 8, 9]


def test_a_broker_of_another_version_ends_the_join_with_exit_3() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    old = [b"chat/1", b"ERROR", b'{"code":"bad_version","reason":"this peer speaks 1","ref":""}']
    actions = core.on_direct(old, 0.1)
    assert exits(actions) == [ev.EXIT_REFUSED]
    assert actions[0].reason.startswith("the broker speaks another protocol version")
    assert "version '1' is not supported: this side speaks version 2" in actions[0].reason


def test_a_message_of_another_version_once_joined_is_only_a_notice() -> None:
    core = joined()
    actions = core.on_direct([b"chat/3", b"ACK", b"{}"], 1.0)
    assert exits(actions) == [] and notices(actions)


# --------------------------------------------------------------------------- order behind room changes


def test_a_line_typed_after_leave_waits_for_parted_and_goes_to_the_room_typed_into_then() -> None:
    core = joined()
    direct(core, p.Entered("#dev", 0), 1.0)
    assert core.current == "#dev"
    assert typed(core, "/join #dev")[1] is None  # already in it: a switch, nothing to wait for
    assert typed(core, "/leave #dev")[1] == p.Part("#dev")
    assert typed(core, "right after leave") == ([], None)  # held: #dev is being left
    actions = direct(core, p.Parted("#dev"), 1.1)
    [say] = sent(actions)
    assert isinstance(say, p.Say) and (say.room, say.text) == (GENERAL, "right after leave")


def test_leave_typed_before_entered_is_not_refused_locally() -> None:
    core = joined()
    assert typed(core, "/join #dev")[1] == p.Enter("#dev")
    assert typed(core, "/leave #dev") == ([], None)
    assert typed(core, "right after leave") == ([], None)
    actions = direct(core, p.Entered("#dev", 0), 1.1)
    assert sent(actions) == [p.Part("#dev")] and notices(actions) == []
    [say] = sent(direct(core, p.Parted("#dev"), 1.2))
    assert isinstance(say, p.Say) and say.room == GENERAL


def test_a_front_ends_room_switch_waits_for_the_lines_typed_before_it() -> None:
    core = joined()
    typed(core, "/join #dev")
    typed(core, "for dev")  # held until the ENTERED: it goes to #dev
    assert core.on_request(ev.TypeInto(GENERAL), 1.0) == []  # after it, not before
    actions = direct(core, p.Entered("#dev", 0), 1.1)
    [say] = sent(actions)
    assert isinstance(say, p.Say) and say.room == "#dev"
    assert core.current == GENERAL and ev.RoomsChanged((GENERAL, "#dev"), GENERAL) in actions


def test_lines_held_behind_a_refused_room_change_go_on() -> None:
    core = joined()
    typed(core, "/join #dev")
    typed(core, "hello")
    actions = direct(core, p.Error(p.SERVER_FULL, "no room for more rooms", "ENTER"), 1.1)
    assert notices(actions) == ["no room for more rooms"]
    [say] = sent(actions)
    assert isinstance(say, p.Say) and (say.room, say.text) == (GENERAL, "hello")


@pytest.mark.parametrize("done", [True, False], ids=["taken-before-the-loss", "lost-with-the-broker"])
def test_a_room_change_unanswered_when_the_broker_went_away_is_finished_after_the_welcome(done: bool) -> None:
    core = joined()
    typed(core, "/join #dev")
    typed(core, "for dev")
    core.on_direct(p.encode(p.Bye("shutting down")), 1.1)
    rooms = {GENERAL: 3, "#dev": 0} if done else {GENERAL: 3}
    actions = direct(core, msgspec.structs.replace(WELCOME, rooms=rooms), 1.2)
    if not done:  # the broker never took the ENTER: sent again, the line still waits for it
        assert p.Enter("#dev") in sent(actions) and not any(isinstance(m, p.Say) for m in sent(actions))
        actions = direct(core, p.Entered("#dev", 0), 1.3)
    [say] = [m for m in sent(actions) if isinstance(m, p.Say)]
    assert (say.room, say.text) == ("#dev", "for dev")


def test_quit_waits_for_the_lines_held_behind_a_room_change() -> None:
    core = joined()
    direct(core, p.Entered("#dev", 0), 1.0)
    typed(core, "/leave #dev")
    typed(core, "last words")
    assert sent(core.on_eof(1.0)) == []  # not yet: "last words" has not even been sent
    [say] = sent(direct(core, p.Parted("#dev"), 1.1))
    assert isinstance(say, p.Say) and (say.room, say.text) == (GENERAL, "last words")
    assert sent(direct(core, p.Ack(say.id, 5, 1), 1.2)) == [p.Leave()]


def test_a_refused_fetch_skips_only_the_gap_of_its_own_room() -> None:
    core = joined(rooms={GENERAL: 3, "#dev": 3})  # each expects 5 next
    publish(core, event(7), 1.0)
    dev = msgspec.structs.replace(event(7), room="#dev")
    assert sent(publish(core, dev, 1.0)) == [gap_fetch(5, 6, "#dev")]
    actions = direct(core, p.Error(p.HISTORY_RANGE, "gone", client_core.GAP_FETCH + "#dev"), 1.1)
    assert [(a.event.room, a.event.seq) for a in actions if isinstance(a, ev.Public)] == [("#dev", 7)]
    assert notices(actions) == ["2 event(s) in #dev could not be recovered"]
    assert core.feeds[GENERAL].fetching is not None  # #general still waits for its own answer


def test_a_line_typed_after_join_before_the_welcome_goes_to_the_joined_room() -> None:
    core = ClientCore("alice", interactive=False)
    core.start(0.0)
    assert core.on_input("/join #dev", 0.01) == [] and core.on_input("for dev", 0.02) == []
    actions = direct(core, WELCOME, T_JOINED)
    assert p.Enter("#dev") in sent(actions) and not any(isinstance(m, p.Say) for m in sent(actions))
    [say] = sent(direct(core, p.Entered("#dev", 0), 0.2))
    assert isinstance(say, p.Say) and (say.room, say.text) == ("#dev", "for dev")

# --------------------------------------------------------------------------- carrying on (a gateway restarted)


def test_a_carried_on_session_rejoins_with_its_token_and_fetches_what_it_missed_then_resends_its_lines() -> None:
    core = ClientCore("alice", interactive=True)
    pending = p.Say("page-7", "not acknowledged yet", GENERAL)
    core.carry_on("t" * 32, WELCOME.history_id, {GENERAL: 2}, GENERAL, [pending])
    [join] = sent(core.start(0.0))
    assert join == p.Join("alice", "t" * 32, [GENERAL])
    actions = direct(core, msgspec.structs.replace(WELCOME, name="alice"), T_JOINED)
    fetch, resent = sent(actions)
    assert isinstance(fetch, p.Fetch)
    assert (fetch.room, fetch.first, fetch.last) == (GENERAL, 3, WELCOME.rooms[GENERAL])  # after what the page showed
    assert resent == pending  # under its own id: the broker drops it if it has it
    assert shown(direct(core, history(event(3), event(4, name="alice"), event(5)), T_JOINED)) == [3, 5]


def test_a_carried_on_session_of_another_history_starts_afresh() -> None:
    core = ClientCore("alice", interactive=True)
    core.carry_on("t" * 32, "an older history", {GENERAL: 2}, GENERAL, [])
    core.start(0.0)
    actions = direct(core, msgspec.structs.replace(WELCOME, name="alice"), T_JOINED)
    assert not [m for m in sent(actions) if isinstance(m, p.Fetch)]  # its numbers are not this history's
