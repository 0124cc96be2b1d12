"""Three tiers on loopback (README, "Three tiers"): a Redis stream directory
(``redis-server``, started here on a free port in its own directory), two
rtmpd origins that claim their streams in it (``--directory``), two
flvgateways that find each stream's origin there (``flvgateway
--directory``) and HAProxy round-robin in front of the gateways. ffmpeg
publishes to each origin; viewers through HAProxy play every stream and it
decodes clean. One origin killed: its streams end cleanly for their viewers
and its entries leave the directory (their TTL), the other's play on. And
what a serious server does when the directory is down: publishes go on
unclaimed (a warning) and are claimed once it is back, gateways answer 502.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
from tests.e2e.test_gateway import Gateway, status_of

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
HAPROXY = "/usr/sbin/haproxy"
#: The claims' lifetime in these tests (``--directory-ttl``): short, so a
#: dead origin's entries are seen to go.
TTL_S = 3


@pytest.fixture(scope="module", autouse=True)
def _topology_tools() -> None:
    missing = [p for p in (REDIS_SERVER, REDIS_CLI, HAPROXY) if not Path(p).exists()]
    if missing:
        pytest.fail(f"the topology tests need {', '.join(missing)}: `make test` installs "
                    "redis-server and haproxy")


@dataclass
class Redis:
    """A ``redis-server`` of the test's own."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=WAIT_S)
        self.process = None

    def get(self, name: str) -> str:
        """The location the directory holds for ``live/name`` ("" if none)."""
        return self.cli("GET", f"rtmpd:stream:live/{name}")

    def cli(self, *args: str) -> str:
        result = run([REDIS_CLI, "-p", str(self.port), "--raw", *args], timeout=WAIT_S)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    (port,) = free_ports(1)
    directory = tmp_path / "redis"
    directory.mkdir()
    server = Redis(port, directory)
    server.start()
    yield server
    server.stop()


def start_directory_gateway(tmp: Path, directory: str, *extra: str) -> Gateway:
    """``twistd -n flvgateway --directory ...`` on a free loopback port."""
    (port,) = free_ports(1)
    log_path = tmp / f"gateway-{port}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "flvgateway",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--directory", directory,
             "--linger", "1", *extra],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp,
        )
    gateway = Gateway(port, log_path, process)
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise RuntimeError("flvgateway did not start:\n" + gateway.log()) from None
    return gateway


def start_haproxy(tmp: Path, gateways: list[Gateway]) -> tuple[int, subprocess.Popen[bytes]]:
    """HAProxy in HTTP mode, round robin over the gateways, on a free port."""
    (port,) = free_ports(1)
    servers = "\n".join(f"    server gw{i} 127.0.0.1:{g.http_port} check inter 1s"
                        for i, g in enumerate(gateways))
    config = tmp / "haproxy.cfg"
    config.write_text(f"""\
global
    maxconn 1000

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend viewers
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
{servers}
""")
    check = run([HAPROXY, "-c", "-f", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp / "haproxy.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    wait_for_port(port)
    return port, process


def wait_until(check: object, what: str, deadline_s: float = WAIT_S) -> float:
    """Poll ``check()`` until true; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {deadline_s:g} s")


def box_publishes(origin: Server, name: str) -> list[dict[str, Any]]:
    """The publishes (not relays) of ``live/name`` that the box's
    ``/api/streams`` lists, whichever worker answers."""
    try:
        with urllib.request.urlopen(origin.web_url("api/streams"), timeout=WAIT_S) as response:
            answer = json.load(response)
    except (urllib.error.URLError, OSError):
        return []
    return [s for s in answer["streams"]
            if (s["app"], s["name"]) == ("live", name) and s["upstream"] is None]


def watch(url: str, out: Path) -> subprocess.Popen[str]:
    """A viewer recording what it receives until the stream ends."""
    return subprocess.Popen(
        ["ffmpeg", "-v", "error", "-y", "-i", url, "-c", "copy", "-f", "flv", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_viewers_through_haproxy_play_every_origins_streams_and_a_dead_origins_end(
    redis: Redis, clip: Path, tmp_path: Path
) -> None:
    directory = ["--directory", redis.url, "--directory-ttl", str(TTL_S), "--record", "none"]
    origins: list[Server] = []
    gateways: list[Gateway] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("east", "west"):
            (tmp_path / name).mkdir()
            origins.append(start_server(tmp_path / name, *directory))
        east, west = origins
        for _ in range(2):
            gateways.append(start_directory_gateway(tmp_path, redis.url))
        proxy_port, proxy = start_haproxy(tmp_path, gateways)
        processes.append(proxy)

        east.publish(clip, "east")
        west.publish(clip, "west")
        east.wait_live("east")
        west.wait_live("west")
        # Each origin claimed its stream at its --http address (the default
        # location: the listener's interface).
        wait_until(lambda: redis.get("east") and redis.get("west"), "both claims")
        assert redis.get("east") == f"http://127.0.0.1:{east.http_port}"
        assert redis.get("west") == f"http://127.0.0.1:{west.http_port}"
        assert 0 < int(redis.cli("PTTL", "rtmpd:stream:live/east")) <= TTL_S * 1000
        # A name another origin holds is busy here, as a local one would be.
        busy = run(["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-t", "2", "-c", "copy",
                    "-f", "flv", east.rtmp_url("west")])
        assert busy.returncode != 0
        assert "already has a publisher on another server (stream directory)" in east.log()
        assert redis.get("west") == f"http://127.0.0.1:{west.http_port}"

        # Every stream through HAProxy, round robin: each play (ffmpeg, then
        # ffprobe) lands on the next gateway, so both gateways serve both.
        proxied = f"http://127.0.0.1:{proxy_port}"
        for name in ("east", "west", "east", "west"):
            assert check_clean(f"{proxied}/live/{name}.flv") == {"h264", "aac"}
        for gateway in gateways:
            log = gateway.log()
            assert f"publish live/east by upstream 127.0.0.1:{east.http_port}" in log, log
            assert f"publish live/west by upstream 127.0.0.1:{west.http_port}" in log, log
        assert status_of(proxy_port, "/live/nowhere.flv") == 404

        # Viewers on both streams, then the east origin dies (no clean stop:
        # its claims stay until their TTL).
        viewers = {name: watch(f"{proxied}/live/{name}.flv", tmp_path / f"{name}-seen.flv")
                   for name in ("east", "west")}
        wait_until(lambda: all((tmp_path / f"{n}-seen.flv").exists() and
                               (tmp_path / f"{n}-seen.flv").stat().st_size > 100_000
                               for n in viewers), "both viewers receiving")
        # The claim carries the directory's TTL, so it ends without its holder.
        assert 0 < int(redis.cli("PTTL", "rtmpd:stream:live/east")) <= TTL_S * 1000
        east.process.send_signal(signal.SIGKILL)
        east.process.wait(timeout=WAIT_S)
        wait_until(lambda: redis.get("east") == "", "the dead origin's entry expiring")
        # Its viewer's stream ends cleanly: the gateway ends the FLV body
        # once the directory no longer has the stream.
        east_viewer = viewers["east"]
        _, errors = east_viewer.communicate(timeout=WAIT_S)
        assert east_viewer.returncode == 0 and errors.strip() == "", errors
        assert check_clean(str(tmp_path / "east-seen.flv")) == {"h264", "aac"}
        assert status_of(proxy_port, "/live/east.flv") == 404
        # The other origin's stream goes on, for its viewer and new ones.
        assert viewers["west"].poll() is None
        assert redis.get("west") == f"http://127.0.0.1:{west.http_port}"
        size = (tmp_path / "west-seen.flv").stat().st_size
        wait_until(lambda: (tmp_path / "west-seen.flv").stat().st_size > size + 50_000,
                   "the west viewer receiving on")
        assert check_clean(f"{proxied}/live/west.flv") == {"h264", "aac"}
        viewers["west"].send_signal(signal.SIGINT)
        viewers["west"].communicate(timeout=WAIT_S)
        assert check_clean(str(tmp_path / "west-seen.flv")) == {"h264", "aac"}
        for gateway in gateways:
            assert "Traceback" not in gateway.log(), gateway.log()[-3000:]
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=WAIT_S)
        for gateway in gateways:
            gateway.stop()
        for origin in origins:
            if origin.process.poll() is None:
                stop_server(origin)
            else:
                for child in origin.children:
                    child.kill()
                    child.wait(timeout=WAIT_S)


def test_publishes_go_on_while_the_directory_is_down_and_are_claimed_once_it_is_back(
    clip: Path, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    (tmp_path / "redis").mkdir()
    redis = Redis(port, tmp_path / "redis")  # not started yet
    origin = start_server(tmp_path, "--directory", redis.url, "--directory-ttl", "30",
                          "--record", "none")
    gateway = start_directory_gateway(tmp_path, redis.url)
    try:
        origin.publish(clip, "cam")
        origin.wait_live("cam")
        log = origin.log()
        assert f"stream directory: cannot use {redis.url}" in log, log
        assert "publish live/cam by" in log and "is allowed here unclaimed" in log, log
        # Local viewers do not need the directory.
        assert check_clean(origin.flv_url("cam")) == {"h264", "aac"}
        # A gateway cannot find streams meanwhile: 502, as for an unreachable
        # upstream, not 404.
        assert status_of(gateway.http_port, "/live/cam.flv") == 502

        redis.start()
        # Claimed by the next refresh (every third of the TTL) after the
        # reconnect (backoff of at most 10 s).
        wait_until(lambda: redis.get("cam") == f"http://127.0.0.1:{origin.http_port}",
                   "the claim once Redis is back")
        assert f"stream directory: connected to {redis.url}" in origin.log()
        wait_until(lambda: status_of(gateway.http_port, "/live/cam.flv", "HEAD") == 200,
                   "the gateway finding the stream")
        assert check_clean(gateway.flv_url("cam")) == {"h264", "aac"}

        # A clean stop (the publisher still on) releases the name at once,
        # long before its TTL.
        origin.process.send_signal(signal.SIGTERM)
        origin.process.wait(timeout=WAIT_S)
        assert redis.get("cam") == ""
    finally:
        gateway.stop()
        if origin.process.poll() is None:
            stop_server(origin)
        redis.stop()


def test_an_origin_with_workers_claims_its_one_location_and_any_worker_serves_its_pulls(
    redis: Redis, clip: Path, tmp_path: Path
) -> None:
    """``--workers 2 --directory``: the worker holding the publisher claims
    the name at the box's location; a gateway's pull of it lands on either
    worker, the other one relaying; a publish refused busy on the other
    worker leaves the claim alone; a killed worker's claim stays until its
    TTL while the box frees the name at once, and a republish, on whichever
    worker, claims it again at the same location."""
    from tests.e2e.test_workers import holder, plays_by_worker, start_workers, workers_up

    origin = start_workers(tmp_path, "--directory", redis.url, "--directory-ttl", str(TTL_S),
                           "--record", "none")
    gateway = start_directory_gateway(tmp_path, redis.url)
    location = f"http://127.0.0.1:{origin.http_port}"
    try:
        origin.publish(clip, "box")
        origin.wait_live("box")
        publisher = holder(origin, "box")
        wait_until(lambda: redis.get("box") == location, "the claim at the box's location")
        # The gateway's pulls (one per play once the last one lingered out)
        # reach both workers: the one without the publisher relays it.
        for _ in range(14):
            assert check_clean(gateway.flv_url("box")) == {"h264", "aac"}
            if set(plays_by_worker(origin, "box")) == {1, 2}:
                break
            time.sleep(1.5)  # the gateway's --linger 1
        assert set(plays_by_worker(origin, "box")) == {1, 2}
        assert (f"worker {3 - publisher}: publish live/box by upstream worker-{publisher}"
                in origin.log())
        # Second publishers, refused busy on either worker, release nothing.
        for _ in range(6):
            busy = run(["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-t", "1", "-c", "copy",
                        "-f", "flv", origin.rtmp_url("box")], timeout=WAIT_S)
            assert "already has a publisher" in busy.stderr, busy.stderr
        assert redis.get("box") == location
        assert check_clean(gateway.flv_url("box")) == {"h264", "aac"}

        # The holding worker killed: the box frees the name at once, Redis
        # keeps the claim until its TTL (nobody refreshes it).
        pid = workers_up(origin)[publisher]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: f"worker {publisher} is gone: freed 1 stream name(s): live/box"
                   in origin.log(), "the box freeing the name")
        origin.children[0].wait(timeout=WAIT_S)
        assert redis.get("box") == location
        # A republish (whichever worker it reaches) is this box's again.
        # (Waited for as a publish in the box's /api, not by HEAD: the other
        # worker's relay of the dead worker's stream answers HEAD until it
        # sees its upstream gone, and Redis still has the old claim. Nor by
        # its log line, which reaches the parent's log late.)
        origin.children.clear()
        republish = origin.publish(clip, "box")
        wait_until(lambda: box_publishes(origin, "box"), "the republish going live")
        assert republish.poll() is None
        wait_until(lambda: int(redis.cli("PTTL", "rtmpd:stream:live/box")) > (TTL_S - 1) * 1000,
                   "the republish renewing the claim")
        assert redis.get("box") == location
        assert check_clean(gateway.flv_url("box")) == {"h264", "aac"}
        assert "Traceback" not in origin.log() + gateway.log()
    finally:
        gateway.stop()
        stop_server(origin)
    # A clean stop releases the name at once.
    assert redis.get("box") == ""


def test_the_example_haproxy_config_is_valid() -> None:
    """``etc/haproxy/rtmpd-edges.cfg`` (README, "Three tiers") passes
    ``haproxy -c`` and balances over gateways in HTTP mode with a tunnel
    timeout for the WebSockets."""
    config = Path(__file__).resolve().parents[2] / "etc" / "haproxy" / "rtmpd-edges.cfg"
    result = run([HAPROXY, "-c", "-f", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert "mode http" in text and "timeout tunnel" in text and "balance roundrobin" in text
