"""The IRC gateway: IRC clients join the chat, each connection one client-core session (docs/IRC.md)."""
