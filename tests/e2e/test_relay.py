"""The relay end to end: ffmpeg publishes to rtmpd A, which forwards (``--forward``) to a
second rtmpd B (over RTMP, HTTP-FLV and WS-FLV) and to nginx-rtmp; players (ffmpeg) must decode
what those targets serve, clean. A target killed and restarted mid-stream gets the stream
again while A's publisher and viewers go on; a target that stops reading is dropped and
retried with A's memory bounded; a stream A pulls from B (``--pull``, over HTTP-FLV, and
from nginx-rtmp over RTMP) plays on A and goes on across its publisher restarting; an
on-publish hook's answer adds a forward."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
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
from tests.e2e.hookserver import hook_server
from tests.e2e.test_flv_transports import check_clean

NGINX = Path("/usr/sbin/nginx")
NGINX_RTMP = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def api_streams(server: Server) -> list[dict[str, Any]]:
    with urllib.request.urlopen(server.web_url("api/streams"), timeout=WAIT_S) as response:
        streams: list[dict[str, Any]] = json.load(response)["streams"]
        return streams


def forwards(server: Server, name: str = "cam1") -> list[dict[str, Any]]:
    for stream in api_streams(server):
        if stream["name"] == name:
            return list(stream["forwards"])
    return []


def wait_until(what: str, check: Any, deadline_s: float = WAIT_S, log: str = "") -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {deadline_s:g} s\n{log[-4000:]}")


class Nginx:
    """nginx with the RTMP module on a free port, with its own prefix and configuration."""

    def __init__(self, tmp: Path) -> None:
        (self.port,) = free_ports(1)
        self.prefix = tmp
        (tmp / "logs").mkdir(parents=True, exist_ok=True)
        conf = tmp / "nginx.conf"
        conf.write_text(f"""
load_module {NGINX_RTMP};
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/error.log info;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{self.port};
        application live {{ live on; }}
    }}
}}
""")
        self.process = subprocess.Popen(
            # -e: the error log from the start (not /var/log/nginx, which a user may not write).
            [str(NGINX), "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "logs" / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)

    def rtmp_url(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{name}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    if not (NGINX.exists() and NGINX_RTMP.exists()):
        pytest.skip("nginx with libnginx-mod-rtmp is not installed (`make system-deps` "
                    "installs it with apt-get)")
    server = Nginx(tmp_path / "nginx")
    yield server
    server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Servers a test starts; stopped (and checked for tracebacks) at the end."""
    started: list[Server] = []
    yield started
    for server in reversed(started):
        if server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
            stop_server(server)


def start(servers: list[Server], tmp: Path, *extra: str) -> Server:
    """An rtmpd in its own directory ``tmp``, stopped at the end of the test."""
    tmp.mkdir(parents=True, exist_ok=True)
    server = start_server(tmp, *extra)
    servers.append(server)
    return server


def restart_server(old: Server, *extra: str) -> Server:
    """A new rtmpd on ``old``'s ports, root and log (appended)."""
    log_file = open(old.log_path, "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [
            str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-", "rtmpd",
            "--rtmp", f"tcp:{old.rtmp_port}:interface=127.0.0.1",
            "--http", f"tcp:{old.http_port}:interface=127.0.0.1",
            "--web", f"tcp:{old.web_port}:interface=127.0.0.1",
            "--root", str(old.root), *extra,
        ],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=old.root.parent,
    )
    log_file.close()
    server = Server(old.rtmp_port, old.http_port, old.web_port, old.root, old.log_path,
                    process)
    for port in (old.rtmp_port, old.http_port, old.web_port):
        wait_for_port(port)
    return server


def test_a_stream_forwarded_to_rtmpd_and_nginx_rtmp_plays_clean_from_both(
        tmp_path: Path, clip: Path, nginx: Nginx, servers: list[Server]) -> None:
    b = start(servers, tmp_path / "b", "--record", "none")
    a = start(
        servers, tmp_path / "a", "--record", "none",
        "--forward", f"live=rtmp://127.0.0.1:{b.rtmp_port}/live/{{stream}}",
        "--forward", f"live=http://127.0.0.1:{b.http_port}/viahttp/{{stream}}",
        "--forward", f"live=ws://127.0.0.1:{b.http_port}/viaws/{{stream}}",
        "--forward", f"live={nginx.rtmp_url('{stream}')}",
    )
    a.publish(clip, "cam1")
    a.wait_live("cam1")
    b.wait_live("cam1")
    b.wait_live("cam1", app="viahttp")
    b.wait_live("cam1", app="viaws")
    wait_until("four forwards publishing",
               lambda: [f["state"] for f in forwards(a)] == ["forwarding"] * 4, log=a.log())
    assert check_clean(b.rtmp_url("cam1"), 3) == {"h264", "aac"}
    assert check_clean(b.flv_url("cam1", app="viahttp"), 3) == {"h264", "aac"}
    assert check_clean(b.flv_url("cam1", app="viaws"), 3) == {"h264", "aac"}
    assert check_clean(nginx.rtmp_url("cam1"), 3) == {"h264", "aac"}
    status = forwards(a)
    assert all(f["connected"] and f["bytes_sent"] > 100_000 and f["reconnects"] == 0
               for f in status), status
    assert sorted(f["url"] for f in status) == sorted([
        f"rtmp://127.0.0.1:{b.rtmp_port}/live/cam1",
        f"http://127.0.0.1:{b.http_port}/viahttp/cam1",
        f"ws://127.0.0.1:{b.http_port}/viaws/cam1",
        f"rtmp://127.0.0.1:{nginx.port}/live/cam1"])
    with urllib.request.urlopen(a.web_url("metrics"), timeout=WAIT_S) as response:
        metrics = response.read().decode()
    assert 'rtmpd_forwards{state="forwarding"} 4.0' in metrics
    assert 'rtmpd_viewers{protocol="forward"} 4.0' in metrics
    # The end of the stream ends the forwards: the targets' streams end too.
    for child in a.children:
        child.terminate()
    wait_until("the forwarded streams ending",
               lambda: not any(b.is_live("cam1", app) for app in ("live", "viahttp", "viaws")),
               log=b.log())
    assert "forward live/cam1 to" in a.log() and "ended (" in a.log()


def test_a_target_killed_and_restarted_gets_the_stream_again_and_a_notices_nothing(
        tmp_path: Path, clip: Path, servers: list[Server]) -> None:
    b = start(servers, tmp_path / "b", "--record", "flv")
    a = start(servers, tmp_path / "a", "--record", "none",
                     "--forward", f"live=rtmp://127.0.0.1:{b.rtmp_port}/live/{{stream}}")
    publisher = a.publish(clip, "cam1")
    a.wait_live("cam1")
    b.wait_live("cam1")
    # A viewer of A that plays across the target's death and return.
    viewer = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-i", a.flv_url("cam1"), "-t", "16", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    a.children.append(viewer)
    time.sleep(3)
    b.process.kill()
    b.process.wait()
    wait_until("the forward noticing", lambda: forwards(a)[0]["state"] != "forwarding",
               log=a.log())
    time.sleep(2)
    servers.remove(b)
    b = restart_server(b, "--record", "flv")
    servers.append(b)
    b.wait_live("cam1")
    wait_until("the forward publishing again",
               lambda: forwards(a)[0]["state"] == "forwarding", log=a.log())
    status = forwards(a)[0]
    assert status["reconnects"] >= 1 and status["last_error"], status
    time.sleep(4)
    assert check_clean(b.rtmp_url("cam1"), 2) == {"h264", "aac"}
    _, errors = viewer.communicate(timeout=60)
    assert viewer.returncode == 0 and errors.strip() == b"", errors
    assert publisher.poll() is None, "the publisher to A was disturbed"
    # What B recorded after the reconnect (its recording since it came back) decodes clean.
    servers.remove(b)
    stop_server(b)
    recorded = b.root / "flv" / "live" / "cam1" / "index.flv"
    result = run(["ffmpeg", "-v", "error", "-i", str(recorded), "-f", "null", "-"])
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    probe = run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json",
                 str(recorded)])
    assert float(json.loads(probe.stdout)["format"]["duration"]) > 3


def test_a_target_that_stops_reading_is_dropped_and_retried_with_memory_bounded(
        tmp_path: Path, clip: Path, servers: list[Server]) -> None:
    b = start(servers, tmp_path / "b", "--record", "none")
    a = start(servers, tmp_path / "a", "--record", "none", "--viewer-queue-bytes", "300000",
                     "--forward", f"live=rtmp://127.0.0.1:{b.rtmp_port}/live/{{stream}}")
    publisher = a.publish(clip, "cam1")
    a.wait_live("cam1")
    b.wait_live("cam1")
    wait_until("the forward publishing", lambda: forwards(a)[0]["state"] == "forwarding")
    time.sleep(2)
    rss_before = a.rss_kib()
    # B accepts (its socket is open, the kernel takes what fits) and never reads again.
    os.kill(b.process.pid, signal.SIGSTOP)
    try:
        wait_until("the forward being dropped", lambda: "over the queue limit" in a.log(),
                   deadline_s=90, log=a.log())
        # Retried: the new connection's handshake is never answered either.
        wait_until("a retry timing out", lambda: "publish setup took over" in a.log(),
                   deadline_s=60, log=a.log())
        rss_after = a.rss_kib()
    finally:
        os.kill(b.process.pid, signal.SIGCONT)
    assert rss_after - rss_before < 30_000, (rss_before, rss_after)
    status = forwards(a)[0]
    assert status["connects"] >= 2 and status["last_error"], status
    assert "stop play live/cam1 by forward" in a.log()
    assert publisher.poll() is None
    # A's own viewers were never held up.
    assert check_clean(a.flv_url("cam1"), 2) == {"h264", "aac"}


def test_a_stream_pulled_from_another_rtmpd_plays_and_survives_its_publisher_restarting(
        tmp_path: Path, clip: Path, servers: list[Server]) -> None:
    b = start(servers, tmp_path / "b", "--record", "none")
    a = start(servers, tmp_path / "a", "--record", "none",
                     "--pull", f"live/cam1={b.flv_url('cam1')}")
    first = b.publish(clip, "cam1")
    b.wait_live("cam1")
    assert not a.is_live("cam2")
    viewer = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-i", a.rtmp_url("cam1"), "-t", "14", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    a.children.append(viewer)
    wait_until("the pull going live on A", lambda: a.is_live("cam1"), log=a.log())
    time.sleep(4)
    first.terminate()
    first.wait(timeout=WAIT_S)
    time.sleep(1)
    b.publish(clip, "cam1")
    _, errors = viewer.communicate(timeout=90)
    assert viewer.returncode == 0 and errors.strip() == b"", errors
    assert "the upstream is back (a new publish)" in a.log()
    (stream,) = api_streams(a)
    assert stream["upstream"]["state"] == "streaming" and stream["upstream"]["connects"] >= 2
    assert check_clean(a.flv_url("cam1"), 2) == {"h264", "aac"}
    # A name that is not pulled is just not found.
    result = run(["ffmpeg", "-v", "error", "-i", a.flv_url("other"), "-f", "null", "-"])
    assert result.returncode != 0 and "404" in result.stderr



def test_a_stream_pulled_over_rtmp_from_nginx_rtmp_plays_clean_and_goes_on_after_a_restart(
        tmp_path: Path, clip: Path, nginx: Nginx, servers: list[Server]) -> None:
    a = start(servers, tmp_path / "a", "--record", "none",
              "--pull", f"live/cam1={nginx.rtmp_url('cam1')}")
    publish = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c",
               "copy", "-f", "flv", nginx.rtmp_url("cam1")]
    first = subprocess.Popen(publish, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    a.children.append(first)
    time.sleep(2)
    viewer = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-i", a.flv_url("cam1"), "-t", "12", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    a.children.append(viewer)
    wait_until("the pull going live on A", lambda: a.is_live("cam1"), log=a.log())
    time.sleep(3)
    first.terminate()
    first.wait(timeout=WAIT_S)
    second = subprocess.Popen(publish, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    a.children.append(second)
    _, errors = viewer.communicate(timeout=90)
    assert viewer.returncode == 0 and errors.strip() == b"", errors
    (stream,) = api_streams(a)
    assert stream["upstream"]["url"] == f"rtmp://127.0.0.1:{nginx.port}/live/cam1"
    assert "the upstream is back (a new publish)" in a.log()
    assert check_clean(a.rtmp_url("cam1"), 2) == {"h264", "aac"}


def test_forwards_named_by_the_on_publish_hooks_answer_reach_their_target(
        tmp_path: Path, clip: Path, servers: list[Server]) -> None:
    b = start(servers, tmp_path / "b", "--record", "none")
    with hook_server() as hook:
        hook.forward_urls = [f"rtmp://127.0.0.1:{b.rtmp_port}/fromhook/{{stream}}",
                             "not a url"]
        a = start(servers, tmp_path / "a", "--record", "none",
                  "--on-publish", hook.url("/forward"))
        a.publish(clip, "cam1")
        a.wait_live("cam1")
        b.wait_live("cam1", app="fromhook")
        assert check_clean(b.rtmp_url("cam1", app="fromhook"), 2) == {"h264", "aac"}
        (forward,) = forwards(a)
        assert forward["from"] == "hook" and forward["state"] == "forwarding"
        assert "answer's forwards: forward 2 (not a url…) is not scheme://host" in a.log()
