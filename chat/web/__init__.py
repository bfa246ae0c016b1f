"""The web client: a gateway that hosts one client-core session per browser tab (see docs/WEB.md)."""
