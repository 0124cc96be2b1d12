"""The stream directory kept in Redis (``--directory redis://host:6379/0``):
which origin holds each live stream, for the origins (``twistd rtmpd``,
which claim their streams) and the gateways (``twistd flvgateway``, which
find a stream's origin there instead of a fixed ``--upstream``)
(``ARCHITECTURE.md`` §9).

**Keys.** One string per live stream, ``rtmpd:stream:{app}/{name}``, whose
value is the holder's location (the base URL its streams are pulled from,
``http://10.0.0.5:8501``) and which expires ``ttl_s`` after its last claim.
An origin claims its live streams again every third of that
(:class:`rtmpd.services.directory.DirectoryClaims`), so the entries of an
origin that died vanish by themselves within ``ttl_s``. Claim and release
are small Lua scripts, atomic in Redis: a claim takes a free name or renews
its own (``mine or free``), a release deletes only its own. Names are
``[A-Za-z0-9_-]``, so keys need no quoting; a database number (the URL's
path) keeps deployments sharing a Redis apart.

**The client.** txredisapi: the Twisted-native Redis client (Deferreds, any
reactor), maintained (1.6 on PyPI, Python 3.11), pure Python with no
dependency but Twisted. redis-py's asyncio client would need Twisted's
asyncio reactor under the whole server (every listener and the fan-out's
send path) for the sake of one lookup service. We use txredisapi's protocol
(the RESP codec, ``EVAL`` with its script cache, ``GET``) over a connection
kept here with Twisted's ``ClientService``, not its pools: a command sent
while Redis is unreachable fails at once (the publish is then let through
unclaimed, the play answered 502) instead of waiting in the pool's queue for
a reconnect, each command has a bound (:data:`COMMAND_TIMEOUT_S`), and losing
and regaining Redis is one log line each.

txredisapi imports the global reactor, so it is imported only when the
directory starts (under twistd the reactor is installed by then).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.client.backoff import Backoff
from rtmpd.errors import RtmpdError
from rtmpd.interfaces import IStreamDirectory

__all__ = ["DEFAULT_TTL_S", "DirectoryUnavailable", "RedisDirectory", "RedisUrl",
           "parse_redis_url"]

log = Logger()

#: Seconds a claim lives without a refresh: how long the streams of an
#: origin that died stay findable (gateways retrying it meanwhile). Claims
#: are refreshed every third of it, so two lost refreshes are survived.
DEFAULT_TTL_S = 15.0
#: Seconds Redis has to answer a command. It answers in well under a
#: millisecond; one that takes this long is stuck, and the connection is
#: dropped and made again.
COMMAND_TIMEOUT_S = 1.0
#: Seconds a TCP connection to Redis may take.
CONNECT_TIMEOUT_S = 3.0
#: Seconds shutdown waits for the commands in flight (the releases) before
#: closing the connection.
STOP_TIMEOUT_S = 2.0
#: Prefix of every key.
KEY_PREFIX = "rtmpd:stream:"
DEFAULT_PORT = 6379

#: Take the name if free, renew it if ours; 1 if it is ours now, else 0.
CLAIM_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
#: Delete the name if ours; 1 if it was deleted.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class DirectoryUnavailable(RtmpdError):
    """The directory did not answer (not connected, or too slow)."""


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """Where the directory is: ``redis://[[user]:password@]host[:port][/db]``."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        """The URL as logs show it: without the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisUrl:
    """Parse ``--directory``; ValueError with one line saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"{url!r} is not a redis://host:port/db URL"
                         + (" (TLS, rediss://, is not supported)"
                            if parts.scheme == "rediss" else ""))
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host (redis://host:6379/0)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    path = parts.path.strip("/")
    if path and not (path.isdigit() and int(path) < 1_000_000):
        raise ValueError(f"{url!r}: the path must be a database number (/0), not /{path}")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a directory URL has no ?query or #fragment")
    return RedisUrl(
        host=parts.hostname, port=port, db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def local_address_towards(host: str, port: int) -> str:
    """This host's address on the route to ``host`` (no packet is sent: a
    UDP socket is only connected), e.g. the address origins are reached at
    by whatever also reaches Redis. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.connect(address)
        local: str = probe.getsockname()[0]
    return local


@implementer(IStreamClientEndpoint)
class _Watched:
    """An endpoint that tells the directory about failed connection
    attempts (``ClientService`` retries them silently)."""

    def __init__(self, endpoint: IStreamClientEndpoint, directory: RedisDirectory) -> None:
        self.endpoint = endpoint
        self.directory = directory

    def __repr__(self) -> str:
        # What ClientService's "Scheduling retry ... to connect" lines show.
        return str(self.directory.url)

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self.endpoint.connect(factory)
        return d.addErrback(self.directory._attempt_failed)


@implementer(IStreamDirectory)
class RedisDirectory(service.Service):
    """A stream directory in Redis at ``url``; connects when started and
    reconnects with backoff while running."""

    name = "stream-directory"

    def __init__(
        self, url: RedisUrl, reactor: Any, *, ttl_s: float = DEFAULT_TTL_S,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """``endpoint``: where to connect (default: TCP to ``url``'s host
        and port; tests pass their own)."""
        self.url = url
        self.clock: IReactorTime = reactor
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.command_timeout_s = command_timeout_s
        if endpoint is None:
            endpoint = endpoints.HostnameEndpoint(reactor, url.host, url.port,
                                                  timeout=CONNECT_TIMEOUT_S)
        self._endpoint = _Watched(endpoint, self)
        self._connection: Any = None
        self._client: ClientService | None = None
        self._backoff = Backoff(stable_s=0)
        #: Whether the last attempt failed (logged once per outage).
        self._failing = False
        self._was_connected = False
        self._in_flight: set[defer.Deferred[Any]] = set()

    @property
    def connected(self) -> bool:
        """Whether commands can be sent now."""
        return self._connection is not None

    # -- IStreamDirectory ----------------------------------------------------------

    def claim(self, app: str, stream: str, location: str) -> defer.Deferred[bool]:
        d = self._command(lambda redis: redis.eval(
            CLAIM_SCRIPT, [KEY_PREFIX + f"{app}/{stream}"], [location, self.ttl_ms]))
        return d.addCallback(lambda answer: answer == 1)

    def release(self, app: str, stream: str, location: str) -> defer.Deferred[None]:
        d = self._command(lambda redis: redis.eval(
            RELEASE_SCRIPT, [KEY_PREFIX + f"{app}/{stream}"], [location]))
        return d.addCallback(lambda _: None)

    def lookup(self, app: str, stream: str) -> defer.Deferred[str | None]:
        d = self._command(lambda redis: redis.get(KEY_PREFIX + f"{app}/{stream}"))
        return d.addCallback(lambda value: None if value is None else str(value))

    def _command(self, send: Any) -> defer.Deferred[Any]:
        """Send one command now, or fail at once when not connected."""
        connection = self._connection
        if connection is None:
            return defer.fail(DirectoryUnavailable(f"not connected to {self.url}"))
        d: defer.Deferred[Any] = defer.maybeDeferred(send, connection)
        self._in_flight.add(d)

        def done(result: Any) -> Any:
            self._in_flight.discard(d)
            if isinstance(result, Failure):
                if isinstance(result.value, defer.TimeoutError):
                    self._stuck(connection)
                    raise DirectoryUnavailable(
                        f"{self.url} did not answer within {self.command_timeout_s:g} s")
                if not isinstance(result.value, DirectoryUnavailable):
                    raise DirectoryUnavailable(f"{self.url}: {result.getErrorMessage()}")
            return result

        d.addTimeout(self.command_timeout_s, self.clock)
        return d.addBoth(done)

    def _stuck(self, connection: Any) -> None:
        if connection is self._connection and connection.transport is not None:
            log.warn("stream directory: {url} stopped answering; reconnecting", url=self.url)
            connection.transport.abortConnection()

    # -- the connection ------------------------------------------------------------------

    def _prepare(self, connection: Any) -> None:
        """A new TCP connection (ClientService's ``prepareConnection``): log
        in and choose the database before any command uses it. That runs
        after ClientService has taken the connection: a login that fails
        closes it, and ClientService connects again after the backoff (a
        connection rejected here instead would stay open, since
        ClientService does not close it). ``connection`` is ClientService's
        proxy of the protocol, which is what is kept and compared."""

        @defer.inlineCallbacks
        def log_in() -> Any:
            if self.url.password is not None:
                yield connection.auth(self.url.password, self.url.username)
            if self.url.db:
                yield connection.select(self.url.db)
            # A Redis that wants a password says so now, not at the first claim.
            yield connection.ping()

        def ready(_: object) -> None:
            if not connection.connected:
                return
            self._connection = connection
            self._backoff = Backoff(stable_s=0)
            connection.whenDisconnected().addCallback(lambda _: self._lost(connection))
            log.info("stream directory: connected to {url}{again}", url=self.url,
                     again=" again" if self._was_connected else "")
            self._was_connected = True
            self._failing = False

        def refused(failure: Failure) -> None:
            self._attempt_failed(failure)
            if connection.transport is not None:
                connection.transport.abortConnection()

        d: defer.Deferred[Any] = log_in()
        d.addTimeout(self.command_timeout_s, self.clock)
        d.addCallbacks(ready, refused)

    def _lost(self, connection: Any) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        if self.running:
            log.warn("stream directory: lost the connection to {url}; reconnecting (meanwhile "
                     "publishes are allowed unclaimed and gateways cannot find streams)",
                     url=self.url)

    def _attempt_failed(self, failure: Failure) -> Failure:
        if not self._failing and self.running:
            self._failing = True
            log.warn("stream directory: cannot use {url} ({error}); retrying every "
                     "{max:g} s at most (meanwhile publishes are allowed unclaimed and "
                     "gateways cannot find streams)",
                     url=self.url, error=failure.getErrorMessage(), max=self._backoff.max_s)
        return failure

    def _retry_delay(self, attempt: int) -> float:
        return self._backoff.next_delay()

    # -- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        from txredisapi import RedisProtocol

        super().startService()  # type: ignore[no-untyped-call]
        factory = protocol.Factory.forProtocol(RedisProtocol)
        factory.noisy = False
        client = self._client = ClientService(
            self._endpoint, factory, retryPolicy=self._retry_delay, clock=self.clock,
            prepareConnection=self._prepare)
        client.startService()

    def stopService(self) -> defer.Deferred[None]:
        """Let the commands in flight (the releases of a clean stop) be
        answered, for at most :data:`STOP_TIMEOUT_S`, then close."""
        super().stopService()  # type: ignore[no-untyped-call]
        waiting: defer.Deferred[Any] = defer.DeferredList(list(self._in_flight))
        waiting.addTimeout(STOP_TIMEOUT_S, self.clock)
        waiting.addErrback(lambda _: None)

        def close(_: object) -> defer.Deferred[None] | None:
            client, self._client = self._client, None
            self._connection = None
            if client is None:
                return None
            stopped: defer.Deferred[None] = client.stopService()
            return stopped

        return waiting.addCallback(close)
