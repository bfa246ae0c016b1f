"""Defaults that both launchers need, in a module that imports nothing platform-specific.

``client.py --help`` must work wherever the client does, so the command lines take their defaults from
here rather than from the broker's socket loop (which may use POSIX-only modules where they exist).
"""

from __future__ import annotations

DEFAULT_PORT = 5555  # the broker's ROUTER
DEFAULT_PUB_PORT = 5556  # the broker's PUB
PUB_HWM = 1000  # messages (batches of events) queued per subscriber; a slower one loses the rest and fetches it
