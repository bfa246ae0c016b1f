"""Makes a Python process on Linux or macOS look like Windows to this program (tests/test_platforms.py).

Put this folder first on PYTHONPATH: Python imports ``sitecustomize`` at start-up. Then the POSIX-only
modules cannot be imported, the POSIX-only signals are gone from ``signal``, and asyncio's event loop
cannot handle signals (Windows' loops raise NotImplementedError), so that an unguarded use of any of
them fails here as it would on Windows. And ``zmq.Poller`` takes ZeroMQ sockets only: Windows'
zmq_poll cannot poll a pipe or any other file descriptor.
"""

from __future__ import annotations

import asyncio.unix_events
import importlib.abc
import signal
import sys

import zmq

BLOCKED = frozenset({"resource", "fcntl", "termios", "pwd", "grp", "tty", "pty", "readline", "posix_ipc"})
# Signals Windows' signal module does not have (it has SIGINT, SIGTERM, SIGBREAK, SIGABRT, SIGFPE, ...).
POSIX_SIGNALS = ("SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGPIPE", "SIGCHLD", "SIGCONT",
                 "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGWINCH")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (a Windows-like process)", name=name)
        return None


def _no_signals(self, sig, callback, *args):  # type: ignore[no-untyped-def]
    raise NotImplementedError  # what Windows' ProactorEventLoop and SelectorEventLoop do


sys.meta_path.insert(0, _Blocker())
for _name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[_name]  # imported during start-up already: gone for everyone who imports them now
for _signal in POSIX_SIGNALS:
    if hasattr(signal, _signal):
        delattr(signal, _signal)
asyncio.unix_events._UnixSelectorEventLoop.add_signal_handler = _no_signals  # type: ignore[method-assign]


_register = zmq.Poller.register


def _sockets_only(self, socket, flags=zmq.POLLIN | zmq.POLLOUT):  # type: ignore[no-untyped-def]
    if not isinstance(socket, zmq.Socket):
        raise TypeError(f"zmq_poll on Windows polls ZeroMQ sockets only, not {socket!r}")
    return _register(self, socket, flags)


zmq.Poller.register = _sockets_only  # type: ignore[method-assign]
