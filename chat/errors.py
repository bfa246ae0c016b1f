"""The project's exceptions: one base, so callers can catch everything of ours in one place."""

from __future__ import annotations


class ChatError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(ChatError):
    """A message broke the wire protocol.

    ``code`` is one of the stable error codes of ``docs/PROTOCOL.md`` so that it can be sent back to the
    peer as an ``ERROR`` reply.
    """

    def __init__(self, code: str, reason: str, ref: str = "") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.ref = ref  # the request it is about (its id, else its type), when known


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid: answer with an error, never crash."""


class LocalProtocolError(ProtocolError):
    """We tried to send something invalid: that is a bug in this program."""


class UsageError(ChatError):
    """A bad command-line value, reported to the user with exit code 2."""


class StartupError(ChatError):
    """The program cannot start as asked (a port in use, a folder it cannot write): the message says
    what and where, in one line, and the program exits with 1 having written nothing."""


class StoreError(ChatError):
    """The history store failed (disk full, read-only, damaged, locked by another broker).

    The broker answers the request it was serving with an error and goes on; at start it exits with the
    message."""
