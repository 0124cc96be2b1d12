"""SIGTERM during a publish: every frame the server took in is in the
recordings (rtmpd.services.shutdown).

ffmpeg publishes a long clip in real time through its ``tee`` muxer, which
writes each packet to the RTMP connection and then to a local FLV, and
stops at the first failed write to the connection: the local FLV holds what
ffmpeg handed to the socket. rtmpd gets SIGTERM mid-stream; it closes the publisher before
the recorders finalise, so the recordings end where the publisher's
connection was closed.

Why the counts may differ by a few packets, and no more: the packets the
recordings can miss are those still on their way when the server stopped
reading the publisher's socket. ffmpeg sends at the clip's pace (25 video +
43 audio packets a second here) and the server reads as bytes come, so on
loopback what is in flight then is what ffmpeg wrote in the moment between
the server's last read and the close reaching it (a few ms). We allow
:data:`IN_FLIGHT_S` of the clip's packets, 250 ms; runs here miss 1 video and
3 audio packets. Before the fix the publisher stayed connected while the
recorders finalised and the process wound down: it was never told, and what
it sent meanwhile was lost (about 57 frames with long fMP4 merges; with this
short recording the merge is quick and the loss small, so the log line and
the publisher's closed connection are what tell the two apart).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import WAIT_S, run, start_server, stop_server

FPS = 25
AUDIO_RATE = 44100
#: AAC packets a second (1024 samples each).
AUDIO_PPS = AUDIO_RATE / 1024
#: Media time that may be in flight when the publisher is closed (see above).
IN_FLIGHT_S = 0.25


@pytest.fixture(scope="module")
def clip60(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 s: far longer than the test runs, so ffmpeg is mid-stream at SIGTERM."""
    out = tmp_path_factory.mktemp("clip60") / "clip60.flv"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={AUDIO_RATE}",
            "-t", "60", "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS),
            "-b:v", "300k", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
            "-f", "flv", str(out),
        ],
        check=True,
        timeout=300,
    )
    return out


def packet_counts(path: Path) -> dict[str, int]:
    """Packets per stream type, as ffprobe counts them (``-count_packets``)."""
    result = run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries",
         "stream=codec_type,nb_read_packets", "-of", "json", str(path)]
    )
    assert result.returncode == 0, result.stderr
    streams = json.loads(result.stdout)["streams"]
    return {s["codec_type"]: int(s["nb_read_packets"]) for s in streams}


def frame_count(path: Path) -> int:
    """Decoded video frames (``-count_frames``): the recording decodes to the end."""
    result = run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-count_frames", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(path)], timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def test_sigterm_records_every_frame_the_server_took_in(clip60: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, "--record", "flv,fmp4", "--hls-fragment", "1")
    sent = tmp_path / "sent.flv"
    publisher = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-i", str(clip60), "-map", "0", "-c", "copy",
         "-f", "tee", f"[f=flv:onfail=abort]{server.rtmp_url('term')}|[f=flv]{sent}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server.children.append(publisher)
    try:
        server.wait_live("term")
        time.sleep(6)
        assert publisher.poll() is None
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=WAIT_S)
        closed_by_server = True
        try:
            publisher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            closed_by_server = False
            publisher.kill()  # the local FLV still says what reached the socket
    finally:
        stop_server(server)  # already stopped: checks the log for tracebacks
    assert closed_by_server, "ffmpeg was never told to stop publishing"
    log = server.log()
    assert "stopping publish live/term by rtmp" in log and "shutting down" in log, log[-3000:]

    sent_counts = packet_counts(sent)
    allowed = {"video": IN_FLIGHT_S * FPS, "audio": IN_FLIGHT_S * AUDIO_PPS}
    assert sent_counts["video"] > 5 * FPS  # ffmpeg did publish for those seconds
    flv = server.root / "flv" / "live" / "term" / "index.flv"
    mp4 = server.root / "mp4" / "live" / "term" / "output_merge" / "stream_full.mp4"
    for path in (flv, mp4):
        recorded = packet_counts(path)
        for kind, count in sent_counts.items():
            missing = count - recorded[kind]
            assert 0 <= missing <= allowed[kind], (path.name, kind, count, recorded[kind])
        assert frame_count(path) == recorded["video"], path.name
