"""One connection attempt per call: the URL's scheme picks the session.

``rtmp(s)`` → :mod:`rtmpd.client.rtmp`, ``http(s)`` → :mod:`rtmpd.client.http`,
``ws(s)`` → :mod:`rtmpd.client.ws`; each over a TCP connection (TLS for ``rtmps``,
``https`` and ``wss``: the certificate must name the host and chain to the system's
CAs, or to those of a ``--ca-file``; see :mod:`rtmpd.client.tls`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from rtmpd.client.http import HttpPublisher
from rtmpd.client.rtmp import DEFAULT_CHUNK_SIZE, rtmp_factory
from rtmpd.client.session import SETUP_TIMEOUT_S, Connector, SessionListener
from rtmpd.client.target import PushTarget
from rtmpd.client.tls import certificate_failure, client_tls
from rtmpd.client.ws import ws_factory

if TYPE_CHECKING:
    from rtmpd.client.tls import TrustRoot

__all__ = ["client_endpoint", "make_connector"]


def client_endpoint(
    reactor: Any, target: PushTarget, trust_root: TrustRoot | None = None
) -> IStreamClientEndpoint:
    """TCP to the target's host and port, in TLS for ``rtmps`` / ``https`` / ``wss``
    (certificates chaining to ``trust_root``; None: the system's CAs)."""
    plain = HostnameEndpoint(reactor, target.host, target.port, timeout=SETUP_TIMEOUT_S)
    if target.tls:
        return wrapClientTLS(client_tls(target.host, trust_root), plain)
    return plain


def make_connector(
    reactor: Any, target: PushTarget, *, has_audio: bool, has_video: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE, trust_root: TrustRoot | None = None,
) -> Connector:
    """A :data:`~rtmpd.client.session.Connector` opening one connection per attempt
    (``chunk_size``: the RTMP chunk size announced to the server; ``trust_root``:
    the CAs a TLS server's certificate must chain to, None for the system's)."""

    def connect(listener: SessionListener) -> None:
        if target.scheme in ("http", "https"):
            publisher = HttpPublisher(target, listener, reactor,
                                      has_audio=has_audio, has_video=has_video)
            publisher.post(reactor, client_endpoint(reactor, target, trust_root))
            return
        factory: protocol.Factory
        if target.scheme in ("rtmp", "rtmps"):
            factory = rtmp_factory(target, listener, reactor, chunk_size=chunk_size)
        else:
            factory = ws_factory(target, listener, reactor,
                                 has_audio=has_audio, has_video=has_video)
        d = client_endpoint(reactor, target, trust_root).connect(factory)

        def failed(failure: Failure) -> None:
            tls = certificate_failure(failure)
            if tls is not None:
                listener.session_lost(None, tls, True)
                return
            listener.session_lost(None, f"cannot connect: {failure.getErrorMessage()}", False)

        d.addErrback(failed)

    return connect
