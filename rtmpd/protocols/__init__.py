"""Thin Twisted adapters between sockets and the pure core."""

from typing import Any


def set_no_delay(transport: Any) -> None:
    """Turn Nagle off on a media connection (small messages would wait for
    the peer's ACK otherwise); transports that are not TCP have no such knob."""
    set_it = getattr(transport, "setTcpNoDelay", None)
    if set_it is not None:
        set_it(True)


def host_and_port(address: object) -> tuple[str, int]:
    """The host and port of a peer's address ("?" and 0 when it has none,
    e.g. a Unix socket)."""
    return str(getattr(address, "host", "?")), int(getattr(address, "port", 0))
