"""Every use of Twisted's private attributes, in one place.

Three things need more than Twisted's public API:

* the direct-write fast path of the fan-out (``benchmarks/README.md``, "What
  the profiles say"): writing
  shared bytes straight to a TCP socket is only correct while the transport
  holds nothing, and only the transport's private buffers say whether it
  does;
* streaming an HTTP publish body as it arrives, including a body delimited
  only by the close, which twisted.web would read as no body at all;
* reporting a port that cannot be listened on in one line (twistd).

``tests/unit/test_twisted_private.py`` checks each name used here against the
installed Twisted, so an upgrade that renames one fails loudly there, not
silently in production.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import tcp

#: The kernel refuses more than this many buffers in one ``writev`` (IOV_MAX
#: on Linux); longer lists are sent in several calls.
IOV_MAX = 1024

_write = os.write
_writev = os.writev


def socket_fd(transport: object) -> int:
    """The socket of a plain TCP transport, or -1 (TLS, tests, wrappers):
    only plain TCP may be written to directly."""
    if isinstance(transport, tcp.Connection):
        return int(transport.fileno())
    return -1


def queued_bytes(transport: object) -> int:
    """Bytes a TCP transport holds and has not handed to the kernel yet (0
    for other transports)."""
    if not isinstance(transport, tcp.Connection):
        return 0
    t: Any = transport
    return int(len(t.dataBuffer) - t.offset + t._tempDataLen)


def write_now(transport: Any, fd: int, chunks: Sequence[bytes], size: int) -> None:
    """Write ``chunks`` (``size`` bytes) to a connection's socket now.

    ``fd`` is the socket of a plain TCP transport, or -1 (TLS, tests), in
    which case the transport writes them. Twisted's own ``write`` only
    queues the bytes and sends them on the next reactor turn, two epoll
    updates later; this sends at once when the transport holds nothing
    already sent in part. Bytes it queued but never tried (response headers,
    say) go first in the same ``writev``. What the kernel does not take is
    handed back to the transport, which keeps the order and applies
    backpressure.
    """
    t = transport
    if fd < 0 or len(t.dataBuffer) != t.offset or not t.connected or t.disconnecting:
        t.writeSequence(chunks)
        return
    if t._tempDataLen:
        chunks = [*t._tempDataBuffer, *chunks]
        size += t._tempDataLen
        t._tempDataBuffer = []
        t._tempDataLen = 0
    for start in range(0, len(chunks), IOV_MAX):
        batch = chunks[start : start + IOV_MAX] if len(chunks) > IOV_MAX else chunks
        try:
            written = _writev(fd, batch)
        except BlockingIOError:
            written = 0
        except OSError:
            # The peer is gone; the reactor will notice and call
            # connectionLost. Nothing more to send.
            return
        if written != (size if batch is chunks else sum(map(len, batch))):
            _write_rest(t, chunks, start, written)
            return


def _write_rest(transport: Any, chunks: Sequence[bytes], start: int, written: int) -> None:
    """Hand the transport what a partial ``writev`` starting at ``chunks[start]``
    left unsent (``written`` bytes were taken)."""
    index = start
    for chunk in chunks[start:]:
        n = len(chunk)
        if written < n:
            break
        written -= n
        index += 1
    if index < len(chunks):
        if written:
            transport.write(chunks[index][written:])
            index += 1
        transport.writeSequence(chunks[index:])


def discard_unsent(transport: object) -> None:
    """Let go of what a closed TCP transport still held to send.

    Twisted keeps a closed connection's buffers for as long as the
    transport lives, and a viewer's protocol and transport refer to each
    other, so they live until a full garbage collection: up to a few
    hundred KiB for a viewer dropped for lagging (see
    :mod:`rtmpd.gcpacing`). Does nothing while the connection is open."""
    if not isinstance(transport, tcp.Connection) or transport.connected:
        return
    t: Any = transport
    t.dataBuffer = b""
    t.offset = 0
    t._tempDataBuffer = []
    t._tempDataLen = 0


class DirectWrites:
    """The fan-out's per-viewer hot path, as a base class of
    :class:`rtmpd.fanout.ViewerOutput` (a method, not a helper it calls:
    this runs once per viewer per pass). The subclass sets ``transport``,
    ``_fd`` (:func:`socket_fd`), ``bytes_sent`` and ``frames_sent``."""

    __slots__ = ("_fd", "bytes_sent", "frames_sent", "transport")

    transport: Any
    _fd: int
    bytes_sent: int
    frames_sent: int

    def send_bytes(self, data: bytes, frames: int) -> None:
        """Send one pass's bytes (``frames`` frames joined): one ``write``
        when the transport holds nothing. :func:`write_now` cut down to one
        buffer (no list, no batching, no taking over queued bytes, which a
        synced viewer never has)."""
        self.bytes_sent += len(data)
        self.frames_sent += frames
        t = self.transport
        fd = self._fd
        if fd < 0 or t._tempDataLen or len(t.dataBuffer) != t.offset:
            t.write(data)
            return
        try:
            written = _write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the peer is gone; connectionLost follows
        if written != len(data):
            t.write(data[written:])


#: The log prefix of each protocol class a viewer's connection has had
#: (a few: one per protocol), for :meth:`_LeanServer.logPrefix`.
_LOG_PREFIXES: dict[type, str] = {}


class _LeanServer(tcp.Server):
    """A ``tcp.Server`` whose log prefix and repr are made when asked, not
    kept as two strings of ~80 bytes each per connection (a viewer's, held
    for hours)."""

    def logPrefix(self) -> str:
        # Asked on every read or write event of the connection: the
        # protocol's part is looked up per class, not worked out each time.
        protocol = getattr(self, "protocol", None)
        prefix = _LOG_PREFIXES.get(type(protocol))
        if prefix is None:
            prefix = self._getLogPrefix(protocol) if protocol is not None else "-"
            if protocol is not None and len(_LOG_PREFIXES) < 64:
                _LOG_PREFIXES[type(protocol)] = prefix
        return f"{prefix},{self.sessionno},{self.hostname}"

    def __repr__(self) -> str:
        protocol = getattr(self, "protocol", None)
        name = type(protocol).__name__ if protocol is not None else "-"
        return f"<{name} #{self.sessionno} on {self.server._realPortNumber}>"


def shed_transport_strings(transport: object) -> None:
    """Let a plain TCP server transport make its log prefix and repr when
    asked (:class:`_LeanServer`) instead of keeping them; anything else
    (TLS, tests) is left as it is."""
    if type(transport) is tcp.Server:
        attrs = transport.__dict__
        attrs.pop("logstr", None)
        attrs.pop("repstr", None)
        transport.__class__ = _LeanServer


# -- twisted.web ---------------------------------------------------------------


def compact_instance(obj: object) -> None:
    """Copy an object's attribute dict into one sized for what it holds.

    An ``HTTPChannel`` gains its attributes in an order Python's shared-key
    instance dicts do not follow, so its dict is rebuilt as a table of about
    1.6 KB; a copy of the same 29 entries takes about 0.8 KB. Held once per
    HTTP viewer for as long as it plays. Attributes that are the very
    object their class holds under the same name are left out: looking them
    up finds the class's, which is the same."""
    cls = type(obj)
    missing = object()
    obj.__dict__ = {
        name: value for name, value in obj.__dict__.items()
        if getattr(cls, name, missing) is not value
    }


#: Values an attribute may share with every instance through its class: no
#: one can change them in place.
_PLAIN = (type(None), bool, int, float, str, bytes)


def share_plain_defaults(obj: object, names: Iterable[str]) -> None:
    """Make the plain values (None, bools, numbers, strings, bytes) of the
    attributes ``names`` of ``obj`` its class's defaults, learnt once from
    the first object, and drop from its dict those that are the class's.

    For a third-party object that sets ~70 attributes per instance, most
    of them to the same flags and constants (Autobahn's WebSocket protocol
    for every WS-FLV viewer, held for hours): the instance keeps only what
    differs. ``names`` must be attributes every instance of the class sets
    (say, those set when it connects), so that an instance never finds a
    default where it would have found none. A later assignment goes to the
    instance as before; nothing here may be deleted with ``del``."""
    cls = type(obj)
    learnt: frozenset[str] | None = cls.__dict__.get("_rtmpd_shared_defaults")
    attrs = obj.__dict__
    if learnt is None:
        learnt = frozenset(
            name for name in names
            if type(attrs.get(name, attrs)) in _PLAIN and name not in cls.__dict__
        )
        for name in learnt:
            setattr(cls, name, attrs[name])
        cls._rtmpd_shared_defaults = learnt  # type: ignore[attr-defined]
    obj.__dict__ = {
        name: value for name, value in attrs.items()
        if name not in learnt or cls.__dict__[name] is not value
    }


#: Plain attributes of twisted.web's ``HTTPChannel`` that a playing channel
#: may leave to its class (:func:`share_plain_defaults`), because no channel
#: reads its class's value: ``__init__`` sets the first two, ``makeConnection``
#: ``connected``; ``_requestProducerStreaming`` is read only while a producer
#: is registered (registering sets it), and ``_savedTimeOut`` only after a
#: request of a channel with a timeout set it (all channels of a site share
#: the site's timeout). Not ``persistent``: a new channel reads it before its
#: first request, and a closed play's False would make it drop every byte.
HTTP_CHANNEL_PLAIN_NAMES = frozenset({
    "_handlingRequest", "_transferDecoder", "connected", "_requestProducerStreaming",
    "_savedTimeOut",
})


def shed_autobahn_handshake(proto: Any) -> None:
    """Let go of what Autobahn keeps per WebSocket connection that only the
    opening handshake reads (the client's key, the transport details it
    builds for ``onConnecting``) and share its event table (an
    ``ObservableMixin`` list of valid events and dict of last results,
    written only by ``fire()`` once a listener was added with ``on()``,
    which rtmpd never does) with every connection of the class: ~600 bytes
    a WS-FLV viewer, held for hours. Autobahn's private names; checked in
    ``tests/unit/test_twisted_private.py``."""
    proto._wskey = None
    proto._transport_details = None
    if proto._listeners is not None:
        return
    cls = type(proto)
    shared = cls.__dict__.get("_rtmpd_events")
    if shared is None:
        shared = cls._rtmpd_events = (proto._valid_events, proto._results)
        cls._valid_events, cls._results = shared
    if proto._valid_events == shared[0]:
        del proto._valid_events, proto._results


def release_upgraded_channel(channel: Any) -> None:
    """Let go of the requests of an ``HTTPChannel`` whose transport a
    WebSocket upgrade took over (Autobahn sets the channel's transport to
    None): nothing will read them again.

    The channel and its request point at each other, so without this they
    wait for a collection; joins allocate so much that a young collection
    often finds them still in use and promotes them, and rtmpd runs full
    collections only as connections close (``rtmpd.gcpacing``). Measured on
    a server after 2 000 WS-FLV joins: 649 of the 2 000 upgraded channels,
    with their requests and headers, still held, ~17 000 objects. Dropped
    here, they are freed as soon as the upgrade returns."""
    if channel.transport is None:
        channel.requests = []


def request_disconnected(request: Any) -> bool:
    """Whether the client of a twisted.web request has gone away."""
    return bool(getattr(request, "_disconnected", False))


def request_line(channel: Any) -> tuple[bytes, bytes]:
    """The method and raw path (query included) of the request an
    ``HTTPChannel`` is reading, available from ``Request.gotLength`` on
    (before twisted.web has parsed anything into the request)."""
    return bytes(getattr(channel, "_command", b"")), bytes(getattr(channel, "_path", b"/"))


def read_body_until_close(channel: Any, on_data: Callable[[bytes], None]) -> None:
    """Make a channel read the current request's body until the client
    closes (no ``Content-Length``, not chunked): twisted.web would read it as
    no body at all. ``on_data`` gets the body bytes."""
    from twisted.web.http import _IdentityTransferDecoder

    channel.length = None
    channel._transferDecoder = _IdentityTransferDecoder(  # type: ignore[no-untyped-call]
        None, on_data, channel._finishRequestBody
    )


# -- twistd ------------------------------------------------------------------------


def raise_listen_errors(listener: Any) -> None:
    """Make a StreamServerEndpointService raise a failure to listen from
    ``privilegedStartService`` (so it can be reported in one line) instead
    of logging it later."""
    listener._raiseSynchronously = True


def quiet_pool(pool: Any) -> Any:
    """``pool`` (an ``HTTPConnectionPool``) making connections whose
    factories do not log "Starting factory" / "Stopping factory": a gateway
    opens one per pull and reconnect, and those lines would drown the log.
    The pool's factory class is the private ``_factory`` attribute."""
    factory = pool._factory
    pool._factory = type("QuietHTTP11ClientFactory", (factory,), {"noisy": False})
    return pool
