"""TLS end to end, with a CA and a server certificate made for the test
(``tests/tlscerts.py``): rtmpd listening on plain and TLS ports at once
(``--rtmps``, ``--https``, ``--web-https``), ffmpeg publishing over RTMPS and
playing over RTMPS and HTTPS-FLV, a WebSocket client over WSS, the pages over
HTTPS; ``rtmpd-push``, ``flvgateway`` and rtmpd's forwards refusing a server
whose certificate does not verify (an unknown CA, another host's name) with a
clear line, and accepting it with ``--ca-file``.

Playing over TLS also checks the fan-out's direct-write path: it writes
straight to plain TCP sockets only, so a TLS viewer gets its bytes through
the TLS transport and decodes clean (were the shared bytes written to the
socket under TLS, the client would see garbage records and fail)."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.e2e.conftest import (
    VENV_BIN,
    WAIT_S,
    Server,
    free_ports,
    run,
    start_server,
    stop_server,
    wait_for_port,
)
from tests.e2e.test_flv_transports import check_clean
from tests.e2e.test_gateway import Gateway, start_gateway, status_of
from tests.tlscerts import CertFiles, make_certificates

PUSH = str(VENV_BIN / "rtmpd-push")
UNKNOWN_CA = "TLS: the server's certificate does not verify (an unknown CA, or out of date"
WRONG_HOST = "TLS: the server's certificate does not name the host of the URL"


@dataclass
class TlsServer:
    """rtmpd with its plain listeners and the TLS twins."""

    plain: Server
    rtmps_port: int
    https_port: int
    web_https_port: int

    def rtmps_url(self, name: str, host: str = "127.0.0.1", app: str = "live") -> str:
        return f"rtmps://{host}:{self.rtmps_port}/{app}/{name}"

    def https_url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.https_port}/{path.lstrip('/')}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certs: CertFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    rtmps, https, web_https = free_ports(3)
    server = start_server(
        tmp_path_factory.mktemp("tls"), "--record", "none",
        "--rtmps", certs.endpoint(rtmps), "--https", certs.endpoint(https),
        "--web-https", certs.endpoint(web_https),
    )
    try:
        for port in (rtmps, https, web_https):
            wait_for_port(port)
        yield TlsServer(server, rtmps, https, web_https)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def short_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of H.264 + AAC with a 1 s GOP, for pushes."""
    out = tmp_path_factory.mktemp("tlsclip") / "short.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-pix_fmt", "yuv420p",
         "-c:a", "aac", str(out)],
        check=True, timeout=120,
    )
    return out


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def publish_rtmps(server: TlsServer, clip: Path, name: str) -> subprocess.Popen[bytes]:
    """ffmpeg publishing ``clip`` over RTMPS, looped (ffmpeg does not verify)."""
    proc = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy",
         "-f", "flv", server.rtmps_url(name)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server.plain.children.append(proc)
    return proc


def record_wss(url: str, ca: Path, out: Path, seconds: float) -> None:
    data = bytearray()
    with connect(url, ssl=client_context(ca), open_timeout=WAIT_S, max_size=None) as ws:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            message = ws.recv(timeout=WAIT_S)
            assert isinstance(message, bytes)
            data += message
    out.write_bytes(bytes(data))


def test_rtmps_publish_plays_clean_over_rtmps_https_flv_wss_and_plain_rtmp(
    tls_server: TlsServer, clip: Path, certs: CertFiles, tmp_path: Path
) -> None:
    publish_rtmps(tls_server, clip, "tls1")
    tls_server.plain.wait_live("tls1")
    assert check_clean(tls_server.rtmps_url("tls1")) == {"h264", "aac"}
    assert check_clean(tls_server.https_url("live/tls1.flv")) == {"h264", "aac"}
    out = tmp_path / "wss.flv"
    record_wss(f"wss://127.0.0.1:{tls_server.https_port}/live/tls1.flv", certs.ca, out, 3)
    assert check_clean(str(out)) == {"h264", "aac"}
    # The same stream, same shared bytes, to plain viewers.
    assert check_clean(tls_server.plain.rtmp_url("tls1")) == {"h264", "aac"}
    assert check_clean(tls_server.plain.flv_url("tls1")) == {"h264", "aac"}


def test_pages_are_served_over_https_and_config_json_names_the_tls_twins(
    tls_server: TlsServer, certs: CertFiles
) -> None:
    url = f"https://127.0.0.1:{tls_server.web_https_port}/config.json"
    with urllib.request.urlopen(url, context=client_context(certs.ca), timeout=WAIT_S) as r:
        config = json.load(r)
    assert config["https"] == {"port": tls_server.https_port, "tls": True}
    assert config["rtmps"] == {"port": tls_server.rtmps_port, "tls": True}
    assert config["web_https"] == {"port": tls_server.web_https_port, "tls": True}
    assert config["http"] == {"port": tls_server.plain.http_port, "tls": False}


def push(url: str, clip: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run([PUSH, str(clip), url, *options], timeout=WAIT_S)


def push_url(server: TlsServer, scheme: str, name: str, host: str = "127.0.0.1") -> str:
    port = server.rtmps_port if scheme == "rtmps" else server.https_port
    return f"{scheme}://{host}:{port}/live/{name}"


@pytest.mark.parametrize("scheme", ["rtmps", "https", "wss"])
def test_push_refuses_a_certificate_from_an_unknown_ca_and_exits_3(
    tls_server: TlsServer, short_mp4: Path, certs: CertFiles, scheme: str
) -> None:
    for options in ((), ("--ca-file", str(certs.other_ca))):
        done = push(push_url(tls_server, scheme, f"unknown-{scheme}"), short_mp4, *options)
        assert done.returncode == 3, done.stderr
        assert done.stderr.splitlines() == [
            f"rtmpd-push: publish refused: {UNKNOWN_CA}; trust a private CA with --ca-file)"
        ]


@pytest.mark.parametrize("scheme", ["rtmps", "https", "wss"])
def test_push_refuses_a_certificate_for_another_host(
    tls_server: TlsServer, short_mp4: Path, certs: CertFiles, scheme: str
) -> None:
    done = push(push_url(tls_server, scheme, "wronghost", host="localhost"), short_mp4,
                "--ca-file", str(certs.ca))
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"rtmpd-push: publish refused: {WRONG_HOST}"), line


@pytest.mark.parametrize("scheme", ["rtmps", "https", "wss"])
def test_push_with_the_ca_file_publishes_the_whole_file(
    tls_server: TlsServer, short_mp4: Path, certs: CertFiles, scheme: str
) -> None:
    name = f"pushed-{scheme}"
    proc = subprocess.Popen(
        [PUSH, str(short_mp4), push_url(tls_server, scheme, name), "--ca-file", str(certs.ca),
         "--no-reconnect"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        tls_server.plain.wait_live(name)
    finally:
        _, stderr = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, stderr


def test_push_with_an_unreadable_ca_file_is_a_usage_error(
    tls_server: TlsServer, short_mp4: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello\n")
    done = push(push_url(tls_server, "rtmps", "x"), short_mp4, "--ca-file", str(bad))
    assert done.returncode == 2
    assert done.stderr == (
        f"rtmpd-push: error: --ca-file: the CA file {bad} holds no PEM certificate\n"
    )


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def test_gateway_pulls_from_an_https_upstream_only_with_a_certificate_it_trusts(
    tls_server: TlsServer, clip: Path, certs: CertFiles, tmp_path: Path,
    gateways: list[Gateway],
) -> None:
    publish_rtmps(tls_server, clip, "gw")
    tls_server.plain.wait_live("gw")
    upstream = f"https://127.0.0.1:{tls_server.https_port}"
    untrusting = start_gateway(tmp_path, upstream, "--open-timeout", "5")
    gateways.append(untrusting)
    assert status_of(untrusting.http_port, "/live/gw.flv") == 502
    untrusting.wait_log(UNKNOWN_CA)

    wrong_host = start_gateway(tmp_path, f"https://localhost:{tls_server.https_port}",
                               "--ca-file", str(certs.ca), "--open-timeout", "5")
    gateways.append(wrong_host)
    assert status_of(wrong_host.http_port, "/live/gw.flv") == 502
    wrong_host.wait_log(WRONG_HOST)

    trusting = start_gateway(tmp_path, upstream, "--ca-file", str(certs.ca))
    gateways.append(trusting)
    assert check_clean(trusting.flv_url("gw")) == {"h264", "aac"}


def test_forward_to_rtmps_needs_a_certificate_rtmpd_trusts(
    tls_server: TlsServer, clip: Path, certs: CertFiles, tmp_path: Path
) -> None:
    target = tls_server.rtmps_url("{stream}", app="relayed")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    trusting = start_server(tmp_path / "a", "--record", "none",
                            "--forward", f"live={target}", "--ca-file", str(certs.ca))
    untrusting = start_server(tmp_path / "b", "--record", "none",
                              "--forward", f"live={target.replace('{stream}', 'x{stream}')}")
    try:
        trusting.publish(clip, "fwd")
        untrusting.publish(clip, "fwd")
        tls_server.plain.wait_live("fwd", app="relayed")
        assert check_clean(tls_server.plain.flv_url("fwd", app="relayed")) == {"h264", "aac"}
        end = time.monotonic() + WAIT_S
        while UNKNOWN_CA not in untrusting.log() and time.monotonic() < end:
            time.sleep(0.1)
        assert UNKNOWN_CA in untrusting.log(), untrusting.log()[-3000:]
        assert not tls_server.plain.is_live("xfwd", app="relayed")
    finally:
        stop_server(trusting)
        stop_server(untrusting)
