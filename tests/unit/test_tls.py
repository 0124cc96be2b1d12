"""TLS without sockets: the CA file, real handshakes joined in memory
(``twisted.test.iosim``) that verify or fail the way the clients report
them, the TLS twins of the listeners and ``--ca-file`` on every program."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import protocol, ssl
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.web.client import ResponseNeverReceived

from rtmpd._twisted import queued_bytes, socket_fd
from rtmpd.client import cli
from rtmpd.client.tls import (
    MAX_CA_FILE_BYTES,
    certificate_failure,
    client_tls,
    load_ca_file,
)
from rtmpd.protocols.pages import page_config
from rtmpd.tap import flvgateway
from rtmpd.tap.rtmpd import Options, makeService
from tests.tlscerts import CertFiles, make_certificates

UNKNOWN_CA = (
    "TLS: the server's certificate does not verify (an unknown CA, or out of date; "
    "trust a private CA with --ca-file)"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certificates(tmp_path_factory.mktemp("certs"))


# --- the CA file -------------------------------------------------------------------------


def test_ca_file_with_one_or_several_certificates_loads(certs: CertFiles, tmp_path: Path) -> None:
    assert load_ca_file(str(certs.ca)) is not None
    both = tmp_path / "both.pem"
    both.write_bytes(b"# comment\n" + certs.other_ca.read_bytes() + certs.ca.read_bytes())
    assert load_ca_file(str(both)) is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "has a certificate with no END line"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "holds a certificate that does not parse",
        ),
        (b"x" * (MAX_CA_FILE_BYTES + 1), "is over MAX_CA_FILE_BYTES"),
    ],
    ids=["empty", "no end", "garbage", "too big"],
)
def test_unusable_ca_file_is_one_line_value_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_ca_file(str(path))


def test_missing_ca_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the CA file .*No such file"):
        load_ca_file(str(tmp_path / "nope.pem"))


# --- handshakes in memory ----------------------------------------------------------------


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.reason: Failure | None = None
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason


class _Greeter(protocol.Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello over TLS")


def handshake(certs: CertFiles, host: str, ca: Path | None) -> _Client:
    """A TLS client (our options for ``host``, trusting ``ca`` or the
    system's CAs) against a server with the test certificate, in memory."""
    server_cert = ssl.PrivateCertificate.loadPEM(
        certs.key.read_bytes() + certs.cert.read_bytes()
    )
    client = _Client()
    # TLS aggregates small writes until the next reactor turn: a fake clock,
    # which the pump advances, stands for the reactor.
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server_cert.options(), False, protocol.Factory.forProtocol(_Greeter), clock=clock
    )
    trust = load_ca_file(str(ca)) if ca is not None else None
    client_factory = TLSMemoryBIOFactory(
        client_tls(host, trust), True, protocol.Factory.forProtocol(lambda: client), clock=clock
    )
    server_proto = server_factory.buildProtocol(None)
    client_proto = client_factory.buildProtocol(None)
    pump = connect(
        server_proto, makeFakeServer(server_proto), client_proto, makeFakeClient(client_proto),
        clock=clock,
    )
    pump.flush()
    return client


def test_certificate_from_the_pinned_ca_for_the_right_host_verifies(certs: CertFiles) -> None:
    client = handshake(certs, "127.0.0.1", certs.ca)
    assert client.received == b"hello over TLS"
    assert client.reason is None


@pytest.mark.parametrize("pinned", ["system", "other"])
def test_certificate_from_an_unknown_ca_fails_with_one_line(
    certs: CertFiles, pinned: str
) -> None:
    client = handshake(certs, "127.0.0.1", None if pinned == "system" else certs.other_ca)
    assert client.received == b""
    assert client.reason is not None
    assert certificate_failure(client.reason) == UNKNOWN_CA


def test_certificate_for_another_host_fails_with_one_line(certs: CertFiles) -> None:
    client = handshake(certs, "localhost", certs.ca)
    assert client.received == b""
    assert client.reason is not None
    assert certificate_failure(client.reason) == (
        "TLS: the server's certificate does not name the host of the URL (wanted localhost)"
    )


def test_certificate_failure_looks_inside_agents_wrappers() -> None:
    inner = Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    wrapped = Failure(ResponseNeverReceived([inner]))
    assert certificate_failure(wrapped) == UNKNOWN_CA
    mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("example.com"))])
    assert certificate_failure(Failure(mismatch)) == (
        "TLS: the server's certificate does not name the host of the URL (wanted example.com)"
    )
    assert certificate_failure(Failure(ConnectionRefusedError())) is None
    # Other TLS errors (a plain server, a broken connection) are worth retrying.
    other = Failure(SSL.Error([("SSL routines", "", "wrong version number")]))
    assert certificate_failure(other) is None


def test_tls_transport_never_takes_the_direct_write_path(certs: CertFiles) -> None:
    """What an ``ssl:`` listener gives a protocol as its transport is the TLS
    wrapper, never a plain TCP connection: the fan-out's direct writes see no
    socket (-1) and no queued bytes, and write through the transport."""
    server_cert = ssl.PrivateCertificate.loadPEM(
        certs.key.read_bytes() + certs.cert.read_bytes()
    )
    factory = TLSMemoryBIOFactory(
        server_cert.options(), False, protocol.Factory.forProtocol(protocol.Protocol),
        clock=Clock(),
    )
    wrapper = factory.buildProtocol(None)
    wrapper.makeConnection(StringTransport())
    assert socket_fd(wrapper) == -1
    assert queued_bytes(wrapper) == 0


# --- options -------------------------------------------------------------------------------


def test_tls_twins_listen_beside_the_plain_listeners(certs: CertFiles, tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    options = Options()
    options.parseOptions([
        "--root", str(tmp_path / "media"),
        "--rtmps", certs.endpoint(1936), "--https", certs.endpoint(8502),
        "--web-https", certs.endpoint(8443), "--ca-file", str(certs.ca),
    ])
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    assert sorted(port for port, *_ in reactor.tcpServers) == [1935, 8080, 8501]
    assert sorted(port for port, *_ in reactor.sslServers) == [1936, 8443, 8502]
    service.stopService()
    config = page_config(options, "1")
    assert config["rtmps"] == {"port": 1936, "tls": True}
    assert config["https"] == {"port": 8502, "tls": True}
    assert config["web_https"] == {"port": 8443, "tls": True}
    plain = Options()
    plain.parseOptions(["--root", str(tmp_path / "media")])
    assert [page_config(plain, "1")[k] for k in ("rtmps", "https", "web_https")] == [None] * 3


def test_tls_twins_and_ca_file_come_from_the_config_file(
    certs: CertFiles, tmp_path: Path
) -> None:
    toml = tmp_path / "rtmpd.toml"
    toml.write_text(f'rtmps = "{certs.endpoint(1936)}"\nca-file = "{certs.ca}"\n')
    options = Options()
    options.parseOptions(["--config", str(toml), "--root", str(tmp_path)])
    assert options["rtmps"] == certs.endpoint(1936)
    assert options["ca-file"] == str(certs.ca)


@pytest.mark.parametrize(
    "argv",
    [
        ["--ca-file", "/nonexistent/ca.pem"],
        ["--rtmps", "ssl:1936:privateKey=/nonexistent/key.pem"],
    ],
)
def test_unusable_tls_options_are_usage_errors(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--root", str(tmp_path), *argv])


def test_gateway_refuses_an_unusable_ca_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(usage.UsageError, match=r"--ca-file: the CA file .* no PEM certificate"):
        flvgateway.Options().parseOptions(
            ["--upstream", "https://origin:8501", "--ca-file", str(empty)]
        )


def test_gateway_with_a_ca_file_builds_its_service(certs: CertFiles) -> None:
    options = flvgateway.Options()
    options.parseOptions(["--upstream", "https://origin:8501", "--ca-file", str(certs.ca)])
    assert flvgateway.makeService(options, reactor=MemoryReactorClock()) is not None


def test_push_refuses_an_unusable_ca_file_before_reading_input(tmp_path: Path) -> None:
    import io

    err = io.StringIO()
    status = cli.main(
        [str(tmp_path / "missing.flv"), "rtmps://h/live/x", "--ca-file", str(tmp_path / "no.pem")],
        stderr=err,
    )
    assert status == 2
    assert err.getvalue().startswith("rtmpd-push: error: --ca-file: cannot read the CA file")
