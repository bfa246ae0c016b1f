"""LAN chat over ZeroMQ: a broker and its clients (see README.md)."""

__version__ = "0.2.0"
