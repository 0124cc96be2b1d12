"""``--directory`` on the command lines (rtmpd.tap.directory): Redis URLs
are checked at parse time, a gateway takes exactly one of --upstream and
--directory, an origin's default location is its --http port at the
address gateways reach it by, and the service trees hold the directory and
the claims. The Redis directory itself (rtmpd.redisdirectory), over a fake
connection: it logs in (AUTH, SELECT, PING) before any command, each call is
one command, it fails at once while not connected, and a Redis that does not
answer or refuses the login is dropped and connected again. Against a real
Redis it is tested in tests/e2e/test_topology.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd.redisdirectory import DirectoryUnavailable, RedisDirectory, RedisUrl, parse_redis_url
from rtmpd.services.directory import DirectoryClaims
from rtmpd.tap import flvgateway
from rtmpd.tap import rtmpd as rtmpd_tap
from rtmpd.tap.directory import default_location


@pytest.mark.parametrize(("url", "parsed"), [
    ("redis://10.0.0.9", RedisUrl("10.0.0.9")),
    ("redis://cache:6380/2", RedisUrl("cache", 6380, 2)),
    ("redis://:s%40cret@cache/1", RedisUrl("cache", 6379, 1, None, "s@cret")),
    ("redis://edge:pw@[::1]:7000/0", RedisUrl("::1", 7000, 0, "edge", "pw")),
])
def test_redis_urls_parse(url: str, parsed: RedisUrl) -> None:
    assert parse_redis_url(url) == parsed


@pytest.mark.parametrize(("url", "why"), [
    ("http://cache:6379", "not a redis://"),
    ("rediss://cache", "TLS"),
    ("redis:///0", "names no host"),
    ("redis://cache/db1", "database number"),
    ("redis://cache:99999", "out of range"),
    ("redis://cache/0?timeout=1", "no ?query"),
])
def test_bad_redis_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("?", r"\?")):
        parse_redis_url(url)


def test_logs_never_show_the_password() -> None:
    assert str(parse_redis_url("redis://:secret@cache:6380/3")) == "redis://cache:6380/3"


def gateway_options(*argv: str) -> flvgateway.Options:
    options = flvgateway.Options()
    options.parseOptions(list(argv))
    return options


def test_a_gateway_takes_exactly_one_of_upstream_and_directory() -> None:
    with pytest.raises(usage.UsageError, match=r"give one of --upstream .* and --directory"):
        gateway_options()
    with pytest.raises(usage.UsageError, match="not both"):
        gateway_options("--upstream", "http://origin:8501", "--directory", "redis://cache")
    with pytest.raises(usage.UsageError, match=r"--directory: .*not a redis://"):
        gateway_options("--directory", "cache:6379")
    assert gateway_options("--directory", "redis://cache/0")["upstream"] is None


def test_a_gateway_with_a_directory_finds_its_streams_there() -> None:
    options = gateway_options("--directory", "redis://cache:6380/1")
    top = flvgateway.makeService(options, reactor=MemoryReactorClock())
    directory = top.getServiceNamed("stream-directory")
    assert isinstance(directory, RedisDirectory)
    assert directory.url == RedisUrl("cache", 6380, 1)
    upstream = top.upstream  # type: ignore[attr-defined]
    assert upstream.directory is directory and upstream.base_url is None


def rtmpd_options(tmp_path: Path, *argv: str) -> rtmpd_tap.Options:
    options = rtmpd_tap.Options()
    options.parseOptions(["--root", str(tmp_path), *argv])
    return options


def test_an_origin_checks_its_directory_options(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="--directory-location needs --directory"):
        rtmpd_options(tmp_path, "--directory-location", "http://10.0.0.5:8501")
    with pytest.raises(usage.UsageError, match=r"--directory-location: .*not an http"):
        rtmpd_options(tmp_path, "--directory", "redis://cache",
                      "--directory-location", "10.0.0.5:8501")
    with pytest.raises(usage.UsageError, match="--directory-ttl"):
        rtmpd_options(tmp_path, "--directory", "redis://cache", "--directory-ttl", "0.1")


def test_an_origin_claims_its_streams_at_its_location(tmp_path: Path) -> None:
    options = rtmpd_options(tmp_path, "--directory", "redis://127.0.0.1:6390/0",
                            "--directory-location", "http://10.0.0.5:8501",
                            "--directory-ttl", "6")
    top = rtmpd_tap.makeService(options, reactor=MemoryReactorClock())
    directory = top.getServiceNamed("stream-directory")
    claims = top.getServiceNamed("directory-claims")
    assert isinstance(directory, RedisDirectory) and isinstance(claims, DirectoryClaims)
    assert claims.directory is directory and claims.location == "http://10.0.0.5:8501"
    assert directory.ttl_ms == 6000 and claims.refresh_s == 2
    admission = top.admission  # type: ignore[attr-defined]
    assert admission.authorizers[-1] is claims
    # Added before the claims: stopped after them, so their releases go out.
    children = list(top)
    assert children.index(directory) < children.index(claims)


def test_the_default_location_is_the_http_port_at_the_address_gateways_reach() -> None:
    assert default_location("tcp:8501", "127.0.0.1", 6379) == "http://127.0.0.1:8501"
    assert default_location("tcp:port=9000:interface=10.1.2.3", "127.0.0.1", 6379) == (
        "http://10.1.2.3:9000")
    assert default_location(r"tcp6:8501:interface=\:\:1", "::1", 6379) == "http://[::1]:8501"
    assert default_location("ssl:8502:privateKey=k.pem", "127.0.0.1", 6379) == (
        "https://127.0.0.1:8502")
    with pytest.raises(ValueError, match="not a tcp: or ssl: listener"):
        default_location("unix:/run/rtmpd.sock", "127.0.0.1", 6379)


def test_the_redis_directory_fails_at_once_while_not_connected() -> None:
    directory = RedisDirectory(RedisUrl("127.0.0.1", 1), MemoryReactorClock())
    for d in (directory.claim("live", "cam", "http://a:1"), directory.lookup("live", "cam"),
              directory.release("live", "cam", "http://a:1")):
        failures: list[defer.Failure] = []
        d.addErrback(failures.append)
        assert failures and failures[0].check(DirectoryUnavailable)


# -- RedisDirectory over a fake connection ------------------------------------------


@implementer(IStreamClientEndpoint)
class FakeRedisEndpoint:
    """Connects each attempt to a StringTransport (or fails while ``down``)."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []
        self.protocols: list[Any] = []
        self.down = False

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.down:
            return defer.fail(ConnectionRefusedError("Connection refused"))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return defer.succeed(protocol)


def commands(transport: StringTransport) -> list[list[bytes]]:
    """The RESP commands written so far (and forget them)."""
    data, out = transport.value(), []
    transport.clear()
    while data:
        count, _, data = data[1:].partition(b"\r\n")
        words = []
        for _ in range(int(count)):
            size, _, data = data[1:].partition(b"\r\n")
            words.append(data[:int(size)])
            data = data[int(size) + 2:]
        out.append(words)
    return out


def start_redis_directory(url: str = "redis://:pw@cache/3"
                          ) -> tuple[RedisDirectory, FakeRedisEndpoint, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    endpoint = FakeRedisEndpoint()
    directory = RedisDirectory(parse_redis_url(url), reactor, ttl_s=6, endpoint=endpoint)
    directory.startService()
    return directory, endpoint, reactor


def answer(directory: RedisDirectory, reply: bytes) -> None:
    protocol = directory._connection
    assert protocol is not None
    protocol.dataReceived(reply)


def test_a_connection_logs_in_and_chooses_the_database_before_it_is_used() -> None:
    directory, endpoint, _ = start_redis_directory()
    transport, redis = endpoint.transports[0], endpoint.protocols[0]
    assert commands(transport) == [[b"AUTH", b"pw"]]
    assert not directory.connected
    redis.dataReceived(b"+OK\r\n")
    assert commands(transport) == [[b"SELECT", b"3"]]
    redis.dataReceived(b"+OK\r\n")
    assert commands(transport) == [[b"PING"]]
    redis.dataReceived(b"+PONG\r\n")
    assert directory.connected


def connected(url: str = "redis://cache") -> tuple[RedisDirectory, FakeRedisEndpoint,
                                                    MemoryReactorClock, StringTransport]:
    directory, endpoint, reactor = start_redis_directory(url)
    transport = endpoint.transports[0]
    commands(transport)
    endpoint.protocols[0].dataReceived(b"+PONG\r\n")
    assert directory.connected
    return directory, endpoint, reactor, transport


def test_claims_lookups_and_releases_are_one_command_each() -> None:
    directory, endpoint, _, transport = connected()
    redis = endpoint.protocols[0]
    claimed = directory.claim("live", "cam", "http://10.0.0.5:8501")
    (claim,) = commands(transport)
    assert claim[0] == b"EVAL" and claim[2:] == [
        b"1", b"rtmpd:stream:live/cam", b"http://10.0.0.5:8501", b"6000"]
    redis.dataReceived(b":1\r\n")
    assert outcome_of(claimed) is True
    refused = directory.claim("live", "cam", "http://10.0.0.6:8501")
    assert commands(transport)[0][0] == b"EVALSHA"  # the script is cached now
    redis.dataReceived(b":0\r\n")
    assert outcome_of(refused) is False
    found = directory.lookup("live", "cam")
    assert commands(transport) == [[b"GET", b"rtmpd:stream:live/cam"]]
    redis.dataReceived(b"$20\r\nhttp://10.0.0.5:8501\r\n")
    assert outcome_of(found) == "http://10.0.0.5:8501"
    missing = directory.lookup("live", "other")
    assert commands(transport) == [[b"GET", b"rtmpd:stream:live/other"]]
    redis.dataReceived(b"$-1\r\n")
    assert outcome_of(missing) is None
    released = directory.release("live", "cam", "http://10.0.0.5:8501")
    assert commands(transport)[0][0] in (b"EVAL", b"EVALSHA")
    redis.dataReceived(b":1\r\n")
    assert outcome_of(released) is None


def test_a_redis_that_does_not_answer_fails_the_command_and_is_reconnected() -> None:
    directory, endpoint, reactor, transport = connected()
    redis = endpoint.protocols[0]
    d = directory.lookup("live", "cam")
    reactor.advance(1.0)  # COMMAND_TIMEOUT_S
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(DirectoryUnavailable)
    assert "did not answer within 1 s" in failures[0].getErrorMessage()
    assert transport.disconnecting or transport.disconnected  # aborted
    redis.connectionLost(Failure(ConnectionDone()))
    assert not directory.connected
    reactor.advance(10)
    assert len(endpoint.transports) == 2


def test_a_refused_login_closes_the_connection_and_tries_again_later() -> None:
    directory, endpoint, reactor = start_redis_directory()
    transport, redis = endpoint.transports[0], endpoint.protocols[0]
    redis.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
    assert not directory.connected and transport.disconnecting
    redis.connectionLost(Failure(ConnectionDone()))
    reactor.advance(10)
    assert len(endpoint.transports) == 2


def outcome_of(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]
