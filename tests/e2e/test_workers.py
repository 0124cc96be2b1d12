"""``twistd rtmpd --workers 2``: two worker processes share the ports
(SO_REUSEPORT), a viewer on the worker without the stream is relayed from
the one with its publisher, a name is published once on the whole box, a
killed worker is restarted with its names freed, and SIGTERM to the parent
stops everything cleanly, and /metrics and /api lists answer for the whole
box whichever worker a request reaches.

Which worker a connection reaches is the kernel's choice (a hash of the
client's port), so tests that need both make enough connections that all
of them landing on one worker is as unlikely as 1 in 10 000 (2 ** -13)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import WAIT_S, Server, run, start_server, stop_server

#: Viewers of the relay test; connection attempts of the others.
VIEWERS = 20
ATTEMPTS = 14


def wait_for(predicate: object, what: str, server: Server, deadline_s: float = WAIT_S) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}; log:\n{server.log()[-4000:]}")


def workers_up(server: Server) -> dict[int, int]:
    """Worker index -> pid of its latest process that said it is up."""
    return {int(w): int(p) for w, p in
            re.findall(r"worker (\d+) \(pid (\d+)\) is up", server.log())}


def start_workers(tmp_path: Path, *extra: str) -> Server:
    server = start_server(tmp_path, "--workers", "2", *extra)
    wait_for(lambda: len(workers_up(server)) == 2, "the workers never came up", server)
    return server


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Server]:
    server = start_workers(tmp_path)
    yield server
    stop_server(server)


def plays_by_worker(server: Server, name: str) -> Counter[int]:
    """Plays of ``live/name`` by loopback clients (not relays), per worker."""
    return Counter(int(w) for w in re.findall(
        rf"worker (\d+): play live/{name} by (?:http-flv|rtmp) 127\.0\.0\.1:", server.log()))


def holder(server: Server, name: str) -> int:
    """The worker the latest publisher of ``live/name`` reached (its line
    reaches the parent's log through a pipe, maybe after the stream is live)."""
    def found() -> list[str]:
        return re.findall(rf"worker (\d+): publish live/{name} by rtmp", server.log())

    wait_for(found, f"no publish line for live/{name}", server)
    return int(found()[-1])


def api_by_worker(server: Server, path: str) -> dict[int, dict[str, Any]]:
    """``GET path`` on the web port until both workers have answered: each
    worker's latest answer."""
    answers: dict[int, dict[str, Any]] = {}
    for _ in range(4 * ATTEMPTS):
        # A new connection each time: the kernel chooses the worker per connection.
        with urllib.request.urlopen(server.web_url(path), timeout=WAIT_S) as response:
            answer = json.load(response)
        answers[answer["worker"]["index"]] = answer
        if len(answers) == 2:
            break
    assert set(answers) == {1, 2}, answers
    return answers


def decode(url: str) -> subprocess.CompletedProcess[str]:
    """2 s of the stream, decoded and thrown away."""
    return run(["ffmpeg", "-v", "error", "-i", url, "-t", "2", "-f", "null", "-"], timeout=WAIT_S)


def test_viewers_on_both_workers_all_decode_a_stream_published_to_one(
        workers: Server, clip: Path) -> None:
    workers.publish(clip, "box")
    workers.wait_live("box")
    urls = [workers.rtmp_url("box") if i % 4 == 3 else workers.flv_url("box")
            for i in range(VIEWERS)]
    with ThreadPoolExecutor(max_workers=VIEWERS) as pool:
        results = list(pool.map(decode, urls))
    for result in results:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    plays = plays_by_worker(workers, "box")
    assert sum(plays.values()) == VIEWERS
    assert set(plays) == {1, 2}, plays
    log = workers.log()
    publisher = holder(workers, "box")
    other = 3 - publisher
    # One relay into the other worker however many of its viewers, pulled
    # from the publisher's worker socket; only the publisher's worker records.
    relays = re.findall(rf"worker (\d+): publish live/box by upstream worker-{publisher}", log)
    assert relays == [str(other)]
    # Either worker's /api lists the box's streams, each with its worker:
    # the publish and the other's relay of it (which lingers a few seconds
    # after its last viewer).
    answers = api_by_worker(workers, "api/streams")
    for answer in answers.values():
        by_worker = {s["worker"]: s for s in answer["streams"]}
        assert set(by_worker) == {1, 2}, answer
        assert by_worker[publisher]["upstream"] is None
        assert (by_worker[other]["upstream"]["url"]
                == f"http://worker-{publisher}/live/box.flv")
        # Every viewer has left; a relay still lingering is not a viewer.
        assert by_worker[publisher]["viewers_total"] == 0, answer
        assert by_worker[publisher]["relays"] in (0, 1), answer
    stop_server(workers)
    recorded = re.findall(r"worker (\d+): hls recording of live/box finalised", workers.log())
    assert recorded == [str(publisher)]
    workers.children.clear()


def test_a_second_publisher_is_refused_whichever_worker_it_reaches(
        workers: Server, clip: Path) -> None:
    workers.publish(clip, "once")
    workers.wait_live("once")
    for _ in range(ATTEMPTS):
        second = run(["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-t", "1", "-c", "copy",
                      "-f", "flv", workers.rtmp_url("once")], timeout=WAIT_S)
        assert second.returncode != 0
        assert "already has a publisher" in second.stderr, second.stderr

    def refused() -> Counter[int]:
        return Counter(int(w) for w in re.findall(
            r"worker (\d+): publish live/once by rtmp \S+ refused: stream live/once already "
            r"has a publisher", workers.log()))

    wait_for(lambda: sum(refused().values()) == ATTEMPTS, "refusals missing", workers)
    assert set(refused()) == {1, 2}, refused()
    assert workers.is_live("once")


def test_a_killed_worker_is_restarted_and_its_names_freed(
        workers: Server, clip: Path) -> None:
    publisher = workers.publish(clip, "dies")
    workers.wait_live("dies")
    index = holder(workers, "dies")
    pid = workers_up(workers)[index]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: workers_up(workers).get(index, pid) != pid,
             f"worker {index} was not restarted", workers)
    log = workers.log()
    assert f"worker {index} (pid {pid}) exited (signal 9, SIGKILL), restarting in 1 s" in log
    assert f"worker {index} is gone: freed 1 stream name(s): live/dies" in log
    publisher.wait(timeout=WAIT_S)  # its connection died with the worker
    # The name is free: publishing it again works, wherever it lands, and
    # both workers (the new process included) serve its viewers.
    workers.publish(clip, "dies")
    workers.wait_live("dies")
    before = plays_by_worker(workers, "dies")
    with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
        results = list(pool.map(decode, [workers.flv_url("dies")] * ATTEMPTS))
    for result in results:
        assert result.returncode == 0 and result.stderr == "", result.stderr
    after = plays_by_worker(workers, "dies")
    assert set(after - before) == {1, 2}, after - before


def test_sigterm_to_the_parent_stops_every_worker_cleanly(tmp_path: Path, clip: Path) -> None:
    server = start_workers(tmp_path)
    server.publish(clip, "last")
    server.wait_live("last")
    pids = workers_up(server)
    run_dir = re.findall(r"starting 2 workers \(run directory (\S+)\)", server.log())[0]
    server.children[0].kill()  # the publisher goes; the recording finalises on stop
    stop_server(server)  # SIGTERM; no traceback, exits in time
    log = server.log()
    for index, pid in pids.items():
        assert f"worker {index} (pid {pid}) stopped" in log
        assert not Path(f"/proc/{pid}").exists()
    assert "restarting" not in log
    assert not Path(run_dir).exists()
    assert server.process.returncode in (0, -signal.SIGTERM)


def test_tls_listeners_are_shared_by_the_workers_too(tmp_path: Path, clip: Path) -> None:
    from tests.e2e.conftest import free_ports
    from tests.tlscerts import make_certificates

    certs = make_certificates(tmp_path / "certs")
    [https_port] = free_ports(1)
    server = start_workers(tmp_path, "--https", certs.endpoint(https_port))
    try:
        server.publish(clip, "secure")
        server.wait_live("secure")
        url = f"https://127.0.0.1:{https_port}/live/secure.flv"
        before = plays_by_worker(server, "secure")
        with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
            results = list(pool.map(decode, [url] * ATTEMPTS))
        for result in results:
            assert result.returncode == 0 and result.stderr == "", result.stderr
        assert set(plays_by_worker(server, "secure") - before) == {1, 2}
    finally:
        stop_server(server)


def test_a_port_in_use_stops_the_parent_before_any_worker_starts(tmp_path: Path) -> None:
    """Another server on the port (rtmpd with --workers included) would share it silently."""
    import socket

    from tests.e2e.conftest import VENV_BIN, free_ports

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        [rtmp_port, web_port] = free_ports(2)
        result = run([str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "--logfile=-",
                      "rtmpd", "--workers", "2", "--root", str(tmp_path / "media"),
                      "--rtmp", f"tcp:{rtmp_port}:interface=127.0.0.1",
                      "--http", f"tcp:{port}:interface=127.0.0.1",
                      "--web", f"tcp:{web_port}:interface=127.0.0.1"], timeout=WAIT_S)
    assert result.returncode == 1
    assert (f"rtmpd: cannot listen on --http tcp:{port}:interface=127.0.0.1: "
            "Address already in use") in result.stdout
    assert "started worker" not in result.stdout


def get(server: Server, path: str, timeout_s: float = WAIT_S) -> tuple[dict[str, str], bytes]:
    """``GET path`` on the web port, on a new connection: its headers and body."""
    with urllib.request.urlopen(server.web_url(path), timeout=timeout_s) as response:
        return dict(response.headers), response.read()


def test_metrics_and_api_lists_answer_for_the_whole_box_whichever_worker_answers(
        workers: Server, clip: Path) -> None:
    """Each answer (several, so both workers give some) has every worker's
    streams, clients and metrics, gathered from the other worker."""
    workers.publish(clip, "one")
    workers.publish(clip, "two")
    workers.wait_live("one")
    workers.wait_live("two")
    publishers = {name: holder(workers, name) for name in ("one", "two")}
    answering: set[int] = set()
    for _ in range(ATTEMPTS):
        headers, body = get(workers, "api/streams")
        answer = json.loads(body)
        answering.add(answer["worker"]["index"])
        assert answer["workers"] == {"count": 2, "answered": [1, 2], "missing": []}
        assert "X-Rtmpd-Workers-Missing" not in headers
        # Each publish is listed once, by the worker that holds it (relays,
        # with an upstream, are listed by the worker relaying).
        published = {s["name"]: s["worker"] for s in answer["streams"] if s["upstream"] is None}
        assert published == publishers, answer
        # The publishers' connections, on their workers.
        clients = json.loads(get(workers, "api/clients")[1])["clients"]
        rtmp = sorted(c["worker"] for c in clients if c["protocol"] == "rtmp")
        assert rtmp == sorted(publishers.values()), clients

        headers, body = get(workers, "metrics")
        text = body.decode()
        assert "rtmpd_workers 2.0" in text and "rtmpd_workers_up 2.0" in text, text
        streams = dict(re.findall(r'rtmpd_streams\{worker="(\d)"\} (\S+)', text))
        assert set(streams) == {"1", "2"}, text
        # Every sample is labelled with its worker.
        for line in text.splitlines():
            if line and not line.startswith("#") and not line.startswith("rtmpd_workers"):
                assert 'worker="' in line, line
    assert answering == {1, 2}, answering
    # The public requests are in the log, the siblings' internal ones not.
    assert "GET /metrics" in workers.log() and "/.worker/" not in workers.log()
    # Client ids are unique on the box, and one DELETE closes the client
    # whichever worker it reaches (each a new connection: both are tried).
    clients = json.loads(get(workers, "api/clients")[1])["clients"]
    ids = [c["id"] for c in clients]
    assert len(ids) == len(set(ids)), clients
    publishing = [c for c in clients if c["protocol"] == "rtmp"]
    assert len(publishing) == 2, clients
    for client in publishing:
        request = urllib.request.Request(
            workers.web_url(f"api/clients/{client['id']}"), method="DELETE")
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            assert response.status == 204
    wait_for(lambda: not json.loads(get(workers, "api/streams")[1])["streams"],
             "the closed publishers' streams are still listed", workers)


def test_a_worker_that_does_not_answer_is_left_out_and_named(workers: Server) -> None:
    """A stopped worker (SIGSTOP) takes connections and never answers: the
    other one answers without it, after the gathering's timeout, and says so."""
    pids = workers_up(workers)
    os.kill(pids[2], signal.SIGSTOP)  # stuck: its socket takes the request, never answers
    answered = []
    try:
        for path in ["metrics", "api/streams"] * ATTEMPTS:
            try:
                headers, body = get(workers, path, timeout_s=5)
            except OSError:
                continue  # the connection reached the stopped worker
            # Worker 1 answered, after the gathering's timeout, without 2.
            assert headers["X-Rtmpd-Workers-Missing"] == "2"
            if path == "metrics":
                assert "rtmpd_workers_up 1.0" in body.decode()
                assert 'worker="2"' not in body.decode()
            else:
                assert json.loads(body)["workers"] == {
                    "count": 2, "answered": [1], "missing": [2]}
            answered.append(path)
            if len(set(answered)) == 2:
                break
        assert set(answered) == {"metrics", "api/streams"}
    finally:
        os.kill(pids[2], signal.SIGCONT)
    assert "Traceback" not in workers.log()
